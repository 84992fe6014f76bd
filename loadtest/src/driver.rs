//! The generator's event loop. Each thread owns a contiguous share of the
//! pairs, both ends of each, with non-blocking sockets on its own `mio`
//! poll (epoll): it connects them, meets the other threads at a barrier,
//! then sends, reads and accounts until the drain ends.
//!
//! Hot path: messages are stamped in each sender's [`Template`] and encoded
//! into the connection's write buffer, up to the in-flight window or
//! everything that is due, ended as one turn ([`Protocol::end_turn`]), then
//! written with one `write`; reads fill a fixed buffer and are decoded in
//! place. Nothing is allocated per message (the receive bit set and the
//! histogram grow geometrically). In rate mode a thread sleeps in its poll
//! until a read or its next due send, which a timerfd (`DueTimer`) marks to
//! the nanosecond: it neither spins nor sends late.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::accounting::{Arrival, PairCounts, PairLedger, Window};
use crate::cpu::ThreadClock;
use crate::message::{Body, Layout, Template};
use crate::target::{Inbound, Protocol, Role};

/// How senders pace themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Closed loop: at most this many messages in flight per sender.
    Max {
        /// The in-flight window `W`.
        in_flight: u64,
    },
    /// Open loop: one message per pair every `interval_ns`, stamped with its
    /// intended send time.
    Rate {
        /// Interval between two messages of one pair.
        interval_ns: u64,
        /// All pairs of the run (their phases are spread over the interval).
        total_pairs: usize,
    },
}

/// The run's schedule, in nanoseconds since the shared epoch; fixed once
/// every thread has connected.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How senders pace themselves.
    pub mode: Mode,
    /// When sending (the warm-up) starts.
    pub send_start_ns: u64,
    /// The measured window; sending stops at its end.
    pub window: Window,
    /// When the drain gives up waiting for messages still in flight.
    pub drain_end_ns: u64,
}

impl Plan {
    /// When sender `index` (of the run's [`Mode::Rate`] `total_pairs`)
    /// sends first: rate-mode senders are spread over one interval.
    pub(crate) fn first_due(&self, index: usize) -> u64 {
        match self.mode {
            Mode::Rate { interval_ns, total_pairs } => {
                self.send_start_ns + interval_ns * index as u64 / total_pairs.max(1) as u64
            }
            Mode::Max { .. } => self.send_start_ns,
        }
    }

    /// How long a thread may wait for socket events at `now`, when its
    /// earliest rate-mode send is due at `next_due`: until the window ends
    /// (closed loop), until the next send is due, or until the drain ends;
    /// at most [`MAX_SLEEP`]. epoll's timeout has whole milliseconds (mio
    /// rounds up), so a rate-mode thread also arms its [`DueTimer`] for
    /// [`Plan::wake_at`]: it sleeps until the send is due, neither late nor
    /// spinning.
    pub(crate) fn poll_wait(&self, now: u64, next_due: u64) -> Duration {
        let until = if now >= self.window.end_ns {
            self.drain_end_ns.saturating_sub(now)
        } else {
            match self.mode {
                Mode::Max { .. } => self.window.end_ns - now,
                Mode::Rate { .. } => next_due.min(self.window.end_ns).saturating_sub(now),
            }
        };
        Duration::from_nanos(until).min(MAX_SLEEP)
    }

    /// Rate mode: when the thread's [`DueTimer`] must wake it at `now` for
    /// its earliest send, due at `next_due`: if that is later than `now`
    /// and before the window's end.
    pub(crate) fn wake_at(&self, now: u64, next_due: u64) -> Option<u64> {
        match self.mode {
            Mode::Rate { .. } if now < next_due && next_due < self.window.end_ns => Some(next_due),
            _ => None,
        }
    }

    /// The poll timeout at `now` ([`Plan::poll_wait`]), with `timer` (rate
    /// mode) armed for the earliest send, due at `next_due`.
    pub(crate) fn prepare_wait(&self, timer: Option<&mut DueTimer>, now: u64, next_due: u64) -> io::Result<Duration> {
        if let (Some(timer), Some(due)) = (timer, self.wake_at(now, next_due)) {
            timer.arm(due)?;
        }
        Ok(self.poll_wait(now, next_due))
    }

    /// Rate mode: calls `send(due, wbuf)` for each send due by `now` and
    /// before the window's end, advancing `next_due` by `interval_ns`, while
    /// the write buffer `wbuf` is under [`WRITE_BACKLOG`].
    pub(crate) fn send_due(
        &self,
        interval_ns: u64,
        next_due: &mut u64,
        now: u64,
        wbuf: &mut Vec<u8>,
        mut send: impl FnMut(u64, &mut Vec<u8>),
    ) {
        while *next_due <= now && *next_due < self.window.end_ns && wbuf.len() < WRITE_BACKLOG {
            send(*next_due, wbuf);
            *next_due += interval_ns;
        }
    }
}

/// What the threads share: the epoch, the start barrier and the plan.
#[derive(Debug)]
pub struct Shared {
    /// Time zero of every stamp.
    pub epoch: Instant,
    /// Met twice by every thread and the coordinator: after connecting, and
    /// after the plan is set.
    pub barrier: Barrier,
    /// Set when a thread failed to connect: everyone stops.
    pub abort: AtomicBool,
    /// The schedule, set by the coordinator between the two barriers.
    pub plan: OnceLock<Plan>,
    /// Bound of each connection's handshake.
    pub connect_timeout: Duration,
    /// Payload bytes per message (`--size`).
    pub size: usize,
    /// What the target's messages are around the payload.
    pub body: Body,
    /// Distinguishes this run's envelope ids.
    pub nonce: u32,
    /// Envelopes' `created_at_ms`.
    pub created_at_ms: u64,
    /// The generator threads' CPU clocks, each registered before the first
    /// barrier ([`Shared::register_thread`]); read by the coordinator.
    pub thread_clocks: Mutex<Vec<ThreadClock>>,
}

impl Shared {
    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Registers the calling generator thread's CPU clock, so the
    /// coordinator can tell whether it was the limit of the run.
    pub fn register_thread(&self) {
        if let Some(clock) = ThreadClock::current() {
            // Set-up only; a poisoned lock still holds a usable list.
            self.thread_clocks.lock().unwrap_or_else(|e| e.into_inner()).push(clock);
        }
    }

    /// The registered generator threads' CPU clocks.
    pub fn thread_clocks(&self) -> Vec<ThreadClock> {
        self.thread_clocks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sleeps until `t_ns` on the shared clock.
    pub(crate) fn sleep_until(&self, t_ns: u64) {
        while self.now_ns() < t_ns {
            std::thread::sleep(Duration::from_nanos(t_ns.saturating_sub(self.now_ns())).min(MAX_SLEEP));
        }
    }
}

/// Wakes a rate-mode thread when its next send is due: a `timerfd` on
/// the thread's poll, armed for an absolute time on the shared clock with
/// nanosecond resolution. epoll's own timeout has whole milliseconds, so
/// without it a thread either wakes up to a millisecond late (and the
/// lateness counts as latency, stamps being the intended send time) or
/// spins, using a whole core at any rate.
#[derive(Debug)]
pub(crate) struct DueTimer {
    fd: OwnedFd,
    /// `CLOCK_MONOTONIC` at the shared epoch (never earlier), nanoseconds.
    epoch_mono_ns: u64,
    /// The due time it is armed for, until it goes off.
    armed_ns: Option<u64>,
}

impl DueTimer {
    /// The timer's poll token (connections' tokens are their indices).
    pub(crate) const TOKEN: Token = Token(usize::MAX);

    /// A disarmed timer on `registry`, on `shared`'s clock.
    pub(crate) fn new(registry: &Registry, shared: &Shared) -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; the result is checked.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), Self::TOKEN, Interest::READABLE)?;
        // `Instant` is CLOCK_MONOTONIC. Reading the shared clock first makes
        // the estimate of the epoch late, never early, so the timer never
        // goes off before a send is due.
        let since_epoch = shared.now_ns();
        let epoch_mono_ns = monotonic_ns()?.saturating_sub(since_epoch);
        Ok(Self { fd, epoch_mono_ns, armed_ns: None })
    }

    /// Arms the timer for `due_ns` on the shared clock, unless it already
    /// is (one `timerfd_settime` per new due time, none per wake-up).
    pub(crate) fn arm(&mut self, due_ns: u64) -> io::Result<()> {
        if self.armed_ns == Some(due_ns) {
            return Ok(());
        }
        let at = self.epoch_mono_ns.saturating_add(due_ns).max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (at / 1_000_000_000) as libc::time_t,
                tv_nsec: (at % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `fd` is our timerfd, `spec` a valid itimerspec that outlives
        // the call, and the old value is not asked for (null).
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_ns = Some(due_ns);
        Ok(())
    }

    /// The timer went off (its poll event): the next [`DueTimer::arm`]
    /// sets it again, even for the same time. Re-arming also clears its
    /// expiry count, so it is never read.
    pub(crate) fn fired(&mut self) {
        self.armed_ns = None;
    }
}

/// `CLOCK_MONOTONIC` now, nanoseconds.
fn monotonic_ns() -> io::Result<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the struct we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// What one thread measured.
#[derive(Debug)]
pub struct ThreadReport {
    /// Counts summed over the thread's pairs.
    pub counts: PairCounts,
    /// Latencies of measured first arrivals, nanoseconds.
    pub latency: Histogram<u64>,
    /// Connections that closed or failed during the run.
    pub disconnects: u64,
    /// Closed-loop pairs that stalled (no receipt for a while at the limit)
    /// and were granted a fresh window.
    pub stalls: u64,
    /// The first connection failure, if any.
    pub first_error: Option<String>,
    /// Refusals by protocol error code.
    pub error_codes: Vec<(u16, u64)>,
    /// When every pair had received all its measured messages (or the
    /// drain ended), nanoseconds since the epoch.
    pub finished_ns: u64,
    /// True if every measured message arrived before the drain ended.
    pub complete: bool,
}

/// Largest write backlog per connection before senders wait.
pub(crate) const WRITE_BACKLOG: usize = 1 << 20;
/// Read buffer per connection (grows for a larger unit).
pub(crate) const READ_BUF: usize = 64 * 1024;
/// A closed-loop pair at its limit with no receipt for this long has lost
/// messages (QoS 0 / core NATS drop); it gets a fresh window.
pub(crate) const STALL_NS: u64 = 500_000_000;
/// Longest single poll sleep.
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(10);

pub(crate) struct Conn<C> {
    pub(crate) stream: TcpStream,
    pub(crate) proto: C,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) rlen: usize,
    pub(crate) wbuf: Vec<u8>,
    pub(crate) wpos: usize,
    pub(crate) alive: bool,
}

impl<C> Conn<C> {
    /// True when a sender on this connection can take more messages: it is
    /// alive and its write backlog has room. A rate-mode thread waits for a
    /// sender that cannot (on its socket's writable event), not for its
    /// overdue sends, which would make it spin.
    pub(crate) fn can_send(&self) -> bool {
        self.alive && self.wbuf.len() < WRITE_BACKLOG
    }
}

struct Slot<C> {
    ledger: PairLedger,
    template: Template,
    next_due_ns: u64,
    credit: u64,
    last_progress_ns: u64,
    sender: Conn<C>,
    receiver: Conn<C>,
}

pub(crate) struct Stats {
    pub(crate) latency: Histogram<u64>,
    pub(crate) disconnects: u64,
    pub(crate) stalls: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) error_codes: Vec<(u16, u64)>,
}

impl Stats {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).context("histogram bounds")?,
            disconnects: 0,
            stalls: 0,
            first_error: None,
            error_codes: Vec::new(),
        })
    }

    /// Counts a refusal with protocol error `code`.
    pub(crate) fn refused(&mut self, code: u16) {
        match self.error_codes.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.error_codes.push((code, 1)),
        }
    }

    pub(crate) fn failed(&mut self, what: impl FnOnce() -> String) {
        self.disconnects += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

/// Runs one thread's share `pairs` of the run against `proto`.
pub fn drive<P: Protocol>(proto: &P, pairs: Range<usize>, shared: &Shared) -> anyhow::Result<ThreadReport> {
    let setup = connect_all(proto, pairs.clone(), shared);
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
        let rw = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut slot.sender.stream, Token(2 * k), rw)?;
        poll.registry().register(&mut slot.receiver.stream, Token(2 * k + 1), rw)?;
        slot.next_due_ns = plan.first_due(pairs.start + k);
        slot.last_progress_ns = plan.send_start_ns;
    }
    let mut stats = Stats::new()?;
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
            for slot in &mut slots {
                fill::<P>(slot, &plan, now, &mut stats);
                if slot.sender.can_send() {
                    next_due = next_due.min(slot.next_due_ns);
                }
            }
        } else if slots.iter().all(|s| s.ledger.lost() == 0 || !s.receiver.alive) {
            complete = slots.iter().all(|s| s.ledger.lost() == 0);
            break;
        }
        let wait = plan.prepare_wait(timer.as_mut(), now, next_due).context("arming the send timer")?;
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
            let Token(t) = ev.token();
            let slot = &mut slots[t / 2];
            let role = if t % 2 == 0 { Role::Sender } else { Role::Receiver };
            let pair = (pairs.start + t / 2) as u32;
            let Slot { ledger, sender, receiver, last_progress_ns, .. } = slot;
            let conn = if role == Role::Sender { sender } else { receiver };
            if !conn.alive {
                continue;
            }
            let result = if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                on_readable::<P>(conn, role, pair, &layout, ledger, shared, &mut stats, last_progress_ns)
            } else {
                Ok(())
            }
            .and_then(|()| flush(conn).map_err(|e| format!("write: {e}")));
            if let Err(e) = result {
                conn.alive = false;
                let _ = poll.registry().deregister(&mut conn.stream);
                stats.failed(|| format!("pair {pair} {role:?}: {e}"));
            }
        }
    }
    let mut counts = PairCounts::default();
    for slot in &slots {
        counts.add(&slot.ledger.counts());
    }
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

type Setup<C> = (Vec<Slot<C>>, Layout);

/// Builds the templates and connects both ends of every pair (receivers
/// first, so they are subscribed before anything is sent).
fn connect_all<P: Protocol>(proto: &P, pairs: Range<usize>, shared: &Shared) -> anyhow::Result<Setup<P::Conn>> {
    let mut slots = Vec::with_capacity(pairs.len());
    let mut layout = None;
    for pair in pairs {
        let template = Template::new(pair, shared.body, shared.size, shared.nonce, shared.created_at_ms)?;
        layout.get_or_insert(template.layout());
        let receiver = open(proto, pair, Role::Receiver, shared.connect_timeout)?;
        let sender = open(proto, pair, Role::Sender, shared.connect_timeout)?;
        slots.push(Slot {
            ledger: PairLedger::new(),
            template,
            next_due_ns: 0,
            credit: 0,
            last_progress_ns: 0,
            sender,
            receiver,
        });
    }
    let layout = layout.context("a thread without pairs")?;
    Ok((slots, layout))
}

pub(crate) fn open<P: Protocol>(
    proto: &P,
    pair: usize,
    role: Role,
    timeout: Duration,
) -> anyhow::Result<Conn<P::Conn>> {
    let c = proto.connect(pair, role, timeout).with_context(|| format!("pair {pair} {role:?}"))?;
    c.stream.set_nonblocking(true)?;
    let mut rbuf = vec![0u8; READ_BUF.max(c.leftover.len() * 2)];
    rbuf[..c.leftover.len()].copy_from_slice(&c.leftover);
    Ok(Conn {
        stream: TcpStream::from_std(c.stream),
        proto: c.conn,
        rlen: c.leftover.len(),
        rbuf,
        wbuf: Vec::with_capacity(WRITE_BACKLOG + 64 * 1024),
        wpos: 0,
        alive: true,
    })
}

/// Appends what the sender may send now and writes it.
fn fill<P: Protocol>(slot: &mut Slot<P::Conn>, plan: &Plan, now: u64, stats: &mut Stats) {
    let conn = &mut slot.sender;
    if !conn.alive {
        return;
    }
    if conn.wpos > 0 && conn.wbuf.len() >= WRITE_BACKLOG {
        // A partial write left a long tail: move it to the front (rare).
        conn.wbuf.drain(..conn.wpos);
        conn.wpos = 0;
    }
    let before = conn.wbuf.len();
    match plan.mode {
        Mode::Max { in_flight } => {
            let in_flight_now = |l: &PairLedger, credit: u64| {
                if P::ANSWERS { l.unanswered() } else { l.undelivered().saturating_sub(credit) }
            };
            if in_flight_now(&slot.ledger, slot.credit) >= in_flight
                && now.saturating_sub(slot.last_progress_ns) > STALL_NS
            {
                // Answers always come; receipts may not (QoS 0, core NATS).
                if !P::ANSWERS {
                    slot.credit = slot.ledger.undelivered();
                    stats.stalls += 1;
                }
                slot.last_progress_ns = now;
            }
            while in_flight_now(&slot.ledger, slot.credit) < in_flight && conn.wbuf.len() < WRITE_BACKLOG {
                let seq = slot.ledger.on_send(now, &plan.window);
                P::encode_message(&conn.proto, &mut conn.wbuf, slot.template.stamp(seq, now));
            }
        }
        Mode::Rate { interval_ns, .. } => {
            let Slot { ledger, template, next_due_ns, .. } = slot;
            plan.send_due(interval_ns, next_due_ns, now, &mut conn.wbuf, |due, wbuf| {
                let seq = ledger.on_send(due, &plan.window);
                P::encode_message(&conn.proto, wbuf, template.stamp(seq, due));
            });
        }
    }
    P::end_turn(&conn.proto, &mut conn.wbuf, before);
    if conn.wbuf.len() > before
        && let Err(e) = flush(conn)
    {
        conn.alive = false;
        stats.failed(|| format!("sender write: {e}"));
    }
}

/// Reads until the socket would block, decoding and accounting as it goes.
#[allow(clippy::too_many_arguments)]
fn on_readable<P: Protocol>(
    conn: &mut Conn<P::Conn>,
    role: Role,
    pair: u32,
    layout: &Layout,
    ledger: &mut PairLedger,
    shared: &Shared,
    stats: &mut Stats,
    last_progress_ns: &mut u64,
) -> Result<(), String> {
    pump::<P>(conn, shared, &mut |inbound, now| match inbound {
        Inbound::Message(msg) => match layout.read_stamp(msg) {
            Some(stamp) if role == Role::Receiver && stamp.pair == pair => {
                if let Arrival::Measured { latency_ns } = ledger.on_receive(stamp.seq, stamp.sent_ns, now) {
                    stats.latency.saturating_record(latency_ns.max(1));
                }
                *last_progress_ns = now;
            }
            _ => ledger.on_unknown(),
        },
        Inbound::Answer { id, answer, code } => {
            ledger.on_answer(id.as_ref().map(Layout::seq_of_id), answer);
            if let Some(code) = code {
                stats.refused(code);
            }
            *last_progress_ns = now;
        }
    })
}

/// Reads until the socket would block, passing every decoded unit and the
/// time it was read to `on`.
pub(crate) fn pump<P: Protocol>(
    conn: &mut Conn<P::Conn>,
    shared: &Shared,
    on: &mut impl FnMut(Inbound<'_>, u64),
) -> Result<(), String> {
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
        let now = shared.now_ns();
        let Conn { proto, rbuf, rlen, wbuf, .. } = conn;
        let used =
            P::decode(proto, &rbuf[..*rlen], wbuf, &mut |inbound| on(inbound, now)).map_err(|e| e.to_string())?;
        rbuf.copy_within(used..*rlen, 0);
        *rlen -= used;
    }
}

/// Writes the backlog until done or the socket would block.
pub(crate) fn flush<C>(conn: &mut Conn<C>) -> io::Result<()> {
    while conn.wpos < conn.wbuf.len() {
        match conn.stream.write(&conn.wbuf[conn.wpos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.wbuf.clear();
    conn.wpos = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(mode: Mode) -> Plan {
        let ms = 1_000_000;
        Plan {
            mode,
            send_start_ns: 100 * ms,
            window: Window { start_ns: 200 * ms, end_ns: 300 * ms },
            drain_end_ns: 400 * ms,
        }
    }

    #[test]
    fn rate_senders_are_spread_over_one_interval() {
        let p = plan(Mode::Rate { interval_ns: 1_000, total_pairs: 4 });
        assert_eq!([0, 1, 3].map(|i| p.first_due(i) - p.send_start_ns), [0, 250, 750]);
        assert_eq!(plan(Mode::Max { in_flight: 8 }).first_due(3), p.send_start_ns);
    }

    #[test]
    fn poll_waits_end_at_the_window_the_next_send_or_the_drain() {
        let ms = 1_000_000;
        let max = plan(Mode::Max { in_flight: 8 });
        assert_eq!(max.poll_wait(295 * ms, u64::MAX), Duration::from_millis(5));
        assert_eq!(max.poll_wait(250 * ms, u64::MAX), MAX_SLEEP);
        assert_eq!(max.poll_wait(397 * ms, u64::MAX), Duration::from_millis(3), "draining");
        let rate = plan(Mode::Rate { interval_ns: ms, total_pairs: 1 });
        assert_eq!(rate.poll_wait(250 * ms, 255 * ms), Duration::from_millis(5));
        // Already due: no wait.
        assert_eq!(rate.poll_wait(250 * ms, 240 * ms), Duration::ZERO);
    }

    #[test]
    fn rate_mode_sleeps_until_the_next_send_instead_of_spinning() {
        let ms = 1_000_000;
        let rate = plan(Mode::Rate { interval_ns: 50_000, total_pairs: 1 });
        // 20k/s: the next send is 50 µs away. The thread sleeps those 50 µs
        // (the timer wakes it; epoll alone would sleep a whole millisecond),
        // where it used to spin the last millisecond before every send.
        let (now, due) = (250 * ms, 250 * ms + 50_000);
        assert_eq!(rate.poll_wait(now, due), Duration::from_micros(50));
        assert_eq!(rate.wake_at(now, due), Some(due));
        // Nothing to wake for: a send already due, none before the window's
        // end, none at all, or a closed loop.
        assert_eq!(rate.wake_at(now, now), None);
        assert_eq!(rate.wake_at(now, rate.window.end_ns), None);
        assert_eq!(rate.wake_at(now, u64::MAX), None);
        assert_eq!(plan(Mode::Max { in_flight: 8 }).wake_at(now, due), None);
    }

    #[test]
    fn the_due_timer_wakes_the_poll_when_a_send_is_due_never_before() {
        let shared = Shared {
            epoch: Instant::now(),
            barrier: Barrier::new(1),
            abort: AtomicBool::new(false),
            plan: OnceLock::new(),
            connect_timeout: Duration::from_secs(1),
            size: 256,
            body: Body::Bare,
            nonce: 1,
            created_at_ms: 0,
            thread_clocks: Mutex::new(Vec::new()),
        };
        let mut poll = Poll::new().unwrap();
        let mut timer = DueTimer::new(poll.registry(), &shared).unwrap();
        let mut events = Events::with_capacity(4);
        let p = plan(Mode::Rate { interval_ns: 50_000, total_pairs: 1 });
        for delay_ns in [50_000, 300_000, 2_500_000] {
            let now = shared.now_ns();
            let due = now + delay_ns;
            let p = Plan { window: Window { start_ns: 0, end_ns: u64::MAX }, ..p };
            // A poll timeout far longer than the delay: only the timer ends it early.
            let wait = p.prepare_wait(Some(&mut timer), now, due).unwrap();
            assert!(wait <= MAX_SLEEP);
            let deadline = now + 5_000_000_000;
            loop {
                poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
                if events.iter().any(|e| e.token() == DueTimer::TOKEN) {
                    break;
                }
                assert!(shared.now_ns() < deadline, "the timer never went off");
            }
            assert!(shared.now_ns() >= due, "woken before the send was due");
            timer.fired();
        }
    }

    #[test]
    fn due_sends_stop_at_the_window_end_and_the_backlog() {
        let p = plan(Mode::Rate { interval_ns: 10, total_pairs: 1 });
        let end = p.window.end_ns;
        let (mut next, mut sent, mut wbuf) = (end - 30, Vec::new(), Vec::new());
        p.send_due(10, &mut next, end + 100, &mut wbuf, |due, _| sent.push(due));
        assert_eq!(sent, [end - 30, end - 20, end - 10]);
        assert_eq!(next, end);
        let (mut next, mut n) = (0, 0);
        let mut full = vec![0; WRITE_BACKLOG];
        p.send_due(10, &mut next, end, &mut full, |_, _| n += 1);
        assert_eq!((n, next), (0, 0), "no room in the write buffer");
    }
}
