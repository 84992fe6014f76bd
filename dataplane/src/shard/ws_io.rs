//! WebSocket I/O of a registered connection. A plain connection is handed
//! to its shard's [`reactor`](super::reactor) (no task of its own); a TLS
//! connection gets a reader task (decrypts, decodes WebSocket messages and
//! hands the protocol frames to the shard's [`ingress`](super::ingress))
//! and a writer task (encrypts and writes the queue in batches).
//!
//! Received bytes stay in a read buffer: a frame is split off it as a
//! refcounted `Bytes`, the envelope is a slice of that, and the same slice
//! is queued to every recipient.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use switchboard_protocol::ErrorCode;
use tracing::Instrument;

use super::admission::ConnPermit;
use super::conn::{shutdown_socket, shutdown_write, unacknowledged_bytes};
use super::handoff::Handoff;
use super::ids::ConnId;
use super::ingress::narrow;
use super::write::{Out, WriteBatch};
use super::{Protocol, Shard, WriterPoll};
use crate::auth::Identity;
use crate::frontend::ws::{self, WsDecoder, WsEvent};
use crate::tls::TlsSession;

/// Bytes read per `read` call during the handshake and on TLS sockets.
pub(crate) const READ_CHUNK: usize = 4096;

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
pub(crate) async fn read_append<R: AsyncReadRent>(stream: &mut R, buf: BytesMut) -> (std::io::Result<usize>, BytesMut) {
    let (res, slice) = stream.read(spare_capacity(buf)).await;
    (res, slice.into_inner())
}

/// Milliseconds since the Unix epoch (envelope ttl checks).
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Adopts a connection handed over by another shard.
pub(crate) fn adopt(shard: &Rc<Shard>, h: Handoff) {
    if h.tls.is_none() {
        super::reactor::attach(shard, h.fd, h.upgrade, h.leftover, h.identity, h.peer, h.permit);
        return;
    }
    let std = std::net::TcpStream::from(h.fd);
    match TcpStream::from_std(std) {
        Ok(stream) => {
            let io = Socket { stream, tls: h.tls, raw: BytesMut::new() };
            spawn_websocket(shard.clone(), io, h.upgrade, h.leftover, h.identity, h.peer, h.permit);
        }
        Err(e) => tracing::warn!(error = %e, "cannot adopt handed-over connection"),
    }
}

/// A client socket after its handshake: the stream, its TLS session and
/// ciphertext read but not yet decrypted.
pub(crate) struct Socket {
    pub(crate) stream: TcpStream,
    pub(crate) tls: Option<Box<TlsSession>>,
    pub(crate) raw: BytesMut,
}

/// Registers an authenticated WebSocket connection on its owner shard,
/// queues its upgrade response (so the connection can receive from the
/// moment the client reads the 101: nothing is delivered before it is
/// registered), and starts serving it: the shard's reactor for a plain
/// connection, a reader and a writer task for a TLS one.
///
/// The setup is synchronous so that the long-lived reader future holds only
/// what the loop needs ([`ReadState`]): an async fn keeps its arguments and
/// every local that was ever borrowed in its state, and the reader's state
/// is most of an idle connection's memory.
pub(crate) fn spawn_websocket(
    shard: Rc<Shard>,
    io: Socket,
    upgrade: Vec<u8>,
    buf: BytesMut,
    identity: Arc<Identity>,
    peer: SocketAddr,
    permit: ConnPermit,
) {
    let Socket { stream, tls, raw } = io;
    let Some(tls) = tls else {
        // Driven by the shard from now on (no tasks): out of the runtime.
        let fd = stream.into_raw_fd();
        // SAFETY: `into_raw_fd` gave up an open socket, now ours alone.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        super::reactor::attach(&shard, fd, upgrade, buf, identity, peer, permit);
        return;
    };
    let id = shard.register(identity.clone(), Protocol::WebSocket, peer);
    shard.push(id, Out::Raw(upgrade));
    let span = tracing::debug_span!("conn", shard = shard.id.0, conn = id.slot, user = %identity.user());
    span.in_scope(|| tracing::debug!(%peer, "connected"));
    let fd = stream.as_raw_fd();
    shard.with_conn(id, |c| c.fd = Some(fd));
    let tls = Rc::new(RefCell::new(*tls));
    let (rd, wr) = stream.into_split();
    monoio::spawn(write_loop(shard.clone(), id, wr, fd, tls.clone()).instrument(span.clone()));
    // Unread bytes after the handshake are rare; without them, drop the
    // handshake's read buffer (it would pin its whole allocation).
    let buf = if buf.is_empty() { BytesMut::new() } else { buf };
    let state = Box::new(ReadState { shard, id, rd, tls, raw, buf, _permit: permit });
    monoio::spawn(read_websocket(state).instrument(span));
}

/// What a TLS WebSocket connection's reader keeps between reads.
struct ReadState {
    shard: Rc<Shard>,
    id: ConnId,
    rd: OwnedReadHalf<TcpStream>,
    tls: Rc<RefCell<TlsSession>>,
    /// TLS records read, not yet decrypted.
    raw: BytesMut,
    /// Plaintext bytes read, not yet decoded into frames.
    buf: BytesMut,
    /// The connection's slot in the global and per-IP counts.
    _permit: ConnPermit,
}

/// The reader of a registered TLS WebSocket connection, until it ends.
///
/// The state comes boxed and is only borrowed: an async fn stores its
/// arguments and the locals they move into side by side, so a state moved
/// out of an argument by value would be in the future twice.
async fn read_websocket(mut st: Box<ReadState>) {
    let (shard, id, tls) = (&st.shard, st.id, &st.tls);
    let (rd, raw, buf) = (&mut st.rd, &mut st.raw, &mut st.buf);
    let mut decoder = WsDecoder::new(shard.shared.session.limits.max_frame_len());
    let mut first = true;
    loop {
        // One clock read per batch of received bytes: it stamps the
        // connection's activity, the frames of the batch and the
        // deliveries they cause.
        let now = Instant::now();
        let now_ms = now_unix_ms();
        shard.set_now(now);
        if !std::mem::take(&mut first) {
            shard.seen(id, now);
        }
        let open = decode_frames(shard, id, &mut decoder, buf, now, now_ms);
        // At most one answer frame per read batch: the session collected
        // this batch's outcomes (and those of sends routed here).
        shard.flush_answers(id);
        shard.flush_dirty();
        if !open || shard.with_conn(id, |c| c.is_closing()).unwrap_or(true) {
            // Closing: the writer flushes what is queued and the close
            // frame, then sends FIN.
            buf.clear();
            raw.clear();
            linger(rd, std::mem::take(raw)).await;
            break;
        }
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
            shard.push(id, Out::Raw(Vec::new()));
        }
        if received.is_err() {
            break;
        }
    }
    // Let the writer flush a pending close frame before the socket goes.
    // Bounded without a timer per connection: the tick shuts the socket
    // of a close that takes longer than CLOSE_DEADLINE.
    shard.with_conn(id, |c| {
        c.tx.set_closing(ErrorCode::ShuttingDown);
        c.wake_writer();
    });
    poll_fn(|cx| shard.wait_flushed(id, cx.waker())).await;
    shard.unregister(id);
    tracing::debug!("disconnected");
}

/// Keeps a closing connection's socket open, reading and discarding what
/// the peer still sends (its acks, its close frame), until the peer closes
/// too or the socket is shut: by the writer or the tick once the peer's TCP
/// stack has acknowledged every byte written, or by the tick when the
/// close takes too long. Closing a socket with unread bytes resets it, and
/// a reset throws away what was still queued for the peer: the last
/// deliveries and the close frame.
async fn linger(rd: &mut OwnedReadHalf<TcpStream>, mut sink: BytesMut) {
    loop {
        sink.clear();
        sink.reserve(READ_CHUNK);
        let (res, s) = rd.read(sink).await;
        sink = s;
        if matches!(res, Ok(0) | Err(_)) {
            return;
        }
    }
}

/// Hands the complete WebSocket frames at the start of `buf` to the shard,
/// removing them; false once the connection closes (a frame that closes
/// it, or a framing error): the bytes after that are not interpreted.
pub(crate) fn decode_frames(
    shard: &Shard,
    id: ConnId,
    decoder: &mut WsDecoder,
    buf: &mut BytesMut,
    now: Instant,
    now_ms: u64,
) -> bool {
    // One frame ahead: the next frame is decoded (and its de-duplication
    // slot prefetched) before the current one is handled, so that the
    // slot's cache miss overlaps the current frame's work. Only its
    // WebSocket framing is looked at early; it is handled, in order, only
    // if the current one leaves the connection open.
    let mut ahead: Option<(WsEvent, Bytes)> = None;
    loop {
        let next = match decoder.decode(buf) {
            Ok(Some((event, consumed))) => {
                let frame = buf.split_to(consumed).freeze();
                if let WsEvent::Binary(range) = &event {
                    shard.prefetch_send(id, &frame[range.clone()]);
                }
                Some((event, frame))
            }
            Ok(None) => None,
            Err(e) => {
                if let Some((event, frame)) = ahead.take()
                    && !on_event(shard, id, event, frame, now, now_ms)
                {
                    return false;
                }
                tracing::debug!(error = %e, "websocket protocol error");
                shard.with_conn(id, |c| {
                    c.tx.push(Out::Raw(ws::close_frame(e.close_code(), &e.to_string())));
                    c.tx.set_closing(ErrorCode::MalformedFrame);
                    c.wake_writer();
                });
                return false;
            }
        };
        if let Some((event, frame)) = ahead.take()
            && !on_event(shard, id, event, frame, now, now_ms)
        {
            return false;
        }
        match next {
            Some(n) => ahead = Some(n),
            None => return true,
        }
    }
}

/// Handles one WebSocket event; false ends the connection.
fn on_event(shard: &Shard, id: ConnId, event: WsEvent, frame: Bytes, now: Instant, now_ms: u64) -> bool {
    match event {
        // A frame may close the connection (a fatal error): then the
        // frames after it in the buffer must not be interpreted.
        WsEvent::Binary(range) => shard.on_frame(id, narrow(frame, range.start, range.len()), now, now_ms),
        WsEvent::BinaryAssembled(message) => shard.on_frame(id, Bytes::from(message), now, now_ms),
        WsEvent::Text => {
            shard.close(id, ErrorCode::UnsupportedData, "text frames are not supported");
            false
        }
        WsEvent::Ping(range) => {
            shard.push(id, Out::Raw(ws::pong_frame(&frame[range])));
            true
        }
        WsEvent::Pong(_) | WsEvent::Fragment => true,
        WsEvent::Close { code, .. } => {
            // Echo the close (RFC 6455 §5.5.1), then finish.
            let reply = match code {
                Some(code) => ws::close_frame(code, ""),
                None => ws::EMPTY_CLOSE_FRAME.to_vec(),
            };
            shard.with_conn(id, |c| {
                // Not if ours went first: it answers the peer's.
                c.tx.push(Out::Raw(reply));
                c.tx.set_closing(ErrorCode::ShuttingDown);
                c.wake_writer();
            });
            false
        }
    }
}

/// Writes a connection's queued frames in vectored batches (or, with TLS,
/// encrypted into one buffer per batch).
async fn write_loop(shard: Rc<Shard>, id: ConnId, mut wr: impl AsyncWriteRent, fd: i32, tls: Rc<RefCell<TlsSession>>) {
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
                cipher.clear();
                let encrypted = {
                    let mut session = tls.borrow_mut();
                    let sent = b.try_for_each_chunk(|chunk| session.send(chunk));
                    sent.and_then(|()| session.take_output(&mut cipher))
                };
                b.clear();
                let ok = encrypted.is_ok() && {
                    // Boxed: the write_all future is larger than the rest of
                    // this task's state.
                    let (res, c) = Box::pin(wr.write_all(std::mem::take(&mut cipher))).await;
                    cipher = c;
                    res.is_ok()
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
                cipher.clear();
                {
                    let mut session = tls.borrow_mut();
                    session.close();
                    let _ = session.take_output(&mut cipher);
                }
                let _ = Box::pin(wr.write_all(std::mem::take(&mut cipher))).await;
                // FIN after the last byte. If the peer has not acknowledged
                // everything yet, its side stays open (the reader drains it)
                // until it has: the tick checks.
                shutdown_write(fd);
                if unacknowledged_bytes(fd) == 0 {
                    shutdown_socket(fd);
                }
                shard.writer_flushed(id);
                return;
            }
        }
    }
}
