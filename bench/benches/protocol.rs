//! Hot-path costs of the wire protocol: envelope verification with a
//! header read (and the same through the generic FlatBuffers verifier, for
//! comparison), and frame encode/decode.
//!
//! Run: `cargo bench -p switchboard-bench --bench protocol`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard_protocol::frame::{Confirm, ErrorFrame, deliver_header};
use switchboard_protocol::limits::MAX_METADATA_ENTRIES;
use switchboard_protocol::{
    Destination, DeviceId, Envelope, EnvelopeBuilder, EnvelopeError, EnvelopeId, ErrorCode, Frame, Limits, Outcome,
    RoomName, UserId,
};

/// A typical envelope: alice's phone to bob, content type, no metadata,
/// payload sized so that the whole envelope is `total` bytes.
fn envelope(total: usize) -> Vec<u8> {
    sized_envelope(total, true)
}

/// Alice to bob, with a ttl and `payload`.
fn alice_to_bob(payload: &[u8]) -> EnvelopeBuilder<'_> {
    EnvelopeBuilder::new(
        EnvelopeId::new_v7(1_764_000_000_000, &[9; 10]),
        UserId::parse("alice").expect("valid"),
        Destination::parse("user:bob").expect("valid"),
        1_764_000_000_000,
    )
    .ttl_ms(60_000)
    .payload(payload)
}

/// An envelope of `total` bytes; `full` adds a device id and a content type
/// (two more strings for the verifier), else only the required fields.
fn sized_envelope(total: usize, full: bool) -> Vec<u8> {
    let build = |payload_len: usize| {
        let payload = vec![0x5a; payload_len];
        let b = alice_to_bob(&payload);
        let b = if full {
            b.sender_device(DeviceId::parse("phone-1").expect("valid")).content_type("application/octet-stream")
        } else {
            b
        };
        b.build().expect("valid envelope")
    };
    let overhead = build(0).len();
    let env = build(total.saturating_sub(overhead));
    assert!(env.len().abs_diff(total) < 8, "{} vs {total}", env.len());
    env
}

/// An envelope with the most metadata entries allowed (16 keys of 5 or 6
/// bytes, values of 16 bytes) and a 64-byte payload: the metadata rules' worst case.
fn metadata_envelope() -> Vec<u8> {
    let keys: Vec<String> = (0..MAX_METADATA_ENTRIES).map(|i| format!("key-{i}")).collect();
    let payload = [0x5a; 64];
    let b = keys.iter().fold(alice_to_bob(&payload), |b, k| b.metadata(k, "0123456789abcdef"));
    b.build().expect("valid envelope")
}

fn verify(c: &mut Criterion) {
    let cases = [
        ("256", sized_envelope(256, true)),
        ("256-minimal", sized_envelope(256, false)),
        ("16384", sized_envelope(16 * 1024, true)),
        ("metadata-16", metadata_envelope()),
    ];
    verify_group(c, "envelope_verify_and_read_header", &cases, |bytes, limits| Envelope::parse(bytes, limits));
    // The same through the `flatbuffers` crate's generic verifier, the
    // reference the schema-specific one is fuzzed against: side by side in
    // one run.
    verify_group(c, "envelope_verify_generic_and_read_header", &cases, |bytes, limits| {
        Envelope::parse_generic(bytes, limits)
    });
}

/// Verifies each case with `parse` and reads the header fields the server
/// reads.
fn verify_group(
    c: &mut Criterion,
    group: &str,
    cases: &[(&str, Vec<u8>)],
    parse: impl for<'a> Fn(&'a [u8], &Limits) -> Result<Envelope<'a>, EnvelopeError>,
) {
    let mut g = c.benchmark_group(group);
    let limits = Limits::default();
    for (name, bytes) in cases {
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(name), bytes, |b, bytes| {
            b.iter(|| {
                let env = parse(black_box(bytes), &limits).expect("valid");
                black_box((env.id(), env.sender(), env.destination(), env.flags(), env.ttl_ms(), env.created_at_ms()));
            })
        });
    }
    g.finish();
}

fn frames(c: &mut Criterion) {
    let env = envelope(256);
    let id = EnvelopeId::new_v7(1, &[1; 10]);
    let room = RoomName::parse("lobby").expect("valid");
    let bob = UserId::parse("bob").expect("valid");
    let mut accepted = Vec::new();
    switchboard_protocol::frame::encode_accepted(&[Confirm { through: 1, outcome: Outcome::Delivered }], &mut accepted);
    let Ok(accepted) = Frame::decode(&accepted, &Limits::default()) else { unreachable!() };
    let cases = [
        ("send", Frame::Send { no_answer: false, envelope: &env }),
        ("deliver", Frame::Deliver { redelivery: false, envelope: &env }),
        ("accepted", accepted),
        ("delivery_ack", Frame::DeliveryAck { through: 1 }),
        (
            "error",
            Frame::Error(ErrorFrame {
                code: ErrorCode::SenderMismatch.code(),
                envelope_id: Some(id),
                request_id: None,
                sequence: Some(1),
                reason: "sender does not match the token",
            }),
        ),
        ("join_room", Frame::JoinRoom { request_id: 1, room }),
        ("leave_room", Frame::LeaveRoom { request_id: 1, room }),
        ("done", Frame::Done { request_id: 1 }),
        ("presence_query", Frame::PresenceQuery { request_id: 1, user: bob }),
        ("presence_result", Frame::PresenceResult { request_id: 1, user: bob, connections: 2 }),
        ("ping", Frame::Ping { nonce: 7 }),
        ("pong", Frame::Pong { nonce: 7 }),
    ];
    let limits = Limits::default();
    let mut g = c.benchmark_group("frame_decode");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in &cases {
        let bytes = frame.to_vec();
        g.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
            b.iter(|| black_box(Frame::decode(black_box(bytes), &limits).expect("valid")))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("frame_encode");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in &cases {
        let mut out = Vec::with_capacity(frame.encoded_len());
        g.bench_with_input(BenchmarkId::from_parameter(name), frame, |b, frame| {
            b.iter(|| {
                out.clear();
                black_box(frame).encode(&mut out);
                black_box(&out);
            })
        });
    }
    // What the server really does per delivery: a 4-byte header, the
    // envelope bytes untouched.
    g.bench_function("deliver_header", |b| b.iter(|| black_box(deliver_header(black_box(false)))));
    g.finish();
}

/// The full receive path of one 256-byte send: frame decode, envelope
/// verify, header read.
fn receive_path(c: &mut Criterion) {
    let frame = Frame::Send { no_answer: false, envelope: &envelope(256) }.to_vec();
    let limits = Limits::default();
    let mut g = c.benchmark_group("receive_send_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("256", |b| {
        b.iter(|| {
            let Ok(Frame::Send { envelope, .. }) = Frame::decode(black_box(&frame), &limits) else { unreachable!() };
            let env = Envelope::parse(envelope, &limits).expect("valid");
            black_box((env.id(), env.sender(), env.destination()));
        })
    });
    g.finish();
}

criterion_group!(benches, verify, frames, receive_path);
criterion_main!(benches);
