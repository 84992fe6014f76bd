//! The session driven on a simulated clock: frames are byte literals or
//! envelopes made with [`EnvelopeBuilder`], time is a base `Instant` plus
//! durations, and a recording [`Transmit`] stands in for the connection.

use proptest::prelude::*;

use super::*;
use crate::envelope::EnvelopeBuilder;
use crate::frame::{SEND_FLAG_NO_ANSWER, SEND_HEADER, VERSION};
use crate::id::UserId;

/// The wall clock every test runs at, ms since the Unix epoch.
const NOW_MS: u64 = 1_764_000_000_000;
/// How long the test shard remembers envelope ids.
const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// What the session told the connection to do, in order. Error reasons
/// are for people and are left out (checked to be non-empty).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    /// Any answer but an error.
    Reply(Reply),
    /// An error answer.
    Error { code: ErrorCode, id: Option<EnvelopeId>, request_id: Option<u32>, sequence: Option<u64> },
    /// Close after what is queued.
    Close(ErrorCode),
}

/// The connection's outbound queue.
#[derive(Debug, Default)]
struct Wire(Vec<Sent>);

impl Transmit for Wire {
    fn reply(&mut self, reply: Reply) {
        self.0.push(match reply {
            Reply::Error(e) => {
                assert!(!e.reason.is_empty(), "{e:?} has no reason");
                Sent::Error { code: e.code, id: e.id, request_id: e.request_id, sequence: e.sequence }
            }
            other => Sent::Reply(other),
        });
    }

    fn close(&mut self, code: ErrorCode, reason: &'static str) {
        assert!(!reason.is_empty(), "close {code} has no reason");
        self.0.push(Sent::Close(code));
    }
}

/// Alice's connection on a shard of its own.
struct Conn {
    config: SessionConfig,
    session: Session,
    dedup: Dedup,
    wire: Wire,
    start: Instant,
}

impl Conn {
    fn new() -> Self {
        Self::with(SessionConfig::default())
    }

    fn with(config: SessionConfig) -> Self {
        Self::with_dedup(config, 1024)
    }

    fn with_dedup(config: SessionConfig, capacity: usize) -> Self {
        let start = Instant::now();
        let session = Session::new(&config, start);
        Self { config, session, dedup: Dedup::new(DEDUP_WINDOW, capacity), wire: Wire::default(), start }
    }

    /// The simulated time `ms` after the session opened.
    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Hands in a frame at the start.
    fn frame<'a>(&mut self, frame: &'a [u8]) -> Event<'a> {
        self.frame_at(frame, 0)
    }

    /// Hands in a frame `ms` after the start.
    fn frame_at<'a>(&mut self, frame: &'a [u8], ms: u64) -> Event<'a> {
        let now = self.at(ms);
        self.session.handle_frame(&self.config, "alice", frame, now, NOW_MS, &mut self.dedup, &mut self.wire)
    }

    /// Hands in an envelope without a frame (an HTTP or MQTT publish).
    fn send<'a>(&mut self, envelope: &'a [u8], no_answer: bool, ms: u64) -> Event<'a> {
        let now = self.at(ms);
        self.session.handle_send(
            &self.config,
            "alice",
            envelope,
            no_answer,
            now,
            NOW_MS,
            &mut self.dedup,
            &mut self.wire,
        )
    }

    fn outcome(&mut self, sequence: u64, id: EnvelopeId, result: Result<Outcome, (ErrorCode, &'static str)>) {
        self.session.handle_outcome(sequence, id, result, &mut self.wire);
    }

    fn delivered(&mut self, sequence: u64, n: u8) {
        self.outcome(sequence, id(n), Ok(Outcome::Delivered));
    }

    fn timeout(&mut self, ms: u64, queued: usize, queued_bytes: usize) -> Timeout {
        let now = self.at(ms);
        self.session.handle_timeout(&self.config, now, queued, queued_bytes)
    }

    fn admit(&mut self, len: usize, queued: usize, ms: u64) -> bool {
        let now = self.at(ms);
        self.session.admit_delivery(&self.config, len, queued, 0, now)
    }

    /// What was transmitted since the last look.
    fn take(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.wire.0)
    }

    /// Flushes the answers and returns what was transmitted.
    fn flush(&mut self) -> Vec<Sent> {
        self.session.flush_answers(&mut self.wire);
        self.take()
    }
}

/// The id of test envelope `n`.
fn id(n: u8) -> EnvelopeId {
    EnvelopeId::new_v7(NOW_MS, &[n; 10])
}

/// Envelope `n` from `sender` to `destination`, made now, with a minute to
/// live.
fn envelope<'a>(n: u8, sender: &'a str, destination: &'a str) -> EnvelopeBuilder<'a> {
    made_at(n, sender, destination, NOW_MS)
}

/// As [`envelope`], made at `created_at_ms`.
fn made_at<'a>(n: u8, sender: &'a str, destination: &'a str, created_at_ms: u64) -> EnvelopeBuilder<'a> {
    let sender = UserId::parse(sender).unwrap();
    EnvelopeBuilder::new(id(n), sender, Destination::parse(destination).unwrap(), created_at_ms).ttl_ms(60_000)
}

/// Alice's envelope `n` to bob.
fn to_bob(n: u8) -> Vec<u8> {
    envelope(n, "alice", "user:bob").build().unwrap()
}

fn bob() -> Destination<'static> {
    Destination::parse("user:bob").unwrap()
}

/// A `send` frame carrying `envelope`.
fn send_frame(envelope: &[u8]) -> Vec<u8> {
    [&SEND_HEADER[..], envelope].concat()
}

/// A `send` frame that asks for no answer.
fn silent_send_frame(envelope: &[u8]) -> Vec<u8> {
    [&[VERSION, FrameType::Send as u8, SEND_FLAG_NO_ANSWER, 0][..], envelope].concat()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A `delivery-ack` frame.
fn ack_frame(through: u64) -> Vec<u8> {
    [&[VERSION, FrameType::DeliveryAck as u8, 0, 0][..], &through.to_le_bytes()].concat()
}

/// The sequence number of a routed send.
#[track_caller]
fn routed(event: Event<'_>) -> u64 {
    match event {
        Event::Route { sequence, .. } => sequence,
        other => panic!("expected a route, got {other:?}"),
    }
}

fn accepted(through: u64, outcome: Outcome) -> Sent {
    Sent::Reply(Reply::Accepted(Confirm { through, outcome }))
}

fn send_error(code: ErrorCode, id: Option<EnvelopeId>, sequence: u64) -> Sent {
    Sent::Error { code, id, request_id: None, sequence: Some(sequence) }
}

fn request_error(code: ErrorCode, request_id: u32) -> Sent {
    Sent::Error { code, id: None, request_id: Some(request_id), sequence: None }
}

fn frame_error(code: ErrorCode) -> Sent {
    Sent::Error { code, id: None, request_id: None, sequence: None }
}

// Sequence numbers and batched answers.

#[test]
fn sends_are_numbered_from_one_and_routed_with_their_sequence() {
    let mut c = Conn::new();
    let envelopes: Vec<_> = (1..=3).map(to_bob).collect();
    let frames: Vec<_> = envelopes.iter().map(|e| send_frame(e)).collect();
    for (n, (frame, envelope)) in (1..).zip(frames.iter().zip(&envelopes)) {
        let route = Event::Route { sequence: n, id: id(n as u8), destination: bob(), envelope, echo: false };
        assert_eq!(c.frame(frame), route);
    }
    assert_eq!(c.take(), []);
}

#[test]
fn room_send_carries_the_echo_flag() {
    let mut c = Conn::new();
    let plain = envelope(1, "alice", "room:lobby").build().unwrap();
    let echo = envelope(2, "alice", "room:lobby").flags(EnvelopeFlags::ECHO_TO_SENDER).build().unwrap();
    let lobby = Destination::parse("room:lobby").unwrap();
    let (plain_frame, echo_frame) = (send_frame(&plain), send_frame(&echo));
    let want = Event::Route { sequence: 1, id: id(1), destination: lobby, envelope: &plain, echo: false };
    assert_eq!(c.frame(&plain_frame), want);
    let want = Event::Route { sequence: 2, id: id(2), destination: lobby, envelope: &echo, echo: true };
    assert_eq!(c.frame(&echo_frame), want);
}

#[test]
fn outcomes_resolved_out_of_order_flush_as_one_accepted() {
    let mut c = Conn::new();
    let envelopes: Vec<_> = (1..=3).map(to_bob).collect();
    for e in &envelopes {
        routed(c.send(e, false, 0));
    }
    c.delivered(3, 3);
    assert_eq!(c.flush(), [], "send 1 has no outcome yet");
    c.delivered(1, 1);
    c.delivered(2, 2);
    assert_eq!(c.flush(), [accepted(3, Outcome::Delivered)]);
    assert_eq!(c.flush(), [], "answered once");
}

#[test]
fn nothing_is_flushed_while_the_lowest_send_waits() {
    let mut c = Conn::new();
    let envelopes: Vec<_> = (1..=3).map(to_bob).collect();
    for e in &envelopes {
        routed(c.send(e, false, 0));
    }
    c.delivered(2, 2);
    c.delivered(3, 3);
    assert_eq!(c.flush(), []);
    c.delivered(1, 1);
    assert_eq!(c.flush(), [accepted(3, Outcome::Delivered)]);
}

#[test]
fn each_run_of_equal_outcomes_is_one_accepted_in_order() {
    let mut c = Conn::new();
    let envelopes: Vec<_> = (1..=5).map(to_bob).collect();
    for e in &envelopes {
        routed(c.send(e, false, 0));
    }
    let outcomes =
        [Outcome::Delivered, Outcome::Delivered, Outcome::RecipientOffline, Outcome::Stored, Outcome::Stored];
    for (n, outcome) in (1..=5u8).zip(outcomes).rev() {
        c.outcome(u64::from(n), id(n), Ok(outcome));
    }
    assert_eq!(
        c.flush(),
        [accepted(2, Outcome::Delivered), accepted(3, Outcome::RecipientOffline), accepted(5, Outcome::Stored)]
    );
}

#[test]
fn flushes_answer_only_what_is_known_so_far() {
    let mut c = Conn::new();
    let envelopes: Vec<_> = (1..=3).map(to_bob).collect();
    for e in &envelopes {
        routed(c.send(e, false, 0));
    }
    c.delivered(1, 1);
    assert_eq!(c.flush(), [accepted(1, Outcome::Delivered)]);
    c.delivered(2, 2);
    c.delivered(3, 3);
    assert_eq!(c.flush(), [accepted(3, Outcome::Delivered)]);
}

// Refused sends.

/// Sends `refused` as send 1: it is answered at once by an error with its
/// sequence and id, and the `accepted` for send 2 covers it.
#[track_caller]
fn check_refused(refused: &[u8], code: ErrorCode) {
    let mut c = Conn::new();
    let (bad, good) = (send_frame(refused), to_bob(2));
    assert_eq!(c.frame(&bad), Event::None);
    assert_eq!(c.take(), [send_error(code, Some(id(1)), 1)], "answered before any flush");
    assert_eq!(c.flush(), []);
    assert_eq!(routed(c.send(&good, false, 0)), 2);
    c.delivered(2, 2);
    assert_eq!(c.flush(), [accepted(2, Outcome::Delivered)]);
    assert!(!c.session.is_closing());
}

#[test]
fn sender_mismatch_is_an_error_with_sequence_and_id() {
    check_refused(&envelope(1, "mallory", "user:bob").build().unwrap(), ErrorCode::SenderMismatch);
}

#[test]
fn expired_ttl_is_an_error_with_sequence_and_id() {
    let expired = made_at(1, "alice", "user:bob", NOW_MS - 60_000).build().unwrap();
    check_refused(&expired, ErrorCode::EnvelopeExpired);
}

#[test]
fn ttl_is_honoured_until_its_last_millisecond() {
    let mut c = Conn::new();
    let fresh = made_at(1, "alice", "user:bob", NOW_MS - 59_999).build().unwrap();
    assert_eq!(routed(c.send(&fresh, false, 0)), 1);
}

#[test]
fn persist_if_offline_is_unsupported_with_sequence_and_id() {
    let persist = envelope(1, "alice", "user:bob").flags(EnvelopeFlags::PERSIST_IF_OFFLINE).build().unwrap();
    check_refused(&persist, ErrorCode::UnsupportedFeature);
}

#[test]
fn service_destination_is_an_error_with_sequence_and_id() {
    check_refused(&envelope(1, "alice", "service:billing").build().unwrap(), ErrorCode::InvalidDestination);
}

#[test]
fn undecodable_envelope_takes_a_sequence_and_errors_without_an_id() {
    let mut c = Conn::new();
    // Too short to be an envelope; then an `SBv1` buffer whose root offset
    // points far outside it.
    let short = hex("01 01 00 00 deadbeef");
    let broken = hex("01 01 00 00 ffffff7f 53427631");
    let good = to_bob(3);
    assert_eq!(c.frame(&short), Event::None);
    assert_eq!(c.frame(&broken), Event::None);
    assert_eq!(
        c.take(),
        [send_error(ErrorCode::InvalidEnvelope, None, 1), send_error(ErrorCode::InvalidEnvelope, None, 2)]
    );
    assert!(!c.session.is_closing());
    assert_eq!(routed(c.send(&good, false, 0)), 3);
    c.delivered(3, 3);
    assert_eq!(c.flush(), [accepted(3, Outcome::Delivered)]);
}

#[test]
fn envelope_failing_its_semantic_checks_is_answered_with_its_id() {
    let mut c = Conn::new();
    // The layout is sound, so the id is readable; an empty content type is
    // not allowed.
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let bad = envelope(1, "alice", "user:bob").content_type("").build_into(&mut fbb).to_vec();
    let frame = send_frame(&bad);
    assert_eq!(c.frame(&frame), Event::None);
    assert_eq!(c.take(), [send_error(ErrorCode::InvalidEnvelope, Some(id(1)), 1)]);
    assert!(!c.session.is_closing());
}

#[test]
fn envelope_of_another_version_is_fatal() {
    let mut c = Conn::new();
    let frame = hex("01 01 00 00 08000000 53427632");
    assert_eq!(c.frame(&frame), Event::None);
    assert_eq!(
        c.take(),
        [send_error(ErrorCode::UnsupportedVersion, None, 1), Sent::Close(ErrorCode::UnsupportedVersion)]
    );
    assert!(c.session.is_closing());
}

#[test]
fn frame_of_another_version_is_fatal() {
    let mut c = Conn::new();
    assert_eq!(c.frame(&hex("02 0b 00 00 2a00000000000000")), Event::None);
    assert_eq!(c.take(), [frame_error(ErrorCode::UnsupportedVersion), Sent::Close(ErrorCode::UnsupportedVersion)]);
    assert!(c.session.is_closing());
}

#[test]
fn too_large_send_frame_is_fatal_and_takes_a_sequence() {
    let config = SessionConfig { limits: Limits::default().with_max_envelope_len(64), ..SessionConfig::default() };
    let mut c = Conn::with(config);
    let frame = [&SEND_HEADER[..], &[0; 65]].concat();
    assert_eq!(c.frame(&frame), Event::None);
    assert_eq!(c.take(), [send_error(ErrorCode::FrameTooLarge, None, 1), Sent::Close(ErrorCode::FrameTooLarge)]);
    assert!(c.session.is_closing());
}

#[test]
fn malformed_send_frame_is_fatal_and_takes_a_sequence() {
    for frame in ["01 01 00 00", "01 01 02 00 aa", "01 01 00 01 aa"] {
        let mut c = Conn::new();
        assert_eq!(c.frame(&hex(frame)), Event::None, "{frame}");
        assert_eq!(
            c.take(),
            [send_error(ErrorCode::MalformedFrame, None, 1), Sent::Close(ErrorCode::MalformedFrame)],
            "{frame}"
        );
        assert!(c.session.is_closing(), "{frame}");
    }
}

// Sends that ask for no answer.

#[test]
fn no_answer_flag_suppresses_the_accepted() {
    let mut c = Conn::new();
    let (quiet, loud) = (to_bob(1), to_bob(2));
    let quiet_frame = silent_send_frame(&quiet);
    assert_eq!(routed(c.frame(&quiet_frame)), 1);
    c.delivered(1, 1);
    assert_eq!(c.flush(), []);
    assert_eq!(routed(c.frame(&send_frame(&loud))), 2);
    c.delivered(2, 2);
    assert_eq!(c.flush(), [accepted(2, Outcome::Delivered)]);
}

#[test]
fn waiting_no_answer_send_holds_back_later_answers() {
    let mut c = Conn::new();
    let (quiet, loud) = (to_bob(1), to_bob(2));
    assert_eq!(routed(c.send(&quiet, true, 0)), 1);
    assert_eq!(routed(c.send(&loud, false, 0)), 2);
    c.delivered(2, 2);
    assert_eq!(c.flush(), []);
    c.delivered(1, 1);
    assert_eq!(c.flush(), [accepted(2, Outcome::Delivered)]);
}

#[test]
fn no_answer_send_failures_are_silent() {
    let mut c = Conn::new();
    let mismatch = envelope(1, "mallory", "user:bob").build().unwrap();
    let garbage = hex("deadbeef");
    let overloaded = to_bob(3);
    let good = to_bob(4);
    assert_eq!(c.send(&mismatch, true, 0), Event::None);
    assert_eq!(c.send(&garbage, true, 0), Event::None);
    assert_eq!(routed(c.send(&overloaded, true, 0)), 3);
    c.outcome(3, id(3), Err((ErrorCode::Overloaded, "shard queue full")));
    assert_eq!(c.take(), []);
    assert_eq!(routed(c.send(&good, false, 0)), 4);
    c.delivered(4, 4);
    assert_eq!(c.flush(), [accepted(4, Outcome::Delivered)]);
    assert!(!c.session.is_closing());
}

#[test]
fn no_answer_does_not_silence_fatal_errors() {
    let mut c = Conn::new();
    let frame = silent_send_frame(&hex("08000000 53427632"));
    assert_eq!(c.frame(&frame), Event::None);
    assert_eq!(
        c.take(),
        [send_error(ErrorCode::UnsupportedVersion, None, 1), Sent::Close(ErrorCode::UnsupportedVersion)]
    );
    assert!(c.session.is_closing());
}

// Failed outcomes.

#[test]
fn failed_outcome_is_an_error_and_skipped_in_accepted() {
    let mut c = Conn::new();
    let envelopes: Vec<_> = (1..=3).map(to_bob).collect();
    for e in &envelopes {
        routed(c.send(e, false, 0));
    }
    c.outcome(2, id(2), Err((ErrorCode::Overloaded, "shard queue full")));
    assert_eq!(c.take(), [send_error(ErrorCode::Overloaded, Some(id(2)), 2)]);
    c.delivered(1, 1);
    c.delivered(3, 3);
    assert_eq!(c.flush(), [accepted(3, Outcome::Delivered)]);
    assert!(!c.session.is_closing());
}

#[test]
fn outcome_of_an_answered_send_is_ignored() {
    let mut c = Conn::new();
    let e = to_bob(1);
    routed(c.send(&e, false, 0));
    c.delivered(1, 1);
    assert_eq!(c.flush(), [accepted(1, Outcome::Delivered)]);
    c.outcome(1, id(1), Err((ErrorCode::Overloaded, "late")));
    c.outcome(7, id(7), Err((ErrorCode::Overloaded, "never sent")));
    c.outcome(0, id(7), Ok(Outcome::Delivered));
    assert_eq!(c.flush(), []);
}

// De-duplication.

#[test]
fn repeated_id_from_the_same_sender_is_a_duplicate() {
    let mut c = Conn::new();
    let e = to_bob(1);
    assert_eq!(routed(c.send(&e, false, 0)), 1);
    assert_eq!(c.send(&e, false, 1_000), Event::None);
    assert_eq!(c.take(), [], "a duplicate is answered by accepted, not at once");
    c.delivered(1, 1);
    assert_eq!(c.flush(), [accepted(1, Outcome::Delivered), accepted(2, Outcome::Duplicate)]);
}

#[test]
fn same_id_from_another_sender_is_routed() {
    let config = SessionConfig::default();
    let now = Instant::now();
    let mut dedup: Dedup = Dedup::new(DEDUP_WINDOW, 1024);
    let (mut alice, mut bob) = (Session::new(&config, now), Session::new(&config, now));
    let mut wire = Wire::default();
    let from_alice = envelope(1, "alice", "user:carol").build().unwrap();
    let from_bob = envelope(1, "bob", "user:carol").build().unwrap();
    let event = alice.handle_send(&config, "alice", &from_alice, false, now, NOW_MS, &mut dedup, &mut wire);
    assert_eq!(routed(event), 1);
    let event = bob.handle_send(&config, "bob", &from_bob, false, now, NOW_MS, &mut dedup, &mut wire);
    assert_eq!(routed(event), 1);
    assert_eq!(wire.0, []);
    // Alice keeps the entry.
    let event = alice.handle_send(&config, "alice", &from_alice, false, now, NOW_MS, &mut dedup, &mut wire);
    assert_eq!(event, Event::None);
}

#[test]
fn id_is_remembered_for_at_least_the_window_and_at_most_twice_it() {
    let mut c = Conn::new();
    let e = to_bob(1);
    let window = DEDUP_WINDOW.as_millis() as u64;
    assert_eq!(routed(c.send(&e, false, 0)), 1);
    assert_eq!(c.send(&e, false, window - 1), Event::None);
    assert_eq!(c.send(&e, false, window), Event::None, "in the previous generation now");
    assert_eq!(routed(c.send(&e, false, 2 * window)), 4, "its generation was dropped");
}

#[test]
fn dedup_capacity_forgets_the_oldest_generation() {
    let mut c = Conn::with_dedup(SessionConfig::default(), 2);
    let envelopes: Vec<_> = (1..=5).map(to_bob).collect();
    for e in &envelopes {
        routed(c.send(e, false, 0));
    }
    // Generations {1, 2}, {3, 4}, {5}: the first was dropped.
    assert_eq!(c.dedup.len(), 3);
    assert_eq!(c.send(&envelopes[2], false, 0), Event::None, "among the last `capacity` ids");
    assert_eq!(routed(c.send(&envelopes[0], false, 0)), 7, "the oldest id was forgotten");
    assert_eq!(c.send(&envelopes[0], false, 0), Event::None, "and is known again");
}

#[test]
fn dedup_at_capacity_still_knows_its_oldest_id() {
    let mut c = Conn::with_dedup(SessionConfig::default(), 2);
    let envelopes: Vec<_> = (1..=2).map(to_bob).collect();
    for e in &envelopes {
        routed(c.send(e, false, 0));
    }
    assert_eq!(c.send(&envelopes[0], false, 0), Event::None, "id 1 is one of the last two recorded");
    assert_eq!(c.dedup.len(), 2, "a repeat forgets nothing");
}

#[test]
fn removed_id_is_routed_again() {
    let mut c = Conn::new();
    let e = to_bob(1);
    assert_eq!(routed(c.send(&e, false, 0)), 1);
    c.outcome(1, id(1), Err((ErrorCode::Overloaded, "shard queue full")));
    c.dedup.remove("alice", id(1));
    assert_eq!(routed(c.send(&e, false, 1_000)), 2);
}

#[test]
fn remove_by_another_sender_keeps_the_id() {
    let mut c = Conn::new();
    let e = to_bob(1);
    routed(c.send(&e, false, 0));
    c.dedup.remove("mallory", id(1));
    assert_eq!(c.send(&e, false, 0), Event::None);
}

#[test]
fn re_recorded_id_outlives_its_stale_slot() {
    let mut dedup: Dedup = Dedup::new(DEDUP_WINDOW, 2);
    let t = Instant::now();
    assert!(dedup.insert("alice", id(1), t));
    dedup.remove("alice", id(1));
    assert_eq!(dedup.len(), 0);
    assert!(dedup.insert("alice", id(1), t + Duration::from_millis(1)));
    // The stale slot of the first record is the oldest and is evicted
    // first, without the entry recorded again.
    assert!(dedup.insert("alice", id(2), t + Duration::from_millis(2)));
    assert_eq!(dedup.len(), 2);
}

#[test]
fn re_recorded_id_at_the_same_instant_outlives_its_stale_slot() {
    let mut dedup: Dedup = Dedup::new(DEDUP_WINDOW, 2);
    let t = Instant::now();
    assert!(dedup.insert("alice", id(1), t));
    dedup.remove("alice", id(1));
    assert!(dedup.insert("alice", id(1), t));
    assert!(dedup.insert("alice", id(2), t));
    assert_eq!(dedup.len(), 2, "id 1, recorded again, was forgotten with its stale slot");
}

// Deliveries and their acknowledgements.

#[test]
fn admitted_deliveries_stay_counted_until_acknowledged() {
    let mut c = Conn::new();
    for _ in 0..3 {
        assert!(c.admit(100, 0, 0));
    }
    assert_eq!(c.session.unacked(), 3);
    assert_eq!(c.frame(&ack_frame(2)), Event::None);
    assert_eq!(c.session.unacked(), 1);
    assert_eq!(c.frame(&ack_frame(3)), Event::None);
    assert_eq!(c.session.unacked(), 0);
    assert_eq!(c.take(), []);
}

#[test]
fn ack_beyond_the_last_delivery_is_fatal() {
    let mut c = Conn::new();
    assert!(c.admit(100, 0, 0));
    assert!(c.admit(100, 0, 0));
    assert_eq!(c.frame(&ack_frame(3)), Event::None);
    assert_eq!(c.take(), [frame_error(ErrorCode::MalformedFrame), Sent::Close(ErrorCode::MalformedFrame)]);
    assert!(c.session.is_closing());
    assert_eq!(c.session.unacked(), 2);
}

#[test]
fn ack_below_an_earlier_ack_is_a_no_op() {
    let mut c = Conn::new();
    assert_eq!(c.frame(&ack_frame(0)), Event::None);
    for _ in 0..3 {
        assert!(c.admit(100, 0, 0));
    }
    c.frame(&ack_frame(2));
    c.frame(&ack_frame(1));
    c.frame(&ack_frame(2));
    assert_eq!(c.session.unacked(), 1);
    assert_eq!(c.take(), []);
    assert!(!c.session.is_closing());
}

#[test]
fn admit_refuses_over_the_frame_bound() {
    let config = SessionConfig { outbound_frames: 4, ..SessionConfig::default() };
    let mut c = Conn::with(config);
    assert!(c.admit(100, 0, 0));
    assert!(c.admit(100, 2, 0), "1 unacked + 2 queued");
    assert!(!c.admit(100, 2, 0), "2 unacked + 2 queued");
    assert!(c.admit(100, 0, 0));
    assert!(c.admit(100, 0, 0));
    assert!(!c.admit(100, 0, 0));
    assert_eq!(c.session.unacked(), 4);
    // A refused delivery took no sequence number.
    c.frame(&ack_frame(4));
    assert_eq!(c.take(), []);
    c.frame(&ack_frame(5));
    assert_eq!(c.take(), [frame_error(ErrorCode::MalformedFrame), Sent::Close(ErrorCode::MalformedFrame)]);
}

#[test]
fn admit_refuses_over_the_byte_bound() {
    let config = SessionConfig { outbound_bytes: 100, ..SessionConfig::default() };
    let mut c = Conn::with(config);
    assert!(c.admit(60, 0, 0));
    assert!(!c.admit(41, 0, 0));
    assert!(c.admit(40, 0, 0), "exactly at the bound");
    assert!(!c.admit(1, 0, 0));
    let now = c.at(0);
    assert!(!c.session.admit_delivery(&c.config, 1, 0, 0, now));
    c.frame(&ack_frame(1));
    assert!(!c.session.admit_delivery(&c.config, 30, 0, 31, now), "queued bytes count too");
    assert!(c.session.admit_delivery(&c.config, 30, 0, 30, now));
}

// Slow consumers.

/// A session whose outbound bound is 4 frames, 4 deliveries in and one
/// refused at the start.
fn slow() -> Conn {
    let config = SessionConfig { outbound_frames: 4, ..SessionConfig::default() };
    let mut c = Conn::with(config);
    for _ in 0..4 {
        assert!(c.admit(100, 0, 0));
    }
    assert!(!c.admit(100, 0, 0));
    c
}

const GRACE_MS: u64 = 5_000;

#[test]
fn slow_consumer_is_closed_after_the_grace() {
    let mut c = slow();
    assert_eq!(c.timeout(GRACE_MS - 1, 0, 0), Timeout::None);
    // Refused again later: the grace still runs from the first refusal.
    assert!(!c.admit(100, 0, GRACE_MS - 1));
    assert!(matches!(c.timeout(GRACE_MS, 0, 0), Timeout::Close(ErrorCode::SlowConsumer, _)));
}

#[test]
fn backlog_just_under_the_bound_still_closes() {
    let mut c = slow();
    c.frame(&ack_frame(1));
    assert_eq!(c.session.unacked(), 3);
    assert!(matches!(c.timeout(GRACE_MS, 0, 0), Timeout::Close(ErrorCode::SlowConsumer, _)));
}

#[test]
fn backlog_above_half_in_queued_frames_or_bytes_still_closes() {
    let mut c = slow();
    c.frame(&ack_frame(4));
    assert_eq!(c.timeout(1_000, 3, 0), Timeout::None, "3 queued of 4: still slow");
    let half_bytes = c.config.outbound_bytes / 2;
    assert_eq!(c.timeout(2_000, 0, half_bytes + 1), Timeout::None, "bytes above half: still slow");
    assert!(matches!(c.timeout(GRACE_MS, 0, half_bytes + 1), Timeout::Close(ErrorCode::SlowConsumer, _)));
}

#[test]
fn backlog_down_to_half_clears_slowness() {
    let mut c = slow();
    c.frame(&ack_frame(2));
    assert_eq!(c.session.unacked(), 2);
    assert_eq!(c.timeout(1_000, 0, 0), Timeout::None);
    // Full again, but nothing was refused since: not slow.
    assert_eq!(c.timeout(GRACE_MS * 2, 2, 0), Timeout::None);
}

// Idle connections.

const PING_MS: u64 = 30_000;
const IDLE_MS: u64 = 90_000;

#[test]
fn silence_pings_once_then_closes() {
    let mut c = Conn::new();
    assert_eq!(c.timeout(PING_MS - 1, 0, 0), Timeout::None);
    assert_eq!(c.timeout(PING_MS, 0, 0), Timeout::Ping);
    assert_eq!(c.timeout(PING_MS + 1, 0, 0), Timeout::None);
    assert_eq!(c.timeout(IDLE_MS - 1, 0, 0), Timeout::None);
    assert!(matches!(c.timeout(IDLE_MS, 0, 0), Timeout::Close(ErrorCode::IdleTimeout, _)));
}

#[test]
fn activity_resets_the_idle_timers() {
    let mut c = Conn::new();
    assert_eq!(c.timeout(PING_MS, 0, 0), Timeout::Ping);
    let heard = 40_000;
    c.session.handle_activity(c.at(heard));
    assert_eq!(c.timeout(heard + PING_MS - 1, 0, 0), Timeout::None);
    assert_eq!(c.timeout(heard + PING_MS, 0, 0), Timeout::Ping, "pinged again after new silence");
    assert_eq!(c.timeout(heard + IDLE_MS - 1, 0, 0), Timeout::None);
    assert!(matches!(c.timeout(heard + IDLE_MS, 0, 0), Timeout::Close(ErrorCode::IdleTimeout, _)));
}

#[test]
fn a_session_closes_when_its_token_expires_however_busy() {
    let mut c = Conn::new();
    c.session.expire_at(c.at(10_000));
    assert_eq!(c.timeout(9_999, 0, 0), Timeout::None);
    c.session.handle_activity(c.at(9_999));
    assert_eq!(c.timeout(10_000, 0, 0), Timeout::Close(ErrorCode::TokenExpired, "token expired"));
}

// Send rate.

#[test]
fn sends_past_the_burst_are_rate_limited_until_tokens_refill() {
    let config = SessionConfig { send_rate_per_sec: 10, send_burst: 2, ..SessionConfig::default() };
    let mut c = Conn::with(config);
    let envelopes: Vec<_> = (1..=5).map(to_bob).collect();
    assert_eq!(routed(c.send(&envelopes[0], false, 0)), 1);
    assert_eq!(routed(c.send(&envelopes[1], false, 0)), 2);
    assert_eq!(c.send(&envelopes[2], false, 0), Event::None);
    assert_eq!(c.take(), [send_error(ErrorCode::RateLimited, Some(id(3)), 3)]);
    assert_eq!(routed(c.send(&envelopes[3], false, 100)), 4, "one token after 100 ms");
    assert_eq!(c.send(&envelopes[4], false, 100), Event::None);
    assert_eq!(c.take(), [send_error(ErrorCode::RateLimited, Some(id(5)), 5)]);
    for n in [1, 2, 4] {
        c.delivered(u64::from(n), n);
    }
    assert_eq!(c.flush(), [accepted(5, Outcome::Delivered)]);
    assert!(!c.session.is_closing());
}

// Rooms.

/// A `join-room` (0x06) or `leave-room` (0x07) frame.
fn room_frame(ty: FrameType, request_id: u32, room: &str) -> Vec<u8> {
    [&[VERSION, ty as u8, 0, 0][..], &request_id.to_le_bytes(), room.as_bytes()].concat()
}

#[test]
fn join_asks_the_shard_and_counts_the_room() {
    let mut c = Conn::new();
    let frame = hex("01 06 00 00 07000000 6c6f626279");
    assert_eq!(c.frame(&frame), Event::Join { request_id: 7, room: "lobby" });
    assert_eq!(c.session.rooms(), [Box::from("lobby")]);
    assert_eq!(c.take(), []);
}

#[test]
fn joining_a_room_again_is_done_at_once() {
    let mut c = Conn::new();
    let (first, again) = (room_frame(FrameType::JoinRoom, 1, "lobby"), room_frame(FrameType::JoinRoom, 2, "lobby"));
    assert_eq!(c.frame(&first), Event::Join { request_id: 1, room: "lobby" });
    assert_eq!(c.frame(&again), Event::None);
    assert_eq!(c.take(), [Sent::Reply(Reply::Done { request_id: 2 })]);
    assert_eq!(c.session.rooms().len(), 1);
}

#[test]
fn joining_past_max_rooms_is_a_room_limit_error() {
    let config = SessionConfig { max_rooms: 2, ..SessionConfig::default() };
    let mut c = Conn::with(config);
    let frames: Vec<_> =
        ["lobby", "kitchen", "garden"].iter().zip(1..).map(|(r, n)| room_frame(FrameType::JoinRoom, n, r)).collect();
    assert_eq!(c.frame(&frames[0]), Event::Join { request_id: 1, room: "lobby" });
    assert_eq!(c.frame(&frames[1]), Event::Join { request_id: 2, room: "kitchen" });
    assert_eq!(c.frame(&frames[2]), Event::None);
    assert_eq!(c.take(), [request_error(ErrorCode::RoomLimit, 3)]);
    assert_eq!(c.session.rooms(), [Box::from("lobby"), Box::from("kitchen")]);
    assert!(!c.session.is_closing());
    // A room already joined is still done at the limit.
    let again = room_frame(FrameType::JoinRoom, 4, "lobby");
    assert_eq!(c.frame(&again), Event::None);
    assert_eq!(c.take(), [Sent::Reply(Reply::Done { request_id: 4 })]);
}

#[test]
fn leave_asks_the_shard_and_forgets_the_room() {
    let mut c = Conn::new();
    let (join, leave) = (room_frame(FrameType::JoinRoom, 1, "lobby"), room_frame(FrameType::LeaveRoom, 2, "lobby"));
    c.frame(&join);
    assert_eq!(c.frame(&leave), Event::Leave { request_id: 2, room: "lobby" });
    assert!(c.session.rooms().is_empty());
    assert_eq!(c.take(), []);
}

#[test]
fn leaving_a_room_not_joined_is_not_a_member() {
    let mut c = Conn::new();
    let frame = hex("01 07 00 00 09000000 6c6f626279");
    assert_eq!(c.frame(&frame), Event::None);
    assert_eq!(c.take(), [request_error(ErrorCode::NotAMember, 9)]);
    assert!(!c.session.is_closing());
}

#[test]
fn invalid_room_name_is_invalid_destination_with_the_request_id() {
    let mut c = Conn::new();
    // "l/b", then no name at all, then a leave of "é".
    for frame in ["01 06 00 00 07000000 6c2f62", "01 06 00 00 07000000", "01 07 00 00 07000000 c3a9"] {
        assert_eq!(c.frame(&hex(frame)), Event::None, "{frame}");
        assert_eq!(c.take(), [request_error(ErrorCode::InvalidDestination, 7)], "{frame}");
    }
    assert!(!c.session.is_closing());
    assert!(c.session.rooms().is_empty());
}

#[test]
fn join_failed_forgets_the_room() {
    let mut c = Conn::new();
    let frame = room_frame(FrameType::JoinRoom, 1, "lobby");
    assert_eq!(c.frame(&frame), Event::Join { request_id: 1, room: "lobby" });
    c.session.join_failed("lobby");
    assert!(c.session.rooms().is_empty());
    assert_eq!(c.frame(&frame), Event::Join { request_id: 1, room: "lobby" }, "asked again, not done at once");
}

#[test]
fn take_rooms_empties_the_list() {
    let mut c = Conn::new();
    let (a, b) = (room_frame(FrameType::JoinRoom, 1, "lobby"), room_frame(FrameType::JoinRoom, 2, "kitchen"));
    c.frame(&a);
    c.frame(&b);
    assert_eq!(c.session.take_rooms(), [Box::from("lobby"), Box::from("kitchen")]);
    assert!(c.session.rooms().is_empty());
}

// Presence, ping and frames a client may not send.

#[test]
fn presence_query_asks_the_shard() {
    let mut c = Conn::new();
    let frame = hex("01 09 00 00 05000000 626f62");
    assert_eq!(c.frame(&frame), Event::PresenceQuery { request_id: 5, user: "bob" });
    assert_eq!(c.take(), []);
}

#[test]
fn presence_query_for_an_invalid_user_is_invalid_destination() {
    let mut c = Conn::new();
    assert_eq!(c.frame(&hex("01 09 00 00 05000000 2f")), Event::None);
    assert_eq!(c.take(), [request_error(ErrorCode::InvalidDestination, 5)]);
    assert!(!c.session.is_closing());
}

#[test]
fn ping_is_answered_with_pong_and_pong_ignored() {
    let mut c = Conn::new();
    assert_eq!(c.frame(&hex("01 0b 00 00 2a00000000000000")), Event::None);
    assert_eq!(c.take(), [Sent::Reply(Reply::Pong { nonce: 42 })]);
    assert_eq!(c.frame(&hex("01 0c 00 00 2a00000000000000")), Event::None);
    assert_eq!(c.take(), []);
}

#[test]
fn server_only_frame_is_unknown_frame_type_and_not_fatal() {
    let mut c = Conn::new();
    for frame in [
        "01 02 00 00 0300000000000000 00 000000", // accepted
        "01 03 00 00 aa",                         // deliver
        "01 08 00 00 01000000",                   // done
        "01 0a 00 00 01000000 02000000 626f62",   // presence-result
        "01 0d 00 00",                            // no such type
    ] {
        assert_eq!(c.frame(&hex(frame)), Event::None, "{frame}");
        assert_eq!(c.take(), [frame_error(ErrorCode::UnknownFrameType)], "{frame}");
        assert!(!c.session.is_closing(), "{frame}");
    }
    // None of them took a send sequence number.
    let e = to_bob(1);
    assert_eq!(routed(c.send(&e, false, 0)), 1);
}

// Properties.

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Delivered),
        Just(Outcome::RecipientOffline),
        Just(Outcome::Stored),
        Just(Outcome::Duplicate)
    ]
}

/// Results of `n` sends (`None`: failed), the order they are resolved in,
/// and after which ones the answers are flushed.
fn resolutions() -> impl Strategy<Value = (Vec<Option<Outcome>>, Vec<usize>, Vec<bool>)> {
    prop::collection::vec(prop::option::weighted(0.8, outcome()), 1..32).prop_flat_map(|results| {
        let n = results.len();
        (Just(results), Just((0..n).collect::<Vec<_>>()).prop_shuffle(), prop::collection::vec(any::<bool>(), n))
    })
}

proptest! {
    #[test]
    fn every_send_is_answered_once_whatever_the_order((results, order, flushes) in resolutions()) {
        let mut c = Conn::new();
        let envelopes: Vec<_> = (1..=results.len() as u8).map(to_bob).collect();
        for e in &envelopes {
            routed(c.send(e, false, 0));
        }
        let mut resolved = vec![false; results.len()];
        let mut sent = Vec::new();
        for (&i, &flush) in order.iter().zip(&flushes) {
            c.outcome(i as u64 + 1, id(i as u8 + 1), results[i].ok_or((ErrorCode::Overloaded, "shard queue full")));
            resolved[i] = true;
            if flush {
                let waiting = resolved.iter().position(|r| !r).map_or(u64::MAX, |i| i as u64 + 1);
                for s in c.flush() {
                    if let Sent::Reply(Reply::Accepted(a)) = &s {
                        prop_assert!(a.through < waiting, "{a:?} covers send {waiting}, which waits");
                    }
                    sent.push(s);
                }
            } else {
                sent.extend(c.take());
            }
        }
        sent.extend(c.flush());

        // One error per failed send, at once, in the order they failed.
        let mut errors = Vec::new();
        for s in &sent {
            match s {
                Sent::Error { code: ErrorCode::Overloaded, sequence: Some(seq), .. } => errors.push(*seq),
                Sent::Reply(Reply::Accepted(_)) => {}
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        let failed: Vec<u64> = order.iter().filter(|&&i| results[i].is_none()).map(|&i| i as u64 + 1).collect();
        prop_assert_eq!(&errors, &failed);

        // Entries in increasing order; each names the outcome of every
        // successful send it is the first to cover, and covers at least one.
        let entries: Vec<(usize, Confirm)> = sent.iter().enumerate().filter_map(|(at, s)| match s {
            Sent::Reply(Reply::Accepted(a)) => Some((at, *a)),
            _ => None,
        }).collect();
        let mut below = 0;
        for &(_, e) in &entries {
            prop_assert!(e.through > below, "{entries:?}");
            let covered = (below + 1..=e.through).filter_map(|s| results[s as usize - 1]);
            let mut any = false;
            for o in covered {
                prop_assert_eq!(o, e.outcome, "{:?}", entries);
                any = true;
            }
            prop_assert!(any, "{e:?} answers only failed sends");
            below = e.through;
        }
        let last_ok = results.iter().rposition(Option::is_some).map_or(0, |i| i as u64 + 1);
        prop_assert!(below >= last_ok, "send {last_ok} never answered: {entries:?}");

        // An error comes before the entry that covers its send.
        for (at, s) in sent.iter().enumerate() {
            if let Sent::Error { sequence: Some(seq), .. } = s
                && let Some(&(entry_at, _)) = entries.iter().find(|(_, e)| e.through >= *seq)
            {
                prop_assert!(at < entry_at, "error for {seq} after the accepted covering it");
            }
        }
    }

    #[test]
    fn any_frame_is_handled_and_only_a_fatal_error_closes(
        frames in prop::collection::vec((0u8..=2, 0u8..=0x0d, 0u8..=2, prop::collection::vec(any::<u8>(), 0..48)), 1..8)
    ) {
        let mut c = Conn::new();
        for (version, ty, flags, body) in &frames {
            if c.session.is_closing() {
                break;
            }
            let frame = [&[*version, *ty, *flags, 0][..], body].concat();
            c.frame(&frame);
        }
        let sent = c.take();
        for (at, s) in sent.iter().enumerate() {
            if let Sent::Close(code) = s {
                prop_assert!(code.is_fatal());
                prop_assert_eq!(at, sent.len() - 1, "close is the last thing sent");
                let error_first = at > 0 && matches!(sent[at - 1], Sent::Error { code: c, .. } if c == *code);
                prop_assert!(error_first, "close without its error: {:?}", sent);
            }
        }
        prop_assert_eq!(c.session.is_closing(), matches!(sent.last(), Some(Sent::Close(_))));
    }
}
