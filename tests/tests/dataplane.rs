//! The data plane end to end: the real `switchboard serve` on free ports,
//! driven by the project's Rust client (`switchboard::client::Client`) and
//! by raw tungstenite/TCP clients for hand-made bytes. Every assertion is on
//! what a client received, byte for byte.
//!
//! Servers run with 2 shards and the users of a test are placed on
//! different shards on purpose (`Server::user_on_shard`), so that routing,
//! answers and room fan-out cross the shard mesh.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use switchboard::client::Client;
use switchboard_e2e::*;
use switchboard_protocol::{EnvelopeFlags, EnvelopeId, ErrorCode, Frame, Limits, Outcome, RoomName, UserId};
use tungstenite::Message;

/// Sends an envelope, waits for its answer and returns its id and outcome
/// (the answer is one `accepted` entry through this send's sequence).
fn send_env(c: &mut Client, env: &[u8]) -> (EnvelopeId, Outcome) {
    c.send(&Frame::Send { no_answer: false, envelope: env }).expect("send");
    match parse_accepted(&recv(c))[..] {
        [(through, outcome)] if through == c.sends() => (envelope_id(env), outcome),
        ref other => panic!("expected one entry through send {}, got {other:?}", c.sends()),
    }
}

/// Receives a delivery, checks it is exactly `env` behind `01 03 00 00`,
/// and acknowledges it.
fn expect_delivery(c: &mut Client, env: &[u8], who: &str) {
    let got = recv(c);
    assert_eq!(got, deliver_frame(env), "{who} did not receive the bytes sent");
    c.ack().expect("ack");
}

fn join(c: &mut Client, request_id: u32, room: &str) {
    c.send(&Frame::JoinRoom { request_id, room: RoomName::parse(room).expect("room name") }).expect("send join");
    match Frame::decode(&recv(c), &Limits::default()) {
        Ok(Frame::Done { request_id: r }) => assert_eq!(r, request_id),
        other => panic!("join {room}: expected done, got {other:?}"),
    }
}

fn user(name: &str) -> String {
    format!("user:{name}")
}

/// A payload that differs per index and covers every byte value.
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = (i as u64).to_le_bytes().to_vec();
    p.extend((0..len).map(|j| (j * 31 + i) as u8));
    p
}

#[test]
fn one_to_one_delivers_the_exact_bytes_across_shards() {
    let s = Server::start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let mut a = s.client(&alice);
    let mut b = s.client(&bob);
    s.wait_connections(&bob, 1);
    s.wait_connections(&alice, 1);
    // Every shard runs the driver the server announced.
    assert_eq!(s.metric("io_uring"), if s.driver() == "io_uring" { 2 } else { 0 });

    for len in [0, 1, 1000, 60_000] {
        let env = envelope(&alice, &user(&bob), &payload(len, len));
        assert_eq!(send_env(&mut a, &env), (envelope_id(&env), Outcome::Delivered), "payload of {len} bytes");
        expect_delivery(&mut b, &env, &bob);
    }
    // And back, bob's shard to alice's.
    let env = envelope(&bob, &user(&alice), b"reply");
    assert_eq!(send_env(&mut b, &env), (envelope_id(&env), Outcome::Delivered));
    expect_delivery(&mut a, &env, &alice);

    // Nobody online: accepted, dropped, zero recipients.
    let env = envelope(&alice, "user:nobody-home", b"x");
    assert_eq!(send_env(&mut a, &env), (envelope_id(&env), Outcome::RecipientOffline));

    // Presence and ping.
    a.send(&Frame::PresenceQuery { request_id: 41, user: UserId::parse(&bob).unwrap() }).unwrap();
    let r = recv(&mut a);
    assert_eq!(
        Frame::decode(&r, &Limits::default()).unwrap(),
        Frame::PresenceResult { request_id: 41, user: UserId::parse(&bob).unwrap(), connections: 1 }
    );
    a.send(&Frame::Ping { nonce: 0x0123_4567_89ab_cdef }).unwrap();
    assert_eq!(recv(&mut a), hex("01 0c 00 00 ef cd ab 89 67 45 23 01"));
}

#[test]
fn every_device_of_a_user_receives() {
    let s = Server::start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let device = |u: &str, d: &str| s.client_with_token(&s.token_with(serde_json::json!({"sub": u, "dev": d})));
    let mut a1 = device(&alice, "a1");
    let mut a2 = device(&alice, "a2");
    let mut bs: Vec<Client> = (0..3).map(|i| device(&bob, &format!("b{i}"))).collect();
    s.wait_connections(&bob, 3);
    s.wait_connections(&alice, 2);

    let env = envelope(&alice, &user(&bob), b"to every device");
    assert_eq!(send_env(&mut a1, &env), (envelope_id(&env), Outcome::Delivered));
    for (i, b) in bs.iter_mut().enumerate() {
        expect_delivery(b, &env, &format!("{bob} device {i}"));
    }
    // The admin API sees three devices, all on the owner shard.
    let p = s.presence(&bob);
    assert_eq!(p["owner_shard"], s.owner(&bob), "{p}");
    let conns = p["connections"].as_array().unwrap();
    let devices: HashSet<&str> = conns.iter().map(|c| c["device"].as_str().unwrap()).collect();
    assert_eq!(devices, HashSet::from(["b0", "b1", "b2"]));
    assert!(conns.iter().all(|c| c["shard"] == s.owner(&bob)), "{p}");

    // To oneself: the other device receives, the sending one does not
    // (and a2's first frame shows it did not get bob's envelope either).
    let env = envelope(&alice, &user(&alice), b"note to self");
    assert_eq!(send_env(&mut a1, &env), (envelope_id(&env), Outcome::Delivered));
    expect_delivery(&mut a2, &env, "alice's other device");
    // echo-to-sender: the sending connection receives too.
    let env = envelope_flags(&alice, &user(&alice), b"echo", EnvelopeFlags::ECHO_TO_SENDER);
    a1.send(&Frame::Send { no_answer: false, envelope: &env }).unwrap();
    let mut frames = [recv(&mut a1), recv(&mut a1)];
    frames.sort(); // deliver (type 3) and accepted (type 2), in either order
    assert_eq!(parse_accepted(&frames[0]), [(a1.sends(), Outcome::Delivered)]);
    assert_eq!(frames[1], deliver_frame(&env));
    expect_delivery(&mut a2, &env, "alice's other device");

    // One device leaves: the others still receive.
    bs.pop().unwrap().close();
    s.wait_connections(&bob, 2);
    let env = envelope(&alice, &user(&bob), b"two left");
    assert_eq!(send_env(&mut a1, &env), (envelope_id(&env), Outcome::Delivered));
    for b in &mut bs {
        expect_delivery(b, &env, &bob);
    }
}

#[test]
fn rooms_fan_out_across_shards() {
    let s = Server::start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let carol = s.user_on_shard("carol", 0);
    let dave = s.user_on_shard("dave", 1);
    let (mut a, mut b, mut c, mut d) = (s.client(&alice), s.client(&bob), s.client(&carol), s.client(&dave));
    join(&mut a, 1, "lobby");
    join(&mut b, 2, "lobby");
    join(&mut c, 3, "lobby");
    join(&mut c, 4, "lobby"); // joining twice is harmless

    let env = envelope(&alice, "room:lobby", &payload(7, 3000));
    assert_eq!(send_env(&mut a, &env), (envelope_id(&env), Outcome::Delivered));
    expect_delivery(&mut b, &env, &bob);
    expect_delivery(&mut c, &env, &carol);

    // A non-member may send to the room; every member receives.
    let env = envelope(&dave, "room:lobby", b"from outside");
    assert_eq!(send_env(&mut d, &env), (envelope_id(&env), Outcome::Delivered));
    for (cl, who) in [(&mut a, &alice), (&mut b, &bob), (&mut c, &carol)] {
        expect_delivery(cl, &env, who);
    }

    // echo-to-sender: the sending connection gets its own envelope.
    let env = envelope_flags(&alice, "room:lobby", b"echo", EnvelopeFlags::ECHO_TO_SENDER);
    a.send(&Frame::Send { no_answer: false, envelope: &env }).unwrap();
    let mut frames = [recv(&mut a), recv(&mut a)];
    frames.sort();
    assert_eq!(parse_accepted(&frames[0]), [(a.sends(), Outcome::Delivered)]);
    assert_eq!(frames[1], deliver_frame(&env));
    expect_delivery(&mut b, &env, &bob);
    expect_delivery(&mut c, &env, &carol);

    // Bob leaves; leaving again is not-a-member with the request id.
    b.send(&Frame::LeaveRoom { request_id: 9, room: RoomName::parse("lobby").unwrap() }).unwrap();
    assert_eq!(recv(&mut b), hex("01 08 00 00 09 00 00 00"));
    b.send(&Frame::LeaveRoom { request_id: 10, room: RoomName::parse("lobby").unwrap() }).unwrap();
    let (code, id, request, _) = parse_error(&recv(&mut b));
    assert_eq!((code, id, request), (ErrorCode::NotAMember.code(), None, Some(10)));

    let env = envelope(&alice, "room:lobby", b"after bob left");
    assert_eq!(send_env(&mut a, &env), (envelope_id(&env), Outcome::Delivered));
    expect_delivery(&mut c, &env, &carol);
    // Bob's next frame is a direct message, not the room envelope.
    let direct = envelope(&alice, &user(&bob), b"direct");
    assert_eq!(send_env(&mut a, &direct).1, Outcome::Delivered);
    expect_delivery(&mut b, &direct, &bob);
}

#[test]
fn cross_shard_connections_are_handed_to_the_owner_shard() {
    let s = Server::start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    assert_ne!(s.owner(&alice), s.owner(&bob));
    // The kernel spreads connections over both shards' listeners; those
    // that land on the wrong shard are handed to the owner.
    const N: usize = 8;
    let mut alices: Vec<Client> = (0..N).map(|_| s.client(&alice)).collect();
    let mut bobs: Vec<Client> = (0..N).map(|_| s.client(&bob)).collect();
    s.wait_connections(&alice, N);
    s.wait_connections(&bob, N);
    assert!(s.metric("handoffs_total") > 0, "no connection was handed over (2^-{} chance)", 2 * N);
    for (u, shard) in [(&alice, 0), (&bob, 1)] {
        let p = s.presence(u);
        assert_eq!(p["owner_shard"], shard, "{p}");
        assert!(p["connections"].as_array().unwrap().iter().all(|c| c["shard"] == shard), "{p}");
    }
    let env = envelope(&alice, &user(&bob), &payload(1, 500));
    assert_eq!(send_env(&mut alices[3], &env), (envelope_id(&env), Outcome::Delivered));
    for b in &mut bobs {
        expect_delivery(b, &env, &bob);
    }
    let env = envelope(&bob, &user(&alice), &payload(2, 500));
    assert_eq!(send_env(&mut bobs[5], &env), (envelope_id(&env), Outcome::Delivered));
    for a in &mut alices {
        expect_delivery(a, &env, &alice);
    }
}

#[test]
fn order_is_kept_under_load() {
    const N: usize = 5_000;
    // The receiver acknowledges as it reads, but with 5,000 envelopes
    // pipelined it may fall more than the default 4,096 frames behind on a
    // busy machine; this test is about order, not backpressure (see
    // `slow_consumer_is_disconnected_and_others_are_not_slowed`).
    let s = Server::builder().config("[limits]\noutbound_queue_frames = 20000\n").start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let mut a = s.client(&alice);
    let mut b = s.client(&bob);
    s.wait_connections(&bob, 1);
    let envs: Vec<Vec<u8>> = (0..N).map(|i| envelope(&alice, &user(&bob), &payload(i, 100))).collect();

    let expected = envs.clone();
    let receiver = std::thread::spawn(move || {
        for (i, env) in expected.iter().enumerate() {
            let got = recv(&mut b);
            assert!(got == deliver_frame(env), "delivery {i} is not envelope {i}");
            b.ack().expect("ack");
        }
        b
    });
    let start = Instant::now();
    for env in &envs {
        a.send(&Frame::Send { no_answer: false, envelope: env }).expect("send");
    }
    // Pipelined: answered in batches, every send exactly once, in order.
    let mut frames = 0;
    let outcomes = read_outcomes(1, N as u64, || {
        frames += 1;
        recv(&mut a)
    });
    assert_eq!(outcomes, vec![Outcome::Delivered; N]);
    let _b = receiver.join().expect("receiver got every envelope, in order");
    eprintln!("{N} envelopes in {:?}, answered in {frames} accepted frames", start.elapsed());
}

#[test]
fn slow_consumer_is_disconnected_and_others_are_not_slowed() {
    let s = Server::builder().config("[limits]\noutbound_queue_frames = 32\nslow_consumer_grace_ms = 100\n").start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let sloth = s.user_on_shard("sloth", 1);
    let mut a = s.client(&alice);
    let mut b = s.client(&bob);
    // Authenticates, then never reads nor acknowledges anything.
    let mut sl = s.ws(&sloth);
    s.wait_connections(&sloth, 1);
    s.wait_connections(&bob, 1);

    const N: usize = 200;
    let mut to_sloth = Vec::new();
    let mut delivered_to_sloth = 0;
    let mut busy = 0;
    for i in 0..N {
        let env = envelope(&alice, &user(&sloth), &payload(i, 200));
        // While the sloth is connected, a send it cannot take is refused
        // as `recipient-busy` (retryable), not answered `recipient-offline`
        // (which it only is once closed as slow).
        match send_answer(&mut a, &env) {
            Ok(Outcome::Delivered) => delivered_to_sloth += 1,
            Err(ErrorCode::RecipientBusy) => busy += 1,
            Ok(Outcome::RecipientOffline) if busy > 0 => {}
            Ok(o) => panic!("send {i} to the connected sloth answered {o:?}"),
            Err(e) => panic!("send {i} to the connected sloth refused with {e}"),
        }
        to_sloth.push(env);
        // Bob, on the same shard as the sloth, gets everything at once.
        let env = envelope(&alice, &user(&bob), &payload(i, 200));
        assert_eq!(send_env(&mut a, &env), (envelope_id(&env), Outcome::Delivered));
        expect_delivery(&mut b, &env, &bob);
    }
    assert!((1..=32).contains(&delivered_to_sloth), "{delivered_to_sloth} delivered past a 32-frame bound");
    assert!(busy >= 1, "no send was refused as recipient-busy");
    wait_for("the slow consumer to be disconnected", || s.metric("slow_consumer_disconnects_total") >= 1);
    s.wait_connections(&sloth, 0);
    // What the sloth finds when it finally reads: the deliveries that were
    // accepted as delivered, in order and intact, then close 4402.
    let (code, mut frames) = sl.close_code();
    assert_eq!(code, ErrorCode::SlowConsumer.close_code());
    let error = frames.pop().expect("the error frame before the close");
    assert_eq!(parse_error(&error).0, ErrorCode::SlowConsumer.code());
    assert_eq!(frames.len(), delivered_to_sloth);
    for (i, f) in frames.iter().enumerate() {
        assert!(*f == deliver_frame(&to_sloth[i]), "sloth's delivery {i}");
    }
    // Everyone else is still served.
    let env = envelope(&bob, &user(&alice), b"still here");
    assert_eq!(send_env(&mut b, &env).1, Outcome::Delivered);
    expect_delivery(&mut a, &env, &alice);
}

#[test]
fn graceful_shutdown_flushes_and_closes_with_1001() {
    let grace = Duration::from_secs(3);
    let mut s = Server::builder().config(&format!("[server]\nshutdown_grace_ms = {}\n", grace.as_millis())).start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let mut a = s.ws(&alice);
    let mut b = s.ws(&bob);
    s.wait_connections(&alice, 1);
    s.wait_connections(&bob, 1);
    // Accepted (and not yet read by bob) before the signal.
    let envs: Vec<Vec<u8>> = (0..50).map(|i| envelope(&alice, &user(&bob), &payload(i, 300))).collect();
    for env in &envs {
        a.send(&send_frame(env));
    }
    assert_eq!(read_outcomes(1, envs.len() as u64, || a.frame()), vec![Outcome::Delivered; envs.len()]);
    let start = Instant::now();
    let status = s.terminate(grace + Duration::from_secs(2)).expect("server exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(start.elapsed() < grace, "took {:?}", start.elapsed());
    // Every accepted envelope, then the shutting-down error, then close 1001.
    let (code, mut frames) = b.close_code();
    assert_eq!(code, 1001, "bob's close code");
    let error = frames.pop().expect("the error frame before the close");
    assert_eq!(parse_error(&error).0, ErrorCode::ShuttingDown.code());
    assert_eq!(frames.len(), envs.len(), "accepted envelopes lost in shutdown");
    for (f, env) in frames.iter().zip(&envs) {
        assert!(*f == deliver_frame(env));
    }
    let (code, frames) = a.close_code();
    assert_eq!((code, frames.len()), (1001, 1));
    assert_eq!(parse_error(&frames[0]).0, ErrorCode::ShuttingDown.code());
}

/// A server with alice and bob connected (on different shards), for the
/// bad-input tests: after each bad input, [`Fixture::still_serving`] checks
/// that alice can still reach bob.
struct Fixture {
    s: Server,
    alice: String,
    bob: String,
    mallory: String,
    a: Client,
    b: Client,
}

impl Fixture {
    fn new(config: &str) -> Self {
        let s = Server::builder().config(config).start();
        let alice = s.user_on_shard("alice", 0);
        let bob = s.user_on_shard("bob", 1);
        let mallory = s.user_on_shard("mallory", 0);
        let a = s.client(&alice);
        let b = s.client(&bob);
        s.wait_connections(&bob, 1);
        Self { s, alice, bob, mallory, a, b }
    }

    fn still_serving(&mut self, case: &str) {
        let env = envelope(&self.alice, &user(&self.bob), case.as_bytes());
        assert_eq!(send_env(&mut self.a, &env), (envelope_id(&env), Outcome::Delivered), "after {case}");
        expect_delivery(&mut self.b, &env, &format!("bob, after {case}"));
    }

    /// Mallory connects and has one envelope accepted for bob; returns the
    /// connection and the envelope.
    fn mallory(&mut self) -> (Ws, Vec<u8>) {
        let mut m = self.s.ws(&self.mallory);
        let env = envelope(&self.mallory, &user(&self.bob), b"accepted before the bad input");
        assert_eq!(m.send_envelope(&env), (envelope_id(&env), Outcome::Delivered));
        (m, env)
    }

    /// Runs a bad input that must close the connection with `code`, after
    /// the `error` frame for it (when the input was a protocol frame: a
    /// WebSocket-level violation gets only the close); then checks that
    /// mallory's earlier envelope reached bob and that the server still
    /// serves alice and bob.
    fn closes(&mut self, case: &str, code: u16, bad: impl FnOnce(&mut Ws)) {
        let (mut m, env) = self.mallory();
        bad(&mut m);
        let (got, frames) = m.close_code();
        assert_eq!(got, code, "{case}: close code");
        assert!(frames.len() <= 1, "{case}: at most the error frame before the close: {frames:02x?}");
        for f in frames {
            let (error, ..) = parse_error(&f);
            let error = ErrorCode::from_code(error).expect("a known code");
            assert_eq!(error.close_code(), code, "{case}: the error frame names the close's reason");
        }
        expect_delivery(&mut self.b, &env, &format!("bob (mallory's envelope before {case})"));
        self.still_serving(case);
    }
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect()
}

#[test]
fn malformed_websocket_frames_close_the_connection() {
    let mut fx = Fixture::new("");
    // RFC 6455 violations, written as raw bytes after the handshake.
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("unmasked client frame", 1002, hex("82 04 01 0b 00 00")),
        ("reserved bit set", 1002, masked_frame(0xc2, &hex("01 0b 00 00"))),
        ("reserved opcode", 1002, masked_frame(0x83, b"x")),
        ("control frame over 125 bytes", 1002, masked_frame(0x89, &[0; 126])),
        ("fragmented control frame", 1002, masked_frame(0x09, b"x")),
        ("continuation without a start", 1002, masked_frame(0x80, b"x")),
        ("64-bit length with the top bit set", 1002, hex("82 ff 80 00 00 00 00 00 00 01 00 00 00 00")),
        // RFC 6455 §5.2: lengths in their shortest form only.
        (
            "12-byte frame with a 64-bit length",
            1002,
            hex("82 ff 00 00 00 00 00 00 00 0c 00 00 00 00 01 0b 00 00 00 00 00 00 00 00 00 00"),
        ),
        (
            "12-byte frame with a 16-bit length",
            1002,
            hex("82 fe 00 0c 00 00 00 00 01 0b 00 00 00 00 00 00 00 00 00 00"),
        ),
        ("close code that must not be sent", 1002, masked_frame(0x88, &1005u16.to_be_bytes())),
        ("close with a one-byte body", 1002, masked_frame(0x88, &[3])),
        ("close reason that is not UTF-8", 1007, masked_frame(0x88, &hex("03 e8 ff fe c3 28"))),
        (
            // The header alone announces 65,541 bytes: refused before the body.
            "oversized message header",
            1009,
            hex("82 ff 00 00 00 00 00 01 00 05 01 02 03 04"),
        ),
    ];
    for (case, code, bytes) in cases {
        fx.closes(case, code, |m| m.send_raw(&bytes));
    }
    // A fragmented message that grows past the limit.
    fx.closes("fragments over the limit", 1009, |m| {
        let mut bytes = masked_frame(0x02, &[1; 40_000]);
        bytes.extend(masked_frame(0x80, &[2; 30_000]));
        m.send_raw(&bytes);
    });
}

#[test]
fn oversized_and_text_messages_close_the_connection() {
    let mut fx = Fixture::new("");
    fx.closes("text message", 1003, |m| {
        m.send_message(Message::Text("hello".into())).expect("send text");
    });
    // One byte over the largest frame (4 + 64 KiB), as a complete message.
    // The server refuses it at the header; the rest of the body may still
    // be in flight, so the close frame may race a reset: accept both.
    let (mut m, env) = fx.mallory();
    let mut big = send_frame(&[0; 65_536]);
    big.push(0);
    let _ = m.send_message(Message::Binary(big.into()));
    match m.read() {
        WsEvent::Close(code, _) => assert_eq!(code, 1009),
        WsEvent::Gone(e) => eprintln!("oversized message: connection reset before the close frame was read ({e})"),
        other => panic!("oversized message: {other:?}"),
    }
    expect_delivery(&mut fx.b, &env, "bob");
    fx.still_serving("oversized message");
    // The largest allowed frame still goes through (64 KiB envelope).
    let (mut m, first) = fx.mallory();
    expect_delivery(&mut fx.b, &first, "bob");
    let overhead = envelope(&fx.mallory, &user(&fx.bob), &[]).len();
    let env = envelope(&fx.mallory, &user(&fx.bob), &vec![0xab; 65_536 - overhead - 8]);
    assert!(env.len() <= 65_536 && env.len() > 65_500, "{}", env.len());
    assert_eq!(m.send_envelope(&env).1, Outcome::Delivered);
    expect_delivery(&mut fx.b, &env, "bob (largest envelope)");
}

#[test]
fn malformed_protocol_frames_close_the_connection() {
    let mut fx = Fixture::new("");
    let nonce = "ef cd ab 89 67 45 23 01";
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("empty message", 1002, vec![]),
        ("frame shorter than its header", 1002, hex("01 0b 00")),
        ("ping shorter than its nonce", 1002, hex("01 0b 00 00 01 02")),
        ("ping with trailing bytes", 1002, hex(&format!("01 0b 00 00 {nonce} 00"))),
        ("reserved header byte set", 1002, hex(&format!("01 0b 00 01 {nonce}"))),
        ("undefined flag bit", 1002, hex(&format!("01 0b 01 00 {nonce}"))),
        ("send with an empty envelope", 1002, hex("01 01 00 00")),
        ("delivery-ack without an id", 1002, hex("01 04 00 00 01 02 03")),
        ("frame version 2", 4101, hex(&format!("02 0b 00 00 {nonce}"))),
    ];
    for (case, code, bytes) in cases {
        fx.closes(case, code, |m| m.send(&bytes));
    }
    // An envelope of another version: the error frame, then close 4101.
    let mut sbv2 = envelope(&fx.mallory, &user(&fx.bob), b"v2");
    sbv2[4..8].copy_from_slice(b"SBv2");
    fx.closes("envelope identifier SBv2", 4101, |m| {
        let (code, ..) = parse_error(&m.request(&send_frame(&sbv2)));
        assert_eq!(code, ErrorCode::UnsupportedVersion.code());
    });
    // Frames pipelined after a fatal one are not interpreted: the valid
    // envelope behind the bad ping is neither delivered nor answered.
    let behind = envelope(&fx.mallory, &user(&fx.bob), b"behind a bad frame");
    fx.closes("valid send pipelined behind a bad frame", 1002, |m| {
        let mut bytes = masked_frame(0x82, &hex("01 0b 00 01 00 00 00 00 00 00 00 00"));
        bytes.extend(masked_frame(0x82, &send_frame(&behind)));
        m.send_raw(&bytes);
    });
}

/// Marks a case whose error names the id found in the frame's header.
const PATCHED: EnvelopeId = EnvelopeId([0xff; 16]);

/// Offset of the `RoutingHeader` struct in an envelope, found the way the
/// FlatBuffers layout in docs/protocol.md describes.
fn header_at(env: &[u8]) -> usize {
    let u32_at = |o: usize| u32::from_le_bytes(env[o..o + 4].try_into().unwrap()) as usize;
    let table = u32_at(0);
    let vtable = (table as i64 - i64::from(i32::from_le_bytes(env[table..table + 4].try_into().unwrap()))) as usize;
    table + usize::from(u16::from_le_bytes(env[vtable + 4..vtable + 6].try_into().unwrap()))
}

#[test]
fn bad_frames_and_envelopes_get_an_error_frame_and_the_connection_stays() {
    let mut fx = Fixture::new("[limits]\nmax_rooms_per_connection = 2\n");
    let (mut m, first) = fx.mallory();
    expect_delivery(&mut fx.b, &first, "bob");
    let (mallory, bob) = (fx.mallory.clone(), fx.bob.clone());
    let to_bob = user(&bob);
    let valid = || envelope(&mallory, &to_bob, b"valid");

    let patched = |at: usize, bytes: &[u8]| {
        let mut env = valid();
        let h = header_at(&env);
        env[h + at..h + at + bytes.len()].copy_from_slice(bytes);
        env
    };
    let mut truncated = valid();
    truncated.truncate(truncated.len() - 16);
    let mut sbv2 = valid();
    sbv2[4..8].copy_from_slice(b"SBv2");
    let expired = {
        let id = new_id();
        switchboard_protocol::EnvelopeBuilder::new(
            id,
            UserId::parse(&mallory).unwrap(),
            switchboard_protocol::Destination::parse(&to_bob).unwrap(),
            unix_ms() - 60_000,
        )
        .ttl_ms(1_000)
        .payload(b"too late")
        .build()
        .unwrap()
    };
    let spoofed = envelope(&fx.alice, &to_bob, b"I am alice, honest");
    let accepted_from_client = hex("01 02 00 00 01 00 00 00 00 00 00 00 00 00 00 00");

    // (case, frame, code, envelope id the error must name)
    let cases: Vec<(&str, Vec<u8>, ErrorCode, Option<EnvelopeId>)> = vec![
        ("unknown frame type 0x0d", hex("01 0d 00 00"), ErrorCode::UnknownFrameType, None),
        ("unknown frame type 0x00", hex("01 00 00 00"), ErrorCode::UnknownFrameType, None),
        ("unknown frame type 0xff", hex("01 ff 00 00 01 02"), ErrorCode::UnknownFrameType, None),
        ("accepted sent by a client", accepted_from_client, ErrorCode::UnknownFrameType, None),
        ("deliver sent by a client", deliver_frame(&valid()), ErrorCode::UnknownFrameType, None),
        ("done sent by a client", hex("01 08 00 00 07 00 00 00"), ErrorCode::UnknownFrameType, None),
        (
            "join-room with an invalid name",
            [hex("01 06 00 00 07 00 00 00"), b"bad/room".to_vec()].concat(),
            ErrorCode::InvalidDestination,
            None,
        ),
        ("envelope shorter than 8 bytes", send_frame(b"SBv1"), ErrorCode::InvalidEnvelope, None),
        (
            "envelope that is not a FlatBuffer",
            send_frame(&hex("08 00 00 00 53 42 76 31 00 00 00 00")),
            ErrorCode::InvalidEnvelope,
            None,
        ),
        ("truncated envelope", send_frame(&truncated), ErrorCode::InvalidEnvelope, None),
        ("nil envelope id", send_frame(&patched(0, &[0; 16])), ErrorCode::InvalidEnvelope, None),
        ("reserved flag bit", send_frame(&patched(28, &[0x10, 0])), ErrorCode::InvalidEnvelope, Some(PATCHED)),
        ("unknown destination kind", send_frame(&patched(31, &[7])), ErrorCode::InvalidDestination, Some(PATCHED)),
        (
            "persist-if-offline (no mailboxes yet)",
            send_frame(&envelope_flags(&mallory, &to_bob, b"keep", EnvelopeFlags::PERSIST_IF_OFFLINE)),
            ErrorCode::UnsupportedFeature,
            Some(PATCHED),
        ),
        ("expired envelope", send_frame(&expired), ErrorCode::EnvelopeExpired, Some(envelope_id(&expired))),
        ("spoofed sender", send_frame(&spoofed), ErrorCode::SenderMismatch, Some(envelope_id(&spoofed))),
    ];
    // Mallory's send sequence: every frame of type 0x01 takes the next.
    let mut sequence = 1;
    for (case, frame, code, id) in cases {
        let is_send = frame.get(1) == Some(&1);
        sequence += u64::from(is_send);
        let answer = m.request(&frame);
        let (got, got_id, request, got_sequence, reason) = parse_error_sequence(&answer);
        assert_eq!(got, code.code(), "{case}: {reason}");
        // A request's error names its request id, even when its name is bad.
        assert_eq!(request, case.starts_with("join-room").then_some(7), "{case}");
        assert_eq!(got_sequence, is_send.then_some(sequence), "{case}: the error names the send's sequence");
        match id {
            // The id of an envelope patched after it was built: whatever it
            // is, the error names it (the header was readable).
            Some(PATCHED) => {
                let h = header_at(&frame[4..]);
                assert_eq!(got_id.map(|i| i.0.to_vec()), Some(frame[4 + h..4 + h + 16].to_vec()), "{case}");
            }
            Some(id) => assert_eq!(got_id, Some(id), "{case}: the error names the envelope"),
            None => assert_eq!(got_id, None, "{case}"),
        }
        if got_id.is_some() {
            assert_eq!(answer[2] & 0x01, 0x01, "{case}: envelope-id flag");
        }
        // The same connection still works, and bob's next delivery is this
        // valid envelope: nothing refused was delivered.
        let env = valid();
        assert_eq!(m.send_envelope(&env), (envelope_id(&env), Outcome::Delivered), "after {case}");
        sequence += 1;
        expect_delivery(&mut fx.b, &env, &format!("bob, after {case}"));
        fx.still_serving(case);
    }

    // The spoofed-sender error, byte for byte as docs/protocol.md shows it:
    // flags 0x05 (envelope id and sequence), the sequence, the id.
    let answer = m.request(&send_frame(&spoofed));
    sequence += 1;
    assert_eq!(answer[..6], hex("01 05 05 00 cc 00"));
    assert_eq!(answer[6..12], [0; 6]);
    assert_eq!(answer[12..20], sequence.to_le_bytes());
    assert_eq!(answer[20..36], *envelope_id(&spoofed).as_bytes());

    // A repeat of an accepted envelope (same sender, same id) is answered
    // `duplicate` and not delivered again; a refused one was not remembered.
    let env = valid();
    assert_eq!(m.send_envelope(&env), (envelope_id(&env), Outcome::Delivered));
    expect_delivery(&mut fx.b, &env, "bob, before the repeat");
    assert_eq!(m.send_envelope(&env), (envelope_id(&env), Outcome::Duplicate));

    // Room limit: two rooms allowed, the third is refused with the request id.
    for (request_id, room) in [(1u32, "r1"), (2, "r2"), (2, "r2")] {
        let done =
            m.request(&[hex("01 06 00 00"), request_id.to_le_bytes().to_vec(), room.as_bytes().to_vec()].concat());
        assert_eq!(done, [hex("01 08 00 00"), request_id.to_le_bytes().to_vec()].concat(), "join {room}");
    }
    let answer = m.request(&[hex("01 06 00 00 03 00 00 00"), b"r3".to_vec()].concat());
    let (code, id, request, _) = parse_error(&answer);
    assert_eq!((code, id, request), (ErrorCode::RoomLimit.code(), None, Some(3)));
    assert_eq!(answer[..12], hex("01 05 02 00 93 01 00 00 03 00 00 00"));
    // Leaving a room one is not in.
    let answer = m.request(&[hex("01 07 00 00 04 00 00 00"), b"r3".to_vec()].concat());
    assert_eq!(parse_error(&answer).0, ErrorCode::NotAMember.code());
    // The rooms joined before the limit still work.
    fx.b.send(&Frame::JoinRoom { request_id: 5, room: RoomName::parse("r2").unwrap() }).unwrap();
    assert_eq!(recv(&mut fx.b), hex("01 08 00 00 05 00 00 00"));
    let env = envelope(&mallory, "room:r2", b"to r2");
    assert_eq!(m.send_envelope(&env), (envelope_id(&env), Outcome::Delivered));
    expect_delivery(&mut fx.b, &env, "bob in r2");
    fx.still_serving("room limit");
}

/// An unsigned token: header `{"alg":"none"}`, empty signature.
fn alg_none_token(claims: &serde_json::Value) -> String {
    format!("{}.{}.", B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#), B64URL.encode(claims.to_string()))
}

/// A WebSocket upgrade request for `/connect<query>` with extra header lines.
fn upgrade_request(query: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET /connect{query} HTTP/1.1\r\nHost: switchboard\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[test]
fn bad_tokens_are_refused_with_401_and_a_json_error() {
    let mut fx = Fixture::new("");
    let s = &fx.s;
    let now = unix_secs();
    let sub = |extra: serde_json::Value| {
        let mut c = serde_json::json!({ "sub": "mallory" });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let wrong_key =
        sign_hs256(&default_claims(sub(serde_json::json!({}))), b"another-secret-that-is-at-least-32-bytes-long");
    let unknown_kid = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("no-such-key".into());
        jsonwebtoken::encode(
            &h,
            &default_claims(sub(serde_json::json!({}))),
            &jsonwebtoken::EncodingKey::from_secret(s.secret()),
        )
        .unwrap()
    };
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    let cases: Vec<(&str, String, ErrorCode)> = vec![
        ("no token", String::new(), ErrorCode::Unauthenticated),
        ("not a JWT", bearer("not-a-jwt"), ErrorCode::InvalidToken),
        (
            "expired",
            bearer(&s.token_with(sub(serde_json::json!({"iat": now - 7200, "exp": now - 3600})))),
            ErrorCode::TokenExpired,
        ),
        ("not yet valid", bearer(&s.token_with(sub(serde_json::json!({"nbf": now + 3600})))), ErrorCode::TokenExpired),
        ("wrong key", bearer(&wrong_key), ErrorCode::InvalidToken),
        ("unknown kid", bearer(&unknown_kid), ErrorCode::InvalidToken),
        (
            "wrong audience",
            bearer(&s.token_with(sub(serde_json::json!({"aud": "someone-else"})))),
            ErrorCode::InvalidToken,
        ),
        ("wrong issuer", bearer(&s.token_with(sub(serde_json::json!({"iss": "evil"})))), ErrorCode::InvalidToken),
        ("alg none", bearer(&alg_none_token(&default_claims(sub(serde_json::json!({}))))), ErrorCode::InvalidToken),
        (
            "sub that is not a user id",
            bearer(&s.token_with(serde_json::json!({"sub": "a/b"}))),
            ErrorCode::InvalidToken,
        ),
        (
            "no exp",
            bearer(&sign_hs256(
                &serde_json::json!({"sub": "mallory", "iss": "switchboard", "aud": "switchboard"}),
                s.secret(),
            )),
            ErrorCode::InvalidToken,
        ),
    ];
    let check = |case: &str, r: &HttpResponse, code: ErrorCode| {
        assert_eq!(r.status, 401, "{case}: {r:?}");
        assert!(r.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{case}: {r:?}");
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{case}: {r:?}");
        let body = r.json();
        assert_eq!(body["error"]["code"], code.code(), "{case}: {body}");
        assert_eq!(body["error"]["name"], code.name(), "{case}: {body}");
        assert!(body["error"]["reason"].is_string(), "{case}: {body}");
        // The answer names none of the server's keys (nor echoes a kid).
        let reason = body["error"]["reason"].as_str().unwrap_or_default();
        assert!(!reason.contains("dev") && !reason.contains("no-such-key"), "{case}: {body}");
    };
    for (case, header, code) in &cases {
        let r = http_request(
            s.addr(),
            &upgrade_request("", &format!("Sec-WebSocket-Protocol: switchboard.v1\r\n{header}")),
        );
        check(case, &r, *code);
        fx_still_serving(&fx.s, case);
    }
    // The same through the browser paths: ?token= and the bearer subprotocol.
    let expired = s.token_with(sub(serde_json::json!({"iat": now - 7200, "exp": now - 3600})));
    let r = http_request(s.addr(), &upgrade_request(&format!("?token={expired}"), ""));
    check("expired ?token=", &r, ErrorCode::TokenExpired);
    let r = http_request(
        s.addr(),
        &upgrade_request("", &format!("Sec-WebSocket-Protocol: switchboard.v1, bearer.{wrong_key}\r\n")),
    );
    check("wrong key in the subprotocol", &r, ErrorCode::InvalidToken);
    let r = http_request(s.addr(), &upgrade_request("?token=", ""));
    assert_eq!(r.status, 401, "empty ?token=: {r:?}");

    // And valid tokens on those paths connect.
    let good = s.token(&fx.mallory);
    let mut q = Ws::connect(&format!("{}?token={good}", s.url()), &[]).expect("?token= connects");
    let env = envelope(&fx.mallory, &user(&fx.bob), b"via ?token=");
    assert_eq!(q.send_envelope(&env).1, Outcome::Delivered);
    expect_delivery(&mut fx.b, &env, "bob");
    let raw = http_request(
        s.addr(),
        &upgrade_request("", &format!("Sec-WebSocket-Protocol: switchboard.v1, bearer.{good}\r\n")),
    );
    assert_eq!(raw.status, 101, "{raw:?}");
    assert_eq!(raw.header("sec-websocket-protocol"), Some("switchboard.v1"), "{raw:?}");
    let mut p = Ws::connect(&s.url(), &[("Sec-WebSocket-Protocol", &format!("switchboard.v1, bearer.{good}"))])
        .expect("bearer subprotocol connects");
    let env = envelope(&fx.mallory, &user(&fx.bob), b"via subprotocol");
    assert_eq!(p.send_envelope(&env).1, Outcome::Delivered);
    expect_delivery(&mut fx.b, &env, "bob");
    fx.still_serving("bad tokens");
}

/// A new connection can still authenticate and be answered.
fn fx_still_serving(s: &Server, case: &str) {
    let mut c = s.ws("probe");
    let r = c.request(&hex("01 0b 00 00 01 00 00 00 00 00 00 00"));
    assert_eq!(r, hex("01 0c 00 00 01 00 00 00 00 00 00 00"), "after {case}");
}

#[test]
fn bad_http_and_slow_handshakes_are_refused() {
    let mut fx = Fixture::new("[limits]\nhandshake_timeout_ms = 300\n");
    let s = &fx.s;
    let token = s.token(&fx.mallory);
    // Not an upgrade.
    let r = http_request(
        s.addr(),
        format!("GET /connect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 426, "{r:?}");
    // Another subprotocol only.
    let r = http_request(
        s.addr(),
        &upgrade_request("", &format!("Sec-WebSocket-Protocol: mqtt\r\nAuthorization: Bearer {token}\r\n")),
    );
    assert_eq!(r.status, 400, "{r:?}");
    // Bytes that are not HTTP.
    let r = http_request(s.addr(), &hex("16 03 01 00 a5 01 00 00 a1 03 03 0d 0a 0d 0a"));
    assert_eq!(r.status, 400, "{r:?}");
    // No such endpoint.
    let r = http_request(s.addr(), b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 404, "{r:?}");
    // A client that connects and says nothing is dropped after the timeout.
    for partial in [&b""[..], b"GET /connect HTTP/1.1\r\nHost: x\r\n"] {
        let mut c = std::net::TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        std::io::Write::write_all(&mut c, partial).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "expected the server to hang up");
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    }
    fx_still_serving(&fx.s, "bad http");
    fx.still_serving("bad http");
}

/// Writes `bytes` one byte per `write` (TCP_NODELAY): the server sees the
/// request head, frames and bodies in many small reads.
fn trickle(s: &mut std::net::TcpStream, bytes: &[u8]) {
    use std::io::Write;
    s.set_nodelay(true).unwrap();
    for b in bytes {
        s.write_all(&[*b]).unwrap();
    }
}

#[test]
fn requests_split_across_reads_are_reassembled() {
    let mut fx = Fixture::new("");
    let token = fx.s.token(&fx.mallory);
    // A WebSocket handshake and two frames, one byte at a time.
    let mut m = fx.s.ws(&fx.mallory);
    let env1 = envelope(&fx.mallory, &user(&fx.bob), &payload(1, 3000));
    let env2 = envelope(&fx.mallory, &user(&fx.bob), b"second");
    let mut bytes = masked_frame(0x82, &send_frame(&env1));
    bytes.extend(masked_frame(0x82, &send_frame(&env2)));
    trickle(m.stream(), &bytes);
    assert_eq!(read_outcomes(1, 2, || m.frame()), [Outcome::Delivered; 2]);
    expect_delivery(&mut fx.b, &env1, "bob");
    expect_delivery(&mut fx.b, &env2, "bob");

    let mut raw = std::net::TcpStream::connect(fx.s.addr()).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    trickle(&mut raw, &upgrade_request("", &format!("Authorization: Bearer {token}\r\n")));
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut raw, &mut b).expect("101 response");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));

    // POST /send with its head and body trickled.
    let env3 = envelope(&fx.mallory, &user(&fx.bob), &payload(3, 2000));
    let mut req = format!(
        "POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        env3.len()
    )
    .into_bytes();
    req.extend_from_slice(&env3);
    let mut post = std::net::TcpStream::connect(fx.s.addr()).unwrap();
    post.set_read_timeout(Some(WAIT)).unwrap();
    trickle(&mut post, &req);
    let mut resp = Vec::new();
    std::io::Read::read_to_end(&mut post, &mut resp).expect("response");
    let r = parse_http_response(&resp);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["id"], envelope_id(&env3).to_string());
    assert_eq!(r.json()["outcome"], "delivered");
    expect_delivery(&mut fx.b, &env3, "bob (POST /send)");
    fx.still_serving("split requests");
}

#[test]
fn silent_connections_are_pinged_then_closed_with_4502() {
    let fx = Fixture::new("[limits]\nping_interval_ms = 100\nidle_timeout_ms = 400\n");
    let mut m = fx.s.ws(&fx.mallory);
    fx.s.wait_connections(&fx.mallory, 1);
    // Read nothing (so no pong goes back) until the server has given up.
    fx.s.wait_connections(&fx.mallory, 0);
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(m.stream(), &mut raw);
    assert!(raw.starts_with(&hex("89 02 73 62")), "a WebSocket ping first: {raw:02x?}");
    // Then the idle-timeout error frame, in a binary message.
    assert_eq!(raw[4], 0x82, "then the error frame: {raw:02x?}");
    let len = usize::from(raw[5]);
    assert_eq!(parse_error(&raw[6..6 + len]).0, ErrorCode::IdleTimeout.code());
    let close = &raw[6 + len..];
    assert_eq!(close[0], 0x88, "then a close frame: {raw:02x?}");
    assert_eq!(close[2..4], ErrorCode::IdleTimeout.close_code().to_be_bytes(), "{raw:02x?}");
    // (Alice and bob did not read either, so they timed out too.) A new
    // connection is served.
    fx_still_serving(&fx.s, "idle timeout");
}

#[test]
fn a_connection_receives_from_the_moment_its_upgrade_is_answered() {
    // docs/protocol.md §10: the server registers a WebSocket connection on
    // its owner shard before it writes the 101, so a send the server reads
    // after the client saw the 101 finds it, also when the connection
    // arrived on another shard and was handed over. No waiting here.
    let s = Server::start();
    let alice = s.user_on_shard("alice", 0);
    let mut a = s.client(&alice);
    for i in 0..300 {
        let bob = format!("early-bird-{i}");
        let mut b = s.client(&bob);
        let env = envelope(&alice, &user(&bob), b"right after the 101");
        assert_eq!(send_env(&mut a, &env), (envelope_id(&env), Outcome::Delivered), "try {i}");
        expect_delivery(&mut b, &env, &bob);
    }
}

#[test]
fn slow_consumer_bounded_by_bytes_is_disconnected() {
    // The bound in bytes: 8 KiB envelopes that the sloth neither reads nor
    // acknowledges fill 64 KiB of unacknowledged deliveries after 8, and
    // every later one is refused while the backlog stays one envelope
    // below the bound. It must still count as slow and be closed (it was
    // never closed while the backlog stayed above half the bound).
    let s = Server::builder().config("[limits]\noutbound_queue_bytes = 65536\nslow_consumer_grace_ms = 200\n").start();
    let alice = s.user_on_shard("alice", 0);
    let sloth = s.user_on_shard("sloth", 1);
    let mut a = s.client(&alice);
    let _sl = s.ws(&sloth);
    s.wait_connections(&sloth, 1);
    for i in 0..40 {
        let env = envelope(&alice, &user(&sloth), &payload(i, 8192));
        match send_answer(&mut a, &env) {
            Ok(Outcome::Delivered | Outcome::RecipientOffline) | Err(ErrorCode::RecipientBusy) => {}
            other => panic!("send {i}: {other:?}"),
        }
    }
    wait_for("the byte-bound slow consumer to be disconnected", || s.metric("slow_consumer_disconnects_total") >= 1);
    s.wait_connections(&sloth, 0);
}

#[test]
fn json_send_errors_use_the_documented_codes() {
    // The JSON form of `POST /send` answers a fault with the code the same
    // fault has everywhere else (docs/protocol.md §6, HTTP column).
    let s = Server::start();
    let alice = s.user_on_shard("alice", 0);
    let token = s.token(&alice);
    let post = |body: &[u8]| {
        let mut c = std::net::TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        let head = format!(
            "POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        std::io::Write::write_all(&mut c, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut c, body).unwrap();
        let mut resp = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut resp).expect("response");
        parse_http_response(&resp)
    };
    let r = post(br#"{"to":"bob","payload":"aGk="}"#);
    assert_eq!((r.status, r.json()["error"]["code"].as_u64()), (400, Some(203)), "bad `to`: {r:?}");
    let payload = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 70_000]);
    let r = post(format!(r#"{{"to":"user:bob","payload":"{payload}"}}"#).as_bytes());
    assert_eq!((r.status, r.json()["error"]["code"].as_u64()), (413, Some(201)), "70 KB payload: {}", r.body_text());
    let r = post(br#"{"to":"user:bob","payload":"aGk="}"#);
    assert_eq!((r.status, r.json()["outcome"].as_str()), (202, Some("recipient-offline")), "{r:?}");
}

#[test]
fn connections_close_when_their_token_expires() {
    // `exp` two seconds ahead, no leeway: the connection is accepted, works,
    // and is closed with token-expired (4302) once `exp` passes, although
    // it keeps sending; a connection of a later token is unaffected.
    let s = Server::builder().config("[auth]\nleeway_secs = 0\n").start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let short = s.token_with(serde_json::json!({ "sub": alice, "exp": now + 2 }));
    let mut a = Ws::connect(&s.url(), &[("Authorization", &format!("Bearer {short}"))]).expect("connects before exp");
    let mut b = s.client(&bob);
    s.wait_connections(&bob, 1);
    let start = Instant::now();
    let mut sent = 0;
    let (code, frames) = loop {
        let env = envelope(&alice, &user(&bob), &payload(sent, 16));
        a.send(&send_frame(&env));
        match a.read() {
            WsEvent::Frame(f) if f[1] == 0x02 => {
                expect_delivery(&mut b, &env, &bob);
                sent += 1;
            }
            WsEvent::Frame(f) => {
                let (code, mut rest) = a.close_code();
                rest.insert(0, f);
                break (code, rest);
            }
            WsEvent::Close(code, _) => break (code, Vec::new()),
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(8), "still open 8 s after a 2 s token");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(sent > 0, "the connection worked before exp");
    assert_eq!(code, ErrorCode::TokenExpired.close_code());
    assert_eq!(frames.len(), 1, "the error frame before the close: {frames:02x?}");
    assert_eq!(parse_error(&frames[0]).0, ErrorCode::TokenExpired.code());
    s.wait_connections(&alice, 0);
}

#[test]
fn http_sends_racing_the_timeout_leave_nothing_behind() {
    // Bodies that complete around `handshake_timeout_ms`: some are read in
    // time and answered 202, some are cut off, and some are registered and
    // routed just before the timeout fires while their answer crosses the
    // shard mesh. None may leave a registration behind: the connections
    // gauge returns to 0 and SIGTERM does not wait out its grace period.
    const TIMEOUT_MS: u64 = 300;
    let grace = Duration::from_secs(5);
    let config =
        format!("[limits]\nhandshake_timeout_ms = {TIMEOUT_MS}\n[server]\nshutdown_grace_ms = {}\n", grace.as_millis());
    let mut s = Server::builder().config(&config).start();
    let alice = s.user_on_shard("alice", 0);
    let bob = s.user_on_shard("bob", 1);
    let token = s.token(&alice);
    let addr = s.addr();
    let threads: Vec<_> = (0..120u64)
        .map(|i| {
            let env = envelope(&alice, &user(&bob), &payload(i as usize, 32));
            let head = format!(
                "POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                env.len()
            );
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(WAIT)).unwrap();
                c.set_nodelay(true).unwrap();
                std::io::Write::write_all(&mut c, head.as_bytes()).unwrap();
                // From 6 ms before the timeout to 6 ms after, 0.1 ms apart.
                std::thread::sleep(Duration::from_micros(TIMEOUT_MS * 1000 - 6000 + i * 100));
                let _ = std::io::Write::write_all(&mut c, &env);
                let mut resp = Vec::new();
                let _ = std::io::Read::read_to_end(&mut c, &mut resp);
                resp.get(9..12).map(|s| String::from_utf8_lossy(s).into_owned())
            })
        })
        .collect();
    let statuses: Vec<Option<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!("statuses: {statuses:?}");
    assert!(statuses.iter().any(|s| s.as_deref() == Some("202")), "some bodies came in time");
    wait_for("every HTTP send to be unregistered", || s.metric("connections") == 0);
    let start = Instant::now();
    let status = s.terminate(grace + Duration::from_secs(2)).expect("server exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(start.elapsed() < grace / 2, "shutdown waited {:?}", start.elapsed());
}
