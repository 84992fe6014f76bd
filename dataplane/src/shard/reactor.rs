//! Plain (non-TLS) WebSocket connections driven by their shard, with no
//! task, future or buffer of their own while idle.
//!
//! Each shard keeps one epoll set of its plain connections' sockets
//! (edge-triggered, read and write interest registered once). One task,
//! [`run`], waits for that set to become readable through the shard's
//! runtime, takes the ready sockets with `epoll_wait(…, 0)` and handles
//! them: reads into one shard-wide buffer ([`Reactor::scratch`]), splits
//! complete frames off it as refcounted `Bytes` (the envelopes are
//! forwarded without a copy, as before), and keeps only an incomplete
//! frame's bytes with the connection. Output is written at the end of
//! each batch of work ([`Shard::flush_writes`]) straight from the queue
//! with `writev`; a socket that cannot take it all keeps the rest of its
//! batch and gets it written when epoll says it is writable again.
//!
//! This module and `libc` are the whole I/O layer of these connections:
//! the runtime (monoio) only tells when the epoll set is readable, so a
//! change of runtime leaves it as it is. TLS connections keep their reader
//! and writer tasks (`ws_io`): their session state dominates their size
//! anyway.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::buf::IoVecBuf;
use switchboard_protocol::ErrorCode;

use super::Shard;
use super::admission::ConnPermit;
use super::conn::{shutdown_socket, shutdown_write, unacknowledged_bytes};
use super::ids::ConnId;
use super::write::{Out, WriteBatch};
use super::ws_io::{decode_frames, now_unix_ms};
use crate::frontend::ws::WsDecoder;

/// Ready sockets taken per `epoll_wait`.
const EVENTS: usize = 256;
/// Reads per connection per turn before the others get theirs.
const MAX_READS: usize = 8;
/// Free space kept in the shared read buffer before each read.
const READ_SPACE: usize = 64 * 1024;

/// A shard's epoll set of plain connections and what its turns share.
pub(crate) struct Reactor {
    epfd: OwnedFd,
    events: RefCell<Vec<libc::epoll_event>>,
    /// The shard-wide read buffer: frames are split off it and live on as
    /// long as their deliveries; an incomplete frame moves to its
    /// connection.
    scratch: RefCell<BytesMut>,
    /// Connections with output to write, each once ([`PlainIo::queued`]).
    flush: Rc<RefCell<Vec<ConnId>>>,
    /// The list [`Shard::flush_writes`] works through, kept for reuse.
    flushing: RefCell<Vec<ConnId>>,
    /// Connections whose read loop was cut short this turn.
    more: RefCell<Vec<ConnId>>,
}

/// The I/O state of a plain connection, kept in its [`Conn`](super::conn::Conn).
pub(crate) struct PlainIo {
    fd: OwnedFd,
    id: ConnId,
    decoder: WsDecoder,
    /// An incomplete frame (empty, without allocation, most of the time).
    partial: BytesMut,
    /// The rest of a batch the socket could not take.
    unwritten: Option<Box<WriteBatch>>,
    flush: Rc<RefCell<Vec<ConnId>>>,
    /// In the shard's flush list.
    queued: bool,
    /// FIN sent after the close frame.
    shut_write: bool,
    /// Closing: what the peer still sends is read and dropped.
    lingering: bool,
    /// The peer closed, or the socket failed.
    read_ended: bool,
    _permit: ConnPermit,
}

impl PlainIo {
    /// True when no part of a batch waits for the socket.
    pub(crate) fn written(&self) -> bool {
        self.unwritten.is_none()
    }

    /// Asks for a write at the end of the current batch of work.
    pub(crate) fn wake(&mut self) {
        if !self.queued {
            self.queued = true;
            self.flush.borrow_mut().push(self.id);
        }
    }
}

impl Reactor {
    pub(crate) fn new() -> std::io::Result<Self> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            epfd,
            events: RefCell::new(vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS]),
            scratch: RefCell::new(BytesMut::new()),
            flush: Rc::new(RefCell::new(Vec::new())),
            flushing: RefCell::new(Vec::new()),
            more: RefCell::new(Vec::new()),
        })
    }

    fn add(&self, fd: RawFd, id: ConnId) -> std::io::Result<()> {
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        let mut ev = libc::epoll_event { events: events as u32, u64: token(id) };
        // SAFETY: both descriptors are open; `ev` is a valid event.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn token(id: ConnId) -> u64 {
    (u64::from(id.slot) << 32) | u64::from(id.generation)
}

fn conn_id(token: u64) -> ConnId {
    ConnId { slot: (token >> 32) as u32, generation: token as u32 }
}

/// Registers a plain WebSocket connection (upgrade answered, `leftover`
/// bytes read after its request head) and starts serving it.
pub(crate) fn attach(
    shard: &Rc<Shard>,
    fd: OwnedFd,
    upgrade: Vec<u8>,
    leftover: BytesMut,
    identity: std::sync::Arc<crate::auth::Identity>,
    peer: std::net::SocketAddr,
    permit: ConnPermit,
) {
    let raw = fd.as_raw_fd();
    // SAFETY: `raw` is the open socket `fd` owns.
    let nonblocking = unsafe { libc::fcntl(raw, libc::F_SETFL, libc::fcntl(raw, libc::F_GETFL) | libc::O_NONBLOCK) };
    if nonblocking < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot make a socket non-blocking");
        return;
    }
    let id = shard.register(identity.clone(), super::Protocol::WebSocket, peer);
    let reactor = &shard.reactor;
    if let Err(e) = reactor.add(raw, id) {
        tracing::warn!(error = %e, "cannot watch a connection's socket");
        shard.unregister(id);
        return;
    }
    let decoder = WsDecoder::new(shard.shared.session.limits.max_frame_len());
    shard.with_conn(id, |c| {
        c.fd = Some(raw);
        c.plain = Some(PlainIo {
            fd,
            id,
            decoder,
            // Without unread bytes, let the handshake's buffer go (an empty
            // remainder would still pin its whole allocation).
            partial: if leftover.is_empty() { BytesMut::new() } else { leftover },
            unwritten: None,
            flush: reactor.flush.clone(),
            queued: false,
            shut_write: false,
            lingering: false,
            read_ended: false,
            _permit: permit,
        });
    });
    tracing::debug!(shard = shard.id.0, conn = id.slot, user = %identity.user(), %peer, "connected");
    shard.push(id, Out::Raw(upgrade));
    // Frames that came with the request head.
    if shard.with_conn(id, |c| c.plain.as_ref().is_some_and(|p| !p.partial.is_empty())) == Some(true) {
        process(shard, id, false);
    }
    shard.flush_writes();
}

/// Serves the shard's plain connections until the shard stops.
pub(crate) async fn run(shard: Rc<Shard>) {
    // The epoll set, as a descriptor the runtime can wait on (read
    // readiness: some socket in the set is ready).
    // SAFETY: dup returns a new descriptor for the open epoll set or -1.
    let dup = unsafe { libc::dup(shard.reactor.epfd.as_raw_fd()) };
    if dup < 0 {
        tracing::error!(error = %std::io::Error::last_os_error(), "cannot watch the connection set");
        return;
    }
    // SAFETY: `dup` is a new descriptor owned by nothing else. It is not a
    // socket: only readiness is ever asked of it.
    let waiter = unsafe { std::os::unix::net::UnixStream::from_raw_fd(dup) };
    let waiter = match monoio::net::UnixStream::from_std(waiter) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the connection set");
            return;
        }
    };
    let mut ready = Vec::with_capacity(EVENTS);
    loop {
        let more = std::mem::take(&mut *shard.reactor.more.borrow_mut());
        if more.is_empty() {
            // relaxed = false: the runtime checks with poll(2) that the set
            // really has ready sockets before it wakes us.
            if let Err(e) = waiter.readable(false).await {
                // EINTR from the readiness check (a signal) is not a reason
                // to stop serving every plain connection of the shard.
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "waiting for the connection set failed; retrying");
                    monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                continue;
            }
        }
        for id in more {
            process(&shard, id, true);
        }
        loop {
            let n = {
                let mut events = shard.reactor.events.borrow_mut();
                // SAFETY: `events` has room for EVENTS entries.
                let n =
                    unsafe { libc::epoll_wait(shard.reactor.epfd.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, 0) };
                ready.clear();
                ready.extend(events[..n.max(0) as usize].iter().map(|e| (conn_id(e.u64), e.events)));
                n.max(0) as usize
            };
            for &(id, events) in &ready {
                if events & libc::EPOLLOUT as u32 != 0 {
                    write_ready(&shard, id);
                }
                if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    process(&shard, id, true);
                }
            }
            shard.flush_dirty();
            if n < EVENTS {
                break;
            }
        }
        if !shard.reactor.more.borrow().is_empty() {
            // Let the other tasks run before the connections cut short.
            crate::server::yield_now().await;
        }
    }
}

/// Reads what a connection's socket holds and hands its frames to the
/// shard (`read` false: only decode the bytes already held).
fn process(shard: &Shard, id: ConnId, read: bool) {
    let taken = shard.with_conn(id, |c| {
        let p = c.plain.as_mut()?;
        let decoder = std::mem::replace(&mut p.decoder, WsDecoder::new(0));
        Some((p.fd.as_raw_fd(), p.lingering, decoder, std::mem::take(&mut p.partial)))
    });
    let Some(Some((fd, mut discard, mut decoder, mut partial))) = taken else {
        return;
    };
    let now = Instant::now();
    let now_ms = now_unix_ms();
    shard.set_now(now);
    let mut ended = false;
    let mut cut_short = false;
    {
        let mut scratch = shard.reactor.scratch.borrow_mut();
        let mut held = Held { scratch: &mut scratch, partial: &mut partial };
        let mut stop = !read;
        let mut reads = 0;
        loop {
            held.decode(shard, id, &mut decoder, &mut discard, now, now_ms);
            if stop {
                break;
            }
            if reads == MAX_READS {
                cut_short = true;
                break;
            }
            reads += 1;
            match held.read(fd) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(short) => {
                    if !discard {
                        shard.seen(id, now);
                    }
                    // A short read drained the socket (new bytes bring a new
                    // edge): decode them, then stop.
                    stop = short == SHORT;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
    }
    if cut_short {
        shard.reactor.more.borrow_mut().push(id);
    }
    // At most one answer frame per read batch.
    shard.flush_answers(id);
    shard.with_conn(id, |c| {
        if let Some(p) = c.plain.as_mut() {
            p.decoder = decoder;
            // An emptied buffer is let go: an idle connection holds none.
            p.partial = if partial.is_empty() { BytesMut::new() } else { partial };
            p.lingering |= discard;
            p.read_ended |= ended;
        }
        if ended || discard {
            c.tx.set_closing(ErrorCode::ShuttingDown);
            c.wake_writer();
        }
    });
}

/// [`Held::read`]: the read did not fill the free space.
const SHORT: usize = 1;
/// [`Held::read`]: the read filled the free space (more may wait).
const FULL: usize = 2;

/// The bytes a connection has read and not yet decoded: in the shared
/// buffer, or, while a frame is incomplete across reads, its own.
struct Held<'a> {
    scratch: &'a mut BytesMut,
    partial: &'a mut BytesMut,
}

impl Held<'_> {
    fn buf(&mut self) -> &mut BytesMut {
        if self.partial.is_empty() { self.scratch } else { self.partial }
    }

    /// One `read` into the free space: `Ok(0)` at end of stream, else
    /// [`SHORT`] or [`FULL`].
    fn read(&mut self, fd: RawFd) -> std::io::Result<usize> {
        let buf = self.buf();
        if buf.capacity() - buf.len() < READ_SPACE / 4 {
            buf.reserve(READ_SPACE);
        }
        let spare = buf.capacity() - buf.len();
        // SAFETY: reads into the spare capacity of `buf`, allocated and
        // `spare` bytes long; `fd` is open (the connection owns it).
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(buf.len()).cast(), spare) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised `n` bytes past `len`.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(if n == 0 {
            0
        } else if n < spare {
            SHORT
        } else {
            FULL
        })
    }

    /// Hands every complete frame held to the shard; once the connection
    /// closes (`discard`), drops what comes. An incomplete frame left in
    /// the shared buffer moves to the connection (a copy of at most one
    /// frame, at a read boundary).
    fn decode(
        &mut self,
        shard: &Shard,
        id: ConnId,
        decoder: &mut WsDecoder,
        discard: &mut bool,
        now: Instant,
        now_ms: u64,
    ) {
        let buf = self.buf();
        if !*discard && !decode_frames(shard, id, decoder, buf, now, now_ms) {
            *discard = true;
        }
        if *discard || shard.with_conn(id, |c| c.is_closing()).unwrap_or(true) {
            *discard = true;
            buf.clear();
        }
        if self.partial.is_empty() && !self.scratch.is_empty() {
            self.partial.reserve(self.scratch.len().max(4096));
            self.partial.extend_from_slice(self.scratch);
            self.scratch.clear();
        }
    }
}

/// The socket can take more: write what is waiting.
fn write_ready(shard: &Shard, id: ConnId) {
    if shard.with_conn(id, |c| c.plain.as_ref().is_some_and(|p| p.unwritten.is_some())) == Some(true) {
        write(shard, id);
    }
}

impl Shard {
    /// Writes the output of every plain connection that has some (once per
    /// batch of work: a read batch, a mesh batch, a tick).
    pub(crate) fn flush_writes(&self) {
        loop {
            // Swapped with a spare list, so that no batch allocates.
            let mut ids = std::mem::take(&mut *self.reactor.flushing.borrow_mut());
            std::mem::swap(&mut ids, &mut *self.reactor.flush.borrow_mut());
            let done = ids.is_empty();
            for &id in &ids {
                write(self, id);
            }
            ids.clear();
            *self.reactor.flushing.borrow_mut() = ids;
            if done {
                return;
            }
        }
    }
}

/// Writes a plain connection's queue until it is empty or the socket is
/// full; then, if it is closing, sends FIN and ends it when the peer has
/// everything.
fn write(shard: &Shard, id: ConnId) {
    enum Step {
        Wrote,
        Blocked,
        Done,
        Failed,
    }
    loop {
        let step = shard
            .with_conn(id, |c| {
                let Some(p) = c.plain.as_mut() else { return Step::Done };
                // Out of the flush list (or written before its turn there).
                p.queued = false;
                let mut batch = match p.unwritten.take() {
                    Some(b) => b,
                    None if c.tx.out.is_empty() => return Step::Done,
                    None => {
                        let mut b = shard.take_batch();
                        b.fill(&mut c.tx.out);
                        b
                    }
                };
                if batch.is_empty() {
                    shard.recycle_batch(batch);
                    return Step::Wrote;
                }
                // SAFETY: the iovecs point into `batch`, alive for the call;
                // `fd` is open (the connection owns it).
                let n =
                    unsafe { libc::writev(p.fd.as_raw_fd(), batch.read_iovec_ptr(), batch.read_iovec_len() as i32) };
                if n < 0 {
                    let kind = std::io::Error::last_os_error().kind();
                    p.unwritten = Some(batch);
                    return match kind {
                        std::io::ErrorKind::WouldBlock => Step::Blocked,
                        std::io::ErrorKind::Interrupted => Step::Wrote,
                        _ => Step::Failed,
                    };
                }
                batch.advance(n as usize);
                if batch.is_empty() {
                    shard.recycle_batch(batch);
                } else {
                    p.unwritten = Some(batch);
                }
                Step::Wrote
            })
            .unwrap_or(Step::Done);
        match step {
            Step::Wrote => continue,
            Step::Blocked => return,
            Step::Failed => {
                shard.with_conn(id, |c| {
                    c.tx.out.clear();
                    c.tx.set_closing(ErrorCode::Internal);
                    if let Some(p) = c.plain.as_mut() {
                        p.unwritten = None;
                        p.read_ended = true;
                    }
                });
                finish(shard, id);
                return;
            }
            Step::Done => break,
        }
    }
    // Everything queued is written.
    let end = shard
        .with_conn(id, |c| {
            if !c.is_closing() {
                return false;
            }
            let Some(p) = c.plain.as_mut() else { return false };
            let fd = p.fd.as_raw_fd();
            if !p.shut_write {
                p.shut_write = true;
                shutdown_write(fd);
            }
            // The peer has closed, or acknowledged every byte: nothing is
            // lost by closing now. Else the socket lingers (reads dropped)
            // until the tick sees the peer has it all, or the deadline.
            p.lingering = true;
            p.read_ended || c.fd.is_none() || unacknowledged_bytes(fd) == 0
        })
        .unwrap_or(false);
    if end {
        finish(shard, id);
    }
}

/// Ends a plain connection: shuts its socket and unregisters it (its
/// descriptor closes with its state, which leaves the epoll set).
fn finish(shard: &Shard, id: ConnId) {
    shard.with_conn(id, |c| {
        if let Some(fd) = c.fd.take() {
            shutdown_socket(fd);
        }
    });
    shard.unregister(id);
    tracing::debug!(shard = shard.id.0, conn = id.slot, "disconnected");
}
