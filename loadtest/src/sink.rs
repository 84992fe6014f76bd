//! `loadtest sink`: the generator's own ceiling. One thread does what a
//! closed-loop sender does per message (take a sequence number, stamp the
//! envelope in place, encode the target's framing into the write buffer)
//! and writes the buffer, in the driver's batch size, to a local TCP socket
//! that another thread drains and discards. No server is involved, so the
//! figure is how many messages/s one generator core can produce.
//!
//! Two phases: `encode` (the write buffer is cleared instead of written:
//! encoding alone) and `socket` (encode and `write` to the sink).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use serde::Serialize;

use crate::accounting::{PairLedger, Window};
use crate::driver::WRITE_BACKLOG;
use crate::message::Template;
use crate::run::{Latency, Outcome, TargetKind, WithProtocol, run_identity, secs};
use crate::target::Protocol;
use crate::target::mqtt::Mqtt;
use crate::target::nats::Nats;
use crate::target::switchboard::Switchboard;

/// Flags of `loadtest sink`.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Whose framing to encode.
    #[arg(long, value_enum, default_value_t = TargetKind::Switchboard)]
    pub target: TargetKind,
    /// Payload bytes per message (for Switchboard, inside the envelope).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The result of `loadtest sink`.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    /// Always `sink`.
    pub workload: &'static str,
    /// Whose framing.
    pub target: &'static str,
    /// Payload bytes per message (`--size`).
    pub message_bytes: usize,
    /// Bytes per message on the wire (with the target's framing).
    pub wire_bytes: usize,
    /// Seconds of each phase.
    pub duration_s: f64,
    /// Messages/s encoded into the buffer without writing it.
    pub encode_per_s: f64,
    /// Messages/s encoded and written to the sink socket.
    pub socket_per_s: f64,
    /// Bytes/s written to the sink socket.
    pub socket_bytes_per_s: f64,
    /// The generating thread's CPU use in the socket phase, percent.
    pub socket_thread_cpu_pct: f64,
}

/// Runs `loadtest sink`.
pub fn run_sink(args: &SinkArgs) -> anyhow::Result<SinkReport> {
    ensure!(args.size <= 65_536, "--size must be at most 65536 bytes");
    let phase = secs(args.duration, "duration", 600.0)?;
    ensure!(!phase.is_zero(), "--duration must be positive");
    let (nonce, created_at_ms) = run_identity()?;
    let template = Template::new(0, args.target.body(), args.size, nonce, created_at_ms)?;
    let layout = template.layout();
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let bench = Bench { template, phase };
    let (wire_bytes, encode_per_s, socket_per_s, cpu) = match args.target {
        TargetKind::Switchboard => bench.run(&Switchboard::new(
            addr,
            String::new(),
            String::new(),
            Vec::new(),
            String::new(),
            String::new(),
            layout,
        )),
        TargetKind::Mosquitto => bench.run(&Mqtt::new(addr, nonce)),
        TargetKind::Nats => bench.run(&Nats::new(addr, nonce)),
    }?;
    Ok(SinkReport {
        workload: "sink",
        target: args.target.name(),
        message_bytes: layout.payload_len,
        wire_bytes,
        duration_s: phase.as_secs_f64(),
        encode_per_s,
        socket_per_s,
        socket_bytes_per_s: socket_per_s * wire_bytes as f64,
        socket_thread_cpu_pct: cpu,
    })
}

struct Bench {
    template: Template,
    phase: Duration,
}

impl WithProtocol for Bench {
    type Out = anyhow::Result<(usize, f64, f64, f64)>;

    fn run<P: Protocol>(self, proto: &P) -> Self::Out {
        let Bench { mut template, phase } = self;
        let conn = proto.offline_conn(0);
        let mut wire = Vec::new();
        P::encode_message(&conn, &mut wire, template.bytes());
        P::end_turn(&conn, &mut wire, 0);
        let wire_bytes = wire.len();
        let epoch = Instant::now();
        let window = Window { start_ns: 0, end_ns: u64::MAX };
        let mut ledger = PairLedger::new();
        let mut wbuf = Vec::with_capacity(WRITE_BACKLOG + 64 * 1024);
        // Phase 1: encoding alone.
        let mut n = 0u64;
        let t0 = Instant::now();
        while t0.elapsed() < phase {
            let now = epoch.elapsed().as_nanos() as u64;
            while wbuf.len() < WRITE_BACKLOG {
                let seq = ledger.on_send(now, &window);
                P::encode_message(&conn, &mut wbuf, template.stamp(seq, now));
                n += 1;
            }
            P::end_turn(&conn, &mut wbuf, 0);
            std::hint::black_box(&wbuf);
            wbuf.clear();
        }
        let encode_per_s = n as f64 / t0.elapsed().as_secs_f64();
        // Phase 2: into a socket that another thread drains.
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
        let sink_addr = listener.local_addr()?;
        let drainer = std::thread::spawn(move || -> std::io::Result<u64> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => return Ok(total),
                    k => total += k as u64,
                }
            }
        });
        let mut out = TcpStream::connect(sink_addr).context("connecting to the sink")?;
        out.set_nodelay(true)?;
        let mut n = 0u64;
        let c0 = thread_cpu();
        let t0 = Instant::now();
        while t0.elapsed() < phase {
            let now = epoch.elapsed().as_nanos() as u64;
            while wbuf.len() < WRITE_BACKLOG {
                let seq = ledger.on_send(now, &window);
                P::encode_message(&conn, &mut wbuf, template.stamp(seq, now));
                n += 1;
            }
            P::end_turn(&conn, &mut wbuf, 0);
            out.write_all(&wbuf).context("writing to the sink")?;
            wbuf.clear();
        }
        let wall = t0.elapsed();
        let cpu = 100.0 * (thread_cpu() - c0).as_secs_f64() / wall.as_secs_f64();
        drop(out);
        let drained = drainer.join().map_err(|_| anyhow::anyhow!("the sink thread panicked"))?.context("draining")?;
        ensure!(
            drained == n * wire_bytes as u64,
            "the sink got {drained} bytes, {} were written",
            n * wire_bytes as u64
        );
        Ok((wire_bytes, encode_per_s, n as f64 / wall.as_secs_f64(), cpu))
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Outcome for SinkReport {
    fn table(&self) -> String {
        format!(
            "loadtest sink: {} framing, {} B payloads ({} B on the wire), {:.1} s per phase\n  \
             encode only   {:>12.0} msg/s\n  encode+write  {:>12.0} msg/s  ({:.0} MB/s, generator thread {:.0}% CPU)",
            self.target,
            self.message_bytes,
            self.wire_bytes,
            self.duration_s,
            self.encode_per_s,
            self.socket_per_s,
            self.socket_bytes_per_s / 1e6,
            self.socket_thread_cpu_pct
        )
    }

    fn latency(&self) -> Option<&Latency> {
        None
    }

    fn title(&self) -> String {
        format!("loadtest sink: {}", self.target)
    }
}
