//! `loadtest fanout`: one sender, K receivers of one room (Switchboard:
//! `room:<name>`, every receiver joins with a `join-room` frame), topic
//! (MQTT) or subject (NATS). Closed loop (`max`: W messages in flight,
//! counted against the receivers' mean progress and, for Switchboard, the
//! answers) or open loop (`rate`: messages/s sent, latency from the
//! intended send time). Reports deliveries/s (messages × K) and latency,
//! with loss counted exactly per receiver ([`FanoutCounts`]).
//!
//! Receivers are split over `--threads` event loops; thread 0 also owns the
//! sender. Threads share only a few atomics: first arrivals so far (the
//! closed loop's progress), how many sequence numbers the sender has taken,
//! and, after the window, how many messages it sent in it.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::accounting::{Arrival, FanoutCounts, PairCounts, PairLedger, ReceiverCounts, ReceiverLedger, Window};
use crate::cpu;
use crate::driver::{self, Conn, DueTimer, Mode, Plan, STALL_NS, Shared, WRITE_BACKLOG};
use crate::message::{Body, Layout, Template, room_name};
use crate::progress::Progress;
use crate::run::{
    self, Endpoint, ErrorCount, Latency, ModeKind, Outcome, TargetArgs, TrafficArgs, WithProtocol, run_identity,
    with_protocol,
};
use crate::target::{Inbound, Protocol, Role, Topology};

/// Flags of `loadtest fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Target and output.
    #[command(flatten)]
    pub common: TargetArgs,
    /// Receivers K (one connection each), all in one room/topic/subject.
    #[arg(long, default_value_t = 100)]
    pub receivers: usize,
    /// Message size, mode, timeline and threads (`--window` counts messages
    /// not yet received by the mean receiver, or not yet answered).
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// Most receivers one run opens.
pub const MAX_RECEIVERS: usize = 100_000;

/// The result of `loadtest fanout`.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Always `fanout`.
    pub workload: &'static str,
    /// The server kind.
    pub target: &'static str,
    /// The target URL.
    pub url: String,
    /// `max` or `rate`.
    pub mode: &'static str,
    /// Generator threads.
    pub threads: usize,
    /// Payload bytes per message (`--size`), for every target.
    pub message_bytes: usize,
    /// Switchboard: bytes of the envelope around the payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope_bytes: Option<usize>,
    /// `max`: in flight.
    pub in_flight: Option<u64>,
    /// `rate`: requested messages/s sent.
    pub rate: Option<f64>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Counts of the measured window.
    #[serde(flatten)]
    pub counts: FanoutCounts,
    /// Messages sent in the window per second.
    pub sent_per_s: f64,
    /// Deliveries of the window's messages per second of window.
    pub deliveries_per_s: f64,
    /// Latency from (intended) send to receipt, every delivery, µs.
    pub latency_us: Latency,
    /// The generator's CPU use over the window, percent of one core.
    pub cpu_generator_pct: Option<f64>,
    /// The busiest generator thread's CPU use over the window, percent of
    /// one core.
    pub cpu_generator_thread_max_pct: Option<f64>,
    /// True when a generator thread used at least 90% of a core over the
    /// window, or the process 90% of each core its threads can have: the
    /// figures may measure the generator rather than the server.
    /// (Closed loop with `--threads` > 1: the sender's thread polls without
    /// sleeping, so it is true by construction.)
    pub generator_limited: bool,
    /// The server's CPU use over the window (`--server-pid`).
    pub cpu_server_pct: Option<f64>,
    /// From the window's end until everything arrived (or the drain ended).
    pub drain_s: f64,
    /// True if every receiver got every message of the window in time.
    pub complete: bool,
    /// Connections lost during the run.
    pub disconnects: u64,
    /// Closed-loop stalls on dropped messages (a fresh window was granted).
    pub stalls: u64,
    /// Refusals by error code.
    pub errors: Vec<ErrorCount>,
    /// The first connection failure during the run.
    pub first_error: Option<String>,
}

/// What the threads of a fan-out run share besides [`Shared`].
#[derive(Debug, Default)]
struct FanShared {
    receivers: u64,
    /// First arrivals at all receivers so far (warm-up included).
    arrivals: AtomicU64,
    /// Sequence numbers the sender has taken.
    sent_upper: AtomicU64,
    /// Messages sent in the window (final once `sender_done`).
    sent_measured: AtomicU64,
    /// Messages of the window refused so far.
    rejected: AtomicU64,
    sender_done: AtomicBool,
}

/// Runs `loadtest fanout`.
pub fn run_fanout(args: &FanoutArgs) -> anyhow::Result<FanoutReport> {
    let ep = Endpoint::try_from(&args.common)?;
    ensure!((1..=MAX_RECEIVERS).contains(&args.receivers), "--receivers must be 1..={MAX_RECEIVERS}");
    let t = args.traffic.validate()?;
    let (rate, warmup, duration, drain) = (t.rate, t.warmup, t.duration, t.drain);
    run::raise_fd_limit(args.receivers as u64 + 64)?;
    let (nonce, created_at_ms) = run_identity()?;
    let body = ep.target.body();
    let template = Template::to_room(0, body, &room_name(nonce), t.size, nonce, created_at_ms)?;
    let layout = template.layout();
    let threads = t.threads.min(args.receivers);
    let shared = Shared {
        epoch: Instant::now(),
        barrier: Barrier::new(threads + 1),
        abort: AtomicBool::new(false),
        plan: OnceLock::new(),
        connect_timeout: ep.connect_timeout,
        size: t.size,
        body,
        nonce,
        created_at_ms,
        thread_clocks: Mutex::new(Vec::new()),
    };
    let fan = FanShared { receivers: args.receivers as u64, ..FanShared::default() };
    let mode = match t.mode {
        ModeKind::Max => Mode::Max { in_flight: t.window },
        ModeKind::Rate => Mode::Rate { interval_ns: (1e9 / rate).max(1.0) as u64, total_pairs: 1 },
    };
    let run = Run { args, shared: &shared, fan: &fan, template, layout, threads, mode, warmup, duration, drain };
    let (counts, latency, merged, cpu_gen, cpu_srv, window) =
        with_protocol(&args.common, &ep, nonce, layout, Topology::Fanout, run)??;
    let secs = window.secs();
    Ok(FanoutReport {
        workload: "fanout",
        target: ep.target.name(),
        url: ep.url,
        mode: match t.mode {
            ModeKind::Max => "max",
            ModeKind::Rate => "rate",
        },
        threads,
        message_bytes: layout.payload_len,
        envelope_bytes: (body == Body::Envelope).then_some(layout.len),
        in_flight: (t.mode == ModeKind::Max).then_some(t.window),
        rate: (t.mode == ModeKind::Rate).then_some(rate),
        duration_s: secs,
        warmup_s: warmup.as_secs_f64(),
        counts,
        sent_per_s: counts.sent as f64 / secs,
        deliveries_per_s: counts.delivered as f64 / secs,
        latency_us: Latency::of(&latency),
        cpu_generator_pct: cpu_gen.process_pct,
        cpu_generator_thread_max_pct: cpu_gen.busiest_thread_pct,
        generator_limited: cpu_gen.limited(),
        cpu_server_pct: cpu_srv,
        drain_s: merged.finished_ns.saturating_sub(window.end_ns) as f64 / 1e9,
        complete: merged.complete,
        disconnects: merged.disconnects,
        stalls: merged.stalls,
        errors: merged.error_codes.iter().map(|&(code, count)| ErrorCount { code, count }).collect(),
        first_error: merged.first_error,
    })
}

struct Run<'a> {
    args: &'a FanoutArgs,
    shared: &'a Shared,
    fan: &'a FanShared,
    template: Template,
    layout: Layout,
    threads: usize,
    mode: Mode,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
}

type RunResult = (FanoutCounts, Histogram<u64>, ThreadReport, cpu::GeneratorCpu, Option<f64>, Window);

/// What one thread measured.
#[derive(Debug, Default)]
struct ThreadReport {
    sender: Option<PairCounts>,
    receivers: Vec<ReceiverCounts>,
    latency: Option<Histogram<u64>>,
    disconnects: u64,
    stalls: u64,
    first_error: Option<String>,
    error_codes: Vec<(u16, u64)>,
    finished_ns: u64,
    complete: bool,
}

impl WithProtocol for Run<'_> {
    type Out = anyhow::Result<RunResult>;

    fn run<P: Protocol>(self, proto: &P) -> Self::Out {
        let Run { args, shared, fan, template, layout, threads, mode, warmup, duration, drain } = self;
        let k = args.receivers;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    let range = (k * i / threads)..(k * (i + 1) / threads);
                    let template = (i == 0).then(|| template.clone());
                    std::thread::Builder::new()
                        .name(format!("loadtest-{i}"))
                        .spawn_scoped(s, move || {
                            shared.register_thread();
                            drive(proto, range, template, &layout, shared, fan, threads > 1)
                        })
                        .expect("spawning a generator thread")
                })
                .collect();
            shared.barrier.wait();
            let connected = !shared.abort.load(Ordering::SeqCst);
            let send_start_ns = shared.now_ns() + 20_000_000;
            let start_ns = send_start_ns + warmup.as_nanos() as u64;
            let window = Window { start_ns, end_ns: start_ns + duration.as_nanos() as u64 };
            let plan = Plan { mode, send_start_ns, window, drain_end_ns: window.end_ns + drain.as_nanos() as u64 };
            shared.plan.set(plan).expect("the plan is set once");
            shared.barrier.wait();
            let (mut cpu_gen, mut cpu_srv) = (cpu::GeneratorCpu::default(), None);
            if connected {
                let bar = Progress::time("fanout", send_start_ns, window.end_ns);
                let clocks = shared.thread_clocks();
                run::sleep_until(shared, window.start_ns, &bar);
                let g0 = cpu::Sample::take(&clocks);
                let t0 = Instant::now();
                let pid = args.common.server_pid;
                let s0 = pid.and_then(|p| cpu::cpu_time(Some(p)));
                run::sleep_until(shared, window.end_ns, &bar);
                let wall = t0.elapsed();
                let s1 = pid.and_then(|p| cpu::cpu_time(Some(p)));
                cpu_gen = cpu::GeneratorCpu::between(&g0, &cpu::Sample::take(&clocks), threads);
                bar.finish();
                cpu_srv = cpu::percent(s0, s1, wall);
            }
            let mut results = Vec::new();
            for h in handles {
                results.push(h.join().map_err(|_| anyhow!("a generator thread panicked"))?);
            }
            if let Some(e) =
                results.iter().filter_map(|r| r.as_ref().err()).find(|e| !e.to_string().contains("another"))
            {
                bail!("{e:#}");
            }
            let reports = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
            let mut merged = ThreadReport { complete: true, ..ThreadReport::default() };
            let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds");
            let mut sender = PairCounts::default();
            for r in reports {
                if let Some(c) = r.sender {
                    sender = c;
                }
                merged.receivers.extend(r.receivers);
                if let Some(h) = &r.latency {
                    latency.add(h).context("merging histograms")?;
                }
                merged.disconnects += r.disconnects;
                merged.stalls += r.stalls;
                merged.finished_ns = merged.finished_ns.max(r.finished_ns);
                merged.complete &= r.complete;
                merged.first_error = merged.first_error.or(r.first_error);
                for (code, count) in r.error_codes {
                    match merged.error_codes.iter_mut().find(|(c, _)| *c == code) {
                        Some((_, n)) => *n += count,
                        None => merged.error_codes.push((code, count)),
                    }
                }
            }
            let counts = FanoutCounts::new(&sender, merged.receivers.iter().copied());
            Ok((counts, latency, merged, cpu_gen, cpu_srv, window))
        })
    }
}

/// The sender's state (thread 0 only).
struct SenderSlot<C> {
    conn: Conn<C>,
    ledger: PairLedger,
    template: Template,
    next_due_ns: u64,
    credit: u64,
    last_progress_ns: u64,
    last_arrivals: u64,
    done: bool,
}

struct ReceiverSlot<C> {
    conn: Conn<C>,
    ledger: ReceiverLedger,
}

/// Token of the sender; receiver `k` (local index) is `Token(k + 1)`.
const SENDER: Token = Token(0);

/// One thread: its receivers `range`, and the sender if `template` is
/// given. `busy`: other threads read the deliveries, so a closed-loop
/// sender polls without sleeping to see their progress at once.
fn drive<P: Protocol>(
    proto: &P,
    range: Range<usize>,
    template: Option<Template>,
    layout: &Layout,
    shared: &Shared,
    fan: &FanShared,
    busy: bool,
) -> anyhow::Result<ThreadReport> {
    let setup = (|| -> anyhow::Result<_> {
        let mut receivers = Vec::with_capacity(range.len());
        for r in range.clone() {
            let conn = driver::open(proto, r, Role::Receiver, shared.connect_timeout)?;
            receivers.push(ReceiverSlot { conn, ledger: ReceiverLedger::new() });
        }
        let sender = match template {
            Some(template) => Some(SenderSlot {
                conn: driver::open(proto, 0, Role::Sender, shared.connect_timeout)?,
                ledger: PairLedger::new(),
                template,
                next_due_ns: 0,
                credit: 0,
                last_progress_ns: 0,
                last_arrivals: 0,
                done: false,
            }),
            None => None,
        };
        Ok((receivers, sender))
    })();
    if setup.is_err() {
        shared.abort.store(true, Ordering::SeqCst);
    }
    shared.barrier.wait();
    shared.barrier.wait();
    let (mut receivers, mut sender) = setup?;
    if shared.abort.load(Ordering::SeqCst) {
        return Err(anyhow!("another thread failed to connect"));
    }
    let plan = *shared.plan.get().context("the coordinator set no plan")?;
    let mut poll = Poll::new().context("creating the poll")?;
    let rw = Interest::READABLE | Interest::WRITABLE;
    if let Some(s) = &mut sender {
        poll.registry().register(&mut s.conn.stream, SENDER, rw)?;
        s.next_due_ns = plan.send_start_ns;
        s.last_progress_ns = plan.send_start_ns;
    }
    for (k, r) in receivers.iter_mut().enumerate() {
        poll.registry().register(&mut r.conn.stream, Token(k + 1), rw)?;
    }
    let mut latency = Histogram::new_with_bounds(1, 3_600_000_000_000, 3).context("histogram bounds")?;
    let mut report = ThreadReport::default();
    let mut events = Events::with_capacity(1024);
    let mut timer = match (plan.mode, &sender) {
        (Mode::Rate { .. }, Some(_)) => {
            Some(DueTimer::new(poll.registry(), shared).context("creating the send timer")?)
        }
        _ => None,
    };
    shared.sleep_until(plan.send_start_ns);
    loop {
        let now = shared.now_ns();
        if now >= plan.drain_end_ns {
            break;
        }
        let sending = now < plan.window.end_ns;
        if let Some(s) = &mut sender {
            if sending {
                fill::<P>(s, &plan, now, fan, &mut report);
            } else if !s.done {
                s.done = true;
                fan.sent_measured.store(s.ledger.counts().sent, Ordering::SeqCst);
                fan.sender_done.store(true, Ordering::SeqCst);
            }
            fan.rejected.store(s.ledger.counts().rejected, Ordering::Relaxed);
        }
        if !sending && fan.sender_done.load(Ordering::SeqCst) {
            let due = fan.sent_measured.load(Ordering::SeqCst).saturating_sub(fan.rejected.load(Ordering::Relaxed));
            let received_all = receivers.iter().all(|r| r.ledger.counts().delivered >= due || !r.conn.alive);
            let answered_all =
                sender.as_ref().is_none_or(|s| !P::ANSWERS || s.ledger.unanswered() == 0 || !s.conn.alive);
            if received_all && answered_all {
                report.complete = receivers.iter().all(|r| r.ledger.counts().delivered >= due);
                break;
            }
        }
        let wait = match (sending, plan.mode) {
            (true, Mode::Max { .. }) if busy && sender.is_some() => Duration::ZERO,
            _ => {
                let next_due = sender.as_ref().filter(|s| s.conn.can_send()).map_or(u64::MAX, |s| s.next_due_ns);
                plan.prepare_wait(timer.as_mut(), now, next_due).context("arming the send timer")?
            }
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("polling"),
        }
        for ev in events.iter() {
            if ev.token() == DueTimer::TOKEN {
                if let Some(timer) = &mut timer {
                    timer.fired();
                }
                continue;
            }
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let (conn, result) = if ev.token() == SENDER {
                let Some(s) = &mut sender else { continue };
                if !s.conn.alive {
                    continue;
                }
                let ledger = &mut s.ledger;
                let mut progressed = false;
                let codes = &mut report.error_codes;
                let r = if readable {
                    read_all::<P>(&mut s.conn, &mut |i| match i {
                        Inbound::Answer { id, answer, code } => {
                            ledger.on_answer(id.as_ref().map(Layout::seq_of_id), answer);
                            progressed = true;
                            if let Some(code) = code {
                                match codes.iter_mut().find(|(c, _)| *c == code) {
                                    Some((_, n)) => *n += 1,
                                    None => codes.push((code, 1)),
                                }
                            }
                        }
                        Inbound::Message(_) => ledger.on_unknown(),
                    })
                } else {
                    Ok(())
                };
                if progressed {
                    s.last_progress_ns = shared.now_ns();
                }
                (&mut s.conn, r)
            } else {
                let Some(r) = receivers.get_mut(ev.token().0 - 1) else { continue };
                if !r.conn.alive {
                    continue;
                }
                let ledger = &mut r.ledger;
                let before = ledger.counts().received_total;
                let res = if readable {
                    read_all::<P>(&mut r.conn, &mut |i| {
                        let now = shared.now_ns();
                        match i {
                            Inbound::Message(msg) => match layout.read_stamp(msg) {
                                Some(st) if st.pair == 0 => {
                                    // Loaded per message: the sender may
                                    // have sent more since the read began.
                                    let upper = fan.sent_upper.load(Ordering::Acquire);
                                    if let Arrival::Measured { latency_ns } =
                                        ledger.on_receive(st.seq, st.sent_ns, now, &plan.window, upper)
                                    {
                                        latency.saturating_record(latency_ns.max(1));
                                    }
                                }
                                _ => ledger.on_unknown(),
                            },
                            Inbound::Answer { .. } => ledger.on_unknown(),
                        }
                    })
                } else {
                    Ok(())
                };
                let fresh = ledger.counts().received_total - before;
                if fresh > 0 {
                    fan.arrivals.fetch_add(fresh, Ordering::Relaxed);
                }
                (&mut r.conn, res)
            };
            let result = result.and_then(|()| driver::flush(conn).map_err(|e| format!("write: {e}")));
            if let Err(e) = result {
                conn.alive = false;
                let _ = poll.registry().deregister(&mut conn.stream);
                report.disconnects += 1;
                report.first_error.get_or_insert(e);
            }
        }
    }
    report.sender = sender.as_ref().map(|s| s.ledger.counts());
    report.receivers = receivers.iter().map(|r| r.ledger.counts()).collect();
    report.latency = Some(latency);
    report.finished_ns = shared.now_ns();
    Ok(report)
}

/// Appends what the sender may send now and writes it.
fn fill<P: Protocol>(s: &mut SenderSlot<P::Conn>, plan: &Plan, now: u64, fan: &FanShared, report: &mut ThreadReport) {
    let conn = &mut s.conn;
    if !conn.alive {
        return;
    }
    if conn.wpos > 0 && conn.wbuf.len() >= WRITE_BACKLOG {
        conn.wbuf.drain(..conn.wpos);
        conn.wpos = 0;
    }
    let before = conn.wbuf.len();
    match plan.mode {
        Mode::Max { in_flight } => {
            let arrivals = fan.arrivals.load(Ordering::Relaxed);
            if arrivals != s.last_arrivals {
                s.last_arrivals = arrivals;
                s.last_progress_ns = now;
            }
            let mean_received = arrivals / fan.receivers.max(1);
            let in_flight_now = |l: &PairLedger, credit: u64| {
                let behind = l.counts().sent_total.saturating_sub(mean_received).saturating_sub(credit);
                if P::ANSWERS { behind.max(l.unanswered()) } else { behind }
            };
            if in_flight_now(&s.ledger, s.credit) >= in_flight && now.saturating_sub(s.last_progress_ns) > STALL_NS {
                // Receipts may never come (QoS 0, core NATS drop): grant a
                // fresh window; answers always come.
                s.credit = s.ledger.counts().sent_total.saturating_sub(mean_received);
                report.stalls += 1;
                s.last_progress_ns = now;
            }
            while in_flight_now(&s.ledger, s.credit) < in_flight && conn.wbuf.len() < WRITE_BACKLOG {
                let seq = s.ledger.on_send(now, &plan.window);
                P::encode_message(&conn.proto, &mut conn.wbuf, s.template.stamp(seq, now));
            }
        }
        Mode::Rate { interval_ns, .. } => {
            let SenderSlot { ledger, template, next_due_ns, .. } = s;
            plan.send_due(interval_ns, next_due_ns, now, &mut conn.wbuf, |due, wbuf| {
                let seq = ledger.on_send(due, &plan.window);
                P::encode_message(&conn.proto, wbuf, template.stamp(seq, due));
            });
        }
    }
    P::end_turn(&conn.proto, &mut conn.wbuf, before);
    if conn.wbuf.len() > before {
        // Receivers must know a sequence number before its message can
        // arrive.
        fan.sent_upper.store(s.ledger.counts().sent_total, Ordering::Release);
        if let Err(e) = driver::flush(conn) {
            conn.alive = false;
            report.disconnects += 1;
            report.first_error.get_or_insert(format!("sender write: {e}"));
        }
    }
}

/// Reads until the socket would block, decoding as it goes.
fn read_all<P: Protocol>(conn: &mut Conn<P::Conn>, on: &mut impl FnMut(Inbound<'_>)) -> Result<(), String> {
    loop {
        if conn.rlen == conn.rbuf.len() {
            let len = conn.rbuf.len() * 2;
            conn.rbuf.resize(len, 0);
        }
        match conn.stream.read(&mut conn.rbuf[conn.rlen..]) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => conn.rlen += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
        let Conn { proto, rbuf, rlen, wbuf, .. } = conn;
        let used = P::decode(proto, &rbuf[..*rlen], wbuf, on).map_err(|e| e.to_string())?;
        rbuf.copy_within(used..*rlen, 0);
        *rlen -= used;
    }
}

impl Outcome for FanoutReport {
    fn table(&self) -> String {
        use std::fmt::Write;
        let c = &self.counts;
        let pace = match (self.in_flight, self.rate) {
            (Some(w), _) => format!("max, {w} in flight"),
            (_, Some(r)) => format!("rate {r} msg/s"),
            _ => String::new(),
        };
        let pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.0}%"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadtest fanout: {} {} | 1 -> {} receivers, {}, {pace}, {} thread(s), {:.1} s (+{:.1} s warm-up)",
            self.target,
            self.url,
            c.receivers,
            run::payload_text(self.message_bytes, self.envelope_bytes),
            self.threads,
            self.duration_s,
            self.warmup_s
        );
        let _ = writeln!(s, "  sent          {:>12}  {:>12.0}/s", c.sent, self.sent_per_s);
        let _ = writeln!(
            s,
            "  deliveries    {:>12}  {:>12.0}/s  (expected {})",
            c.delivered, self.deliveries_per_s, c.expected
        );
        let _ = writeln!(
            s,
            "  lost {} ({} receivers, at most {} each)  duplicates {}  out-of-order {}  rejected {}  unknown {}",
            c.lost, c.receivers_with_loss, c.max_lost_per_receiver, c.duplicates, c.out_of_order, c.rejected, c.unknown
        );
        let _ = writeln!(s, "  latency µs    {}", self.latency_us.line());
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

    fn latency(&self) -> Option<&Latency> {
        Some(&self.latency_us)
    }

    fn warning(&self) -> Option<String> {
        if !self.generator_limited {
            return None;
        }
        let w = cpu::limit_warning(self.cpu_generator_thread_max_pct, self.cpu_generator_pct);
        Some(if self.in_flight.is_some() && self.threads > 1 {
            format!("{w} (closed loop with several threads: the sender's thread polls without sleeping)")
        } else {
            w
        })
    }

    fn title(&self) -> String {
        format!("loadtest fanout: {} (1 -> {})", self.target, self.counts.receivers)
    }
}
