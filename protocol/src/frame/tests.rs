use proptest::prelude::*;

use super::*;

const ID: EnvelopeId =
    EnvelopeId([0x01, 0x93, 0x5f, 0x6a, 0x1b, 0x2c, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a]);
const ID_BYTES: &str = "01935f6a1b2c700080000000 0000002a";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Checks that `frame` encodes to exactly `bytes` and decodes back.
fn check(frame: Frame<'_>, bytes: &str) {
    let bytes = hex(bytes);
    assert_eq!(frame.to_vec(), bytes, "{frame:?}");
    assert_eq!(frame.encoded_len(), bytes.len());
    assert_eq!(Frame::decode(&bytes, &Limits::default()), Ok(frame));
}

#[test]
fn send_and_deliver() {
    check(Frame::Send { no_answer: false, envelope: b"\xaa\xbb" }, "01 01 00 00 aabb");
    check(Frame::Send { no_answer: true, envelope: b"\xaa\xbb" }, "01 01 01 00 aabb");
    check(Frame::Deliver { redelivery: false, envelope: b"\xaa\xbb" }, "01 03 00 00 aabb");
    check(Frame::Deliver { redelivery: true, envelope: b"\xaa" }, "01 03 01 00 aa");
    assert_eq!(deliver_header(false), [1, 3, 0, 0]);
    assert_eq!(deliver_header(true), [1, 3, 1, 0]);
    assert_eq!(SEND_HEADER, [1, 1, 0, 0]);
}

fn confirms(entries: &[Confirm]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_accepted(entries, &mut v);
    v
}

#[test]
fn accepted() {
    let one = [Confirm { through: 3, outcome: Outcome::Delivered }];
    let bytes = confirms(&one);
    assert_eq!(bytes, hex("01 02 00 00 0300000000000000 00 000000"));
    let Ok(Frame::Accepted(c)) = Frame::decode(&bytes, &Limits::default()) else { panic!() };
    assert_eq!(c.iter().collect::<Vec<_>>(), one);
    assert_eq!(c.through(), 3);
    check(Frame::Accepted(c), "01 02 00 00 0300000000000000 00 000000");
    let many = [
        Confirm { through: 7, outcome: Outcome::Delivered },
        Confirm { through: 8, outcome: Outcome::RecipientOffline },
        Confirm { through: 0x0102, outcome: Outcome::Stored },
        Confirm { through: u64::MAX, outcome: Outcome::Duplicate },
    ];
    let bytes = confirms(&many);
    assert_eq!(
        bytes,
        hex("01 02 00 00 0700000000000000 00 000000 0800000000000000 01 000000
             0201000000000000 02 000000 ffffffffffffffff 03 000000")
    );
    let Ok(Frame::Accepted(c)) = Frame::decode(&bytes, &Limits::default()) else { panic!() };
    assert_eq!(c.iter().collect::<Vec<_>>(), many);
    assert_eq!(c.iter().len(), 4);
    assert_eq!(Frame::Accepted(c).to_vec(), bytes);
}

#[test]
fn delivery_ack() {
    check(Frame::DeliveryAck { through: 0x0102_0304 }, "01 04 00 00 0403020100000000");
}

#[test]
fn error() {
    check(
        Frame::Error(ErrorFrame {
            code: ErrorCode::SenderMismatch.code(),
            envelope_id: Some(ID),
            request_id: None,
            sequence: Some(5),
            reason: "no",
        }),
        &format!("01 05 05 00 cc00 0000 00000000 0500000000000000 {ID_BYTES} 6e6f"),
    );
    check(
        Frame::Error(ErrorFrame {
            code: ErrorCode::RoomLimit.code(),
            envelope_id: None,
            request_id: Some(7),
            sequence: None,
            reason: "",
        }),
        "01 05 02 00 9301 0000 07000000 0000000000000000 00000000000000000000000000000000",
    );
    let bytes = hex("01 05 00 00 2c01 0000 00000000 0000000000000000 00000000000000000000000000000000");
    let e = Frame::decode(&bytes, &Limits::default());
    let Ok(Frame::Error(e)) = e else { panic!("{e:?}") };
    assert_eq!(e.error_code(), Some(ErrorCode::Unauthenticated));
    // Codes from a newer server still decode.
    let bytes = hex("01 05 00 00 e703 0000 00000000 0000000000000000 00000000000000000000000000000000");
    let e = Frame::decode(&bytes, &Limits::default());
    let Ok(Frame::Error(e)) = e else { panic!("{e:?}") };
    assert_eq!((e.code, e.error_code()), (999, None));
}

#[test]
fn long_error_reasons_are_cut_at_a_char_boundary() {
    let reason = "é".repeat(200); // 400 bytes
    let f =
        Frame::Error(ErrorFrame { code: 500, envelope_id: None, request_id: None, sequence: None, reason: &reason });
    let bytes = f.to_vec();
    let Ok(Frame::Error(e)) = Frame::decode(&bytes, &Limits::default()) else { panic!() };
    assert_eq!(e.reason.len(), 256);
    assert_eq!(e.reason, &reason[..256]);
}

#[test]
fn rooms_done_presence_ping() {
    let room = RoomName::parse("lobby").unwrap();
    check(Frame::JoinRoom { request_id: 1, room }, "01 06 00 00 01000000 6c6f626279");
    check(Frame::LeaveRoom { request_id: 2, room }, "01 07 00 00 02000000 6c6f626279");
    check(Frame::Done { request_id: 0x0102_0304 }, "01 08 00 00 04030201");
    let bob = UserId::parse("bob").unwrap();
    check(Frame::PresenceQuery { request_id: 9, user: bob }, "01 09 00 00 09000000 626f62");
    check(Frame::PresenceResult { request_id: 9, user: bob, connections: 2 }, "01 0a 00 00 09000000 02000000 626f62");
    check(Frame::Ping { nonce: 0x1122_3344_5566_7788 }, "01 0b 00 00 8877665544332211");
    check(Frame::Pong { nonce: 1 }, "01 0c 00 00 0100000000000000");
}

#[test]
fn rejects_malformed_frames() {
    let l = Limits::default();
    // Decodes and drops the borrow: errors own no bytes.
    let d = |s: &str| Frame::decode(&hex(s), &l).map(|_| ());
    assert_eq!(d(""), Err(FrameError::Truncated { len: 0, need: 4 }));
    assert_eq!(d("01 01 00"), Err(FrameError::Truncated { len: 3, need: 4 }));
    assert_eq!(d("02 01 00 00 aa"), Err(FrameError::UnsupportedVersion(2)));
    assert_eq!(d("01 ff 00 00"), Err(FrameError::UnknownType(0xff)));
    assert_eq!(d("01 00 00 00"), Err(FrameError::UnknownType(0)));
    assert_eq!(d("01 01 00 01 aa"), Err(FrameError::Reserved(FrameType::Send)));
    assert_eq!(d("01 01 02 00 aa"), Err(FrameError::Reserved(FrameType::Send)));
    assert_eq!(d("01 03 02 00 aa"), Err(FrameError::Reserved(FrameType::Deliver)));
    assert_eq!(d("01 01 00 00"), Err(FrameError::EmptyEnvelope(FrameType::Send)));
    assert_eq!(d("01 04 00 00 00"), Err(FrameError::Truncated { len: 5, need: 12 }));
    assert_eq!(d("01 04 00 00 0100000000000000 00"), Err(FrameError::TrailingBytes(FrameType::DeliveryAck)));
    assert_eq!(d("01 02 00 00"), Err(FrameError::Truncated { len: 4, need: 16 }));
    assert_eq!(d("01 02 00 00 0100000000000000 00 0000"), Err(FrameError::Truncated { len: 15, need: 16 }));
    assert_eq!(d("01 02 00 00 0100000000000000 09 000000"), Err(FrameError::UnknownOutcome(9)));
    assert_eq!(d("01 02 00 00 0100000000000000 00 000100"), Err(FrameError::Reserved(FrameType::Accepted)));
    assert_eq!(d("01 02 00 00 0200000000000000 00 000000 0200000000000000 00 000000"), Err(FrameError::Unordered));
    assert_eq!(d("01 0b 00 00 01"), Err(FrameError::Truncated { len: 5, need: 12 }));
    assert!(matches!(d("01 06 00 00 01000000"), Err(FrameError::Name(IdError::Empty { .. }))));
    assert!(matches!(d("01 06 00 00 01000000 2f"), Err(FrameError::Name(_))));
    assert!(matches!(d("01 09 00 00 01000000 ff"), Err(FrameError::Name(_))));
    // Error frame: id present without its flag, bad UTF-8 reason.
    let z = "0000000000000000";
    for bad in [
        format!("01 05 00 00 2c01 0000 00000000 {z} 01000000000000000000000000000000"),
        format!("01 05 00 00 2c01 0000 05000000 {z} 00000000000000000000000000000000"),
        "01 05 00 00 2c01 0000 00000000 0100000000000000 00000000000000000000000000000000".to_owned(),
        format!("01 05 04 00 2c01 0000 00000000 {z} 00000000000000000000000000000000"),
    ] {
        assert_eq!(d(&bad), Err(FrameError::Reserved(FrameType::Error)), "{bad}");
    }
    assert_eq!(
        d(&format!("01 05 00 00 2c01 0000 00000000 {z} 00000000000000000000000000000000 ff")),
        Err(FrameError::BadReason)
    );
    let big = vec![0u8; l.max_frame_len() + 1];
    assert_eq!(Frame::decode(&big, &l), Err(FrameError::TooLarge { len: big.len(), max: l.max_frame_len() }));
    assert_eq!(FrameError::UnknownType(0).code(), ErrorCode::UnknownFrameType);
    assert_eq!(FrameError::TooLarge { len: 0, max: 0 }.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn client_frame_types() {
    for t in 0..=255u8 {
        if let Some(ft) = FrameType::from_wire(t) {
            assert_eq!(ft as u8, t);
        }
    }
    assert!(FrameType::Send.sent_by_client());
    assert!(!FrameType::Deliver.sent_by_client());
    assert!(!FrameType::Accepted.sent_by_client());
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._@~=:-]{1,64}"
}

fn frame_parts() -> impl Strategy<Value = (u8, Vec<u8>, String, u32, u64, [u8; 16], u16, String)> {
    (
        1u8..=12,
        proptest::collection::vec(any::<u8>(), 1..256),
        name(),
        any::<u32>(),
        any::<u64>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        "\\PC{0,60}",
    )
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Frame::decode(&bytes, &Limits::default());
    }

    #[test]
    fn decode_with_valid_header_never_panics(ty in 1u8..=12, flags in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = vec![VERSION, ty, flags, 0];
        bytes.extend_from_slice(&body);
        if let Ok(f) = Frame::decode(&bytes, &Limits::default()) {
            // Whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(f.to_vec(), bytes);
        }
    }

    #[test]
    fn encode_then_decode_round_trips((ty, env, name, n32, n64, id, code, reason) in frame_parts()) {
        let id = EnvelopeId(id);
        let room = RoomName::parse(&name).unwrap();
        let user = UserId::parse(&name).unwrap();
        let entries: Vec<Confirm> = (1..=u64::from(n32 % 64 + 1))
            .map(|i| Confirm { through: n64 / 128 + i, outcome: Outcome::from_wire((i % 4) as u8).unwrap() })
            .collect();
        let accepted_body = confirms(&entries)[4..].to_vec();
        let frame = match ty {
            1 => Frame::Send { no_answer: n32 % 2 == 0, envelope: &env },
            2 => Frame::Accepted(Confirms::parse(&accepted_body, accepted_body.len() + 4).unwrap()),
            3 => Frame::Deliver { redelivery: n32 % 2 == 0, envelope: &env },
            4 => Frame::DeliveryAck { through: n64 },
            5 => Frame::Error(ErrorFrame {
                code,
                envelope_id: (n32 % 2 == 0 && !id.is_nil()).then_some(id),
                request_id: (n64 % 2 == 0).then_some(n32),
                sequence: (n64 % 3 == 0 && n64 != 0).then_some(n64),
                reason: &reason,
            }),
            6 => Frame::JoinRoom { request_id: n32, room },
            7 => Frame::LeaveRoom { request_id: n32, room },
            8 => Frame::Done { request_id: n32 },
            9 => Frame::PresenceQuery { request_id: n32, user },
            10 => Frame::PresenceResult { request_id: n32, user, connections: n32 ^ 5 },
            11 => Frame::Ping { nonce: n64 },
            _ => Frame::Pong { nonce: n64 },
        };
        let bytes = frame.to_vec();
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(Frame::decode(&bytes, &Limits::default()), Ok(frame));
    }
}
