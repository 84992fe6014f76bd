//! `loadtest connect`: a reconnect storm. C connectors each connect,
//! authenticate (Switchboard: the WebSocket upgrade with a fresh JWT;
//! Mosquitto: CONNECT/CONNACK; NATS: CONNECT and PING/PONG), say goodbye
//! and close, over and over, for the warm-up and the measured window.
//! Reports completed handshakes per second and the handshake latency (from
//! the TCP connect to the server's answer) of the window.
//!
//! Connectors are blocking threads: a handshake is a round trip or two,
//! and one thread per concurrent connector is the simplest honest model.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounting::Window;
use crate::cpu;
use crate::message::Template;
use crate::progress::Progress;
use crate::run::{Endpoint, Latency, Outcome, TargetArgs, WithProtocol, run_identity, secs, with_protocol};
use crate::target::{Protocol, Role, Topology};

/// Flags of `loadtest connect`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Target and output.
    #[command(flatten)]
    pub common: TargetArgs,
    /// Concurrent connectors (one thread each).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Warm-up before the window (not counted), seconds.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
}

/// The result of `loadtest connect`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Always `connect`.
    pub workload: &'static str,
    /// The server kind.
    pub target: &'static str,
    /// The target URL.
    pub url: String,
    /// Concurrent connectors.
    pub concurrency: usize,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Handshakes started in the window that completed.
    pub connects: u64,
    /// Handshakes started in the window that failed.
    pub failures: u64,
    /// Completed handshakes per second of window.
    pub connects_per_s: f64,
    /// Handshake latency, microseconds.
    pub handshake_latency_us: Latency,
    /// The generator's CPU use over the window, percent of one core.
    pub cpu_generator_pct: Option<f64>,
    /// True when the generator used at least 90% of each core its
    /// connectors can have: the figures may measure the generator rather
    /// than the server.
    pub generator_limited: bool,
    /// The server's CPU use over the window (`--server-pid`).
    pub cpu_server_pct: Option<f64>,
    /// The first failure.
    pub first_error: Option<String>,
}

/// Runs `loadtest connect`.
pub fn run_connect(args: &ConnectArgs) -> anyhow::Result<ConnectReport> {
    let ep = Endpoint::try_from(&args.common)?;
    ensure!((1..=1024).contains(&args.concurrency), "--concurrency must be 1..=1024");
    let duration = secs(args.duration, "duration", 3600.0)?;
    ensure!(!duration.is_zero(), "--duration must be positive");
    let warmup = secs(args.warmup, "warmup", 600.0)?;
    crate::run::raise_fd_limit(2 * args.concurrency as u64 + 64)?;
    let (nonce, created_at_ms) = run_identity()?;
    let layout = Template::new(0, ep.target.body(), 256, nonce, created_at_ms)?.layout();
    let storm = Storm { args, ep: &ep, warmup, duration };
    let (connects, failures, latency, first_error, cpu_gen, cpu_srv, window) =
        with_protocol(&args.common, &ep, nonce, layout, Topology::Pairs, storm)??;
    let secs = window.secs();
    Ok(ConnectReport {
        workload: "connect",
        target: ep.target.name(),
        url: ep.url,
        concurrency: args.concurrency,
        duration_s: secs,
        warmup_s: warmup.as_secs_f64(),
        connects,
        failures,
        connects_per_s: connects as f64 / secs,
        handshake_latency_us: Latency::of(&latency),
        cpu_generator_pct: cpu_gen.process_pct,
        generator_limited: cpu_gen.limited(),
        cpu_server_pct: cpu_srv,
        first_error,
    })
}

struct Storm<'a> {
    args: &'a ConnectArgs,
    ep: &'a Endpoint,
    warmup: Duration,
    duration: Duration,
}

type StormResult = (u64, u64, Histogram<u64>, Option<String>, cpu::GeneratorCpu, Option<f64>, Window);

/// One connector's tally.
struct Tally {
    connects: u64,
    failures: u64,
    latency: Histogram<u64>,
    first_error: Option<String>,
}

impl WithProtocol for Storm<'_> {
    type Out = anyhow::Result<StormResult>;

    fn run<P: Protocol>(self, proto: &P) -> Self::Out {
        let epoch = Instant::now();
        let now_ns = || epoch.elapsed().as_nanos() as u64;
        let start_ns = 20_000_000 + self.warmup.as_nanos() as u64;
        let window = Window { start_ns, end_ns: start_ns + self.duration.as_nanos() as u64 };
        let timeout = self.ep.connect_timeout;
        let tallies = Mutex::new(Vec::new());
        let connector = |id: usize| -> anyhow::Result<()> {
            let mut t = Tally {
                connects: 0,
                failures: 0,
                latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).context("histogram bounds")?,
                first_error: None,
            };
            while now_ns() < 20_000_000 {
                std::thread::sleep(Duration::from_millis(1));
            }
            loop {
                let t0 = now_ns();
                if t0 >= window.end_ns {
                    break;
                }
                let measured = window.contains(t0);
                match proto.connect(id, Role::Idle, timeout) {
                    Ok(mut c) => {
                        let t1 = now_ns();
                        // Politely, where the protocol has a goodbye; the
                        // close follows at once either way.
                        let _ = c.stream.write_all(P::GOODBYE);
                        drop(c);
                        if measured {
                            t.connects += 1;
                            t.latency.saturating_record((t1 - t0).max(1));
                        }
                    }
                    Err(e) => {
                        if measured {
                            t.failures += 1;
                        }
                        t.first_error.get_or_insert_with(|| format!("connector {id}: {e:#}"));
                        // A refusing server must not turn this into a spin.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            tallies.lock().map_err(|_| anyhow::anyhow!("a connector panicked"))?.push(t);
            Ok(())
        };
        let (cpu_gen, cpu_srv) = std::thread::scope(|s| -> anyhow::Result<_> {
            let handles: Vec<_> = (0..self.args.concurrency).map(|i| s.spawn(move || connector(i))).collect();
            let bar = Progress::time("connect", 20_000_000, window.end_ns);
            let sleep_until = |t: u64| {
                while now_ns() < t {
                    bar.at(now_ns());
                    std::thread::sleep(Duration::from_nanos(t - now_ns()).min(Progress::TICK));
                }
            };
            sleep_until(window.start_ns);
            let t0 = Instant::now();
            let server_pid = self.args.common.server_pid;
            // The connectors block in their handshakes: only the process's
            // CPU against the cores they can have tells whether it was full.
            let (g0, s0) = (cpu::Sample::take(&[]), server_pid.and_then(|p| cpu::cpu_time(Some(p))));
            sleep_until(window.end_ns);
            let wall = t0.elapsed();
            let (g1, s1) = (cpu::Sample::take(&[]), server_pid.and_then(|p| cpu::cpu_time(Some(p))));
            bar.finish();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("a connector panicked"))??;
            }
            let concurrency = self.args.concurrency;
            Ok((cpu::GeneratorCpu::between(&g0, &g1, concurrency), cpu::percent(s0, s1, wall)))
        })?;
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).context("histogram bounds")?;
        let (mut connects, mut failures, mut first_error) = (0, 0, None);
        for t in tallies.into_inner().map_err(|_| anyhow::anyhow!("a connector panicked"))? {
            connects += t.connects;
            failures += t.failures;
            latency.add(&t.latency).context("merging histograms")?;
            first_error = first_error.or(t.first_error);
        }
        Ok((connects, failures, latency, first_error, cpu_gen, cpu_srv, window))
    }
}

impl Outcome for ConnectReport {
    fn table(&self) -> String {
        let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.0}%"));
        let mut s = format!(
            "loadtest connect: {} {} | {} connectors, {:.1} s (+{:.1} s warm-up)\n  \
             connects      {:>12}  {:>12.0}/s   failures {}\n  handshake µs  {}\n  \
             cpu           generator {}  server {}",
            self.target,
            self.url,
            self.concurrency,
            self.duration_s,
            self.warmup_s,
            self.connects,
            self.connects_per_s,
            self.failures,
            self.handshake_latency_us.line(),
            pct(self.cpu_generator_pct),
            pct(self.cpu_server_pct)
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!("\n  first error   {e}"));
        }
        if let Some(w) = self.warning() {
            s.push_str(&format!("\n  WARNING       {w}"));
        }
        s
    }

    fn latency(&self) -> Option<&Latency> {
        Some(&self.handshake_latency_us)
    }

    fn warning(&self) -> Option<String> {
        self.generator_limited.then(|| cpu::limit_warning(None, self.cpu_generator_pct))
    }

    fn title(&self) -> String {
        format!("loadtest connect: {} ({} connectors)", self.target, self.concurrency)
    }
}
