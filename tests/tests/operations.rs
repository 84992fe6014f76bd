//! Operational features end to end: send rate limits, per-address
//! connection limits, TLS on the client port, and key rotation on SIGHUP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use switchboard_e2e::{Server, Ws, envelope, send_frame, wait_for};
use switchboard_protocol::{ErrorCode, Frame, Limits};

const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dataplane/src/tls/testdata");

#[test]
fn send_rate_limit_refuses_the_excess_and_recovers() {
    let server = Server::builder().shards(1).config("[limits]\nsend_rate_per_sec = 2\nsend_burst = 3\n").start();
    let mut alice = server.ws("alice");
    let mut accepted = 0;
    let mut limited = Vec::new();
    let mut ids = Vec::new();
    for i in 0..8 {
        let env = envelope("alice", "user:bob", format!("m{i}").as_bytes());
        ids.push(switchboard_e2e::envelope_id(&env));
        alice.send(&send_frame(&env));
    }
    // Sends 1..=8: an error names its send; an `accepted` entry answers
    // every send up to its `through` that has no answer yet.
    let mut answered = 0u64;
    let mut refused = std::collections::BTreeSet::new();
    while (answered + 1..=8).any(|s| !refused.contains(&s)) {
        let frame = alice.frame();
        match Frame::decode(&frame, &Limits::default()).expect("valid frame") {
            Frame::Accepted(c) => {
                for entry in c.iter() {
                    accepted += (answered + 1..=entry.through).filter(|s| !refused.contains(s)).count();
                    answered = entry.through;
                }
            }
            Frame::Error(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::RateLimited));
                assert!(ErrorCode::RateLimited.is_retryable());
                let seq = e.sequence.expect("rate-limited error names the send");
                assert!(seq > answered, "the error for send {seq} precedes the entry covering it");
                refused.insert(seq);
                limited.push(e.envelope_id.expect("rate-limited error names the envelope"));
                assert_eq!(Some(&e.envelope_id.unwrap()), ids.get(seq as usize - 1), "sequence {seq} is that send");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((3..=5).contains(&accepted), "a burst of 3 (plus refills while sending), got {accepted}");
    assert_eq!(accepted + limited.len(), 8);
    assert!(limited.iter().all(|id| ids.contains(id)));
    // Tokens refill at 2/s: retrying, the send is accepted again.
    wait_for("a retry is accepted once tokens refill", || {
        let frame = alice.request(&send_frame(&envelope("alice", "user:bob", b"later")));
        matches!(Frame::decode(&frame, &Limits::default()), Ok(Frame::Accepted(_)))
    });
}

#[test]
fn per_address_connection_limit_refuses_then_admits_again() {
    let server = Server::builder().shards(2).config("[limits]\nmax_connections_per_ip = 2\n").start();
    let a = server.ws("a");
    let _b = server.ws("b");
    let refused = Ws::connect(&server.url(), &[("Authorization", &format!("Bearer {}", server.token("c")))])
        .err()
        .expect("third connection from 127.0.0.1 is refused");
    assert_eq!(refused.status, ErrorCode::ConnectionLimit.http_status());
    assert!(refused.body_text().contains("connection-limit"), "{}", refused.body_text());
    drop(a);
    wait_for("a slot frees up", || {
        Ws::connect(&server.url(), &[("Authorization", &format!("Bearer {}", server.token("c")))]).is_ok()
    });
}

fn tls_config() -> String {
    format!("[tls]\ncert_file = \"{TLS_DIR}/localhost.crt.pem\"\nkey_file = \"{TLS_DIR}/localhost.key.pem\"\n")
}

/// A TLS client trusting only the test certificate.
fn tls_stream(port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(format!("{TLS_DIR}/localhost.crt.pem")).expect("test cert") {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().expect("name")).expect("client");
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn tls_websocket_and_http_across_shards() {
    let server = Server::builder().shards(2).config(&tls_config()).start();
    let port = server.addr().port();
    let bob = server.user_on_shard("bob", 0);
    let alice = server.user_on_shard("alice", 1);
    let ws = |user: &str| {
        let mut req =
            tungstenite::client::IntoClientRequest::into_client_request(format!("wss://localhost:{port}/connect"))
                .expect("request");
        req.headers_mut().insert("Authorization", format!("Bearer {}", server.token(user)).parse().expect("value"));
        tungstenite::client(req, tls_stream(port)).expect("wss handshake").0
    };
    let mut b = ws(&bob);
    let mut a = ws(&alice);
    server.wait_connections(&bob, 1);
    let env = envelope(&alice, &format!("user:{bob}"), b"over TLS");
    a.send(tungstenite::Message::Binary(send_frame(&env).into())).expect("send");
    let accepted = a.read().expect("accepted").into_data();
    assert!(matches!(Frame::decode(&accepted, &Limits::default()), Ok(Frame::Accepted(c)) if c.through() == 1));
    let delivered = b.read().expect("delivery").into_data();
    assert_eq!(&delivered[..], &switchboard_e2e::deliver_frame(&env)[..], "exact bytes over wss");

    // POST /send over HTTPS.
    let body = br#"{"to":"user:nobody","payload":"aGk="}"#;
    let mut s = tls_stream(port);
    let req = format!(
        "POST /send HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.token(&alice),
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert!(text.contains("\"outcome\":\"recipient-offline\""), "{text}");

    // Plain text on a TLS port gets nothing useful and does not hurt others.
    let mut plain = TcpStream::connect(server.addr()).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = plain.write_all(b"GET /connect HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("HTTP/1.1 101"));
    a.send(tungstenite::Message::Binary(send_frame(&envelope(&alice, &format!("user:{bob}"), b"still")).into()))
        .expect("send");
    assert!(b.read().is_ok());
}

fn jwks(kid: &str, secret: &[u8]) -> String {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    format!(r#"{{"keys":[{{"kty":"oct","kid":"{kid}","alg":"HS256","k":"{k}"}}]}}"#)
}

fn token_with_kid(kid: &str, secret: &[u8], user: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    let claims = switchboard_e2e::default_claims(serde_json::json!({ "sub": user }));
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).expect("sign")
}

#[test]
fn sighup_reloads_the_jwks_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let jwks_path = dir.path().join("jwks.json");
    let old = [1u8; 32];
    let new = [2u8; 32];
    std::fs::write(&jwks_path, jwks("k1", &old)).expect("write jwks");
    let server =
        Server::builder().shards(2).config(&format!("[auth]\njwks_file = \"{}\"\n", jwks_path.display())).start();
    let connect = |token: &str| Ws::connect(&server.url(), &[("Authorization", &format!("Bearer {token}"))]).map(drop);
    assert!(connect(&token_with_kid("k1", &old, "carol")).is_ok());
    let refused = connect(&token_with_kid("k2", &new, "carol")).expect_err("unknown kid");
    assert_eq!(refused.status, 401);

    // Rotate: k2 replaces k1, then SIGHUP.
    std::fs::write(&jwks_path, jwks("k2", &new)).expect("rewrite jwks");
    // SAFETY: signalling a child process this test started and still owns.
    unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) };
    wait_for("the new key is accepted", || connect(&token_with_kid("k2", &new, "carol")).is_ok());
    // The old key is gone on every shard, cached verifications included.
    for user in ["carol", "dave", "erin", "frank"] {
        let refused = connect(&token_with_kid("k1", &old, user)).expect_err("old key after rotation");
        assert_eq!(refused.status, 401);
    }
}
