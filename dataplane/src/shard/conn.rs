//! One connection's state on its shard, for any transport: its identity,
//! its [`Session`] (every protocol rule), its outbound queue and closing
//! state, and the wakers of the tasks that do its I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use switchboard_protocol::session::{Reply, Session, Transmit};
use switchboard_protocol::{ErrorCode, Outcome};

use super::write::{Out, OutQueue};
use crate::auth::Identity;
use crate::metrics::{Protocol, ShardMetrics};

/// How long a closing connection may take to flush its last frames before
/// its socket is shut down (a peer that stopped reading).
pub(crate) const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// The answer to one `POST /send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpAnswer {
    /// Accepted, with the live connections it was written to.
    Accepted { outcome: Outcome, recipients: u32 },
    /// Refused.
    Error { code: ErrorCode, reason: &'static str },
}

/// Where a connection's output goes: its queue, or for an HTTP request
/// the one answer it waits for.
#[derive(Debug, Default)]
pub(crate) struct Tx {
    pub(crate) out: OutQueue,
    /// Set when the connection must close after its queue is written.
    closing: Option<ErrorCode>,
    /// When `closing` was set; a close that does not finish in
    /// [`CLOSE_DEADLINE`] is forced by the tick.
    closing_since: Option<Instant>,
    /// For HTTP requests: the answer, once it is known.
    pub(crate) http: Option<Box<HttpAnswer>>,
}

/// The [`Transmit`] a session writes into: a connection's [`Tx`], counting
/// errors in the shard's metrics.
pub(crate) struct ConnTx<'a> {
    pub(crate) tx: &'a mut Tx,
    pub(crate) protocol: Protocol,
    pub(crate) metrics: &'a ShardMetrics,
}

impl Transmit for ConnTx<'_> {
    fn reply(&mut self, reply: Reply) {
        if let Reply::Error(e) = &reply {
            self.metrics.rejected.inc(e.code);
        }
        if self.protocol != Protocol::Http {
            self.tx.push(Out::Reply(reply));
            return;
        }
        self.tx.http = match reply {
            Reply::Accepted(c) => Some(Box::new(HttpAnswer::Accepted { outcome: c.outcome, recipients: 0 })),
            Reply::Error(e) => Some(Box::new(HttpAnswer::Error { code: e.code, reason: e.reason })),
            _ => return,
        };
    }

    fn close(&mut self, code: ErrorCode, reason: &'static str) {
        if self.tx.closing.is_some() {
            return;
        }
        if self.protocol != Protocol::Http {
            self.tx.out.push(Out::Close { code, reason });
        }
        self.tx.set_closing(code);
    }
}

impl Tx {
    /// Queues `out`, unless the connection is closing: nothing goes after
    /// its close (and its writer may be done).
    pub(crate) fn push(&mut self, out: Out) {
        if self.closing.is_none() {
            self.out.push(out);
        }
    }

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

    /// Since when the connection has been closing.
    pub(crate) fn closing_since(&self) -> Option<Instant> {
        self.closing_since
    }
}

/// The wakers of a connection's tasks.
#[derive(Default)]
pub(crate) struct Wakers {
    /// The writer task's (or, for an HTTP request, its task's).
    pub(crate) writer: Option<Waker>,
    /// Waiting for the writer to flush (the reader, before it unregisters).
    pub(crate) flush_waiter: Option<Waker>,
}

/// A connection's state on its shard.
pub(crate) struct Conn {
    pub(crate) identity: Arc<Identity>,
    pub(crate) protocol: Protocol,
    pub(crate) peer: SocketAddr,
    pub(crate) connected: Instant,
    pub(crate) session: Session,
    pub(crate) tx: Tx,
    /// In the shard's list of sessions with answers to flush.
    pub(crate) dirty: bool,
    /// True while the writer holds a batch taken from the queue.
    pub(crate) writing: bool,
    /// The tasks' wakers (TLS connections and HTTP requests; boxed: plain
    /// connections, most of them, have no task).
    pub(crate) wakers: Option<Box<Wakers>>,
    /// The socket, for forcing a close (WebSocket connections).
    pub(crate) fd: Option<i32>,
    /// The I/O state of a plain WebSocket connection, driven by the shard
    /// (`None` for TLS ones, which have tasks, and HTTP requests).
    pub(crate) plain: Option<super::reactor::PlainIo>,
}

impl Conn {
    /// A new connection's state.
    pub(crate) fn new(identity: Arc<Identity>, protocol: Protocol, peer: SocketAddr, session: Session) -> Self {
        Self {
            identity,
            protocol,
            peer,
            connected: Instant::now(),
            session,
            tx: Tx::default(),
            dirty: false,
            writing: false,
            wakers: None,
            fd: None,
            plain: None,
        }
    }

    /// The session and where its output goes, borrowed apart.
    pub(crate) fn parts<'a>(&'a mut self, metrics: &'a ShardMetrics) -> (&'a mut Session, ConnTx<'a>) {
        (&mut self.session, ConnTx { tx: &mut self.tx, protocol: self.protocol, metrics })
    }

    /// True once the connection is closing.
    pub(crate) fn is_closing(&self) -> bool {
        self.tx.is_closing()
    }

    /// Wakes the writer (something was queued, or it must finish): the
    /// writer task, or for a plain connection, a write at the end of the
    /// shard's current batch of work.
    pub(crate) fn wake_writer(&mut self) {
        if let Some(w) = self.wakers.as_mut().and_then(|w| w.writer.take()) {
            w.wake();
        } else if let Some(p) = self.plain.as_mut() {
            p.wake();
        }
    }

    /// Wakes the task waiting for the queue to drain.
    pub(crate) fn wake_flush_waiter(&mut self) {
        if let Some(w) = self.wakers.as_mut().and_then(|w| w.flush_waiter.take()) {
            w.wake();
        }
    }
}

/// Shuts a socket down both ways, so pending reads and writes on it end.
pub(crate) fn shutdown_socket(fd: i32) {
    // SAFETY: `fd` belongs to a socket that a task of this shard still owns
    // (a connection's reader and writer, or the accept loop's listener), so
    // it is open; shutdown(2) only changes the socket's state and never
    // frees the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Sends FIN once the queued bytes are sent; reading goes on.
pub(crate) fn shutdown_write(fd: i32) {
    // SAFETY: as in `shutdown_socket`.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// Bytes written to `fd` that the peer's TCP stack has not acknowledged
/// yet (sent or not); 0 if it cannot be told.
pub(crate) fn unacknowledged_bytes(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int into `n`; `fd` is a socket
    // a task of this shard still owns, so it is open.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if r == 0 { usize::try_from(n).unwrap_or(0) } else { 0 }
}
