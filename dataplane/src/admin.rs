//! The admin server: health, readiness, Prometheus metrics and presence
//! lookups, on its own port and thread (blocking I/O, off the data path).
//!
//! It reads shard metrics through relaxed atomics and asks shards questions
//! with typed commands and a one-shot reply; it never touches shard state.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard_protocol::{ErrorCode, UserId};

use crate::frontend::http::{self, Method};
use crate::shard::{Command, Fault, Msg, ShardId, Shared};

/// Starts the admin server on its own thread.
pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Err(e) = handle(stream, &shared) {
                tracing::debug!(error = %e, "admin request failed");
            }
        }
    })?;
    Ok(())
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(2048);
    let head = loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_request(&buf) {
            Ok(Some((head, _))) => break head,
            Ok(None) => continue,
            Err(e) => return stream.write_all(&e.response()),
        }
    };
    let response = route(&head, shared);
    stream.write_all(&response)
}

/// A shard whose tick (every 250 ms) has not run for this long is stalled.
const STALLED_AFTER: Duration = Duration::from_secs(2);

fn route(head: &http::RequestHead, shared: &Shared) -> Vec<u8> {
    if head.method() == Method::Post && head.path() == "/debug/fault" && fault_injection() {
        return fault(head, shared);
    }
    if head.method() != Method::Get {
        return json_error(405, ErrorCode::Forbidden, "only GET");
    }
    match head.path() {
        "/healthz" => http::response(200, "text/plain", b"ok\n", false),
        "/readyz" => {
            let stalled = shared.stalled_shards(Instant::now(), STALLED_AFTER);
            if shared.shutting_down.load(Ordering::Relaxed) {
                http::response(503, "text/plain", b"shutting down\n", false)
            } else if !stalled.is_empty() {
                let body = format!("shards not running: {stalled:?}\n");
                http::response(503, "text/plain", body.as_bytes(), false)
            } else {
                http::response(200, "text/plain", b"ready\n", false)
            }
        }
        "/metrics" => {
            let text = crate::metrics::render(&shared.metrics, shared.connections());
            http::response(200, "text/plain; version=0.0.4", text.as_bytes(), false)
        }
        path => match path.strip_prefix("/v1/users/").and_then(|p| p.strip_suffix("/presence")) {
            Some(user) => presence(head, shared, user),
            None => json_error(404, ErrorCode::NotAMember, "no such endpoint"),
        },
    }
}

fn json_error(status: u16, code: ErrorCode, reason: &str) -> Vec<u8> {
    http::response(status, "application/json", &http::error_body(code, reason), false)
}

fn presence(head: &http::RequestHead, shared: &Shared, user: &str) -> Vec<u8> {
    let now = crate::auth::unix_now();
    let identity = match head.bearer_token() {
        Ok(Some(t)) => shared.verifier.verify(t.jwt(), now),
        _ => return http::error_response(ErrorCode::Unauthenticated, "admin token required", false),
    };
    match identity {
        Ok(id) if id.is_admin() => {}
        Ok(_) => return http::error_response(ErrorCode::Forbidden, "admin role required", false),
        Err(e) => return http::error_response(e.code(), &e.to_string(), false),
    }
    let Ok(user) = UserId::parse(user) else {
        return http::error_response(ErrorCode::InvalidDestination, "invalid user id", false);
    };
    let owner = shared.owners.user(user.as_str());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let msg = Msg::Command(Command::Presence { user: user.as_str().into(), reply: tx });
    if shared.mesh.send(shared.mesh.outside(), owner, msg).is_err() {
        return http::error_response(ErrorCode::Overloaded, "shard busy", false);
    }
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(conns) => {
            let body = serde_json::json!({
                "user": user.as_str(),
                "online": !conns.is_empty(),
                "owner_shard": owner.0,
                "connections": conns,
            });
            http::response(200, "application/json", body.to_string().as_bytes(), false)
        }
        Err(_) => http::error_response(ErrorCode::Internal, "shard did not answer", false),
    }
}

/// Fault injection for the fault tests: only in debug builds, and only with
/// `SWITCHBOARD_FAULT_INJECTION=1` in the environment.
fn fault_injection() -> bool {
    cfg!(debug_assertions) && std::env::var_os("SWITCHBOARD_FAULT_INJECTION").is_some_and(|v| v == "1")
}

/// `POST /debug/fault?shard=N&kind=panic|stall[&ms=M]`: injects a fault into
/// shard N (see [`Fault`]).
fn fault(head: &http::RequestHead, shared: &Shared) -> Vec<u8> {
    let mut shard = None;
    let mut kind = None;
    let mut ms = 1000;
    for pair in head.query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("shard", v)) => shard = v.parse::<u16>().ok(),
            Some(("kind", v)) => kind = Some(v),
            Some(("ms", v)) => ms = v.parse().unwrap_or(ms),
            _ => {}
        }
    }
    let fault = match kind {
        Some("panic") => Fault::Panic,
        Some("stall") => Fault::Stall(Duration::from_millis(ms)),
        _ => return json_error(400, ErrorCode::MalformedFrame, "kind must be panic or stall"),
    };
    let Some(shard) = shard.filter(|s| usize::from(*s) < shared.mesh.shards()) else {
        return json_error(400, ErrorCode::MalformedFrame, "no such shard");
    };
    tracing::warn!(shard, ?fault, "injecting a fault");
    match shared.mesh.send(shared.mesh.outside(), ShardId(shard), Msg::Command(Command::Fault(fault))) {
        Ok(()) => http::response(202, "text/plain", b"injected\n", false),
        Err(_) => json_error(503, ErrorCode::Overloaded, "shard busy"),
    }
}
