//! `loadtest idle`: opens N idle, authenticated connections (Switchboard:
//! the WebSocket upgrade with a token; Mosquitto: CONNECT/CONNACK; NATS:
//! CONNECT and a PING/PONG), holds them for a settle time and reports the
//! server's resident memory growth per connection, from `VmRSS` in
//! `/proc/<server-pid>/status` before and after.

use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Args;
use serde::Serialize;

use crate::message::Template;
use crate::progress::Progress;
use crate::run::{self, Endpoint, Latency, Outcome, TargetArgs, WithProtocol, run_identity, secs, with_protocol};
use crate::target::{Protocol, Role, Topology};

/// Flags of `loadtest idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Target and output (`--server-pid` is required).
    #[command(flatten)]
    pub common: TargetArgs,
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// How long to hold them before reading the server's memory, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Threads that open the connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Stop opening connections after this long, seconds, and measure with
    /// those opened (a server that accepts slowly cannot stretch the run).
    #[arg(long, default_value_t = 120.0)]
    pub max_connect_time: f64,
}

/// Most connections one `idle` run opens.
pub const MAX_IDLE: usize = 999_999;

/// The result of `loadtest idle`.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Always `idle`.
    pub workload: &'static str,
    /// The server kind.
    pub target: &'static str,
    /// The target URL.
    pub url: String,
    /// Connections asked for.
    pub requested: usize,
    /// Connections opened (fewer than asked if `--max-connect-time` ran out).
    pub connections: usize,
    /// Of those, still open after the settle time.
    pub open: usize,
    /// Seconds it took to open them all.
    pub connect_s: f64,
    /// Seconds they were held before the memory was read.
    pub settle_s: f64,
    /// The server's VmRSS before connecting, KiB.
    pub rss_before_kib: u64,
    /// The server's VmRSS after the settle time, KiB.
    pub rss_after_kib: u64,
    /// (after − before) / connections, bytes.
    pub bytes_per_connection: f64,
}

/// Runs `loadtest idle`.
pub fn run_idle(args: &IdleArgs) -> anyhow::Result<IdleReport> {
    let ep = Endpoint::try_from(&args.common)?;
    let Some(pid) = args.common.server_pid else { bail!("idle needs --server-pid to read the server's memory") };
    ensure!((1..=MAX_IDLE).contains(&args.connections), "--connections must be 1..={MAX_IDLE}");
    ensure!((1..=256).contains(&args.threads), "--threads must be 1..=256");
    let settle = secs(args.settle, "settle", 600.0)?;
    let max_connect = secs(args.max_connect_time, "max-connect-time", 3600.0)?;
    run::raise_fd_limit(args.connections as u64 + 64)?;
    let (nonce, created_at_ms) = run_identity()?;
    let layout = Template::new(0, ep.target.body(), 256, nonce, created_at_ms)?.layout();
    let rss_before_kib = vm_rss_kib(pid)?;
    let t0 = Instant::now();
    let open = Open { args, ep: &ep, deadline: t0 + max_connect };
    let streams = with_protocol(&args.common, &ep, nonce, layout, Topology::Pairs, open)??;
    ensure!(!streams.is_empty(), "no connection opened within --max-connect-time");
    let connect_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(settle);
    let rss_after_kib = vm_rss_kib(pid)?;
    let opened = streams.len();
    let open = streams.iter().filter(|s| is_open(s)).count();
    drop(streams);
    let n = opened;
    Ok(IdleReport {
        workload: "idle",
        target: ep.target.name(),
        url: ep.url,
        requested: args.connections,
        connections: n,
        open,
        connect_s,
        settle_s: settle.as_secs_f64(),
        rss_before_kib,
        rss_after_kib,
        bytes_per_connection: (rss_after_kib as f64 - rss_before_kib as f64) * 1024.0 / n as f64,
    })
}

struct Open<'a> {
    args: &'a IdleArgs,
    ep: &'a Endpoint,
    /// When to stop opening.
    deadline: Instant,
}

impl WithProtocol for Open<'_> {
    type Out = anyhow::Result<Vec<TcpStream>>;

    fn run<P: Protocol>(self, proto: &P) -> Self::Out {
        let n = self.args.connections;
        let threads = self.args.threads.min(n);
        let failed = AtomicBool::new(false);
        let bar = Progress::count("idle: connecting", n as u64);
        let timeout = self.ep.connect_timeout;
        let open_share = |range: Range<usize>| -> anyhow::Result<Vec<TcpStream>> {
            let mut out = Vec::with_capacity(range.len());
            for i in range {
                if failed.load(Ordering::Relaxed) {
                    bail!("another thread failed to connect");
                }
                if Instant::now() >= self.deadline {
                    break;
                }
                let c = proto.connect(i, Role::Idle, timeout).with_context(|| format!("connection {i}"));
                let c = c.inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                out.push(c.stream);
                bar.inc(1);
            }
            Ok(out)
        };
        let results: Vec<anyhow::Result<Vec<TcpStream>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let range = (n * t / threads)..(n * (t + 1) / threads);
                    s.spawn(move || open_share(range))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked"))))
                .collect()
        });
        bar.finish();
        let mut streams = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(v) => streams.extend(v),
                Err(e) => errors.push(e),
            }
        }
        // A real failure explains more than "another thread failed".
        errors.sort_by_key(|e| e.to_string().contains("another"));
        match errors.into_iter().next() {
            Some(e) => Err(e.context(format!("{} of {n} connections were open", streams.len()))),
            None => Ok(streams),
        }
    }
}

/// True if the server has not closed `s` (nothing to read is open; data,
/// e.g. a ping, is open too).
fn is_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    match s.peek(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// The resident set size of process `pid`, KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is --server-pid right?)"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// `VmRSS:    1234 kB` from a `/proc/<pid>/status` text.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let kib = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kib)
}

impl Outcome for IdleReport {
    fn table(&self) -> String {
        format!(
            "loadtest idle: {} {} | {} of {} connections ({} still open) opened in {:.2} s, held {:.1} s\n  \
             server RSS    {} KiB -> {} KiB\n  per connection {:.0} bytes ({:.2} KiB)",
            self.target,
            self.url,
            self.connections,
            self.requested,
            self.open,
            self.connect_s,
            self.settle_s,
            self.rss_before_kib,
            self.rss_after_kib,
            self.bytes_per_connection,
            self.bytes_per_connection / 1024.0
        )
    }

    fn latency(&self) -> Option<&Latency> {
        None
    }

    fn title(&self) -> String {
        format!("loadtest idle: {} ({} connections)", self.target, self.connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tswitchboard\nVmPeak:\t  99 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert_eq!(parse_vm_rss("VmRSS: 12 MB\n"), None);
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
    }
}
