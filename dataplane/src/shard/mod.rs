//! Shards: one thread, one reactor, one partition of the state each.
//!
//! A shard owns outright the connections it runs, the presence entries of
//! the users it owns (every WebSocket connection of user `u` lives on shard
//! `hash(u) % N`, handed over before its upgrade response if it arrived
//! elsewhere), and the membership of the rooms it owns. Nothing here is
//! shared with another shard: shards talk only through the bounded [`mesh`]
//! queues, so a delivery to a user takes at most one cross-shard hop
//! (sender's shard → recipient's owner shard, which writes to the sockets).
//! Anything outside a shard (admin API, signals) sends it a typed [`Msg`]
//! and awaits a reply.
//!
//! The modules, by what they own:
//! - [`ids`]: shard, connection and member ids, destination places;
//! - [`msg`]: messages between shards and commands from outside;
//! - [`shared`]: the state every shard reads (config, placement, mesh);
//! - [`admission`]: connection limits, log limits;
//! - [`conn`]: one connection's state (its [`Session`], queue, closing);
//! - this module: the shard's tables, connection lifecycle, timers;
//! - [`ingress`]: what the shard does with a connection's frames (runs the
//!   session, acts on its events), for every transport;
//! - [`routing`]: delivery to users and rooms, answers, the mesh backlog;
//! - [`presence`]: the presence and room tables;
//! - [`write`]: the transport-neutral outbound queue and its WebSocket
//!   encoder;
//! - [`handshake`], [`handoff`], [`ws_io`], [`reactor`]: accepting, the
//!   HTTP head and authentication, moving a socket to its owner shard, and
//!   WebSocket I/O (plain connections driven by the shard's epoll set; TLS
//!   ones by a reader and a writer task).

pub mod admission;
pub(crate) mod conn;
pub(crate) mod handoff;
pub(crate) mod handshake;
pub mod ids;
pub(crate) mod ingress;
pub mod mesh;
pub(crate) mod msg;
pub mod presence;
pub(crate) mod reactor;
pub(crate) mod routing;
pub(crate) mod shared;
pub(crate) mod write;
pub(crate) mod ws_io;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;
use switchboard_protocol::ErrorCode;
use switchboard_protocol::session::{Dedup, Reply, Session, Timeout, Transmit};

pub(crate) use admission::LogLimiter;
use conn::{CLOSE_DEADLINE, Conn, shutdown_socket, unacknowledged_bytes};
pub use ids::{ConnId, Member, ShardId};
pub(crate) use msg::{Command, ConnectionInfo, Fault, Msg};
use presence::{Presence, Rooms};
pub(crate) use shared::Shared;
use write::Out;

use crate::auth::Identity;
use crate::metrics::ShardMetrics;
pub use crate::metrics::{Protocol, RouteKind};

/// Idle write batches a shard keeps for reuse.
const BATCH_POOL: usize = 256;

/// One routed envelope in this many has its routing time measured.
pub(crate) const LATENCY_SAMPLE: u32 = 64;

/// One shard's state. Lives on its thread only (`Rc`, `RefCell`).
pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) metrics: Arc<ShardMetrics>,
    pub(crate) conns: RefCell<Slab<Conn>>,
    generations: RefCell<Vec<u32>>,
    presence: RefCell<Presence>,
    rooms: RefCell<Rooms>,
    /// Envelope ids routed recently, by sender (every WebSocket connection
    /// of a user is on the user's owner shard, so one table per shard).
    dedup: RefCell<Dedup<foldhash::fast::RandomState>>,
    /// Connections whose sessions have answers to flush.
    dirty: RefCell<Vec<ConnId>>,
    pub(crate) tokens: RefCell<crate::auth::ShardVerifier>,
    /// Messages waiting for room in full mesh queues.
    backlog: RefCell<routing::Backlog>,
    pub(crate) stopping: Cell<bool>,
    /// Cancels the pending accept when the shard stops.
    pub(crate) accept_canceller: RefCell<monoio::io::Canceller>,
    /// The client listener's socket, to stop listening at once on shutdown.
    pub(crate) listener_fd: Cell<Option<std::os::fd::RawFd>>,
    /// Write batches not in use (see [`Shard::take_batch`]). Boxed on
    /// purpose: a batch moves in and out of `writev` as a pointer.
    #[allow(clippy::vec_box)]
    batch_pool: RefCell<Vec<Box<write::WriteBatch>>>,
    /// Rate limit for logs about bad input, so a flood of bad clients
    /// cannot flood the logs.
    pub(crate) log_limiter: LogLimiter,
    /// Counts routed envelopes, to time one in [`LATENCY_SAMPLE`].
    latency_counter: Cell<u32>,
    /// The time of the current batch of work (read batch, mesh batch,
    /// tick): one clock read serves every delivery in it.
    now: Cell<Instant>,
    /// Woken when the last connection is gone (graceful shutdown).
    drained: RefCell<Option<Waker>>,
    /// The epoll set of the plain WebSocket connections (see [`reactor`]).
    pub(crate) reactor: reactor::Reactor,
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

impl Shard {
    pub(crate) fn new(id: ShardId, shared: Arc<Shared>) -> std::io::Result<Rc<Self>> {
        let tokens = crate::auth::ShardVerifier::new(shared.verifier.clone());
        let l = &shared.config.limits;
        let dedup = Dedup::new(std::time::Duration::from_millis(l.dedup_window_ms), l.dedup_capacity);
        let backlog = routing::Backlog::new(shared.mesh.shards());
        let reactor = reactor::Reactor::new()?;
        Ok(Rc::new(Self {
            id,
            metrics: shared.metrics[id.index()].clone(),
            shared,
            conns: RefCell::new(Slab::new()),
            generations: RefCell::new(Vec::new()),
            presence: RefCell::new(Presence::default()),
            rooms: RefCell::new(Rooms::default()),
            dedup: RefCell::new(dedup),
            dirty: RefCell::new(Vec::new()),
            tokens: RefCell::new(tokens),
            backlog: RefCell::new(backlog),
            stopping: Cell::new(false),
            accept_canceller: RefCell::new(monoio::io::Canceller::new()),
            listener_fd: Cell::new(None),
            batch_pool: RefCell::new(Vec::new()),
            log_limiter: LogLimiter::new(20),
            latency_counter: Cell::new(0),
            now: Cell::new(Instant::now()),
            drained: RefCell::new(None),
            reactor,
        }))
    }

    /// The time of the current batch of work.
    pub(crate) fn now(&self) -> Instant {
        self.now.get()
    }

    /// Starts a batch of work at `now`.
    pub(crate) fn set_now(&self, now: Instant) {
        self.now.set(now);
    }

    /// True for one envelope in [`LATENCY_SAMPLE`]: that one is timed.
    pub(crate) fn sample_latency(&self) -> bool {
        let n = self.latency_counter.get().wrapping_add(1);
        self.latency_counter.set(n);
        n.is_multiple_of(LATENCY_SAMPLE)
    }

    /// Registers a connection of `identity.user` on this shard; a
    /// WebSocket connection can receive from now on.
    pub(crate) fn register(&self, identity: Arc<Identity>, protocol: Protocol, peer: std::net::SocketAddr) -> ConnId {
        let now = Instant::now();
        let mut session = Session::new(&self.shared.session, now);
        if let Some(left) = self.tokens.borrow().verifier().time_left(&identity, crate::auth::unix_now()) {
            session.expire_at(now + left);
        }
        let conn = Conn::new(identity, protocol, peer, session);
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
            self.presence.borrow_mut().add(&user, Member { shard: self.id, conn: id });
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

    /// Queues `out` for a connection and wakes its writer.
    pub(crate) fn push(&self, id: ConnId, out: Out) {
        self.with_conn(id, |c| {
            c.tx.push(out);
            c.wake_writer();
        });
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
        conn.wake_flush_waiter();
        // Bump the generation so late messages for this id find nothing.
        if let Some(g) = self.generations.borrow_mut().get_mut(id.slot as usize) {
            *g = g.wrapping_add(1);
        }
        let me = Member { shard: self.id, conn: id };
        if conn.protocol == Protocol::WebSocket {
            self.presence.borrow_mut().remove(conn.identity.user().as_str(), me);
        }
        for room in conn.session.take_rooms() {
            self.send_reliable(self.shared.owners.room(&room), Msg::Leave { room, member: me, request_id: None });
        }
        self.metrics.connection_closed(conn.protocol);
        self.metrics.unacked_at_close.add(conn.session.unacked() as u64);
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
            if !c.tx.out.is_empty() {
                batch.get_or_insert_with(|| self.take_batch()).fill(&mut c.tx.out);
                c.writing = true;
                return WriterPoll::Write;
            }
            if c.is_closing() {
                return WriterPoll::Finish;
            }
            c.wakers.get_or_insert_with(Default::default).writer = Some(waker.clone());
            WriterPoll::Pending
        })
        .unwrap_or(WriterPoll::Finish)
    }

    /// A write batch from the shard's pool: connections hold one only while
    /// they write, so an idle connection keeps no batch (and none of the
    /// capacity a burst gave it).
    pub(crate) fn take_batch(&self) -> Box<write::WriteBatch> {
        self.batch_pool.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a written batch to the pool.
    pub(crate) fn recycle_batch(&self, batch: Box<write::WriteBatch>) {
        let mut pool = self.batch_pool.borrow_mut();
        if pool.len() < BATCH_POOL {
            pool.push(batch);
        }
    }

    /// The writer finished a batch (or stopped).
    pub(crate) fn writer_flushed(&self, id: ConnId) {
        self.with_conn(id, |c| {
            c.writing = false;
            if c.tx.out.is_empty() {
                c.wake_flush_waiter();
            }
        });
    }

    /// The socket failed: drop what is queued, nothing more will be written.
    pub(crate) fn writer_failed(&self, id: ConnId) {
        self.with_conn(id, |c| {
            c.tx.out.clear();
            c.writing = false;
            c.tx.set_closing(ErrorCode::Internal);
            c.wake_flush_waiter();
        });
    }

    /// Ready when the connection has nothing left to write (or is gone).
    pub(crate) fn wait_flushed(&self, id: ConnId, waker: &Waker) -> Poll<()> {
        self.with_conn(id, |c| {
            if c.tx.out.is_empty() && !c.writing {
                Poll::Ready(())
            } else {
                c.wakers.get_or_insert_with(Default::default).flush_waiter = Some(waker.clone());
                Poll::Pending
            }
        })
        .unwrap_or(Poll::Ready(()))
    }

    /// An HTTP request's answer, once it has arrived.
    pub(crate) fn poll_http_answer(&self, id: ConnId, waker: &Waker) -> Poll<Option<conn::HttpAnswer>> {
        self.with_conn(id, |c| match c.tx.http.take() {
            Some(r) => Poll::Ready(Some(*r)),
            None => {
                c.wakers.get_or_insert_with(Default::default).writer = Some(waker.clone());
                Poll::Pending
            }
        })
        .unwrap_or(Poll::Ready(None))
    }

    /// Handles one message addressed to this shard.
    pub(crate) fn handle(&self, msg: Msg) {
        match msg {
            Msg::Command(cmd) => self.command(cmd),
            Msg::Handoff(h) => {
                // Only the shard's I/O layer can adopt a socket; the mesh
                // loop hands these to it before they get here.
                tracing::warn!(peer = %h.peer, "hand-off reached the shard core; dropped");
            }
            other => self.handle_routing(other),
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
                    .filter(|m| m.shard == self.id)
                    .filter_map(|m| conns.get(m.conn.slot as usize).map(|c| (m.conn, c)))
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
                if let Some(fd) = self.listener_fd.take() {
                    // Leave the port's SO_REUSEPORT group now. Closing is
                    // not enough under io_uring: a pending accept holds the
                    // socket until the ring is torn down, which can be
                    // after the process exited, and a server started on the
                    // port meanwhile would share the group with it and see
                    // connections hashed to it reset.
                    shutdown_socket(fd);
                }
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
            Command::Fault(Fault::Panic) => panic!("fault injected by the admin API"),
            Command::Fault(Fault::Stall(d)) => std::thread::sleep(d),
        }
    }

    /// Closes a connection for `code`: queues the `error` frame and the
    /// close (docs/protocol.md: an error that closes is sent, then the
    /// connection closes); the writer closes the socket after them.
    pub(crate) fn close(&self, id: ConnId, code: ErrorCode, reason: &'static str) {
        self.with_conn(id, |c| {
            if c.is_closing() {
                return;
            }
            let (_, mut tx) = c.parts(&self.metrics);
            tx.reply(Reply::error(code, None, None, None, reason));
            tx.close(code, reason);
            c.wake_writer();
        });
    }

    /// Periodic housekeeping: pings, idle and slow-consumer disconnects.
    pub(crate) fn tick(&self, now: Instant) {
        self.set_now(now);
        self.shared.alive(self.id, now);
        let config = &self.shared.session;
        // While shutting down, a connection's last frames may take the
        // whole grace period (a client that reads slowly still gets every
        // delivery and its close frame); otherwise CLOSE_DEADLINE.
        let close_deadline = if self.stopping.get() {
            Duration::from_millis(self.shared.config.server.shutdown_grace_ms).max(CLOSE_DEADLINE)
        } else {
            CLOSE_DEADLINE
        };
        let mut to_close = Vec::new();
        {
            let mut conns = self.conns.borrow_mut();
            let gens = self.generations.borrow();
            for (slot, c) in conns.iter_mut() {
                if c.protocol != Protocol::WebSocket {
                    continue;
                }
                if let Some(since) = c.tx.closing_since() {
                    let late = now.saturating_duration_since(since) >= close_deadline;
                    // Written and acknowledged by the peer: the lingering
                    // reader can stop.
                    let written = c.tx.out.is_empty() && !c.writing && c.plain.as_ref().is_none_or(|p| p.written());
                    let done = written && c.fd.is_some_and(|fd| unacknowledged_bytes(fd) == 0);
                    if (late || done)
                        && let Some(fd) = c.fd.take()
                    {
                        // Late: the peer stopped reading; drop what is
                        // queued. Shutting the socket ends both tasks' I/O.
                        c.tx.out.clear();
                        shutdown_socket(fd);
                        c.wake_flush_waiter();
                    }
                    continue;
                }
                let (queued, bytes) = (c.tx.out.len(), c.tx.out.bytes());
                match c.session.handle_timeout(config, now, queued, bytes) {
                    Timeout::None => {}
                    Timeout::Ping => {
                        c.tx.out.push(Out::Ping);
                        c.wake_writer();
                    }
                    Timeout::Close(code, reason) => {
                        to_close.push((ConnId { slot: slot as u32, generation: gens[slot] }, code, reason));
                    }
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
        self.flush_writes();
        let mesh = &self.shared.mesh;
        self.metrics.set_queue_depth((0..mesh.shards()).map(|s| mesh.depth(ShardId(s as u16), self.id)).sum());
    }

    /// Resolves once every connection of this shard is gone.
    pub(crate) async fn drained(&self) {
        std::future::poll_fn(|cx| {
            if self.conns.borrow().is_empty() {
                Poll::Ready(())
            } else {
                *self.drained.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
