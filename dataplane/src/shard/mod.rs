//! Shards: one thread, one reactor, one partition of the state each.
//!
//! A shard owns outright the connections of the users it owns (every
//! connection of user `u` lives on shard `hash(u) % N`, handed over after
//! the handshake if it arrived elsewhere), their presence entries, and the
//! membership of the rooms it owns. Nothing here is shared with another
//! shard: shards talk only through the bounded [`mesh`] queues, so a
//! delivery to a user takes at most one cross-shard hop (sender's shard →
//! recipient's owner shard, which writes to the sockets). Anything outside
//! a shard (admin API, signals) sends it a typed [`Msg`] and awaits a reply.

pub(crate) mod conn;
pub mod mesh;
pub mod presence;
pub(crate) mod write;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use switchboard_protocol::frame::ErrorFrame;
use switchboard_protocol::{EnvelopeId, ErrorCode, Frame, Outcome, UserId};

use crate::auth::Identity;
use crate::config::Config;
use crate::frontend::ws;
use crate::metrics::ShardMetrics;
use mesh::Mesh;
use presence::{Owners, Presence, Rooms};
use write::{Out, OutQueue};

/// How long a closing connection may take to flush its last frames before
/// its socket is shut down (a peer that stopped reading).
pub(crate) const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Idle write batches a shard keeps for reuse.
const BATCH_POOL: usize = 256;

/// One routed envelope in this many has its routing time measured.
pub(crate) const LATENCY_SAMPLE: u32 = 64;

/// Index of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The index as `usize`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A connection on its shard: slab slot plus a generation, so a stale id
/// held by another shard never reaches a newer connection in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// Slab slot.
    pub slot: u32,
    /// Generation of the slot.
    pub generation: u32,
}

/// A connection anywhere in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Member {
    /// Its shard.
    pub shard: ShardId,
    /// Its id on that shard.
    pub conn: ConnId,
}

/// Transport of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// WebSocket on the client port.
    WebSocket,
    /// One `POST /send` request.
    Http,
}

impl Protocol {
    /// Label used in metrics and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "ws",
            Self::Http => "http",
        }
    }
}

/// Where a destination name lies inside its envelope: messages carry this
/// rather than a second reference to the envelope's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dest {
    start: u32,
    len: u32,
}

impl Dest {
    /// The place of `name`, a slice of `envelope`.
    pub(crate) fn new(envelope: &[u8], name: &str) -> Self {
        let start = (name.as_ptr() as usize).wrapping_sub(envelope.as_ptr() as usize);
        debug_assert!(start.saturating_add(name.len()) <= envelope.len(), "the name lies in the envelope");
        Self { start: start as u32, len: name.len() as u32 }
    }

    /// The name in `envelope` (empty if it is not there).
    pub(crate) fn name<'a>(&self, envelope: &'a [u8]) -> &'a str {
        let start = self.start as usize;
        envelope.get(start..start + self.len as usize).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }
}

/// A message between shards, or from outside into a shard.
pub(crate) enum Msg {
    /// Deliver to every live connection of `user` (owned by the receiver).
    ToUser { envelope: Bytes, user: Dest, id: EnvelopeId, from: Member, exclude: Option<Member> },
    /// Fan out to the members of `room` (owned by the receiver).
    ToRoom { envelope: Bytes, room: Dest, id: EnvelopeId, from: Member, exclude: Option<Member> },
    /// Deliver to these connections of the receiver.
    Deliver { envelope: Bytes, id: EnvelopeId, conns: Vec<ConnId> },
    /// Add a member to a room owned by the receiver.
    Join { room: Box<str>, member: Member, request_id: u32 },
    /// Remove a member; `request_id` is `None` when its connection closed.
    Leave { room: Box<str>, member: Member, request_id: Option<u32> },
    /// How many connections does `user` (owned by the receiver) have?
    PresenceQuery { user: Box<str>, from: Member, request_id: u32 },
    /// An answer for a connection of the receiver.
    Reply { conn: ConnId, reply: Reply },
    /// A connection that authenticated on another shard, for its owner.
    Handoff(Box<conn::Handoff>),
    /// From outside the shards.
    Command(Command),
}

/// An answer frame for a connection.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    Accepted { id: EnvelopeId, outcome: Outcome, recipients: u32 },
    Error { code: ErrorCode, id: Option<EnvelopeId>, request_id: Option<u32>, reason: &'static str },
    Done { request_id: u32 },
    Presence { request_id: u32, user: Box<str>, connections: u32 },
}

/// One live connection, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionInfo {
    /// Shard it lives on.
    pub shard: u16,
    /// Connection id on that shard.
    pub conn: String,
    /// `ws` or `http`.
    pub protocol: &'static str,
    /// Device id from the token, if any.
    pub device: Option<String>,
    /// Peer address.
    pub peer: String,
    /// Seconds since it connected.
    pub connected_secs: u64,
}

/// Typed commands from outside the shards, each with a reply channel.
pub enum Command {
    /// The connections of a user owned by this shard.
    Presence {
        /// The user.
        user: Box<str>,
        /// Where the answer goes.
        reply: std::sync::mpsc::SyncSender<Vec<ConnectionInfo>>,
    },
    /// Stop accepting, close every connection with `shutting-down`, flush.
    Shutdown,
    /// Use reloaded keys (SIGHUP) and forget cached verifications.
    ReloadKeys(crate::auth::Verifier),
}

/// State every shard can read: immutable after start, or atomics.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) owners: Owners,
    pub(crate) mesh: Arc<Mesh<Msg>>,
    pub(crate) metrics: Vec<Arc<ShardMetrics>>,
    pub(crate) verifier: crate::auth::Verifier,
    /// TLS for the client port, when configured.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) shutting_down: AtomicBool,
    connections: AtomicUsize,
    /// Connections per peer address; touched only at connect and close.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        verifier: crate::auth::Verifier,
        tls: Option<Arc<rustls::ServerConfig>>,
        shards: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            tls,
            owners: Owners::new(shards, config.server.placement_seed),
            mesh: Mesh::new(shards, config.limits.cross_shard_queue),
            metrics: (0..shards).map(|_| Arc::new(ShardMetrics::default())).collect(),
            verifier,
            shutting_down: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// Admits a new connection from `ip` under the global and per-address
    /// limits; the permit releases both when dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, ErrorCode> {
        let limits = &self.config.limits;
        if self.connections.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorCode::ConnectionLimit);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            drop(per_ip);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorCode::ConnectionLimit);
        }
        *n += 1;
        Ok(ConnPermit { shared: self.clone(), ip })
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// A counted connection slot; released on drop.
pub(crate) struct ConnPermit {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A connection's state on its shard.
pub(crate) struct Conn {
    pub(crate) identity: Arc<Identity>,
    pub(crate) protocol: Protocol,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) connected: Instant,
    pub(crate) out: OutQueue,
    /// Delivered, not yet acknowledged: id and wire size.
    unacked: std::collections::VecDeque<(EnvelopeId, usize)>,
    unacked_bytes: usize,
    /// Since when the connection has been over its queue bound.
    slow_since: Option<Instant>,
    pub(crate) last_seen: Instant,
    pinged: bool,
    pub(crate) rooms: Vec<Box<str>>,
    /// The writer task's waker.
    writer: Option<Waker>,
    /// True while the writer holds a batch taken from `out`.
    writing: bool,
    /// Waiting for the writer to flush (the reader, before it unregisters).
    flush_waiter: Option<Waker>,
    /// Set when the connection must close after its queue is written.
    closing: Option<ErrorCode>,
    /// When `closing` was set; a close that does not finish in
    /// [`CLOSE_DEADLINE`] is forced by the tick (the socket is shut down).
    closing_since: Option<Instant>,
    /// The socket, for forcing a close (WebSocket connections).
    pub(crate) fd: Option<i32>,
    /// For HTTP requests: the answer, once it arrives.
    pub(crate) http_reply: Option<Reply>,
    pub(crate) tokens: TokenBucket,
}

impl Conn {
    /// True once the connection is closing.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Marks the connection closing (the first reason wins).
    pub(crate) fn set_closing(&mut self, code: ErrorCode) {
        if self.closing.is_none() {
            self.closing = Some(code);
            self.closing_since = Some(Instant::now());
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// Allows at most `per_sec` log lines per second (per shard).
pub(crate) struct LogLimiter {
    per_sec: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
    dropped: Cell<u64>,
}

impl LogLimiter {
    pub(crate) fn new(per_sec: u32) -> Self {
        Self { per_sec, window: Cell::new(None), used: Cell::new(0), dropped: Cell::new(0) }
    }

    /// True if a line may be logged now.
    pub(crate) fn allow(&self) -> bool {
        let now = Instant::now();
        if self.window.get().is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1)) {
            let dropped = self.dropped.replace(0);
            if dropped > 0 {
                tracing::info!(dropped, "log lines about bad input suppressed in the last second");
            }
            self.window.set(Some(now));
            self.used.set(0);
        }
        if self.used.get() < self.per_sec {
            self.used.set(self.used.get() + 1);
            true
        } else {
            self.dropped.set(self.dropped.get() + 1);
            false
        }
    }
}

/// Per-connection send rate limit.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate: f64::from(rate_per_sec), burst, tokens: burst, last: now }
    }

    /// Takes one token; false if the bucket is empty. Rate 0 = unlimited.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One shard's state. Lives on its thread only (`Rc`, `RefCell`).
pub(crate) struct Shard {
    pub(crate) id: ShardId,
    /// This shard, for spawning tasks from `&self` methods.
    pub(crate) this: std::rc::Weak<Shard>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: Arc<ShardMetrics>,
    pub(crate) conns: RefCell<Slab<Conn>>,
    generations: RefCell<Vec<u32>>,
    presence: RefCell<Presence>,
    rooms: RefCell<Rooms>,
    pub(crate) tokens: RefCell<crate::auth::ShardVerifier>,
    /// Messages that must not be dropped (answers, room deliveries, leaves)
    /// waiting for room in a full queue, in order.
    backlog: RefCell<std::collections::VecDeque<(ShardId, Msg)>>,
    scratch_frame: RefCell<Vec<u8>>,
    pub(crate) stopping: Cell<bool>,
    /// Cancels the pending accept when the shard stops.
    pub(crate) accept_canceller: RefCell<monoio::io::Canceller>,
    /// Write batches not in use (see [`Shard::take_batch`]). Boxed on
    /// purpose: a batch moves in and out of `writev` as a pointer.
    #[allow(clippy::vec_box)]
    batch_pool: RefCell<Vec<Box<write::WriteBatch>>>,
    /// Rate limit for logs about bad input, so a flood of bad clients
    /// cannot flood the logs.
    pub(crate) log_limiter: LogLimiter,
    /// Counts routed envelopes, to time one in [`LATENCY_SAMPLE`].
    latency_counter: Cell<u32>,
    /// Woken when the last connection is gone (graceful shutdown).
    drained: RefCell<Option<Waker>>,
}

impl Shard {
    pub(crate) fn new(id: ShardId, shared: Arc<Shared>) -> Rc<Self> {
        let tokens = crate::auth::ShardVerifier::new(shared.verifier.clone());
        Rc::new_cyclic(|this| Self {
            id,
            this: this.clone(),
            metrics: shared.metrics[id.index()].clone(),
            shared,
            conns: RefCell::new(Slab::new()),
            generations: RefCell::new(Vec::new()),
            presence: RefCell::new(Presence::default()),
            rooms: RefCell::new(Rooms::default()),
            tokens: RefCell::new(tokens),
            backlog: RefCell::new(std::collections::VecDeque::new()),
            scratch_frame: RefCell::new(Vec::with_capacity(512)),
            stopping: Cell::new(false),
            accept_canceller: RefCell::new(monoio::io::Canceller::new()),
            batch_pool: RefCell::new(Vec::new()),
            log_limiter: LogLimiter::new(20),
            latency_counter: Cell::new(0),
            drained: RefCell::new(None),
        })
    }

    /// True for one envelope in [`LATENCY_SAMPLE`]: that one is timed.
    pub(crate) fn sample_latency(&self) -> bool {
        let n = self.latency_counter.get().wrapping_add(1);
        self.latency_counter.set(n);
        n.is_multiple_of(LATENCY_SAMPLE)
    }

    /// Registers a connection of `identity.user` on this (its owner) shard.
    pub(crate) fn register(&self, identity: Arc<Identity>, protocol: Protocol, peer: std::net::SocketAddr) -> ConnId {
        let now = Instant::now();
        let l = &self.shared.config.limits;
        let conn = Conn {
            protocol,
            peer,
            connected: now,
            out: OutQueue::default(),
            unacked: Default::default(),
            unacked_bytes: 0,
            slow_since: None,
            last_seen: now,
            pinged: false,
            rooms: Vec::new(),
            writer: None,
            writing: false,
            flush_waiter: None,
            closing: None,
            closing_since: None,
            fd: None,
            http_reply: None,
            tokens: TokenBucket::new(l.send_rate_per_sec, l.send_burst, now),
            identity,
        };
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let slot = entry.key();
        let mut gens = self.generations.borrow_mut();
        if gens.len() <= slot {
            gens.resize(slot + 1, 0);
        }
        gens[slot] = gens[slot].wrapping_add(1);
        let id = ConnId { slot: slot as u32, generation: gens[slot] };
        let user: Box<str> = conn.identity.user().as_str().into();
        entry.insert(conn);
        if protocol == Protocol::WebSocket {
            self.presence.borrow_mut().add(&user, id);
        }
        self.metrics.connection_opened(protocol);
        id
    }

    fn generation_ok(&self, id: ConnId) -> bool {
        self.generations.borrow().get(id.slot as usize) == Some(&id.generation)
    }

    /// Runs `f` on a live connection of this shard.
    pub(crate) fn with_conn<R>(&self, id: ConnId, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        if !self.generation_ok(id) {
            return None;
        }
        self.conns.borrow_mut().get_mut(id.slot as usize).map(f)
    }

    /// Removes a closed connection: presence, rooms, queues.
    pub(crate) fn unregister(&self, id: ConnId) {
        if !self.generation_ok(id) {
            return;
        }
        let Some(mut conn) = self.conns.borrow_mut().try_remove(id.slot as usize) else {
            return;
        };
        conn.wake_writer();
        if let Some(w) = conn.flush_waiter.take() {
            w.wake();
        }
        // Bump the generation so late messages for this id find nothing.
        if let Some(g) = self.generations.borrow_mut().get_mut(id.slot as usize) {
            *g = g.wrapping_add(1);
        }
        if conn.protocol == Protocol::WebSocket {
            self.presence.borrow_mut().remove(conn.identity.user().as_str(), id);
        }
        let me = Member { shard: self.id, conn: id };
        for room in conn.rooms {
            self.send_reliable(self.shared.owners.room(&room), Msg::Leave { room, member: me, request_id: None });
        }
        self.metrics.connection_closed(conn.protocol);
        if self.stopping.get()
            && self.conns.borrow().is_empty()
            && let Some(w) = self.drained.borrow_mut().take()
        {
            w.wake();
        }
    }

    /// Registers the writer task's waker; returns the frames to write when
    /// there are some, or whether the writer should stop.
    pub(crate) fn poll_writer(
        &self,
        id: ConnId,
        waker: &Waker,
        batch: &mut Option<Box<write::WriteBatch>>,
    ) -> WriterPoll {
        self.with_conn(id, |c| {
            if !c.out.is_empty() {
                batch.get_or_insert_with(|| self.take_batch()).fill(&mut c.out);
                c.writing = true;
                return WriterPoll::Write;
            }
            if c.closing.is_some() {
                return WriterPoll::Finish;
            }
            c.writer = Some(waker.clone());
            WriterPoll::Pending
        })
        .unwrap_or(WriterPoll::Finish)
    }

    /// A write batch from the shard's pool: connections hold one only while
    /// they write, so an idle connection keeps no batch (and none of the
    /// capacity a burst gave it).
    fn take_batch(&self) -> Box<write::WriteBatch> {
        self.batch_pool.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a written batch to the pool.
    pub(crate) fn recycle_batch(&self, batch: Box<write::WriteBatch>) {
        let mut pool = self.batch_pool.borrow_mut();
        if pool.len() < BATCH_POOL {
            pool.push(batch);
        }
    }

    /// Queues a complete frame for a connection of this shard.
    pub(crate) fn reply(&self, id: ConnId, reply: Reply) {
        let mut scratch = self.scratch_frame.borrow_mut();
        self.with_conn(id, |c| {
            if c.protocol == Protocol::Http {
                c.http_reply = Some(reply);
                c.wake_writer();
                return;
            }
            c.out.push(reply_frame(&reply, &mut scratch));
            c.wake_writer();
        });
    }

    /// Wakes a connection's writer after frames were queued directly.
    pub(crate) fn reply_wake(&self, id: ConnId) {
        self.with_conn(id, Conn::wake_writer);
    }

    /// The writer finished a batch (or stopped).
    pub(crate) fn writer_flushed(&self, id: ConnId) {
        self.with_conn(id, |c| {
            c.writing = false;
            if c.out.is_empty()
                && let Some(w) = c.flush_waiter.take()
            {
                w.wake();
            }
        });
    }

    /// The socket failed: drop what is queued, nothing more will be written.
    pub(crate) fn writer_failed(&self, id: ConnId) {
        self.with_conn(id, |c| {
            c.out.clear();
            c.writing = false;
            c.set_closing(ErrorCode::Internal);
            if let Some(w) = c.flush_waiter.take() {
                w.wake();
            }
        });
    }

    /// Ready when the connection has nothing left to write (or is gone).
    pub(crate) fn wait_flushed(&self, id: ConnId, waker: &Waker) -> std::task::Poll<()> {
        self.with_conn(id, |c| {
            if c.out.is_empty() && !c.writing {
                std::task::Poll::Ready(())
            } else {
                c.flush_waiter = Some(waker.clone());
                std::task::Poll::Pending
            }
        })
        .unwrap_or(std::task::Poll::Ready(()))
    }

    /// An HTTP request's answer, once it has arrived.
    pub(crate) fn poll_http_reply(&self, id: ConnId, waker: &Waker) -> std::task::Poll<Option<Reply>> {
        self.with_conn(id, |c| match c.http_reply.take() {
            Some(r) => std::task::Poll::Ready(Some(r)),
            None => {
                c.writer = Some(waker.clone());
                std::task::Poll::Pending
            }
        })
        .unwrap_or(std::task::Poll::Ready(None))
    }

    /// Answers `to`, locally or through the mesh.
    pub(crate) fn answer(&self, to: Member, reply: Reply) {
        if to.shard == self.id {
            self.reply(to.conn, reply);
        } else {
            self.send_reliable(to.shard, Msg::Reply { conn: to.conn, reply });
        }
    }

    /// Sends a message that must arrive (an answer the sender waits for, a
    /// room delivery, a leave): if the queue to `dst` is full, it waits in
    /// this shard's backlog, behind earlier ones to `dst`, and is retried
    /// every loop turn and tick. The backlog is bounded by what the other
    /// shards sent us, which their own queue bounds limit.
    pub(crate) fn send_reliable(&self, dst: ShardId, msg: Msg) {
        if dst == self.id {
            self.handle(msg);
            return;
        }
        let mut backlog = self.backlog.borrow_mut();
        if backlog.iter().any(|(d, _)| *d == dst) {
            backlog.push_back((dst, msg));
            return;
        }
        if let Err(msg) = self.shared.mesh.send(self.id, dst, msg) {
            self.metrics.cross_shard_full.inc();
            backlog.push_back((dst, msg));
        }
    }

    /// Retries backlogged messages, in order per destination.
    pub(crate) fn flush_backlog(&self) {
        let mut backlog = self.backlog.borrow_mut();
        if backlog.is_empty() {
            return;
        }
        let mut blocked: Vec<ShardId> = Vec::new();
        let mut rest = std::collections::VecDeque::with_capacity(backlog.len());
        while let Some((dst, msg)) = backlog.pop_front() {
            if blocked.contains(&dst) {
                rest.push_back((dst, msg));
                continue;
            }
            if let Err(msg) = self.shared.mesh.send(self.id, dst, msg) {
                blocked.push(dst);
                rest.push_back((dst, msg));
            }
        }
        *backlog = rest;
    }

    /// Sends a message to `dst`, or handles it here if `dst` is this shard.
    /// Returns false if the queue to `dst` is full.
    pub(crate) fn send_or_handle(&self, dst: ShardId, msg: Msg) -> bool {
        if dst == self.id {
            self.handle(msg);
            true
        } else {
            match self.shared.mesh.send(self.id, dst, msg) {
                Ok(()) => true,
                Err(_) => {
                    self.metrics.cross_shard_full.inc();
                    false
                }
            }
        }
    }

    /// Queues an envelope for a connection of this shard; false if it is
    /// over its queue bound (it then counts as slow).
    fn deliver_one(&self, id: ConnId, envelope: &Bytes, env_id: EnvelopeId) -> bool {
        let l = &self.shared.config.limits;
        self.with_conn(id, |c| {
            if c.closing.is_some() {
                return false;
            }
            let len = envelope.len();
            let frames = c.out.len() + c.unacked.len();
            let bytes = c.out.bytes() + c.unacked_bytes;
            if frames >= l.outbound_queue_frames || bytes + len > l.outbound_queue_bytes {
                c.slow_since.get_or_insert_with(Instant::now);
                self.metrics.queue_overflow.inc();
                return false;
            }
            c.out.push(Out::Deliver { envelope: envelope.clone(), redelivery: false });
            c.unacked.push_back((env_id, len));
            c.unacked_bytes += len;
            c.wake_writer();
            true
        })
        .unwrap_or(false)
    }

    /// Delivers to every connection of a user owned by this shard.
    fn deliver_to_user(&self, user: &str, envelope: &Bytes, id: EnvelopeId, exclude: Option<Member>) -> u32 {
        // `deliver_one` borrows the connection table, not the presence
        // table, so the list is walked in place (no copy per envelope).
        let presence = self.presence.borrow();
        let mut n = 0;
        for &c in presence.connections(user) {
            if exclude == Some(Member { shard: self.id, conn: c }) {
                continue;
            }
            if self.deliver_one(c, envelope, id) {
                n += 1;
            }
        }
        self.metrics.delivered.add(u64::from(n));
        n
    }

    /// Handles one message addressed to this shard.
    pub(crate) fn handle(&self, msg: Msg) {
        match msg {
            Msg::ToUser { envelope, user, id, from, exclude } => {
                let user = user.name(&envelope);
                let n = self.deliver_to_user(user, &envelope, id, exclude);
                let outcome = if n > 0 { Outcome::Delivered } else { Outcome::RecipientOffline };
                self.metrics.routed(RouteKind::User, outcome);
                self.answer(from, Reply::Accepted { id, outcome, recipients: n });
            }
            Msg::ToRoom { envelope, room, id, from, exclude } => {
                let room = room.name(&envelope);
                // One message per shard with members, each carrying the
                // same refcounted envelope.
                let mut groups: Vec<(ShardId, Vec<ConnId>)> = Vec::new();
                let mut recipients = 0u32;
                for m in self.rooms.borrow().members(room).iter().filter(|m| Some(**m) != exclude) {
                    recipients += 1;
                    match groups.iter_mut().find(|(s, _)| *s == m.shard) {
                        Some((_, v)) => v.push(m.conn),
                        None => groups.push((m.shard, vec![m.conn])),
                    }
                }
                for (shard, conns) in groups {
                    self.send_reliable(shard, Msg::Deliver { envelope: envelope.clone(), id, conns });
                }
                self.metrics.routed(RouteKind::Room, Outcome::Delivered);
                self.answer(from, Reply::Accepted { id, outcome: Outcome::Delivered, recipients });
            }
            Msg::Deliver { envelope, id, conns } => {
                let mut n = 0;
                for c in conns {
                    n += u64::from(self.deliver_one(c, &envelope, id));
                }
                self.metrics.delivered.add(n);
            }
            Msg::Join { room, member, request_id } => {
                self.rooms.borrow_mut().join(&room, member);
                self.answer(member, Reply::Done { request_id });
            }
            Msg::Leave { room, member, request_id } => {
                let was = self.rooms.borrow_mut().leave(&room, member);
                if let Some(request_id) = request_id {
                    let reply = if was {
                        Reply::Done { request_id }
                    } else {
                        Reply::Error {
                            code: ErrorCode::NotAMember,
                            id: None,
                            request_id: Some(request_id),
                            reason: "not a member of this room",
                        }
                    };
                    self.answer(member, reply);
                }
            }
            Msg::PresenceQuery { user, from, request_id } => {
                let connections = self.presence.borrow().connections(&user).len() as u32;
                self.answer(from, Reply::Presence { request_id, user, connections });
            }
            Msg::Reply { conn, reply } => self.reply(conn, reply),
            Msg::Handoff(h) => conn::adopt(self, *h),
            Msg::Command(cmd) => self.command(cmd),
        }
    }

    fn command(&self, cmd: Command) {
        match cmd {
            Command::Presence { user, reply } => {
                let now = Instant::now();
                let conns = self.conns.borrow();
                let list = self
                    .presence
                    .borrow()
                    .connections(&user)
                    .iter()
                    .filter_map(|id| conns.get(id.slot as usize).map(|c| (id, c)))
                    .map(|(id, c)| ConnectionInfo {
                        shard: self.id.0,
                        conn: format!("{}.{}", id.slot, id.generation),
                        protocol: c.protocol.as_str(),
                        device: c.identity.device().map(|d| d.as_str().to_owned()),
                        peer: c.peer.to_string(),
                        connected_secs: now.duration_since(c.connected).as_secs(),
                    })
                    .collect();
                let _ = reply.try_send(list);
            }
            Command::Shutdown => {
                self.stopping.set(true);
                let canceller = std::mem::take(&mut *self.accept_canceller.borrow_mut());
                canceller.cancel();
                let ids: Vec<ConnId> = self
                    .conns
                    .borrow()
                    .iter()
                    .map(|(slot, _)| ConnId { slot: slot as u32, generation: self.generations.borrow()[slot] })
                    .collect();
                for id in ids {
                    self.close(id, ErrorCode::ShuttingDown, "server shutting down");
                }
            }
            Command::ReloadKeys(verifier) => self.tokens.borrow_mut().set_verifier(verifier),
        }
    }

    /// Queues a close frame; the writer closes the socket after it.
    pub(crate) fn close(&self, id: ConnId, code: ErrorCode, reason: &str) {
        self.with_conn(id, |c| {
            if c.closing.is_some() {
                return;
            }
            if c.protocol == Protocol::WebSocket {
                c.out.push(Out::Owned(ws::close_frame(code.close_code(), reason)));
            }
            c.set_closing(code);
            c.wake_writer();
        });
    }

    /// Records a delivery-ack; unknown ids are ignored.
    pub(crate) fn ack(&self, id: ConnId, env_id: EnvelopeId) -> bool {
        self.with_conn(id, |c| {
            let Some(i) = c.unacked.iter().position(|(e, _)| *e == env_id) else {
                return false;
            };
            let (_, len) = c.unacked.remove(i).unwrap_or_default();
            c.unacked_bytes -= len;
            true
        })
        .unwrap_or(false)
    }

    /// Periodic housekeeping: pings, idle and slow-consumer disconnects.
    pub(crate) fn tick(&self, now: Instant) {
        let l = &self.shared.config.limits;
        let ping_after = Duration::from_millis(l.ping_interval_ms);
        let idle_after = Duration::from_millis(l.idle_timeout_ms);
        let grace = Duration::from_millis(l.slow_consumer_grace_ms);
        let mut to_close = Vec::new();
        {
            let mut conns = self.conns.borrow_mut();
            let gens = self.generations.borrow();
            for (slot, c) in conns.iter_mut() {
                if c.protocol != Protocol::WebSocket {
                    continue;
                }
                if let Some(since) = c.closing_since {
                    if now.saturating_duration_since(since) >= CLOSE_DEADLINE
                        && let Some(fd) = c.fd.take()
                    {
                        // The peer stopped reading: drop what is queued and
                        // shut the socket, which ends both tasks' I/O.
                        c.out.clear();
                        shutdown_socket(fd);
                        if let Some(w) = c.flush_waiter.take() {
                            w.wake();
                        }
                    }
                    continue;
                }
                let id = ConnId { slot: slot as u32, generation: gens[slot] };
                let frames = c.out.len() + c.unacked.len();
                let bytes = c.out.bytes() + c.unacked_bytes;
                if frames < l.outbound_queue_frames && bytes < l.outbound_queue_bytes {
                    c.slow_since = None;
                }
                let silent = now.saturating_duration_since(c.last_seen);
                if c.slow_since.is_some_and(|t| now.saturating_duration_since(t) >= grace) {
                    to_close.push((id, ErrorCode::SlowConsumer, "did not read or acknowledge deliveries in time"));
                } else if silent >= idle_after {
                    to_close.push((id, ErrorCode::IdleTimeout, "no traffic"));
                } else if silent >= ping_after && !c.pinged {
                    c.pinged = true;
                    c.out.push(Out::frame(&ws::ping_frame(b"sb")));
                    c.wake_writer();
                }
            }
        }
        for (id, code, reason) in to_close {
            if code == ErrorCode::SlowConsumer {
                self.metrics.slow_consumers.inc();
            }
            tracing::info!(shard = self.id.0, conn = id.slot, code = code.name(), "closing connection");
            self.close(id, code, reason);
        }
        self.flush_backlog();
        self.metrics.set_queue_depths(&self.shared.mesh, self.id);
    }

    /// Notes traffic from a connection (resets idle and ping timers).
    pub(crate) fn seen(&self, id: ConnId, now: Instant) {
        self.with_conn(id, |c| {
            c.last_seen = now;
            c.pinged = false;
        });
    }

    /// Resolves once every connection of this shard is gone.
    pub(crate) async fn drained(&self) {
        std::future::poll_fn(|cx| {
            if self.conns.borrow().is_empty() {
                std::task::Poll::Ready(())
            } else {
                *self.drained.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Routes a verified envelope sent by connection `from` of this shard
    /// to its destination `name` (a user or room owned by shard `owner`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route(
        &self,
        kind: RouteKind,
        owner: ShardId,
        name: Dest,
        envelope: Bytes,
        id: EnvelopeId,
        from: Member,
        echo: bool,
    ) {
        let exclude = if echo { None } else { Some(from) };
        let msg = match kind {
            RouteKind::User => Msg::ToUser { envelope, user: name, id, from, exclude },
            RouteKind::Room => Msg::ToRoom { envelope, room: name, id, from, exclude },
        };
        if !self.send_or_handle(owner, msg) {
            self.answer(from, overloaded(id));
        }
    }
}

fn overloaded(id: EnvelopeId) -> Reply {
    Reply::Error {
        code: ErrorCode::Overloaded,
        id: Some(id),
        request_id: None,
        reason: "cross-shard queue full, retry later",
    }
}

/// Shuts a socket down both ways, so pending reads and writes on it end.
pub(crate) fn shutdown_socket(fd: i32) {
    // SAFETY: `fd` belongs to a socket whose read and write halves are still
    // alive (the connection's tasks own them), so it is open; shutdown(2)
    // only changes the connection state and never frees the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// What the writer task should do next.
pub(crate) enum WriterPoll {
    /// The batch holds frames to write.
    Write,
    /// Nothing to write yet.
    Pending,
    /// The connection is closing and everything is written (or it is gone).
    Finish,
}

/// Route kinds, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `user:` destinations.
    User,
    /// `room:` destinations.
    Room,
}

/// A reply as a queued WebSocket binary frame; `scratch` is reused so that
/// small answers (`accepted`, `done`) allocate nothing.
fn reply_frame(reply: &Reply, scratch: &mut Vec<u8>) -> Out {
    let frame = match reply {
        Reply::Accepted { id, outcome, recipients } => {
            Frame::Accepted { id: *id, outcome: *outcome, recipients: *recipients }
        }
        Reply::Error { code, id, request_id, reason } => {
            Frame::Error(ErrorFrame { code: code.code(), envelope_id: *id, request_id: *request_id, reason })
        }
        Reply::Done { request_id } => Frame::Done { request_id: *request_id },
        Reply::Presence { request_id, user, connections } => match UserId::parse(user) {
            Ok(user) => Frame::PresenceResult { request_id: *request_id, user, connections: *connections },
            Err(_) => Frame::Done { request_id: *request_id },
        },
    };
    scratch.clear();
    let mut head = [0u8; ws::MAX_HEADER_LEN];
    let h = ws::binary_header(frame.encoded_len(), &mut head);
    scratch.extend_from_slice(&head[..h]);
    frame.encode(scratch);
    Out::frame(scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_found_again_by_its_place_in_the_envelope() {
        let envelope = b"....alice....".to_vec();
        let name = std::str::from_utf8(&envelope[4..9]).unwrap();
        let dest = Dest::new(&envelope, name);
        assert_eq!(dest.name(&envelope), "alice");
        // A shorter buffer than the place, or bytes that are not UTF-8,
        // name nothing (nothing panics).
        assert_eq!(dest.name(&envelope[..6]), "");
        assert_eq!(dest.name(b"....\xff\xfe...."), "");
    }
}
