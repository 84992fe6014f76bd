//! Connection tasks: accept, handshake (HTTP head, auth), hand-off to the
//! owner shard, then the WebSocket reader and writer, and `POST /send`.
//!
//! Received bytes stay in the connection's read buffer: a frame is split off
//! it as a refcounted `Bytes`, the envelope is a slice of that, and the same
//! slice is queued to every recipient. Nothing here mutates presence or
//! rooms directly; it calls the [`Shard`] methods that own them.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::{TcpListener, TcpStream};
use switchboard_protocol::envelope::EnvelopeFlags;
use switchboard_protocol::{Destination, Envelope, ErrorCode, Frame, Limits};
use tracing::Instrument;

use super::write::{Out, WriteBatch};
use super::{ConnId, ConnPermit, Dest, Member, Msg, Protocol, Reply, RouteKind, Shard, WriterPoll, shutdown_socket};
use crate::auth::Identity;
use crate::frontend::http::{self, RequestHead};
use crate::frontend::ws::{self, WsDecoder, WsEvent};
use crate::tls::TlsSession;

/// Bytes read per `read` call during the handshake and on TLS sockets.
const READ_CHUNK: usize = 4096;

/// Sizes the read buffer of a WebSocket connection: small while the
/// connection is idle (an idle connection should cost little memory),
/// doubling while reads fill it, shrinking back when traffic stops.
#[derive(Debug)]
struct ReadSizer {
    chunk: usize,
}

impl ReadSizer {
    const MIN: usize = 64;
    const MAX: usize = 64 * 1024;

    fn new() -> Self {
        Self { chunk: Self::MIN }
    }

    /// Makes room for the next read; an empty, oversized buffer is
    /// replaced by a small one (the old allocation lives on only while
    /// queued deliveries still point into it).
    fn prepare(&mut self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 2 * self.chunk {
            *buf = BytesMut::with_capacity(self.chunk);
        }
        if buf.capacity() - buf.len() < self.chunk / 2 {
            buf.reserve(self.chunk);
        }
    }

    /// Adapts to how much the last read brought (`spare` bytes were free).
    fn record(&mut self, n: usize, spare: usize) {
        if n == spare {
            self.chunk = (self.chunk * 2).min(Self::MAX);
        } else if n < self.chunk / 4 {
            self.chunk = (self.chunk / 2).max(Self::MIN);
        }
    }
}

/// The spare capacity of `buf`, after the bytes it holds, as a read target.
///
/// monoio's `read` fills a buffer from its start (`write_ptr` is the first
/// byte, `bytes_total` the capacity), so reading straight into a `BytesMut`
/// that still holds an incomplete frame or request head would overwrite it;
/// reading into the slice past `len` appends. `buf` must have spare
/// capacity (a zero-length read would look like end of stream).
fn spare_capacity(buf: BytesMut) -> SliceMut<BytesMut> {
    let (len, cap) = (buf.len(), buf.capacity());
    debug_assert!(cap > len, "a read needs spare capacity");
    buf.slice_mut(len..cap)
}

/// Reads into the spare capacity of `buf`, after the bytes it holds.
async fn read_append<R: AsyncReadRent>(stream: &mut R, buf: BytesMut) -> (std::io::Result<usize>, BytesMut) {
    let (res, slice) = stream.read(spare_capacity(buf)).await;
    (res, slice.into_inner())
}

/// A connection that authenticated on one shard, moving to its owner.
pub(crate) struct Handoff {
    fd: OwnedFd,
    /// The TLS session, when the client port speaks TLS.
    tls: Option<Box<TlsSession>>,
    identity: Arc<Identity>,
    /// Bytes read after the handshake (frames the client sent at once).
    leftover: BytesMut,
    peer: SocketAddr,
    permit: ConnPermit,
}

/// Accepts connections until the shard stops.
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let cancel = shard.accept_canceller.borrow().handle();
    loop {
        let (stream, peer) = match listener.cancelable_accept(cancel.clone()).await {
            Ok(x) => x,
            Err(_) if shard.stopping.get() => {
                // Shutting down: dropping the listener closes the port, so
                // new clients are refused instead of accepted and dropped.
                tracing::debug!(shard = shard.id.0, "listener closed");
                return;
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = shard.id.0, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shard.stopping.get() {
            continue;
        }
        shard.metrics.accepted.inc();
        let permit = match shard.shared.admit(peer.ip()) {
            Ok(p) => p,
            Err(code) => {
                shard.metrics.handshake_failures.inc();
                tracing::debug!(%peer, "connection refused: limit");
                monoio::spawn(refuse(stream, code, "too many connections"));
                continue;
            }
        };
        monoio::spawn(handshake(shard.clone(), stream, peer, permit));
    }
}

async fn refuse(stream: TcpStream, code: ErrorCode, reason: &'static str) {
    // Without TLS the client gets a readable answer; with TLS it would need
    // a handshake first, which a refused connection does not get.
    let mut io = Io::plain(stream);
    if io.tls.is_none() {
        let _ = io.write_all(http::error_response(code, reason, false)).await;
    }
}

/// A client socket, plain or TLS, during the handshake phase (before the
/// reader and writer tasks split it).
struct Io {
    stream: TcpStream,
    tls: Option<Box<TlsSession>>,
    /// Ciphertext read but not yet decrypted.
    raw: BytesMut,
}

impl Io {
    fn plain(stream: TcpStream) -> Self {
        Self { stream, tls: None, raw: BytesMut::new() }
    }

    fn new(shard: &Shard, stream: TcpStream) -> std::io::Result<Self> {
        let tls = match &shard.shared.tls {
            Some(cfg) => Some(Box::new(TlsSession::new(cfg.clone())?)),
            None => None,
        };
        Ok(Self { stream, tls, raw: BytesMut::new() })
    }

    /// Reads and appends plaintext to `buf`; `Ok(0)` at end of stream.
    async fn read_into(&mut self, mut buf: BytesMut) -> (std::io::Result<usize>, BytesMut) {
        let Some(tls) = self.tls.as_mut() else {
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(READ_CHUNK);
            }
            return read_append(&mut self.stream, buf).await;
        };
        loop {
            let before = buf.len();
            self.raw.clear();
            self.raw.reserve(READ_CHUNK);
            let raw = std::mem::take(&mut self.raw);
            let (res, raw) = self.stream.read(raw).await;
            self.raw = raw;
            match res {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
            let received = tls.receive(&self.raw, &mut buf);
            let mut out = Vec::new();
            let _ = tls.take_output(&mut out);
            if !out.is_empty() {
                let (res, _) = self.stream.write_all(out).await;
                if let Err(e) = res {
                    return (Err(e), buf);
                }
            }
            if let Err(e) = received {
                return (Err(e), buf);
            }
            if buf.len() > before {
                return (Ok(buf.len() - before), buf);
            }
        }
    }

    /// Writes `data` (encrypted when TLS is on).
    async fn write_all(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        let data = match self.tls.as_mut() {
            Some(tls) => {
                tls.send(&data)?;
                let mut out = Vec::with_capacity(data.len() + 64);
                tls.take_output(&mut out)?;
                out
            }
            None => data,
        };
        self.stream.write_all(data).await.0.map(|_| ())
    }
}

/// Reads the request head, authenticates and dispatches by route.
async fn handshake(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr, permit: ConnPermit) {
    let _ = stream.set_nodelay(true);
    let io = match Io::new(&shard, stream) {
        Ok(io) => io,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot start a TLS session");
            return;
        }
    };
    let timeout = Duration::from_millis(shard.shared.config.limits.handshake_timeout_ms);
    let result = monoio::time::timeout(timeout, read_head(io)).await;
    let (mut io, head, buf) = match result {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return, // closed before sending a request
        Ok(Err((mut io, e))) => {
            shard.metrics.handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "bad request head");
            let _ = io.write_all(e.response()).await;
            return;
        }
        Err(_) => {
            shard.metrics.handshake_failures.inc();
            tracing::debug!(%peer, "handshake timeout");
            return;
        }
    };
    let route = (head.method(), head.path());
    match route {
        (http::Method::Get, "/connect") => websocket(shard, io, head, buf, peer, permit).await,
        (http::Method::Post, "/send") => {
            let timeout = Duration::from_millis(shard.shared.config.limits.handshake_timeout_ms);
            let _ = monoio::time::timeout(timeout, http_send(shard, io, head, buf, peer, permit)).await;
        }
        (http::Method::Get, "/healthz") => {
            let _ = io.write_all(http::response(200, "text/plain", b"ok\n", false)).await;
        }
        _ => {
            let body = http::error_body(ErrorCode::UnknownFrameType, "no such endpoint");
            let _ = io.write_all(http::response(404, "application/json", &body, false)).await;
        }
    }
}

type HeadResult = Result<Option<(Io, RequestHead, BytesMut)>, (Io, http::HttpError)>;

/// Reads until a complete request head; returns it and the bytes after it.
async fn read_head(mut io: Io) -> HeadResult {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match http::parse_request(&buf) {
            Ok(Some((head, len))) => {
                let _ = buf.split_to(len);
                return Ok(Some((io, head, buf)));
            }
            Ok(None) => {}
            Err(e) => return Err((io, e)),
        }
        let (res, b) = io.read_into(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

fn now_unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Verifies the request's bearer token with the shard's cached verifier.
fn authenticate(shard: &Shard, head: &RequestHead) -> Result<Arc<Identity>, (ErrorCode, String)> {
    let token = match head.bearer_token() {
        Ok(Some(t)) => t,
        Ok(None) => return Err((ErrorCode::Unauthenticated, "no token: use Authorization: Bearer".into())),
        Err(e) => return Err((ErrorCode::InvalidToken, e.to_string())),
    };
    shard.tokens.borrow_mut().verify(token.jwt(), now_unix_secs()).map_err(|e| (e.code(), e.to_string()))
}

async fn websocket(
    shard: Rc<Shard>,
    mut io: Io,
    head: RequestHead,
    leftover: BytesMut,
    peer: SocketAddr,
    permit: ConnPermit,
) {
    let upgrade = match http::validate_websocket_upgrade(&head) {
        Ok(u) => u,
        Err(e) => {
            shard.metrics.handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "bad websocket upgrade");
            let _ = io.write_all(e.response()).await;
            return;
        }
    };
    let identity = match authenticate(&shard, &head) {
        Ok(id) => id,
        Err((code, reason)) => {
            shard.metrics.handshake_failures.inc();
            if shard.log_limiter.allow() {
                tracing::info!(%peer, code = code.name(), %reason, "authentication failed");
            }
            let _ = io.write_all(http::error_response(code, &reason, false)).await;
            return;
        }
    };
    if io.write_all(upgrade.response()).await.is_err() {
        return;
    }
    let owner = shard.shared.owners.user(identity.user().as_str());
    if owner == shard.id {
        // A task of its own: the long-lived connection should not carry the
        // handshake's state (request head, upgrade, the HTTP path's locals).
        spawn_websocket(shard, io, leftover, identity, peer, permit);
        return;
    }
    let Io { stream, tls, .. } = io;
    // Hand the socket to the user's owner shard, so that every connection
    // of a user is one hop from any sender.
    let fd = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` released ownership of an open socket to us
    // (after deregistering it from this shard's reactor).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let handoff = Box::new(Handoff { fd, tls, identity, leftover, peer, permit });
    shard.metrics.handoffs.inc();
    if let Err(Msg::Handoff(h)) = shard.shared.mesh.send(shard.id, owner, Msg::Handoff(handoff)) {
        // The owner's queue is full: refuse rather than queue without bound.
        shard.metrics.cross_shard_full.inc();
        let std = std::net::TcpStream::from(h.fd);
        if let Ok(stream) = TcpStream::from_std(std) {
            let mut io = Io { stream, tls: h.tls, raw: BytesMut::new() };
            let frame = ws::close_frame(ErrorCode::Overloaded.close_code(), "server busy, retry");
            let _ = io.write_all(frame).await;
        }
    }
}

/// Adopts a connection handed over by another shard.
pub(crate) fn adopt(shard: &Shard, h: Handoff) {
    let Some(shard) = shard.this.upgrade() else { return };
    let std = std::net::TcpStream::from(h.fd);
    match TcpStream::from_std(std) {
        Ok(stream) => {
            let io = Io { stream, tls: h.tls, raw: BytesMut::new() };
            spawn_websocket(shard, io, h.leftover, h.identity, h.peer, h.permit);
        }
        Err(e) => tracing::warn!(error = %e, "cannot adopt handed-over connection"),
    }
}

/// Registers an authenticated WebSocket connection on its owner shard and
/// starts its reader and writer tasks.
///
/// The setup is synchronous so that the long-lived reader future holds only
/// what the loop needs ([`ReadState`]): an async fn keeps its arguments and
/// every local that was ever borrowed in its state, and the reader's state
/// is most of an idle connection's memory.
fn spawn_websocket(
    shard: Rc<Shard>,
    io: Io,
    buf: BytesMut,
    identity: Arc<Identity>,
    peer: SocketAddr,
    permit: ConnPermit,
) {
    let id = shard.register(identity.clone(), Protocol::WebSocket, peer);
    let span = tracing::debug_span!("conn", shard = shard.id.0, conn = id.slot, user = %identity.user());
    span.in_scope(|| tracing::debug!(%peer, "connected"));
    let Io { stream, tls, raw } = io;
    let fd = stream.as_raw_fd();
    shard.with_conn(id, |c| c.fd = Some(fd));
    let tls = tls.map(|t| Rc::new(RefCell::new(*t)));
    let (rd, wr) = stream.into_split();
    monoio::spawn(write_loop(shard.clone(), id, wr, fd, tls.clone()).instrument(span.clone()));
    // Unread bytes after the handshake are rare; without them, drop the
    // handshake's read buffer (it would pin its whole allocation).
    let buf = if buf.is_empty() { BytesMut::new() } else { buf };
    let state = Box::new(ReadState { shard, id, identity, rd, tls, raw, buf, _permit: permit });
    monoio::spawn(read_websocket(state).instrument(span));
}

/// What a WebSocket connection's reader keeps between reads.
struct ReadState {
    shard: Rc<Shard>,
    id: ConnId,
    identity: Arc<Identity>,
    rd: OwnedReadHalf<TcpStream>,
    tls: Option<Rc<RefCell<TlsSession>>>,
    /// TLS records read, not yet decrypted.
    raw: BytesMut,
    /// Plaintext bytes read, not yet decoded into frames.
    buf: BytesMut,
    /// The connection's slot in the global and per-IP counts.
    _permit: ConnPermit,
}

/// The reader of a registered WebSocket connection, until it ends.
///
/// The state comes boxed and is only borrowed: an async fn stores its
/// arguments and the locals they move into side by side, so a state moved
/// out of an argument by value would be in the future twice.
async fn read_websocket(mut st: Box<ReadState>) {
    let (shard, id, identity, tls) = (&st.shard, st.id, &st.identity, &st.tls);
    let (rd, raw, buf) = (&mut st.rd, &mut st.raw, &mut st.buf);
    let me = Member { shard: shard.id, conn: id };
    let limits = Limits::default().with_max_envelope_len(shard.shared.config.limits.max_envelope_bytes);
    let mut decoder = WsDecoder::new(limits.max_frame_len());
    let mut sizer = ReadSizer::new();
    let reader = Reader { shard, id, me, identity, limits };
    let mut first = true;
    'conn: loop {
        // One clock read per batch of received bytes: it stamps the
        // connection's activity and the frames of the batch.
        let now = Instant::now();
        let now_ms = now_unix_ms();
        if !std::mem::take(&mut first) {
            shard.seen(id, now);
        }
        loop {
            match decoder.decode(buf) {
                Ok(Some((event, consumed))) => {
                    let frame = buf.split_to(consumed).freeze();
                    if !reader.on_event(event, frame, now, now_ms) {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket protocol error");
                    let code = e.close_code();
                    shard.with_conn(id, |c| {
                        c.out.push(Out::Owned(ws::close_frame(code, &e.to_string())));
                        c.set_closing(ErrorCode::MalformedFrame);
                    });
                    shard.reply_wake(id);
                    break 'conn;
                }
            }
        }
        if shard.with_conn(id, |c| c.is_closing()).unwrap_or(true) {
            // Closing: stop reading; the writer flushes the close frame.
            break;
        }
        let Some(tls) = tls else {
            sizer.prepare(buf);
            let spare = buf.capacity() - buf.len();
            // The read's own future, awaited here (no wrapper future to
            // store alongside it in this state).
            let (res, slice) = rd.read(spare_capacity(std::mem::take(buf))).await;
            *buf = slice.into_inner();
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => sizer.record(n, spare),
            }
            continue;
        };
        raw.clear();
        raw.reserve(READ_CHUNK);
        let (res, r) = rd.read(std::mem::take(raw)).await;
        *raw = r;
        if matches!(res, Ok(0) | Err(_)) {
            break;
        }
        let mut session = tls.borrow_mut();
        let received = session.receive(raw, buf);
        if session.wants_write() {
            // Alerts or post-handshake messages: let the writer send them.
            shard.with_conn(id, |c| c.out.push(Out::Owned(Vec::new())));
            shard.reply_wake(id);
        }
        if received.is_err() {
            break;
        }
    }
    // Let the writer flush a pending close frame before the socket goes.
    // Bounded without a timer per connection: the tick shuts the socket
    // of a close that takes longer than CLOSE_DEADLINE.
    shard.with_conn(id, |c| c.set_closing(ErrorCode::ShuttingDown));
    poll_fn(|cx| shard.wait_flushed(id, cx.waker())).await;
    shard.unregister(id);
    tracing::debug!("disconnected");
}

/// `bytes[start..start + len]` as the same reference (no refcount update,
/// unlike `slice`).
fn narrow(mut bytes: Bytes, start: usize, len: usize) -> Bytes {
    bytes.advance(start);
    bytes.truncate(len);
    bytes
}

/// Interprets frames for one connection.
struct Reader<'a> {
    shard: &'a Rc<Shard>,
    id: ConnId,
    me: Member,
    identity: &'a Identity,
    limits: Limits,
}

impl Reader<'_> {
    /// Handles one WebSocket event; false ends the connection.
    fn on_event(&self, event: WsEvent, frame: Bytes, now: Instant, now_ms: u64) -> bool {
        match event {
            // A frame may close the connection (a fatal error): then the
            // frames after it in the buffer must not be interpreted.
            WsEvent::Binary(range) => {
                self.on_frame(narrow(frame, range.start, range.len()), now, now_ms);
                !self.closing()
            }
            WsEvent::BinaryAssembled(message) => {
                self.on_frame(Bytes::from(message), now, now_ms);
                !self.closing()
            }
            WsEvent::Text => {
                self.shard.close(self.id, ErrorCode::UnsupportedData, "text frames are not supported");
                false
            }
            WsEvent::Ping(range) => {
                let pong = ws::pong_frame(&frame[range]);
                self.push(Out::frame(&pong));
                true
            }
            WsEvent::Pong(_) | WsEvent::Fragment => true,
            WsEvent::Close { code, .. } => {
                // Echo the close (RFC 6455 §5.5.1), then finish.
                let reply = match code {
                    Some(code) => ws::close_frame(code, ""),
                    None => ws::EMPTY_CLOSE_FRAME.to_vec(),
                };
                self.shard.with_conn(self.id, |c| {
                    c.out.push(Out::Owned(reply));
                    c.set_closing(ErrorCode::ShuttingDown);
                });
                self.shard.reply_wake(self.id);
                false
            }
        }
    }

    fn push(&self, out: Out) {
        self.shard.with_conn(self.id, |c| c.out.push(out));
        self.shard.reply_wake(self.id);
    }

    fn error(
        &self,
        code: ErrorCode,
        id: Option<switchboard_protocol::EnvelopeId>,
        request_id: Option<u32>,
        reason: &'static str,
    ) {
        self.shard.metrics.rejected.inc(code);
        self.shard.reply(self.id, Reply::Error { code, id, request_id, reason });
    }

    /// True once the connection is closing (or gone).
    fn closing(&self) -> bool {
        self.shard.with_conn(self.id, |c| c.is_closing()).unwrap_or(true)
    }

    /// Handles one protocol frame, `payload` (an envelope is kept as the
    /// same refcounted bytes, narrowed in place: no copy, no refcount
    /// traffic).
    fn on_frame(&self, payload: Bytes, now: Instant, now_ms: u64) {
        let frame = match Frame::decode(&payload, &self.limits) {
            Ok(f) => f,
            Err(e) => {
                let code = e.code();
                tracing::debug!(error = %e, "bad frame");
                if code.is_fatal() {
                    self.shard.close(self.id, code, "malformed frame");
                } else {
                    self.error(code, None, None, "malformed frame");
                }
                return;
            }
        };
        match frame {
            Frame::Send { envelope } => {
                let (start, len) = (envelope.as_ptr() as usize - payload.as_ptr() as usize, envelope.len());
                self.on_send(narrow(payload, start, len), now, now_ms);
            }
            Frame::DeliveryAck { id } => {
                if !self.shard.ack(self.id, id) {
                    tracing::debug!(%id, "ack for an unknown delivery");
                }
            }
            Frame::JoinRoom { request_id, room } => {
                let max = self.shard.shared.config.limits.max_rooms_per_connection;
                let added = self.shard.with_conn(self.id, |c| {
                    if c.rooms.iter().any(|r| **r == *room.as_str()) {
                        Some(false)
                    } else if c.rooms.len() >= max {
                        None
                    } else {
                        c.rooms.push(room.as_str().into());
                        Some(true)
                    }
                });
                match added.flatten() {
                    None => self.error(ErrorCode::RoomLimit, None, Some(request_id), "too many rooms"),
                    Some(false) => self.shard.reply(self.id, Reply::Done { request_id }),
                    Some(true) => {
                        let owner = self.shard.shared.owners.room(room.as_str());
                        let msg = Msg::Join { room: room.as_str().into(), member: self.me, request_id };
                        if !self.shard.send_or_handle(owner, msg) {
                            self.shard.with_conn(self.id, |c| c.rooms.retain(|r| **r != *room.as_str()));
                            self.error(ErrorCode::Overloaded, None, Some(request_id), "server busy, retry");
                        }
                    }
                }
            }
            Frame::LeaveRoom { request_id, room } => {
                let was = self.shard.with_conn(self.id, |c| {
                    let before = c.rooms.len();
                    c.rooms.retain(|r| **r != *room.as_str());
                    before != c.rooms.len()
                });
                if was != Some(true) {
                    self.error(ErrorCode::NotAMember, None, Some(request_id), "not a member of this room");
                    return;
                }
                let owner = self.shard.shared.owners.room(room.as_str());
                let msg = Msg::Leave { room: room.as_str().into(), member: self.me, request_id: Some(request_id) };
                if !self.shard.send_or_handle(owner, msg) {
                    self.error(ErrorCode::Overloaded, None, Some(request_id), "server busy, retry");
                }
            }
            Frame::PresenceQuery { request_id, user } => {
                let owner = self.shard.shared.owners.user(user.as_str());
                let msg = Msg::PresenceQuery { user: user.as_str().into(), from: self.me, request_id };
                if !self.shard.send_or_handle(owner, msg) {
                    self.error(ErrorCode::Overloaded, None, Some(request_id), "server busy, retry");
                }
            }
            Frame::Ping { nonce } => {
                let mut out = [0u8; ws::MAX_HEADER_LEN];
                let n = ws::binary_header(12, &mut out);
                let mut v = out[..n].to_vec();
                Frame::Pong { nonce }.encode(&mut v);
                self.push(Out::frame(&v));
            }
            Frame::Pong { .. } => {}
            other => {
                tracing::debug!(frame = %other.frame_type(), "server-only frame from a client");
                self.error(ErrorCode::UnknownFrameType, None, None, "clients may not send this frame type");
            }
        }
    }

    fn on_send(&self, bytes: Bytes, now: Instant, now_ms: u64) {
        let shard = self.shard;
        let env = match Envelope::parse(&bytes, &self.limits) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "invalid envelope");
                let code = e.code();
                self.error(code, None, None, "envelope failed verification");
                if code.is_fatal() {
                    // An envelope of another protocol version: like a frame
                    // of another version, the error closes the connection
                    // (docs/protocol.md, error table: 101 closes, 4101).
                    self.shard.close(self.id, code, "unsupported envelope version");
                }
                return;
            }
        };
        let id = env.id();
        if env.sender() != self.identity.user() {
            self.error(ErrorCode::SenderMismatch, Some(id), None, "sender is not the authenticated user");
            return;
        }
        if env.is_expired(now_ms, shard.shared.config.limits.max_ttl_ms) {
            self.error(ErrorCode::EnvelopeExpired, Some(id), None, "ttl elapsed");
            return;
        }
        if !shard.with_conn(self.id, |c| c.tokens.take(now)).unwrap_or(false) {
            self.error(ErrorCode::RateLimited, Some(id), None, "send rate limit exceeded");
            return;
        }
        shard.metrics.envelopes_in.inc();
        let echo = env.flags().contains(EnvelopeFlags::ECHO_TO_SENDER);
        // The destination travels as its place in the envelope, which
        // moves on without a refcount increment.
        let owners = &shard.shared.owners;
        let (kind, owner, name) = match env.destination() {
            Destination::User(user) => (RouteKind::User, owners.user(user.as_str()), Dest::new(&bytes, user.as_str())),
            Destination::Room(room) => (RouteKind::Room, owners.room(room.as_str()), Dest::new(&bytes, room.as_str())),
            _ => {
                self.error(ErrorCode::InvalidDestination, Some(id), None, "service destinations are not routed yet");
                return;
            }
        };
        shard.route(kind, owner, name, bytes, id, self.me, echo);
        // Sampled: a clock read per envelope would cost more than the rest
        // of the metrics together.
        if shard.sample_latency() {
            shard.metrics.route_latency.observe_us(now.elapsed().as_micros() as u64);
        }
    }
}

/// Writes a connection's queued frames in vectored batches (or, with TLS,
/// encrypted into one buffer per batch).
async fn write_loop(
    shard: Rc<Shard>,
    id: ConnId,
    mut wr: impl AsyncWriteRent,
    fd: i32,
    tls: Option<Rc<RefCell<TlsSession>>>,
) {
    let mut batch: Option<Box<WriteBatch>> = None;
    let mut cipher = Vec::new();
    loop {
        let next = poll_fn(|cx| match shard.poll_writer(id, cx.waker(), &mut batch) {
            WriterPoll::Pending => Poll::Pending,
            other => Poll::Ready(other),
        })
        .await;
        match next {
            WriterPoll::Write => {
                // Invariant: poll_writer returned Write after filling `batch`.
                let mut b = batch.take().expect("a filled batch");
                let ok = match &tls {
                    None => {
                        let (ok, back) = write_batch(&mut wr, b).await;
                        b = back;
                        ok
                    }
                    Some(tls) => {
                        cipher.clear();
                        let encrypted = {
                            let mut session = tls.borrow_mut();
                            let sent = b.try_for_each_chunk(|chunk| session.send(chunk));
                            sent.and_then(|()| session.take_output(&mut cipher))
                        };
                        b.clear();
                        encrypted.is_ok() && {
                            // Boxed: the write_all future is larger than the
                            // rest of this task's state, which every idle
                            // connection would otherwise carry.
                            let (res, c) = Box::pin(wr.write_all(std::mem::take(&mut cipher))).await;
                            cipher = c;
                            res.is_ok()
                        }
                    }
                };
                shard.recycle_batch(b);
                if !ok {
                    shard.writer_failed(id);
                    shutdown_socket(fd);
                    return;
                }
                shard.writer_flushed(id);
            }
            WriterPoll::Finish | WriterPoll::Pending => {
                if let Some(tls) = &tls {
                    cipher.clear();
                    {
                        let mut session = tls.borrow_mut();
                        session.close();
                        let _ = session.take_output(&mut cipher);
                    }
                    let _ = Box::pin(wr.write_all(std::mem::take(&mut cipher))).await;
                }
                shutdown_socket(fd);
                shard.writer_flushed(id);
                return;
            }
        }
    }
}

/// Writes the whole batch with `writev`; false if the socket failed. The
/// batch moves into each write and comes back (owned buffers).
async fn write_batch(wr: &mut impl AsyncWriteRent, mut batch: Box<WriteBatch>) -> (bool, Box<WriteBatch>) {
    while !batch.is_empty() {
        let (res, b) = wr.writev(batch).await;
        batch = b;
        match res {
            Ok(n) if n > 0 => batch.advance(n),
            _ => return (false, batch),
        }
    }
    (true, batch)
}

/// `POST /send`: one envelope per request, answered 202 or with an error.
async fn http_send(
    shard: Rc<Shard>,
    mut io: Io,
    head: RequestHead,
    mut buf: BytesMut,
    peer: SocketAddr,
    _permit: ConnPermit,
) {
    let identity = match authenticate(&shard, &head) {
        Ok(id) => id,
        Err((code, reason)) => {
            shard.metrics.handshake_failures.inc();
            let _ = io.write_all(http::error_response(code, &reason, false)).await;
            return;
        }
    };
    let max_env = shard.shared.config.limits.max_envelope_bytes;
    let json = head.content_type().is_some_and(|t| t.starts_with("application/json"));
    // Base64 in JSON inflates the payload by 4/3, plus the other fields.
    let max_body = if json { max_env / 3 * 4 + 8192 } else { max_env };
    let Some(len) = head.content_length() else {
        let _ = io.write_all(http::error_response(ErrorCode::MalformedFrame, "Content-Length required", false)).await;
        return;
    };
    if len as usize > max_body {
        let _ = io.write_all(http::error_response(ErrorCode::EnvelopeTooLarge, "body too large", false)).await;
        return;
    }
    if head.expect_continue() && io.write_all(http::CONTINUE_RESPONSE.to_vec()).await.is_err() {
        return;
    }
    let len = len as usize;
    while buf.len() < len {
        buf.reserve(len - buf.len());
        let (res, b) = io.read_into(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let body = buf.split_to(len).freeze();
    let envelope = if json {
        match crate::frontend::http_json::envelope_from_json(&body, identity.user(), now_unix_ms()) {
            Ok(e) => Bytes::from(e),
            Err(reason) => {
                let _ = io.write_all(http::error_response(ErrorCode::InvalidEnvelope, &reason, false)).await;
                return;
            }
        }
    } else {
        body
    };
    let id = shard.register(identity.clone(), Protocol::Http, peer);
    let limits = Limits::default().with_max_envelope_len(max_env);
    let reader = Reader { shard: &shard, id, me: Member { shard: shard.id, conn: id }, identity: &identity, limits };
    reader.on_send(envelope, Instant::now(), now_unix_ms());
    let reply = poll_fn(|cx| shard.poll_http_reply(id, cx.waker())).await;
    shard.unregister(id);
    let response = match reply {
        Some(Reply::Accepted { id, outcome, recipients }) => http::accepted_response(id, outcome, recipients, false),
        Some(Reply::Error { code, reason, .. }) => http::error_response(code, reason, false),
        _ => http::error_response(ErrorCode::Internal, "no answer", false),
    };
    let _ = io.write_all(response).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_grows_under_load_and_shrinks_when_idle() {
        let mut sizer = ReadSizer::new();
        let mut buf = BytesMut::new();
        sizer.prepare(&mut buf);
        assert!(buf.capacity() >= ReadSizer::MIN && buf.capacity() < 2 * ReadSizer::MIN);
        for _ in 0..10 {
            let spare = buf.capacity() - buf.len();
            sizer.record(spare, spare);
        }
        assert_eq!(sizer.chunk, ReadSizer::MAX);
        buf.reserve(ReadSizer::MAX);
        for _ in 0..10 {
            sizer.record(10, 1000);
        }
        assert_eq!(sizer.chunk, ReadSizer::MIN);
        buf.clear();
        sizer.prepare(&mut buf);
        assert!(buf.capacity() < 2 * ReadSizer::MIN, "idle buffer shrinks back");
    }
}
