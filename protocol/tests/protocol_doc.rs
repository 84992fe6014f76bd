//! Checks `docs/protocol.md` against this crate, so the specification and
//! the code cannot drift apart: every ```` ```hex <name> ```` block is decoded
//! and compared with what the crate builds and encodes, the quoted schema
//! with `schema/envelope.fbs`, and the tables (frame types, outcomes, flags,
//! destination kinds, error codes, limits) with the crate's definitions.

use std::collections::{BTreeMap, BTreeSet};

use switchboard_protocol::frame::{
    CONFIRM_LEN, DELIVER_FLAG_REDELIVERY, ERROR_FIXED_LEN, ERROR_FLAG_ENVELOPE_ID, ERROR_FLAG_REQUEST_ID,
    ERROR_FLAG_SEQUENCE, ErrorFrame, FRAME_HEADER_LEN, FrameType, MAX_CONFIRMS_PER_FRAME, SEND_FLAG_NO_ANSWER,
    SEND_HEADER, VERSION, deliver_header, encode_accepted,
};
use switchboard_protocol::limits::{
    MAX_CONTENT_TYPE_LEN, MAX_DESTINATION_NAME_LEN, MAX_DEVICE_ID_LEN, MAX_ENVELOPE_DEPTH, MAX_ENVELOPE_LEN,
    MAX_ENVELOPE_LEN_CEILING, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN, MAX_REASON_LEN,
    MAX_USER_ID_LEN,
};
use switchboard_protocol::stream::{len_prefix, split_frame};
use switchboard_protocol::{
    Confirm, Destination, DestinationKind, Envelope, EnvelopeBuilder, EnvelopeFlags, EnvelopeId, ErrorCode, Frame,
    Limits, Outcome, RoomName, UserId,
};

const DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"));
const SCHEMA: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/envelope.fbs"));

// The worked example of section 5.
const CREATED_AT_MS: u64 = 1_764_000_000_000;
const RANDOM: [u8; 10] = [0x7a, 0x1c, 0x3e, 0x55, 0x90, 0x12, 0x34, 0x56, 0x78, 0x9a];
const ID_TEXT: &str = "019ab697-e800-7a1c-be55-90123456789a";
const CONTENT_TYPE: &str = "application/octet-stream";
const PAYLOAD: &[u8] = b"hello";
const ENVELOPE_LEN: usize = 144;
const PING_NONCE: u64 = 0x0123_4567_89ab_cdef;

fn example_id() -> EnvelopeId {
    EnvelopeId::new_v7(CREATED_AT_MS, &RANDOM)
}

/// The envelope of the worked example, built by the reference builder.
fn example_envelope() -> Vec<u8> {
    EnvelopeBuilder::new(
        example_id(),
        UserId::parse("alice").unwrap(),
        Destination::parse("user:bob").unwrap(),
        CREATED_AT_MS,
    )
    .ttl_ms(60_000)
    .flags(EnvelopeFlags::empty())
    .priority(128)
    .content_type(CONTENT_TYPE)
    .payload(PAYLOAD)
    .build()
    .unwrap()
}

/// A fenced code block of the document: its info string and its lines.
struct Block<'a> {
    info: &'a str,
    lines: Vec<&'a str>,
}

fn blocks(doc: &str) -> Vec<Block<'_>> {
    let mut out = Vec::new();
    let mut open: Option<Block<'_>> = None;
    for line in doc.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some(Block { info: info.trim(), lines: Vec::new() }),
            (Some(_), Some("")) => out.push(open.take().unwrap()),
            (Some(b), _) => b.lines.push(line),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unterminated code block in docs/protocol.md");
    out
}

/// Decodes a `hex` block: `#` starts a comment, whitespace is ignored.
///
/// Also checks the annotations: a comment whose first word is `e+0xNN`
/// must sit on a line whose first byte is at envelope offset NN, i.e. at
/// frame offset NN + 4.
fn decode_hex(name: &str, lines: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        let (data, comment) = line.split_once('#').unwrap_or((line, ""));
        if let Some(off) = comment.split_whitespace().next().and_then(|w| w.strip_prefix("e+0x")) {
            let off = usize::from_str_radix(off, 16).unwrap_or_else(|_| panic!("{name}: bad annotation {line:?}"));
            assert_eq!(
                bytes.len(),
                off + 4,
                "{name}: annotation e+0x{off:02x} is on a line starting at envelope offset {:#04x}: {line:?}",
                bytes.len().wrapping_sub(4)
            );
        }
        let digits: String = data.split_whitespace().collect();
        assert!(digits.len().is_multiple_of(2), "{name}: odd number of hex digits in {line:?}");
        for i in (0..digits.len()).step_by(2) {
            let b = u8::from_str_radix(&digits[i..i + 2], 16)
                .unwrap_or_else(|_| panic!("{name}: not hex: {:?} in {line:?}", &digits[i..i + 2]));
            bytes.push(b);
        }
    }
    assert!(!bytes.is_empty(), "{name}: empty hex block");
    bytes
}

/// Every `hex <name>` block, by name (names must be unique).
fn hex_blocks() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for b in blocks(DOC) {
        let mut words = b.info.split_whitespace();
        if words.next() != Some("hex") {
            continue;
        }
        let name = words.next().expect("a hex block needs a name: ```hex <name>");
        assert_eq!(words.next(), None, "hex block {name}: extra words in the info string");
        let bytes = decode_hex(name, &b.lines);
        assert!(out.insert(name.to_owned(), bytes).is_none(), "duplicate hex block {name}");
    }
    out
}

/// Asserts that `frame` encodes to exactly `bytes` and that `bytes` decode to `frame`.
fn check_frame(name: &str, bytes: &[u8], frame: Frame<'_>) {
    assert_eq!(
        hex(bytes),
        hex(&frame.to_vec()),
        "{name}: the doc's bytes (left) differ from the encoding of {frame:?} (right)"
    );
    assert_eq!(Frame::decode(bytes, &Limits::default()), Ok(frame), "{name}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn check_send_frame(bytes: &[u8]) {
    let frame = Frame::decode(bytes, &Limits::default()).expect("send-frame decodes");
    let Frame::Send { no_answer: false, envelope } = frame else {
        panic!("send-frame is not a send frame asking for an answer: {frame:?}")
    };
    assert_eq!(bytes[..4], SEND_HEADER);
    assert_eq!(envelope.len(), ENVELOPE_LEN, "the doc says the envelope is {ENVELOPE_LEN} bytes");
    let env = Envelope::parse(envelope, &Limits::default()).expect("send-frame's envelope verifies");
    assert_eq!(env.id(), example_id());
    assert_eq!(env.id().to_string(), ID_TEXT);
    assert_eq!(env.sender().as_str(), "alice");
    assert_eq!(env.sender_device(), None);
    assert_eq!(env.destination(), Destination::parse("user:bob").unwrap());
    assert_eq!(env.destination().kind(), DestinationKind::User);
    assert_eq!(env.created_at_ms(), CREATED_AT_MS);
    assert_eq!(env.ttl_ms(), 60_000);
    assert_eq!(env.flags(), EnvelopeFlags::empty());
    assert_eq!(env.priority(), 128);
    assert_eq!(env.content_type(), Some(CONTENT_TYPE));
    assert_eq!(env.metadata().count(), 0);
    assert_eq!(env.payload(), PAYLOAD);
    // The annotated RoutingHeader sits at e+0x20 in this buffer.
    let header = &envelope[0x20..0x40];
    assert_eq!(&header[..16], example_id().as_bytes());
    assert_eq!(header[16..24], CREATED_AT_MS.to_le_bytes());
    assert_eq!(header[24..28], 60_000u32.to_le_bytes());
    assert_eq!(header[28..30], [0, 0], "the example has no flags");
    assert_eq!((header[30], header[31]), (128, DestinationKind::User.wire()));
    // The builder is deterministic: the doc's bytes are exactly its output.
    let built = example_envelope();
    assert_eq!(
        hex(envelope),
        hex(&built),
        "send-frame: the doc's envelope (left) differs from EnvelopeBuilder's (right)"
    );
    check_frame("send-frame", bytes, Frame::Send { no_answer: false, envelope: &built });
}

/// The header of a `send` with the no-answer flag, checked in front of the
/// example envelope.
fn check_send_no_answer_header(bytes: &[u8]) {
    assert_eq!(bytes, [VERSION, FrameType::Send as u8, SEND_FLAG_NO_ANSWER, 0], "send-no-answer-header");
    let envelope = example_envelope();
    let mut frame = bytes.to_vec();
    frame.extend_from_slice(&envelope);
    check_frame("send-no-answer-header", &frame, Frame::Send { no_answer: true, envelope: &envelope });
}

/// Asserts that `bytes` are `encode_accepted(entries)` and decode to exactly
/// those entries.
fn check_accepted(name: &str, bytes: &[u8], entries: &[Confirm]) {
    assert!(entries.len() <= MAX_CONFIRMS_PER_FRAME, "{name}: more entries than a server sends");
    let mut want = Vec::new();
    encode_accepted(entries, &mut want);
    assert_eq!(hex(bytes), hex(&want), "{name}: the doc's bytes (left) differ from encode_accepted({entries:?})");
    let frame = Frame::decode(bytes, &Limits::default());
    let Ok(Frame::Accepted(confirms)) = frame else { panic!("{name} does not decode to accepted: {frame:?}") };
    assert_eq!(confirms.iter().collect::<Vec<_>>(), entries, "{name}");
    assert_eq!(hex(&Frame::Accepted(confirms).to_vec()), hex(bytes), "{name}: re-encoding differs");
}

fn check_deliver_frame(bytes: &[u8]) {
    let envelope = example_envelope();
    let mut want = deliver_header(false).to_vec();
    want.extend_from_slice(&envelope);
    assert_eq!(hex(bytes), hex(&want), "deliver-frame is not deliver_header(false) + the example envelope");
    check_frame("deliver-frame", bytes, Frame::Deliver { redelivery: false, envelope: &envelope });
}

fn confirm(through: u64, outcome: Outcome) -> Confirm {
    Confirm { through, outcome }
}

#[test]
fn hex_examples_match_the_crate() {
    let blocks = hex_blocks();
    let id = example_id();
    let lobby = RoomName::parse("lobby").unwrap();
    let bob = UserId::parse("bob").unwrap();
    let mut checked = BTreeSet::new();
    for (name, bytes) in &blocks {
        let b = &bytes[..];
        match name.as_str() {
            "send-frame" => check_send_frame(b),
            "send-no-answer-header" => check_send_no_answer_header(b),
            "deliver-frame" => check_deliver_frame(b),
            "accepted-frame" => check_accepted(name, b, &[confirm(1, Outcome::Delivered)]),
            // Sends 2..=9: 3 asked for no answer, 7 was answered by an error.
            "accepted-batch-frame" => check_accepted(
                name,
                b,
                &[
                    confirm(4, Outcome::Delivered),
                    confirm(5, Outcome::RecipientOffline),
                    confirm(9, Outcome::Delivered),
                ],
            ),
            "delivery-ack-frame" => check_frame(name, b, Frame::DeliveryAck { through: 1 }),
            "error-frame" => check_frame(
                name,
                b,
                Frame::Error(ErrorFrame {
                    code: ErrorCode::SenderMismatch.code(),
                    envelope_id: Some(id),
                    request_id: None,
                    sequence: Some(1),
                    reason: "sender is not the authenticated user",
                }),
            ),
            "error-request-frame" => check_frame(
                name,
                b,
                Frame::Error(ErrorFrame {
                    code: ErrorCode::RoomLimit.code(),
                    envelope_id: None,
                    request_id: Some(7),
                    sequence: None,
                    reason: "too many rooms",
                }),
            ),
            "join-room-frame" => check_frame(name, b, Frame::JoinRoom { request_id: 7, room: lobby }),
            "done-frame" => check_frame(name, b, Frame::Done { request_id: 7 }),
            "leave-room-frame" => check_frame(name, b, Frame::LeaveRoom { request_id: 9, room: lobby }),
            "presence-query-frame" => check_frame(name, b, Frame::PresenceQuery { request_id: 8, user: bob }),
            "presence-result-frame" => {
                check_frame(name, b, Frame::PresenceResult { request_id: 8, user: bob, connections: 2 })
            }
            "ping-frame" => check_frame(name, b, Frame::Ping { nonce: PING_NONCE }),
            "pong-frame" => check_frame(name, b, Frame::Pong { nonce: PING_NONCE }),
            "stream-ping" => {
                let ping = Frame::Ping { nonce: PING_NONCE }.to_vec();
                let mut want = len_prefix(ping.len()).to_vec();
                want.extend_from_slice(&ping);
                assert_eq!(hex(b), hex(&want), "{name}");
                let max = Limits::default().max_frame_len();
                assert_eq!(split_frame(b, max), Ok(Some((&ping[..], b.len()))), "{name}");
            }
            other => panic!("hex block {other:?} in docs/protocol.md is not checked by this test; add a check"),
        }
        checked.insert(name.as_str());
    }
    for required in [
        "send-frame",
        "deliver-frame",
        "accepted-frame",
        "accepted-batch-frame",
        "delivery-ack-frame",
        "error-frame",
        "error-request-frame",
        "join-room-frame",
        "ping-frame",
    ] {
        assert!(checked.contains(required), "docs/protocol.md lacks the ```hex {required} block");
    }
    assert!(DOC.contains(ID_TEXT), "the worked example's id is not in the doc");
}

#[test]
fn quoted_schema_is_the_schema_file() {
    let quoted: Vec<_> = blocks(DOC).into_iter().filter(|b| b.info == "fbs").collect();
    assert_eq!(quoted.len(), 1, "expected one ```fbs block");
    assert_eq!(
        quoted[0].lines.join("\n"),
        SCHEMA.trim_end(),
        "the schema quoted in docs/protocol.md differs from protocol/schema/envelope.fbs"
    );
}

/// The rows (cells trimmed, backticks removed) of the table whose header
/// row starts with `header`, which must occur exactly once.
fn table(header: &str) -> Vec<Vec<String>> {
    let starts: Vec<_> = DOC.match_indices(&format!("\n{header}")).collect();
    assert_eq!(starts.len(), 1, "expected one table with header {header:?}");
    DOC[starts[0].0 + 1..]
        .lines()
        .skip(2) // header and separator
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().replace('`', "")).collect())
        .collect()
}

fn yes_no(cell: &str) -> bool {
    match cell {
        "yes" => true,
        "no" => false,
        other => panic!("expected yes or no, got {other:?}"),
    }
}

fn mqtt_reason_name(code: u8) -> &'static str {
    match code {
        0x80 => "Unspecified error",
        0x81 => "Malformed Packet",
        0x82 => "Protocol Error",
        0x83 => "Implementation specific error",
        0x84 => "Unsupported Protocol Version",
        0x86 => "Bad User Name or Password",
        0x87 => "Not authorized",
        0x89 => "Server busy",
        0x8B => "Server shutting down",
        0x8D => "Keep Alive timeout",
        0x90 => "Topic Name invalid",
        0x95 => "Packet too large",
        0x96 => "Message rate too high",
        0x97 => "Quota exceeded",
        0x99 => "Payload format invalid",
        0x9F => "Connection rate exceeded",
        other => panic!("add the MQTT 5 name of reason code {other:#04x} to this test"),
    }
}

#[test]
fn error_code_table_matches_error_codes() {
    let rows = table("| code | name | meaning | retryable | closes | WS close | MQTT 5 reason | HTTP |");
    let mut seen = BTreeSet::new();
    for row in &rows {
        assert_eq!(row.len(), 8, "error table row {row:?}");
        let code: u16 = row[0].parse().unwrap_or_else(|_| panic!("bad code in {row:?}"));
        let c = ErrorCode::from_code(code).unwrap_or_else(|| panic!("the doc lists unknown error code {code}"));
        assert!(seen.insert(code), "error code {code} listed twice");
        assert_eq!(row[1], c.name(), "name of {code}");
        assert!(!row[2].is_empty(), "meaning of {code}");
        assert_eq!(yes_no(&row[3]), c.is_retryable(), "retryable of {c}");
        assert_eq!(yes_no(&row[4]), c.is_fatal(), "closes of {c}");
        assert_eq!(row[5], c.close_code().to_string(), "WebSocket close code of {c}");
        let (hex, name) = row[6].split_once(' ').unwrap_or_else(|| panic!("MQTT cell of {c}: {:?}", row[6]));
        let reason = u8::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap();
        assert_eq!(reason, c.mqtt_reason(), "MQTT reason of {c}");
        assert_eq!(name, mqtt_reason_name(reason), "MQTT reason name of {c}");
        assert_eq!(row[7], c.http_status().to_string(), "HTTP status of {c}");
    }
    let all: BTreeSet<u16> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(seen, all, "the error table must list every ErrorCode::ALL entry");
}

/// The number written right after a code span in the prose, as in
/// "`sender-mismatch` (204)", "(`forbidden`, 303)" or "`accepted` (0x02)".
/// Fenced code blocks are skipped.
fn numbers_after_code_spans(doc: &str) -> Vec<(String, String)> {
    let mut prose = String::new();
    let mut in_block = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    let pieces: Vec<&str> = prose.split('`').collect();
    let mut out = Vec::new();
    for pair in pieces.windows(2).skip(1).step_by(2) {
        let (span, rest) = (pair[0], pair[1]);
        let rest = rest.trim_start_matches([' ', '(', ',']);
        let end = rest.find(|c: char| !c.is_ascii_hexdigit() && c != 'x').unwrap_or(rest.len());
        let number = &rest[..end];
        if number.starts_with(|c: char| c.is_ascii_digit()) {
            out.push((span.to_owned(), number.to_owned()));
        }
    }
    out
}

#[test]
fn codes_and_types_quoted_in_the_prose_are_right() {
    let mut checked = 0;
    for (span, number) in numbers_after_code_spans(DOC) {
        let (span, number) = (span.as_str(), number.as_str());
        if let Some(c) = ErrorCode::ALL.iter().find(|c| c.name() == span)
            && !number.starts_with("0x")
        {
            assert_eq!(number, c.code().to_string(), "the doc writes `{span}` {number}");
            checked += 1;
        }
        let frame_type = (0..=255u8).filter_map(FrameType::from_wire).find(|t| kebab(&format!("{t:?}")) == span);
        if let (Some(t), Some(hex)) = (frame_type, number.strip_prefix("0x")) {
            assert_eq!(u8::from_str_radix(hex, 16), Ok(t as u8), "the doc writes `{span}` {number}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} quoted codes found; is the scanner broken?");
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[test]
fn frame_type_table_matches_frame_types() {
    let rows = table("| type | name | direction | flags | body (after the 4-byte header) | total length |");
    let mut seen = BTreeSet::new();
    for row in &rows {
        let v = u8::from_str_radix(row[0].trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("{row:?}"));
        let ty = FrameType::from_wire(v).unwrap_or_else(|| panic!("the doc lists unknown frame type {v:#04x}"));
        assert!(seen.insert(v), "frame type {v:#04x} listed twice");
        assert_eq!(row[1], kebab(&format!("{ty:?}")), "name of frame type {v:#04x}");
        let by_client = match row[2].as_str() {
            "C→S" | "both" => true,
            "S→C" => false,
            other => panic!("direction {other:?}"),
        };
        assert_eq!(by_client, ty.sent_by_client(), "direction of {ty:?}");
        assert_eq!(row[3], flags_cell(ty), "flags of {ty:?}");
        assert_eq!(row[5], length_cell(ty), "total length of {ty:?}");
    }
    let all: BTreeSet<u8> = (0..=255).filter(|&v| FrameType::from_wire(v).is_some()).collect();
    assert_eq!(seen, all, "the frame type table must list every frame type");
}

/// What the frame type table must say in the flags column of `ty`.
fn flags_cell(ty: FrameType) -> String {
    let bit = |flag: u8| flag.trailing_zeros();
    match ty {
        FrameType::Send => format!("bit {} no-answer", bit(SEND_FLAG_NO_ANSWER)),
        FrameType::Deliver => format!("bit {} redelivery", bit(DELIVER_FLAG_REDELIVERY)),
        FrameType::Error => format!(
            "bit {} envelope id, bit {} request id, bit {} sequence",
            bit(ERROR_FLAG_ENVELOPE_ID),
            bit(ERROR_FLAG_REQUEST_ID),
            bit(ERROR_FLAG_SEQUENCE)
        ),
        _ => "none".to_owned(),
    }
}

/// What the frame type table must say in the total length column of `ty`:
/// the encoded length of a sample frame, with its variable part named.
fn length_cell(ty: FrameType) -> String {
    let x = RoomName::parse("x").unwrap();
    let y = UserId::parse("y").unwrap();
    let plus = |frame: Frame<'_>, what: &str| format!("{} + {what}", frame.encoded_len() - 1);
    match ty {
        FrameType::Send => plus(Frame::Send { no_answer: false, envelope: b"e" }, "envelope"),
        FrameType::Deliver => plus(Frame::Deliver { redelivery: false, envelope: b"e" }, "envelope"),
        FrameType::Accepted => format!("{FRAME_HEADER_LEN} + {CONFIRM_LEN}·N"),
        FrameType::Error => {
            let e = ErrorFrame { code: 100, envelope_id: None, request_id: None, sequence: None, reason: "" };
            assert_eq!(Frame::Error(e).encoded_len(), ERROR_FIXED_LEN);
            format!("{ERROR_FIXED_LEN} + reason (≤ {})", ERROR_FIXED_LEN + MAX_REASON_LEN)
        }
        FrameType::JoinRoom => plus(Frame::JoinRoom { request_id: 1, room: x }, "name"),
        FrameType::LeaveRoom => plus(Frame::LeaveRoom { request_id: 1, room: x }, "name"),
        FrameType::PresenceQuery => plus(Frame::PresenceQuery { request_id: 1, user: y }, "name"),
        FrameType::PresenceResult => plus(Frame::PresenceResult { request_id: 1, user: y, connections: 0 }, "name"),
        FrameType::DeliveryAck => Frame::DeliveryAck { through: 1 }.encoded_len().to_string(),
        FrameType::Done => Frame::Done { request_id: 1 }.encoded_len().to_string(),
        FrameType::Ping => Frame::Ping { nonce: 1 }.encoded_len().to_string(),
        FrameType::Pong => Frame::Pong { nonce: 1 }.encoded_len().to_string(),
        other => panic!("add the total length of {other:?} to this test"),
    }
}

#[test]
fn outcome_flag_and_kind_tables_match() {
    let rows = table("| outcome | name | meaning |");
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let v: u8 = row[0].parse().unwrap();
        let o = Outcome::from_wire(v).unwrap_or_else(|| panic!("unknown outcome {v}"));
        assert_eq!(row[1], o.name());
    }
    assert_eq!(Outcome::from_wire(4), None);

    let rows = table("| bit | value | name | meaning |");
    let named: Vec<_> = rows.iter().filter(|r| r[2] != "reserved").collect();
    assert_eq!(named.len(), EnvelopeFlags::NAMES.len());
    let mut all = 0;
    for (row, (name, flag)) in named.iter().zip(EnvelopeFlags::NAMES) {
        let bit: u32 = row[0].parse().unwrap();
        assert_eq!(1u16 << bit, flag.bits(), "bit of {name}");
        assert_eq!(row[1], format!("0x{:04x}", flag.bits()), "value of {name}");
        assert_eq!(row[2], name);
        all |= flag.bits();
    }
    assert_eq!(all, EnvelopeFlags::ALL.bits(), "undocumented flag bits");
    assert_eq!(EnvelopeFlags::from_bits(!all), None);

    let rows = table("| value | kind | text form | delivered to |");
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let k = DestinationKind::from_wire(row[0].parse().unwrap()).unwrap();
        assert_eq!(row[1].to_lowercase(), k.as_str());
        assert!(row[2].starts_with(&format!("{}:", k.as_str())), "{row:?}");
    }
    assert_eq!(DestinationKind::from_wire(3), None);
}

#[test]
fn limits_table_matches_limits() {
    let want: BTreeMap<&str, usize> = [
        ("MAX_ENVELOPE_LEN", MAX_ENVELOPE_LEN),
        ("MAX_ENVELOPE_LEN_CEILING", MAX_ENVELOPE_LEN_CEILING),
        ("MAX_METADATA_ENTRIES", MAX_METADATA_ENTRIES),
        ("MAX_METADATA_KEY_LEN", MAX_METADATA_KEY_LEN),
        ("MAX_METADATA_VALUE_LEN", MAX_METADATA_VALUE_LEN),
        ("MAX_USER_ID_LEN", MAX_USER_ID_LEN),
        ("MAX_DEVICE_ID_LEN", MAX_DEVICE_ID_LEN),
        ("MAX_DESTINATION_NAME_LEN", MAX_DESTINATION_NAME_LEN),
        ("MAX_CONTENT_TYPE_LEN", MAX_CONTENT_TYPE_LEN),
        ("MAX_REASON_LEN", MAX_REASON_LEN),
        ("MAX_ENVELOPE_DEPTH", MAX_ENVELOPE_DEPTH),
        ("MAX_CONFIRMS_PER_FRAME", MAX_CONFIRMS_PER_FRAME),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<&str, usize> = table("| constant | value | meaning |")
        .iter()
        .map(|r| {
            let name = want.keys().find(|k| **k == r[0]).unwrap_or_else(|| panic!("unknown constant {r:?}"));
            (*name, r[1].parse().unwrap_or_else(|_| panic!("bad value in {r:?}")))
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(Limits::default().max_frame_len(), 65_540, "the doc quotes the largest frame as 65 540 bytes");
    assert_eq!(
        Limits::default().max_envelope_len,
        MAX_ENVELOPE_LEN,
        "the doc says the default maximum is MAX_ENVELOPE_LEN"
    );
    let largest_error = format!("{ERROR_FIXED_LEN} + {MAX_REASON_LEN} = {} bytes", ERROR_FIXED_LEN + MAX_REASON_LEN);
    assert!(DOC.contains(&largest_error), "the doc does not say the largest error frame is {largest_error}");
    let largest_accepted = format!(
        "{FRAME_HEADER_LEN} + {CONFIRM_LEN} · {MAX_CONFIRMS_PER_FRAME} = {} bytes",
        FRAME_HEADER_LEN + CONFIRM_LEN * MAX_CONFIRMS_PER_FRAME
    );
    assert!(DOC.contains(&largest_accepted), "the doc does not say the largest accepted frame is {largest_accepted}");
}
