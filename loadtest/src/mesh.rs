//! `loadtest mesh`: N users, one connection each; every user sends to
//! uniformly random other users, chosen by a seeded xorshift so a run is
//! reproducible (`--seed`).
//!
//! Reuses the `pairs` machinery: the [`Protocol`] targets (a user's
//! connection is a receiver that also sends: Switchboard user
//! `lt-r-NNNNNN`, MQTT topic / NATS subject of pair `NNNNNN`), one
//! [`Template`] per user whose destination is patched in place per message
//! ([`Template::retarget`], [`Protocol::retarget`]), the [`PairLedger`] for
//! each user's sends and answers, and the run timeline and report of
//! [`crate::run`]. Only the event loop is its own: each user is sender and
//! receiver at once, and a message's receiver may live on another thread.
//!
//! Accounting: sequence numbers are per sender; receivers record
//! (sender, seq) in a [`MeshLedger`] (duplicates per sender, order per
//! sender→receiver stream). Lost = sent in the window − refused −
//! delivered, summed over the run. The threads share per-sender atomics:
//! how many sequence numbers each sender took (to tell unknown ones) and
//! how many of its messages arrived (the closed loop's receipts for MQTT and
//! NATS), plus the run's expected and delivered totals (the drain).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, anyhow, ensure};
use clap::Args;
use mio::{Events, Interest, Poll, Token};

use crate::accounting::{Arrival, MeshLedger, PairCounts, PairLedger};
use crate::driver::{
    Conn, DueTimer, Mode, Plan, STALL_NS, Shared, Stats, ThreadReport, WRITE_BACKLOG, flush, open, pump,
};
use crate::message::{Body, Layout, Template};
use crate::run::{
    MAX_RUN_PAIRS, Report, RunConfig, TargetArgs, TrafficArgs, WithProtocol, execute, raise_fd_limit, run_identity,
    with_protocol,
};
use crate::target::{Inbound, Protocol, Role, Topology};

/// Flags of `loadtest mesh`.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// Target and output.
    #[command(flatten)]
    pub common: TargetArgs,
    /// Number of users (one connection each), at least 2.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Seed of the destination choice (the same seed, the same sequence of
    /// destinations per user).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Message size, mode, timeline and threads.
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// The destinations of one sender: uniformly random other users, from a
/// xorshift64* seeded by the run's seed and the sender.
#[derive(Debug, Clone)]
pub struct Destinations {
    state: u64,
    users: u64,
    me: u64,
}

impl Destinations {
    /// Sender `me` of `users` (at least 2) users, seeded with `seed`.
    pub fn new(seed: u64, me: usize, users: usize) -> Self {
        assert!(users >= 2 && me < users, "a mesh needs 2 users and a sender among them");
        // splitmix64 of (seed, me): distinct, well-mixed, non-zero states.
        let mut z = seed ^ (me as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self { state: z.max(1), users: users as u64, me: me as u64 }
    }

    /// The next destination: never `me`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> usize {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        // One of the users - 1 others (the bias of `%` is < 2^-12 here).
        let d = r % (self.users - 1);
        (if d >= self.me { d + 1 } else { d }) as usize
    }
}

/// What the threads of a mesh run share besides [`Shared`].
#[derive(Debug)]
struct MeshShared {
    users: usize,
    seed: u64,
    /// Per sender: sequence numbers taken (published before the write).
    sent_upper: Vec<AtomicU64>,
    /// Per sender: its messages that arrived (first arrivals).
    receipts: Vec<AtomicU64>,
    /// Messages of the window sent and not refused.
    expected: AtomicU64,
    /// Messages of the window delivered.
    delivered: AtomicU64,
}

/// After the window, how long a thread waits before trusting `expected`
/// (another thread may still be finishing its last send).
const SETTLE_NS: u64 = 20_000_000;

/// Runs `loadtest mesh`.
pub fn run_mesh(args: &MeshArgs) -> anyhow::Result<Report> {
    ensure!((2..=MAX_RUN_PAIRS).contains(&args.users), "--users must be 2..={MAX_RUN_PAIRS}");
    let cfg = RunConfig::new(&args.common, args.users, &args.traffic)?;
    raise_fd_limit(cfg.pairs as u64 + 64)?;
    let (nonce, created_at_ms) = run_identity()?;
    let body = cfg.ep.target.body();
    let layout = Template::mesh(0, body, cfg.traffic.size, nonce, created_at_ms)?.layout();
    let shared = Shared {
        epoch: Instant::now(),
        barrier: Barrier::new(cfg.traffic.threads.clamp(1, cfg.pairs) + 1),
        abort: AtomicBool::new(false),
        plan: OnceLock::new(),
        connect_timeout: cfg.ep.connect_timeout,
        size: cfg.traffic.size,
        body,
        nonce,
        created_at_ms,
        thread_clocks: Mutex::new(Vec::new()),
    };
    let mesh = MeshShared {
        users: cfg.pairs,
        seed: args.seed,
        sent_upper: (0..cfg.pairs).map(|_| AtomicU64::new(0)).collect(),
        receipts: (0..cfg.pairs).map(|_| AtomicU64::new(0)).collect(),
        expected: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    };
    struct Mesh<'a>(&'a RunConfig, &'a Shared, &'a MeshShared);
    impl WithProtocol for Mesh<'_> {
        type Out = anyhow::Result<Report>;
        fn run<P: Protocol>(self, proto: &P) -> Self::Out {
            let mesh = self.2;
            execute(proto, self.0, self.1, "mesh", |p: &P, users, shared| drive(p, users, shared, mesh))
        }
    }
    let mut report = with_protocol(&args.common, &cfg.ep, nonce, layout, Topology::Pairs, Mesh(&cfg, &shared, &mesh))??;
    report.envelope_bytes = (body == Body::Envelope).then_some(layout.len);
    report.seed = Some(args.seed);
    Ok(report)
}

struct User<C> {
    ledger: PairLedger,
    template: Template,
    dests: Destinations,
    sent: u64,
    next_due_ns: u64,
    credit: u64,
    receipts_seen: u64,
    last_progress_ns: u64,
    conn: Conn<C>,
}

/// Runs one thread's share `users` of a mesh run.
fn drive<P: Protocol>(
    proto: &P,
    users: Range<usize>,
    shared: &Shared,
    mesh: &MeshShared,
) -> anyhow::Result<ThreadReport> {
    let setup = connect_all(proto, users.clone(), shared, mesh);
    if setup.is_err() {
        shared.abort.store(true, Ordering::SeqCst);
    }
    shared.barrier.wait();
    shared.barrier.wait();
    let (mut slots, layout) = setup?;
    if shared.abort.load(Ordering::SeqCst) {
        return Err(anyhow!("another thread failed to connect"));
    }
    let plan = *shared.plan.get().context("the coordinator set no plan")?;
    let mut poll = Poll::new().context("creating the poll")?;
    for (k, slot) in slots.iter_mut().enumerate() {
        poll.registry().register(&mut slot.conn.stream, Token(k), Interest::READABLE | Interest::WRITABLE)?;
        slot.next_due_ns = plan.first_due(users.start + k);
        slot.last_progress_ns = plan.send_start_ns;
    }
    let mut stats = Stats::new()?;
    let mut ledger = MeshLedger::new(mesh.users, slots.len());
    let mut events = Events::with_capacity(1024);
    let mut timer = match plan.mode {
        Mode::Rate { .. } => Some(DueTimer::new(poll.registry(), shared).context("creating the send timer")?),
        Mode::Max { .. } => None,
    };
    shared.sleep_until(plan.send_start_ns);
    let mut complete = false;
    loop {
        let now = shared.now_ns();
        if now >= plan.drain_end_ns {
            break;
        }
        let sending = now < plan.window.end_ns;
        let mut next_due = u64::MAX;
        if sending {
            for (k, slot) in slots.iter_mut().enumerate() {
                fill::<P>(slot, users.start + k, &plan, now, &mut stats, mesh);
                if slot.conn.can_send() {
                    next_due = next_due.min(slot.next_due_ns);
                }
            }
        } else if now >= plan.window.end_ns + SETTLE_NS {
            if mesh.delivered.load(Ordering::SeqCst) >= mesh.expected.load(Ordering::SeqCst) {
                complete = true;
                break;
            }
            if slots.iter().all(|s| !s.conn.alive) {
                break;
            }
        }
        let wait = plan.prepare_wait(timer.as_mut(), now, next_due).context("arming the send timer")?;
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("polling"),
        }
        for ev in events.iter() {
            if ev.token() == DueTimer::TOKEN {
                if let Some(timer) = &mut timer {
                    timer.fired();
                }
                continue;
            }
            let Token(k) = ev.token();
            let me = users.start + k;
            let slot = &mut slots[k];
            if !slot.conn.alive {
                continue;
            }
            let result = if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                on_readable::<P>(slot, k, me, &layout, &plan, &mut ledger, shared, &mut stats, mesh)
            } else {
                Ok(())
            }
            .and_then(|()| flush(&mut slot.conn).map_err(|e| format!("write: {e}")));
            if let Err(e) = result {
                slot.conn.alive = false;
                let _ = poll.registry().deregister(&mut slot.conn.stream);
                stats.failed(|| format!("user {me}: {e}"));
            }
        }
    }
    // Senders' side from the ledgers, receivers' side from the mesh ledger;
    // the loss needs every thread's counts (see `run::execute`).
    let mut counts = PairCounts::default();
    for slot in &slots {
        counts.add(&slot.ledger.counts());
    }
    let r = ledger.counts();
    counts.delivered = r.delivered;
    counts.duplicates = r.duplicates;
    counts.out_of_order = r.out_of_order;
    counts.unknown += r.unknown;
    counts.received_total = r.received_total;
    counts.lost = 0;
    Ok(ThreadReport {
        counts,
        latency: stats.latency,
        disconnects: stats.disconnects,
        stalls: stats.stalls,
        first_error: stats.first_error,
        error_codes: stats.error_codes,
        finished_ns: shared.now_ns(),
        complete,
    })
}

/// Builds every user's template and connects (and subscribes) it.
fn connect_all<P: Protocol>(
    proto: &P,
    users: Range<usize>,
    shared: &Shared,
    mesh: &MeshShared,
) -> anyhow::Result<(Vec<User<P::Conn>>, Layout)> {
    let mut slots = Vec::with_capacity(users.len());
    let mut layout = None;
    for user in users {
        let template = Template::mesh(user, shared.body, shared.size, shared.nonce, shared.created_at_ms)?;
        layout.get_or_insert(template.layout());
        let conn = open(proto, user, Role::Receiver, shared.connect_timeout)?;
        slots.push(User {
            ledger: PairLedger::new(),
            template,
            dests: Destinations::new(mesh.seed, user, mesh.users),
            sent: 0,
            next_due_ns: 0,
            credit: 0,
            receipts_seen: 0,
            last_progress_ns: 0,
            conn,
        });
    }
    let layout = layout.context("a thread without users")?;
    Ok((slots, layout))
}

/// Appends what user `me` may send now and writes it.
fn fill<P: Protocol>(slot: &mut User<P::Conn>, me: usize, plan: &Plan, now: u64, stats: &mut Stats, mesh: &MeshShared) {
    if !slot.conn.alive {
        return;
    }
    {
        let conn = &mut slot.conn;
        if conn.wpos > 0 && conn.wbuf.len() >= WRITE_BACKLOG {
            conn.wbuf.drain(..conn.wpos);
            conn.wpos = 0;
        }
    }
    let before = slot.conn.wbuf.len();
    let in_window_before = slot.ledger.counts().sent;
    let send = |slot: &mut User<P::Conn>, t: u64| {
        let dest = slot.dests.next();
        slot.template.retarget(dest);
        P::retarget(&mut slot.conn.proto, dest);
        let seq = slot.ledger.on_send(t, &plan.window);
        slot.sent += 1;
        P::encode_message(&slot.conn.proto, &mut slot.conn.wbuf, slot.template.stamp(seq, t));
    };
    match plan.mode {
        Mode::Max { in_flight } => {
            let receipts = mesh.receipts[me].load(Ordering::Relaxed);
            if receipts != slot.receipts_seen {
                slot.receipts_seen = receipts;
                slot.last_progress_ns = now;
            }
            let in_flight_now = |s: &User<P::Conn>| {
                if P::ANSWERS { s.ledger.unanswered() } else { s.sent.saturating_sub(receipts + s.credit) }
            };
            if in_flight_now(slot) >= in_flight && now.saturating_sub(slot.last_progress_ns) > STALL_NS {
                if !P::ANSWERS {
                    slot.credit = slot.sent.saturating_sub(receipts);
                    stats.stalls += 1;
                }
                slot.last_progress_ns = now;
            }
            while in_flight_now(slot) < in_flight && slot.conn.wbuf.len() < WRITE_BACKLOG {
                send(slot, now);
            }
        }
        Mode::Rate { interval_ns, .. } => {
            while slot.next_due_ns <= now
                && slot.next_due_ns < plan.window.end_ns
                && slot.conn.wbuf.len() < WRITE_BACKLOG
            {
                let due = slot.next_due_ns;
                send(slot, due);
                slot.next_due_ns += interval_ns;
            }
        }
    }
    P::end_turn(&slot.conn.proto, &mut slot.conn.wbuf, before);
    if slot.conn.wbuf.len() > before {
        // Published before the bytes leave, so no receiver sees a sequence
        // number beyond it.
        mesh.sent_upper[me].store(slot.sent, Ordering::SeqCst);
        mesh.expected.fetch_add(slot.ledger.counts().sent - in_window_before, Ordering::SeqCst);
        if let Err(e) = flush(&mut slot.conn) {
            slot.conn.alive = false;
            stats.failed(|| format!("user {me} write: {e}"));
        }
    }
}

/// Reads user `me`'s connection (local index `k`): messages for it and
/// answers to its sends.
#[allow(clippy::too_many_arguments)]
fn on_readable<P: Protocol>(
    slot: &mut User<P::Conn>,
    k: usize,
    me: usize,
    layout: &Layout,
    plan: &Plan,
    ledger: &mut MeshLedger,
    shared: &Shared,
    stats: &mut Stats,
    mesh: &MeshShared,
) -> Result<(), String> {
    let User { conn, ledger: sends, last_progress_ns, .. } = slot;
    pump::<P>(conn, shared, &mut |inbound, now| match inbound {
        Inbound::Message(msg) => match layout.read_stamp(msg) {
            Some(stamp) if (stamp.pair as usize) < mesh.users && stamp.pair as usize != me => {
                let sender = stamp.pair as usize;
                let upper = mesh.sent_upper[sender].load(Ordering::SeqCst);
                match ledger.on_receive(k, stamp.pair, stamp.seq, stamp.sent_ns, now, &plan.window, upper) {
                    Arrival::Measured { latency_ns } => {
                        stats.latency.saturating_record(latency_ns.max(1));
                        mesh.delivered.fetch_add(1, Ordering::SeqCst);
                        mesh.receipts[sender].fetch_add(1, Ordering::Relaxed);
                    }
                    Arrival::Unmeasured => {
                        mesh.receipts[sender].fetch_add(1, Ordering::Relaxed);
                    }
                    Arrival::Duplicate | Arrival::Unknown => {}
                }
            }
            _ => ledger.on_unknown(),
        },
        Inbound::Answer { id, answer, code } => {
            let rejected = sends.counts().rejected;
            sends.on_answer(id.as_ref().map(Layout::seq_of_id), answer);
            if sends.counts().rejected > rejected {
                mesh.expected.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(code) = code {
                stats.refused(code);
            }
            *last_progress_ns = now;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_never_self_deterministic_and_roughly_uniform() {
        let users = 10;
        for me in [0, 4, 9] {
            let mut a = Destinations::new(42, me, users);
            let mut b = Destinations::new(42, me, users);
            let mut hist = vec![0u32; users];
            for _ in 0..100_000 {
                let d = a.next();
                assert_eq!(d, b.next(), "the same seed, the same sequence");
                hist[d] += 1;
            }
            assert_eq!(hist[me], 0, "never self");
            for (u, &n) in hist.iter().enumerate().filter(|&(u, _)| u != me) {
                // Expected 100_000 / 9 ≈ 11_111 each.
                assert!((10_500..11_700).contains(&n), "user {me} → {u}: {n} ({hist:?})");
            }
        }
        // Another seed, or another sender, gives another sequence.
        let seq = |seed, me| {
            let mut d = Destinations::new(seed, me, users);
            (0..32).map(|_| d.next()).collect::<Vec<_>>()
        };
        assert_ne!(seq(1, 0), seq(2, 0));
        assert_ne!(seq(1, 1), seq(1, 2));
        // Two users: always the other one.
        let mut two = Destinations::new(7, 1, 2);
        assert!((0..100).all(|_| two.next() == 0));
    }

    #[test]
    fn flags_are_validated() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["loadtest", "mesh", "--target", "nats"];
            argv.extend_from_slice(extra);
            match crate::run::Cli::try_parse_from(argv).unwrap().command {
                crate::run::Command::Mesh(a) => a,
                other => panic!("{other:?}"),
            }
        };
        let a = parse(&["--users", "5", "--seed", "9"]);
        assert_eq!((a.users, a.seed), (5, 9));
        assert!(run_mesh(&parse(&["--users", "1"])).unwrap_err().to_string().contains("--users"));
    }
}
