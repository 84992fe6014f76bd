//! Accepting connections and their handshake: the HTTP request head,
//! authentication, and dispatch by route (`GET /connect` upgrades to
//! WebSocket on the user's owner shard, `POST /send` routes one envelope,
//! `GET /healthz`).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use switchboard_protocol::{Envelope, ErrorCode};

use super::admission::ConnPermit;
use super::conn::HttpAnswer;
use super::handoff::Handoff;
use super::ids::ConnId;
use super::msg::Msg;
use super::ws_io::{READ_CHUNK, Socket, now_unix_ms, read_append, spawn_websocket};
use super::{Protocol, Shard};
use crate::auth::Identity;
use crate::frontend::http::{self, RequestHead};
use crate::tls::TlsSession;

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

/// A client socket during the handshake phase (before the reader and
/// writer tasks split it).
type Io = Socket;

impl Socket {
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
        (http::Method::Post, "/send") => http_send(shard, io, head, buf, peer, permit).await,
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

/// Verifies the request's bearer token with the shard's cached verifier.
fn authenticate(shard: &Shard, head: &RequestHead) -> Result<Arc<Identity>, (ErrorCode, String)> {
    let token = match head.bearer_token() {
        Ok(Some(t)) => t,
        Ok(None) => return Err((ErrorCode::Unauthenticated, "no token: use Authorization: Bearer".into())),
        Err(e) => return Err((ErrorCode::InvalidToken, e.to_string())),
    };
    shard.tokens.borrow_mut().verify(token.jwt(), crate::auth::unix_now()).map_err(|e| {
        if shard.log_limiter.allow() {
            tracing::info!(code = e.code().name(), reason = %e, "token refused");
        }
        (e.code(), e.public_reason())
    })
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
    // The 101 is written by the connection's writer once the connection is
    // registered on its owner shard, so that it can receive from the moment
    // the client reads the 101.
    let response = upgrade.response();
    let owner = shard.shared.owners.user(identity.user().as_str());
    if owner == shard.id {
        // A task of its own: the long-lived connection should not carry the
        // handshake's state (request head, upgrade, the HTTP path's locals).
        spawn_websocket(shard, io, response, leftover, identity, peer, permit);
        return;
    }
    let Socket { stream, tls, .. } = io;
    // Hand the socket to the user's owner shard, so that every connection
    // of a user is one hop from any sender.
    let fd = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` released ownership of an open socket to us
    // (after deregistering it from this shard's reactor).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let handoff = Box::new(Handoff { fd, tls, identity, upgrade: response, leftover, peer, permit });
    shard.metrics.handoffs.inc();
    if let Err(Msg::Handoff(h)) = shard.shared.mesh.send(shard.id, owner, Msg::Handoff(handoff)) {
        // The owner's queue is full: refuse rather than queue without bound.
        shard.metrics.cross_shard_full.inc();
        let std = std::net::TcpStream::from(h.fd);
        if let Ok(stream) = TcpStream::from_std(std) {
            let mut io = Socket { stream, tls: h.tls, raw: BytesMut::new() };
            let _ = io.write_all(http::error_response(ErrorCode::Overloaded, "server busy, retry", false)).await;
        }
    }
}

/// `POST /send`: one envelope per request, answered 202 or with an error.
/// Reading the body and waiting for the answer together are bounded by
/// `limits.handshake_timeout_ms`.
async fn http_send(
    shard: Rc<Shard>,
    mut io: Io,
    head: RequestHead,
    buf: BytesMut,
    peer: SocketAddr,
    _permit: ConnPermit,
) {
    let timeout = Duration::from_millis(shard.shared.config.limits.handshake_timeout_ms);
    let deadline = Instant::now() + timeout;
    let read = monoio::time::timeout(timeout, http_send_body(&shard, &mut io, head, buf));
    let Ok(Some((identity, envelope))) = read.await else {
        return;
    };
    let env_id = Envelope::parse(&envelope, &shard.shared.session.limits).map(|e| e.id()).unwrap_or_default();
    // Registered for as long as the answer is awaited; unregistered on every
    // way out, the timeout's included.
    let conn = Registration { id: shard.register(identity, Protocol::Http, peer), shard: &shard };
    let id = conn.id;
    let now = Instant::now();
    shard.set_now(now);
    shard.on_envelope(id, envelope, false, now, now_unix_ms());
    shard.flush_answers(id);
    shard.flush_dirty();
    let answer = poll_fn(|cx| shard.poll_http_answer(id, cx.waker()));
    let answer = monoio::time::timeout(deadline.saturating_duration_since(Instant::now()), answer).await;
    drop(conn);
    let response = match answer {
        Ok(Some(HttpAnswer::Accepted { outcome, recipients })) => {
            http::accepted_response(env_id, outcome, recipients, false)
        }
        Ok(Some(HttpAnswer::Error { code, reason })) => http::error_response(code, reason, false),
        Ok(None) => http::error_response(ErrorCode::Internal, "no answer", false),
        Err(_) => {
            let reason = "no answer in time; it may have been routed: resend it with the same id";
            http::error_response(ErrorCode::Overloaded, reason, false)
        }
    };
    let _ = io.write_all(response).await;
}

/// A connection registered on a shard, unregistered when dropped.
struct Registration<'a> {
    shard: &'a Shard,
    id: ConnId,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shard.unregister(self.id);
    }
}

/// Authenticates a `POST /send` and reads its body into an envelope;
/// answers a failure itself (`None`).
async fn http_send_body(
    shard: &Shard,
    io: &mut Io,
    head: RequestHead,
    mut buf: BytesMut,
) -> Option<(Arc<Identity>, Bytes)> {
    let identity = match authenticate(shard, &head) {
        Ok(id) => id,
        Err((code, reason)) => {
            shard.metrics.handshake_failures.inc();
            let _ = io.write_all(http::error_response(code, &reason, false)).await;
            return None;
        }
    };
    let max_env = shard.shared.config.limits.max_envelope_bytes;
    let json = head.content_type().is_some_and(|t| t.starts_with("application/json"));
    // Base64 in JSON inflates the payload by 4/3, plus the other fields.
    let max_body = if json { max_env / 3 * 4 + 8192 } else { max_env };
    let Some(len) = head.content_length() else {
        let _ = io.write_all(http::error_response(ErrorCode::MalformedFrame, "Content-Length required", false)).await;
        return None;
    };
    if len as usize > max_body {
        let _ = io.write_all(http::error_response(ErrorCode::EnvelopeTooLarge, "body too large", false)).await;
        return None;
    }
    if head.expect_continue() && io.write_all(http::CONTINUE_RESPONSE.to_vec()).await.is_err() {
        return None;
    }
    let len = len as usize;
    while buf.len() < len {
        buf.reserve(len - buf.len());
        let (res, b) = io.read_into(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    let body = buf.split_to(len).freeze();
    let envelope = if json {
        match crate::frontend::http_json::envelope_from_json(&body, identity.user(), now_unix_ms()) {
            // What a JSON body builds is held to the same bound as a raw one.
            Ok(e) if e.len() > max_env => {
                let reason = "envelope larger than limits.max_envelope_bytes";
                let _ = io.write_all(http::error_response(ErrorCode::EnvelopeTooLarge, reason, false)).await;
                return None;
            }
            Ok(e) => Bytes::from(e),
            Err((code, reason)) => {
                let _ = io.write_all(http::error_response(code, &reason, false)).await;
                return None;
            }
        }
    } else {
        body
    };
    Some((identity, envelope))
}
