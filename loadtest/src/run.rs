//! The command line and one run: validate the flags into a [`RunConfig`],
//! start the threads, set the schedule once everyone is connected, sample
//! CPU over the measured window, and merge the threads' results into a
//! [`Report`] (a human table or one JSON line).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize, Serializer};

use crate::accounting::{PairCounts, Window};
use crate::driver::{self, Mode, Plan, Shared};
use crate::message::{Body, Layout, Template, room_name};
use crate::progress::Progress;
use crate::target::mqtt::Mqtt;
use crate::target::nats::Nats;
use crate::target::switchboard::Switchboard;
use crate::target::ws::{Tunneled, WsTunnel};
use crate::target::{Protocol, Topology};
use crate::{cpu, html};

/// `loadtest`: drives Switchboard, Mosquitto or nats-server with the same
/// workload and reports throughput, loss and latency. Loopback targets only.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about, max_term_width = 100)]
pub struct Cli {
    /// The workload (or `report`).
    #[command(subcommand)]
    pub command: Command,
}

/// The workloads, and `report`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// P senders to P receivers, 1:1.
    Pairs(PairsArgs),
    /// N users, each sending to uniformly random other users.
    Mesh(crate::mesh::MeshArgs),
    /// 1 sender to K receivers of one room (topic, subject).
    Fanout(crate::fanout::FanoutArgs),
    /// N idle authenticated connections: the server's memory per connection.
    Idle(crate::idle::IdleArgs),
    /// Connection and handshake rate: C connectors connect, authenticate and
    /// close in a loop.
    Connect(crate::connect::ConnectArgs),
    /// The generator's own ceiling: encode and write into a local sink, no
    /// server.
    Sink(crate::sink::SinkArgs),
    /// One page from many runs' `--json` lines: tables of medians, ratios,
    /// and every server's latency curve on one plot per workload.
    Report(crate::report::ReportArgs),
}

/// The server kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Switchboard over WebSocket (`ws://HOST:PORT/connect`).
    Switchboard,
    /// Mosquitto (any MQTT 3.1.1 broker) over TCP (`mqtt://HOST:PORT`) or
    /// WebSocket (`ws://HOST:PORT/PATH`, a `protocol websockets` listener).
    Mosquitto,
    /// nats-server, core protocol over TCP (`nats://HOST:PORT`) or WebSocket
    /// (`ws://HOST:PORT`, its `websocket` block).
    Nats,
}

impl TargetKind {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Switchboard => "switchboard",
            Self::Mosquitto => "mosquitto",
            Self::Nats => "nats",
        }
    }

    /// What this target's messages are around the `--size` payload.
    pub fn body(self) -> Body {
        match self {
            Self::Switchboard => Body::Envelope,
            Self::Mosquitto | Self::Nats => Body::Bare,
        }
    }

    fn default_url(self) -> &'static str {
        match self {
            Self::Switchboard => "ws://127.0.0.1:8080/connect",
            Self::Mosquitto => "mqtt://127.0.0.1:1883",
            Self::Nats => "nats://127.0.0.1:4222",
        }
    }

    fn schemes(self) -> &'static [&'static str] {
        match self {
            Self::Switchboard => &["ws"],
            Self::Mosquitto => &["mqtt", "tcp", "ws"],
            Self::Nats => &["nats", "tcp", "ws"],
        }
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeKind {
    /// Closed loop: `--window` messages in flight per sender.
    Max,
    /// Open loop at `--rate` messages/s in total; latency from the intended
    /// send time.
    Rate,
}

/// Flags every workload shares: the target, authentication and output.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The server kind.
    #[arg(long, value_enum)]
    pub target: TargetKind,
    /// Where it listens (loopback only); default per target:
    /// ws://127.0.0.1:8080/connect, mqtt://127.0.0.1:1883, nats://127.0.0.1:4222;
    /// Mosquitto and nats-server also take a ws:// URL (MQTT or NATS over WebSocket).
    #[arg(long)]
    pub url: Option<String>,
    /// The server's process id, to report its CPU use (and, for `idle`, its
    /// memory).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report (numbers and a latency
    /// percentile plot) to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Switchboard: file holding the HS256 secret (default: $SWITCHBOARD_JWT_SECRET,
    /// else <data dir>/jwt-secret).
    #[arg(long)]
    pub jwt_secret_file: Option<PathBuf>,
    /// Switchboard: the server's data directory (for its jwt-secret).
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Switchboard: token issuer.
    #[arg(long, default_value = "switchboard")]
    pub issuer: String,
    /// Switchboard: token audience.
    #[arg(long, default_value = "switchboard")]
    pub audience: String,
    /// Bound of each connection's handshake, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub connect_timeout: f64,
}

/// Flags of `loadtest pairs`.
#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    /// Target and output.
    #[command(flatten)]
    pub common: TargetArgs,
    /// Number of sender→receiver pairs (two connections each).
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Message size, mode, timeline and threads.
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// The traffic flags every sending workload (`pairs`, `mesh`, `fanout`)
/// shares.
#[derive(Debug, Clone, Args)]
pub struct TrafficArgs {
    /// Payload bytes per message, the same for every target: the MQTT/NATS
    /// message payload, and the payload inside Switchboard's envelope (whose
    /// header comes on top, like the MQTT/NATS framing).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Closed loop (`max`) or fixed total rate (`rate`).
    #[arg(long, value_enum, default_value_t = ModeKind::Max)]
    pub mode: ModeKind,
    /// `max` mode: messages in flight per sender (answers for Switchboard,
    /// receipts for Mosquitto and NATS).
    #[arg(long, default_value_t = 32)]
    pub window: u64,
    /// `rate` mode: total messages per second sent (a fan-out delivers K
    /// times that).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up before the window (sent, not counted), seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Longest wait after the window for messages in flight, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Generator threads; each drives its share of the connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// [`TrafficArgs`], checked.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// Payload bytes per message.
    pub size: usize,
    /// Closed loop or fixed rate.
    pub mode: ModeKind,
    /// `max`: in flight per sender.
    pub window: u64,
    /// `rate`: total messages/s (0 in `max` mode).
    pub rate: f64,
    /// Measured window.
    pub duration: Duration,
    /// Warm-up.
    pub warmup: Duration,
    /// Longest drain.
    pub drain: Duration,
    /// Threads asked for (callers cap it by their connection count).
    pub threads: usize,
}

impl TrafficArgs {
    /// Checks the flags' ranges and their combination.
    pub fn validate(&self) -> anyhow::Result<Traffic> {
        ensure!((1..=256).contains(&self.threads), "--threads must be 1..=256");
        ensure!(self.size <= 65_536, "--size must be at most 65536 bytes");
        ensure!((1..=1_000_000).contains(&self.window), "--window must be 1..=1000000");
        let duration = secs(self.duration, "duration", 3600.0)?;
        ensure!(!duration.is_zero(), "--duration must be positive");
        let rate = match (self.mode, self.rate) {
            (ModeKind::Rate, Some(r)) => {
                ensure!(r.is_finite() && r > 0.0 && r <= 1e8, "--rate must be in (0, 1e8] messages/s");
                r
            }
            (ModeKind::Rate, None) => bail!("--mode rate needs --rate"),
            (ModeKind::Max, Some(_)) => bail!("--rate only applies to --mode rate"),
            (ModeKind::Max, None) => 0.0,
        };
        Ok(Traffic {
            size: self.size,
            mode: self.mode,
            window: self.window,
            rate,
            duration,
            warmup: secs(self.warmup, "warmup", 600.0)?,
            drain: secs(self.drain, "drain", 600.0)?,
            threads: self.threads,
        })
    }
}

/// A validated target: where to connect and how.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server kind.
    pub target: TargetKind,
    /// The URL as given (or the default).
    pub url: String,
    /// The resolved loopback address.
    pub addr: SocketAddr,
    /// `host[:port]` for the WebSocket upgrade.
    pub host: String,
    /// Path for the WebSocket upgrade.
    pub path: String,
    /// Over WebSocket (a `ws://` URL).
    pub websocket: bool,
    /// Handshake bound.
    pub connect_timeout: Duration,
}

impl TryFrom<&TargetArgs> for Endpoint {
    type Error = anyhow::Error;

    fn try_from(a: &TargetArgs) -> anyhow::Result<Self> {
        let url = a.url.clone().unwrap_or_else(|| a.target.default_url().to_owned());
        let (scheme, rest) = url.split_once("://").context("--url must look like scheme://host:port[/path]")?;
        ensure!(
            a.target.schemes().contains(&scheme),
            "--url for {} must start with {}://",
            a.target.name(),
            a.target.schemes().join(":// or ")
        );
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = loopback_addr(host)?;
        Ok(Self {
            target: a.target,
            url: url.clone(),
            addr,
            host: host.to_owned(),
            websocket: scheme == "ws",
            path: if a.target == TargetKind::Switchboard && path == "/" {
                "/connect".to_owned()
            } else {
                path.to_owned()
            },
            connect_timeout: secs(a.connect_timeout, "connect-timeout", 60.0)?,
        })
    }
}

/// A duration flag in seconds, within `0..=max`.
pub(crate) fn secs(v: f64, name: &str, max: f64) -> anyhow::Result<Duration> {
    ensure!(v.is_finite() && (0.0..=max).contains(&v), "--{name} must be between 0 and {max} seconds");
    Ok(Duration::from_secs_f64(v))
}

/// Something generic over the protocol, run with the target's
/// [`Protocol`] (each target gets its own monomorphised code).
pub(crate) trait WithProtocol {
    /// What it returns.
    type Out;
    /// Runs with `proto`.
    fn run<P: Protocol>(self, proto: &P) -> Self::Out;
}

/// Builds the target's protocol (signing tokens with the Switchboard
/// secret) and runs `w` with it. `layout` is the run's message layout;
/// `topology` where messages go.
pub(crate) fn with_protocol<W: WithProtocol>(
    args: &TargetArgs,
    ep: &Endpoint,
    nonce: u32,
    layout: Layout,
    topology: Topology,
    w: W,
) -> anyhow::Result<W::Out> {
    Ok(match ep.target {
        TargetKind::Switchboard => {
            let proto = Switchboard::new(
                ep.addr,
                ep.host.clone(),
                ep.path.clone(),
                jwt_secret(args)?,
                args.issuer.clone(),
                args.audience.clone(),
                layout,
            );
            match topology {
                Topology::Pairs => w.run(&proto),
                Topology::Fanout => w.run(&proto.with_room(room_name(nonce))),
            }
        }
        TargetKind::Mosquitto => tunnel(ep, w, Mqtt::new(ep.addr, nonce).with_topology(topology)),
        TargetKind::Nats => tunnel(ep, w, Nats::new(ep.addr, nonce).with_topology(topology)),
    })
}

/// Runs `w` with `proto` as it is, or over WebSocket for a `ws://` URL.
fn tunnel<W: WithProtocol, P: Tunneled>(ep: &Endpoint, w: W, proto: P) -> W::Out {
    if ep.websocket { w.run(&WsTunnel::new(proto, ep.addr, ep.host.clone(), ep.path.clone())) } else { w.run(&proto) }
}

/// A random non-zero run nonce and the envelopes' creation time.
pub(crate) fn run_identity() -> anyhow::Result<(u32, u64)> {
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).context("random nonce")?;
    let nonce = u32::from_be_bytes(nonce).max(1);
    let created_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).context("clock before 1970")?.as_millis() as u64;
    Ok((nonce, created_at_ms))
}

/// Most pairs one run opens (two sockets each).
pub const MAX_RUN_PAIRS: usize = 100_000;

/// A validated run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The target.
    pub ep: Endpoint,
    /// Pairs.
    pub pairs: usize,
    /// Message size, pacing and timeline (`threads` capped at `pairs`).
    pub traffic: Traffic,
    /// Server process for CPU sampling.
    pub server_pid: Option<u32>,
}

impl RunConfig {
    /// The configuration of a run over `pairs` pairs (or `mesh` users).
    pub fn new(common: &TargetArgs, pairs: usize, traffic: &TrafficArgs) -> anyhow::Result<Self> {
        ensure!((1..=MAX_RUN_PAIRS).contains(&pairs), "--pairs must be 1..={MAX_RUN_PAIRS}");
        let t = traffic.validate()?;
        let ep = Endpoint::try_from(common)?;
        Ok(Self { ep, pairs, traffic: Traffic { threads: t.threads.min(pairs), ..t }, server_pid: common.server_pid })
    }
}

impl TryFrom<&PairsArgs> for RunConfig {
    type Error = anyhow::Error;

    fn try_from(a: &PairsArgs) -> anyhow::Result<Self> {
        Self::new(&a.common, a.pairs, &a.traffic)
    }
}

/// Resolves `host:port` and refuses anything but loopback addresses.
pub fn loopback_addr(host_port: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> =
        host_port.to_socket_addrs().with_context(|| format!("cannot resolve {host_port:?} (host:port)"))?.collect();
    ensure!(!addrs.is_empty(), "{host_port:?} resolves to nothing");
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("refusing {host_port} ({}): loadtest only targets loopback addresses", a.ip());
    }
    Ok(addrs[0])
}

/// Latency percentiles in microseconds. `loadtest report` reads them back
/// from the JSON lines (a missing field reads as zero, a missing curve as
/// none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Measured first arrivals recorded.
    pub samples: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// (percentile, µs) points for the HTML plots, at [`html::percentiles`];
    /// in the JSON as `[[percentile, µs], ...]`, rounded.
    #[serde(serialize_with = "rounded_curve")]
    pub curve: Vec<(f64, f64)>,
}

/// The curve with percentiles to 6 decimals (the top points are 1e-5
/// apart) and µs to 3 (the histogram's nanoseconds): short JSON, and the
/// same percentiles in every run, so `loadtest report` can match points.
fn rounded_curve<S: Serializer>(curve: &[(f64, f64)], s: S) -> Result<S::Ok, S::Error> {
    let round = |v: f64, scale: f64| (v * scale).round() / scale;
    s.collect_seq(curve.iter().map(|&(p, us)| (round(p, 1e6), round(us, 1e3))))
}

impl Latency {
    /// Summarises a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1e3;
        Self {
            samples: h.len(),
            mean: h.mean() / 1e3,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            curve: if h.is_empty() {
                Vec::new()
            } else {
                html::percentiles().into_iter().map(|p| (p, us(h.value_at_quantile(p / 100.0)))).collect()
            },
        }
    }

    /// The table line.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  ({} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.samples
        )
    }
}

/// A workload's result: one JSON line, a table, an HTML report.
pub trait Outcome: Serialize {
    /// The human-readable table.
    fn table(&self) -> String;
    /// The latency to plot, if the workload measures one.
    fn latency(&self) -> Option<&Latency>;
    /// The report's title.
    fn title(&self) -> String;
    /// A warning about the run's figures (printed on stderr as well), e.g.
    /// that the generator may have been the limit.
    fn warning(&self) -> Option<String> {
        None
    }
}

/// Prints `report` as `--json` or a table, and writes `--report`.
pub fn emit<R: Outcome>(common: &TargetArgs, report: &R) -> anyhow::Result<()> {
    if common.json {
        println!("{}", serde_json::to_string(report).context("serializing the report")?);
    } else {
        println!("{}", report.table());
    }
    if let Some(w) = report.warning() {
        eprintln!("loadtest: warning: {w}");
    }
    if let Some(path) = &common.report {
        let page = html::render(&report.title(), &serde_json::to_value(report)?, report.latency());
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One refusal code and how often it came.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// The protocol error code.
    pub code: u16,
    /// How many sends were refused with it.
    pub count: u64,
}

/// The result of one run; `--json` prints it as one line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `pairs` or `mesh`.
    pub workload: &'static str,
    /// The server kind.
    pub target: &'static str,
    /// The target URL.
    pub url: String,
    /// `max` or `rate`.
    pub mode: &'static str,
    /// Pairs (`pairs`; absent for `mesh`).
    #[serde(skip_serializing_if = "is_zero")]
    pub pairs: usize,
    /// `mesh`: users (one connection each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<usize>,
    /// `mesh`: the destination generator's seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Generator threads.
    pub threads: usize,
    /// Payload bytes per message (`--size`), for every target.
    pub message_bytes: usize,
    /// Switchboard: bytes of the envelope around the payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_bytes: Option<usize>,
    /// `max`: in flight per sender.
    pub in_flight: Option<u64>,
    /// `rate`: requested total messages/s.
    pub rate: Option<f64>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Counts of the measured window.
    #[serde(flatten)]
    pub counts: PairCounts,
    /// Messages sent in the window per second.
    pub sent_per_s: f64,
    /// Messages of the window delivered, per second of window.
    pub delivered_per_s: f64,
    /// Latency from (intended) send to receipt, microseconds.
    pub latency_us: Latency,
    /// The generator's CPU use over the window, percent of one core.
    pub cpu_generator_pct: Option<f64>,
    /// The busiest generator thread's CPU use over the window, percent of
    /// one core.
    pub cpu_generator_thread_max_pct: Option<f64>,
    /// True when a generator thread used at least 90% of a core over the
    /// window, or the process 90% of each core its threads can have
    /// ([`cpu::GeneratorCpu::limited`]): the figures may measure the
    /// generator rather than the server.
    pub generator_limited: bool,
    /// The server's CPU use over the window (`--server-pid`).
    pub cpu_server_pct: Option<f64>,
    /// From the window's end until everything arrived (or the drain ended).
    pub drain_s: f64,
    /// True if every message of the window arrived or was refused in time.
    pub complete: bool,
    /// Connections lost during the run.
    pub disconnects: u64,
    /// Closed-loop pairs that stalled on dropped messages and were unblocked.
    pub stalls: u64,
    /// Refusals by error code.
    pub errors: Vec<ErrorCount>,
    /// The first connection failure during the run.
    pub first_error: Option<String>,
}

/// Runs `loadtest pairs`.
pub fn run_pairs(args: &PairsArgs) -> anyhow::Result<Report> {
    let cfg = RunConfig::try_from(args)?;
    raise_fd_limit(2 * cfg.pairs as u64 + 64)?;
    let (nonce, created_at_ms) = run_identity()?;
    let body = cfg.ep.target.body();
    let layout = Template::new(0, body, cfg.traffic.size, nonce, created_at_ms)?.layout();
    let shared = Shared {
        epoch: Instant::now(),
        barrier: Barrier::new(cfg.traffic.threads + 1),
        abort: AtomicBool::new(false),
        plan: OnceLock::new(),
        connect_timeout: cfg.ep.connect_timeout,
        size: cfg.traffic.size,
        body,
        nonce,
        created_at_ms,
        thread_clocks: Mutex::new(Vec::new()),
    };
    struct Pairs<'a>(&'a RunConfig, &'a Shared);
    impl WithProtocol for Pairs<'_> {
        type Out = anyhow::Result<Report>;
        fn run<P: Protocol>(self, proto: &P) -> Self::Out {
            execute(proto, self.0, self.1, "pairs", driver::drive::<P>)
        }
    }
    let mut report = with_protocol(&args.common, &cfg.ep, nonce, layout, Topology::Pairs, Pairs(&cfg, &shared))??;
    report.envelope_bytes = (body == Body::Envelope).then_some(layout.len);
    Ok(report)
}

/// The HS256 secret: `--jwt-secret-file`, else `SWITCHBOARD_JWT_SECRET`,
/// else `<data dir>/jwt-secret` (the server's default data directory if
/// none is given).
fn jwt_secret(args: &TargetArgs) -> anyhow::Result<Vec<u8>> {
    let from_file = |p: &std::path::Path| -> anyhow::Result<Vec<u8>> {
        let mut s = std::fs::read(p).with_context(|| format!("reading the JWT secret {}", p.display()))?;
        while s.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            s.pop();
        }
        Ok(s)
    };
    if let Some(p) = &args.jwt_secret_file {
        return from_file(p);
    }
    if let Some(s) = std::env::var_os("SWITCHBOARD_JWT_SECRET") {
        return Ok(s.into_encoded_bytes());
    }
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            let non_empty = |k| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
            if let Some(xdg) = non_empty("XDG_DATA_HOME") {
                xdg.join("switchboard")
            } else if let Some(home) = non_empty("HOME") {
                home.join(".local/share/switchboard")
            } else {
                PathBuf::from("switchboard-data")
            }
        }
    };
    from_file(&dir.join("jwt-secret"))
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Runs `drive` on `cfg.traffic.threads` threads (each with its share of
/// `0..cfg.pairs`) against `proto` and merges their reports. `workload` is
/// `pairs` or `mesh` (its senders and receivers are on different threads,
/// so the loss is computed from the merged counts).
pub(crate) fn execute<P, F>(
    proto: &P,
    cfg: &RunConfig,
    shared: &Shared,
    workload: &'static str,
    drive: F,
) -> anyhow::Result<Report>
where
    P: Protocol,
    F: Fn(&P, std::ops::Range<usize>, &Shared) -> anyhow::Result<driver::ThreadReport> + Sync,
{
    let shares = split(cfg.pairs, cfg.traffic.threads);
    let drive = &drive;
    std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(i, range)| {
                std::thread::Builder::new()
                    .name(format!("loadtest-{i}"))
                    .spawn_scoped(s, move || {
                        shared.register_thread();
                        drive(proto, range, shared)
                    })
                    .expect("spawning a generator thread")
            })
            .collect();
        shared.barrier.wait();
        let connected = !shared.abort.load(Ordering::SeqCst);
        let now = shared.now_ns();
        let send_start_ns = now + 20_000_000;
        let start_ns = send_start_ns + cfg.traffic.warmup.as_nanos() as u64;
        let window = Window { start_ns, end_ns: start_ns + cfg.traffic.duration.as_nanos() as u64 };
        let mode = match cfg.traffic.mode {
            ModeKind::Max => Mode::Max { in_flight: cfg.traffic.window },
            ModeKind::Rate => Mode::Rate {
                interval_ns: (cfg.pairs as f64 * 1e9 / cfg.traffic.rate).max(1.0) as u64,
                total_pairs: cfg.pairs,
            },
        };
        let plan =
            Plan { mode, send_start_ns, window, drain_end_ns: window.end_ns + cfg.traffic.drain.as_nanos() as u64 };
        shared.plan.set(plan).expect("the plan is set once");
        shared.barrier.wait();
        let (mut cpu_gen, mut cpu_srv) = (cpu::GeneratorCpu::default(), None);
        if connected {
            let bar = Progress::time(workload, send_start_ns, window.end_ns);
            let clocks = shared.thread_clocks();
            sleep_until(shared, window.start_ns, &bar);
            let g0 = cpu::Sample::take(&clocks);
            let t0 = Instant::now();
            let s0 = cfg.server_pid.and_then(|p| cpu::cpu_time(Some(p)));
            sleep_until(shared, window.end_ns, &bar);
            bar.finish();
            let wall = t0.elapsed();
            let s1 = cfg.server_pid.and_then(|p| cpu::cpu_time(Some(p)));
            cpu_gen = cpu::GeneratorCpu::between(&g0, &cpu::Sample::take(&clocks), cfg.traffic.threads);
            cpu_srv = cpu::percent(s0, s1, wall);
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.join().map_err(|_| anyhow::anyhow!("a generator thread panicked"))?);
        }
        // A connection failure explains an abort better than "another
        // thread failed", so report the first real error.
        if let Some(e) = results.iter().filter_map(|r| r.as_ref().err()).find(|e| !e.to_string().contains("another")) {
            bail!("{e:#}");
        }
        let reports = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let mut counts = PairCounts::default();
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds");
        let mut errors: Vec<ErrorCount> = Vec::new();
        let (mut disconnects, mut stalls, mut finished, mut complete, mut first_error) = (0, 0, 0, true, None);
        for r in &reports {
            counts.add(&r.counts);
            latency.add(&r.latency).context("merging histograms")?;
            disconnects += r.disconnects;
            stalls += r.stalls;
            finished = finished.max(r.finished_ns);
            complete &= r.complete;
            first_error = first_error.or_else(|| r.first_error.clone());
            for &(code, count) in &r.error_codes {
                match errors.iter_mut().find(|e| e.code == code) {
                    Some(e) => e.count += count,
                    None => errors.push(ErrorCount { code, count }),
                }
            }
        }
        if workload == "mesh" {
            counts.lost = counts.sent.saturating_sub(counts.delivered + counts.rejected);
        }
        let secs = window.secs();
        let mesh = workload == "mesh";
        Ok(Report {
            workload,
            target: cfg.ep.target.name(),
            url: cfg.ep.url.clone(),
            mode: match cfg.traffic.mode {
                ModeKind::Max => "max",
                ModeKind::Rate => "rate",
            },
            pairs: if mesh { 0 } else { cfg.pairs },
            users: mesh.then_some(cfg.pairs),
            seed: None,
            threads: cfg.traffic.threads,
            message_bytes: cfg.traffic.size,
            envelope_bytes: None,
            in_flight: (cfg.traffic.mode == ModeKind::Max).then_some(cfg.traffic.window),
            rate: (cfg.traffic.mode == ModeKind::Rate).then_some(cfg.traffic.rate),
            duration_s: secs,
            warmup_s: cfg.traffic.warmup.as_secs_f64(),
            counts,
            sent_per_s: counts.sent as f64 / secs,
            delivered_per_s: counts.delivered as f64 / secs,
            latency_us: Latency::of(&latency),
            cpu_generator_pct: cpu_gen.process_pct,
            cpu_generator_thread_max_pct: cpu_gen.busiest_thread_pct,
            generator_limited: cpu_gen.limited(),
            cpu_server_pct: cpu_srv,
            drain_s: finished.saturating_sub(window.end_ns) as f64 / 1e9,
            complete,
            disconnects,
            stalls,
            errors,
            first_error,
        })
    })
}

/// Raises the soft open-files limit to at least `need` (up to the hard
/// limit): each pair holds two sockets.
pub(crate) fn raise_fd_limit(need: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    ensure!(
        lim.rlim_max >= need,
        "{need} file descriptors needed, the hard limit is {}: lower --pairs or raise `ulimit -Hn`",
        lim.rlim_max
    );
    lim.rlim_cur = need;
    // SAFETY: setrlimit reads one rlimit from the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("cannot raise the open-files limit to {need}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sleeps until `t_ns` on the run's clock, moving the progress bar.
pub(crate) fn sleep_until(shared: &Shared, t_ns: u64, bar: &Progress) {
    loop {
        let now = shared.now_ns();
        bar.at(now);
        if now >= t_ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos(t_ns - now).min(Progress::TICK));
    }
}

/// "256 B payload", with the envelope's size for Switchboard.
pub(crate) fn payload_text(payload: usize, envelope: Option<usize>) -> String {
    match envelope {
        Some(e) => format!("{payload} B payload ({e} B envelope)"),
        None => format!("{payload} B payload"),
    }
}

/// Splits `0..pairs` into `threads` contiguous, nearly equal ranges.
fn split(pairs: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let threads = threads.clamp(1, pairs.max(1));
    (0..threads).map(|i| (pairs * i / threads)..(pairs * (i + 1) / threads)).collect()
}

impl Report {
    /// "10 pairs", or "10 users, seed 1" for `mesh`.
    fn who(&self) -> String {
        match (self.users, self.seed) {
            (Some(u), Some(seed)) => format!("{u} users, seed {seed}"),
            (Some(u), None) => format!("{u} users"),
            _ => format!("{} pairs", self.pairs),
        }
    }
}

impl Outcome for Report {
    fn latency(&self) -> Option<&Latency> {
        Some(&self.latency_us)
    }

    fn warning(&self) -> Option<String> {
        self.generator_limited.then(|| cpu::limit_warning(self.cpu_generator_thread_max_pct, self.cpu_generator_pct))
    }

    fn title(&self) -> String {
        format!("loadtest {}: {} ({})", self.workload, self.target, self.who())
    }

    fn table(&self) -> String {
        use std::fmt::Write;
        let c = &self.counts;
        let pace = match (self.in_flight, self.rate) {
            (Some(w), _) => format!("max, {w} in flight per sender"),
            (_, Some(r)) => format!("rate {r} msg/s"),
            _ => String::new(),
        };
        let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.0}%"));
        let l = &self.latency_us;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadtest {}: {} {} | {}, {}, {pace}, {} thread(s), {:.1} s (+{:.1} s warm-up)",
            self.workload,
            self.target,
            self.url,
            self.who(),
            payload_text(self.message_bytes, self.envelope_bytes),
            self.threads,
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(s, "  sent          {:>12}  {:>12.0}/s", c.sent, self.sent_per_s);
        let _ = writeln!(s, "  delivered     {:>12}  {:>12.0}/s", c.delivered, self.delivered_per_s);
        let _ = writeln!(
            s,
            "  lost {}  duplicates {}  out-of-order {}  rejected {}  offline {}  unknown {}",
            c.lost, c.duplicates, c.out_of_order, c.rejected, c.offline, c.unknown
        );
        let _ = writeln!(s, "  latency µs    {}", l.line());
        let _ = writeln!(
            s,
            "  cpu           generator {} (busiest thread {})  server {}",
            pct(self.cpu_generator_pct),
            pct(self.cpu_generator_thread_max_pct),
            pct(self.cpu_server_pct)
        );
        let _ = write!(
            s,
            "  drain         {:.3} s, {}; disconnects {}, stalls {}",
            self.drain_s,
            if self.complete { "complete" } else { "INCOMPLETE" },
            self.disconnects,
            self.stalls
        );
        if let Some(e) = &self.first_error {
            let _ = write!(s, "\n  first error   {e}");
        }
        for e in &self.errors {
            let _ = write!(s, "\n  refused       code {} x{}", e.code, e.count);
        }
        if let Some(w) = self.warning() {
            let _ = write!(s, "\n  WARNING       {w}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> PairsArgs {
        let mut argv = vec!["loadtest", "pairs"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Pairs(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(loopback_addr("127.0.0.1:1").is_ok());
        assert!(loopback_addr("[::1]:1").is_ok());
        assert!(loopback_addr("localhost:1").is_ok());
        let err = loopback_addr("192.0.2.1:80").unwrap_err().to_string();
        assert!(err.contains("only targets loopback"), "{err}");
        let a = args(&["--target", "nats", "--url", "nats://10.0.0.1:4222"]);
        assert!(RunConfig::try_from(&a).is_err());
    }

    #[test]
    fn flags_are_validated() {
        let ok = RunConfig::try_from(&args(&["--target", "switchboard"])).unwrap();
        assert_eq!((ok.ep.path.as_str(), ok.ep.addr.port()), ("/connect", 8080));
        for bad in [
            &["--target", "nats", "--mode", "rate"][..],
            &["--target", "nats", "--rate", "5"],
            &["--target", "nats", "--pairs", "0"],
            &["--target", "nats", "--duration", "0"],
            &["--target", "mosquitto", "--url", "nats://127.0.0.1:1883"],
            &["--target", "switchboard", "--url", "127.0.0.1:8080"],
        ] {
            assert!(RunConfig::try_from(&args(bad)).is_err(), "{bad:?}");
        }
        let ws = RunConfig::try_from(&args(&["--target", "mosquitto", "--url", "ws://127.0.0.1:9001/mqtt"])).unwrap();
        assert!(ws.ep.websocket && ws.ep.path == "/mqtt");
        let tcp = RunConfig::try_from(&args(&["--target", "nats"])).unwrap();
        assert!(!tcp.ep.websocket);
        let r = RunConfig::try_from(&args(&["--target", "mosquitto", "--mode", "rate", "--rate", "100"])).unwrap();
        assert_eq!(r.traffic.rate, 100.0);
    }

    #[test]
    fn the_payload_on_the_wire_is_size_bytes_for_every_target() {
        use switchboard_protocol::{Envelope, Limits};

        use crate::target::Inbound;
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for size in [24, 256, 1000, 20_000] {
            for target in [TargetKind::Switchboard, TargetKind::Mosquitto, TargetKind::Nats] {
                let mut t = Template::new(3, target.body(), size, 1, 0).unwrap();
                let layout = t.layout();
                assert_eq!(layout.payload_len, size);
                let msg = t.stamp(1, 2).to_vec();
                let mut wire = Vec::new();
                let payload = match target {
                    TargetKind::Switchboard => {
                        let (s, e) = (String::new(), Vec::new());
                        let sb = Switchboard::new(addr, s.clone(), s.clone(), e, s.clone(), s, layout);
                        Switchboard::encode_message(&sb.offline_conn(3), &mut wire, &msg);
                        // WebSocket header, send-frame header, the envelope.
                        let envelope = &wire[wire.len() - layout.len..];
                        Envelope::parse(envelope, &Limits::default()).unwrap().payload().len()
                    }
                    TargetKind::Mosquitto => {
                        Mqtt::encode_message(&Mqtt::new(addr, 1).offline_conn(3), &mut wire, &msg);
                        // A QoS 0 PUBLISH reads the same either way.
                        let mut len = None;
                        Mqtt::decode(&mut Mqtt::new(addr, 1).offline_conn(3), &wire, &mut Vec::new(), &mut |i| {
                            if let Inbound::Message(m) = i {
                                len = Some(m.len());
                            }
                        })
                        .unwrap();
                        len.unwrap()
                    }
                    TargetKind::Nats => {
                        Nats::encode_message(&Nats::new(addr, 1).offline_conn(3), &mut wire, &msg);
                        // PUB <subject> <#bytes>\r\n<payload>\r\n
                        let line = std::str::from_utf8(&wire[..wire.iter().position(|&b| b == b'\r').unwrap()]);
                        let len: usize = line.unwrap().rsplit(' ').next().unwrap().parse().unwrap();
                        assert_eq!(wire.len(), line.unwrap().len() + 2 + len + 2);
                        len
                    }
                };
                assert_eq!(payload, size, "{target:?}");
            }
        }
    }

    fn report(generator_pct: f64, threads: usize) -> Report {
        Report {
            workload: "pairs",
            target: "nats",
            url: "nats://127.0.0.1:4222".into(),
            mode: "rate",
            pairs: 10,
            users: None,
            seed: None,
            threads,
            message_bytes: 256,
            envelope_bytes: None,
            in_flight: None,
            rate: Some(20_000.0),
            duration_s: 1.0,
            warmup_s: 1.0,
            counts: PairCounts::default(),
            sent_per_s: 0.0,
            delivered_per_s: 0.0,
            latency_us: Latency::default(),
            cpu_generator_pct: Some(generator_pct * threads as f64),
            cpu_generator_thread_max_pct: Some(generator_pct),
            generator_limited: generator_pct >= cpu::GENERATOR_LIMIT_PCT,
            cpu_server_pct: None,
            drain_s: 0.0,
            complete: true,
            disconnects: 0,
            stalls: 0,
            errors: Vec::new(),
            first_error: None,
        }
    }

    #[test]
    fn a_generator_at_its_limit_is_reported_in_the_table_and_the_json() {
        let busy = report(95.0, 2);
        let table = busy.table();
        assert!(table.contains("generator 190% (busiest thread 95%)"), "{table}");
        assert!(table.contains("WARNING       the generator may be the limit"), "{table}");
        let json = serde_json::to_value(&busy).unwrap();
        assert_eq!(json["generator_limited"], true);
        assert_eq!(json["cpu_generator_thread_max_pct"], 95.0);
        assert!(table.contains("256 B payload,"), "{table}");
        let idle = report(12.0, 1);
        assert!(!idle.table().contains("WARNING"));
        assert_eq!(idle.warning(), None);
        assert_eq!(serde_json::to_value(&idle).unwrap()["generator_limited"], false);
        let sb = Report { envelope_bytes: Some(368), ..idle };
        assert!(sb.table().contains("256 B payload (368 B envelope),"), "{}", sb.table());
    }

    #[test]
    fn pairs_are_split_evenly_and_completely() {
        assert_eq!(split(10, 3), [0..3, 3..6, 6..10]);
        assert_eq!(split(2, 4), [0..1, 1..2]);
        assert_eq!(split(1, 1).first(), Some(&(0..1)));
    }
}
