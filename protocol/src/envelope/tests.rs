use proptest::prelude::*;

use super::*;
use crate::id::RoomName;

fn id() -> EnvelopeId {
    EnvelopeId::new_v7(1_764_000_000_000, &[7; 10])
}

fn alice_to_bob<'a>() -> EnvelopeBuilder<'a> {
    EnvelopeBuilder::new(
        id(),
        UserId::parse("alice").unwrap(),
        Destination::parse("user:bob").unwrap(),
        1_764_000_000_000,
    )
}

#[test]
fn round_trip_every_field() {
    let bytes = alice_to_bob()
        .sender_device(DeviceId::parse("phone").unwrap())
        .ttl_ms(60_000)
        .flags(EnvelopeFlags::PERSIST_IF_OFFLINE | EnvelopeFlags::ACK_REQUESTED)
        .priority(200)
        .content_type("application/octet-stream")
        .metadata("schema", "chat.v1")
        .metadata("trace", "abc")
        .payload(b"sealed bytes")
        .build()
        .unwrap();
    assert_eq!(&bytes[4..8], b"SBv1");
    let env = Envelope::parse(&bytes, &Limits::default()).unwrap();
    assert_eq!(env.id(), id());
    assert_eq!(env.sender().as_str(), "alice");
    assert_eq!(env.sender_device().unwrap().as_str(), "phone");
    assert_eq!(env.destination(), Destination::User(UserId::parse("bob").unwrap()));
    assert_eq!(env.created_at_ms(), 1_764_000_000_000);
    assert_eq!(env.ttl_ms(), 60_000);
    assert!(env.flags().contains(EnvelopeFlags::ACK_REQUESTED));
    assert!(!env.flags().contains(EnvelopeFlags::NO_PUSH));
    assert_eq!(env.flags().names().collect::<Vec<_>>(), ["persist-if-offline", "ack-requested"]);
    assert_eq!(env.priority(), 200);
    assert_eq!(env.content_type(), Some("application/octet-stream"));
    assert_eq!(env.metadata().collect::<Vec<_>>(), [("schema", "chat.v1"), ("trace", "abc")]);
    assert_eq!(env.payload(), b"sealed bytes");
    assert_eq!(env.as_bytes(), &bytes[..]);
    assert!(!format!("{env:?}").contains("sealed"), "Debug must not print the payload");
}

#[test]
fn minimal_envelope_has_defaults() {
    let bytes = alice_to_bob().build().unwrap();
    let env = Envelope::parse(&bytes, &Limits::default()).unwrap();
    assert_eq!(env.sender_device(), None);
    assert_eq!(env.content_type(), None);
    assert_eq!(env.metadata().count(), 0);
    assert_eq!(env.payload(), b"");
    assert_eq!(env.priority(), EnvelopeBuilder::NORMAL_PRIORITY);
    assert_eq!(env.flags(), EnvelopeFlags::empty());
}

#[test]
fn build_is_deterministic() {
    let a = alice_to_bob().payload(b"x").build().unwrap();
    let b = alice_to_bob().payload(b"x").build().unwrap();
    assert_eq!(a, b);
}

#[test]
fn expiry_uses_ttl_capped_by_server_maximum() {
    let bytes = alice_to_bob().ttl_ms(1_000).build().unwrap();
    let env = Envelope::parse(&bytes, &Limits::default()).unwrap();
    assert_eq!(env.expires_at_ms(60_000), 1_764_000_001_000);
    assert!(!env.is_expired(1_764_000_000_999, 60_000));
    assert!(env.is_expired(1_764_000_001_000, 60_000));
    assert_eq!(env.expires_at_ms(500), 1_764_000_000_500);
    let forever = alice_to_bob().build().unwrap();
    let env = Envelope::parse(&forever, &Limits::default()).unwrap();
    assert_eq!(env.expires_at_ms(60_000), 1_764_000_060_000);
}

#[test]
fn rejects_bad_buffers_with_typed_errors() {
    let good = alice_to_bob().payload(b"p").build().unwrap();
    let limits = Limits::default();
    assert_eq!(Envelope::parse(&[], &limits).unwrap_err(), EnvelopeError::Truncated { len: 0 });
    assert_eq!(Envelope::parse(&good[..7], &limits).unwrap_err(), EnvelopeError::Truncated { len: 7 });
    let mut wrong_version = good.clone();
    wrong_version[7] = b'2';
    let err = Envelope::parse(&wrong_version, &limits).unwrap_err();
    assert_eq!(err, EnvelopeError::UnsupportedVersion { found: *b"SBv2" });
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    // No truncation panics; one that cuts only trailing alignment padding
    // may verify, and then reads the same envelope.
    for len in 8..good.len() {
        if let Ok(env) = Envelope::parse(&good[..len], &limits) {
            assert!(good.len() - len < 8, "accepted truncation to {len} of {}", good.len());
            assert_eq!(env.payload(), b"p");
        }
    }
    let small = limits.with_max_envelope_len(good.len() - 1);
    let err = Envelope::parse(&good, &small).unwrap_err();
    assert_eq!(err.code(), ErrorCode::EnvelopeTooLarge);
    let mut garbage = vec![0xff; 64];
    garbage[4..8].copy_from_slice(b"SBv1");
    assert!(matches!(Envelope::parse(&garbage, &limits), Err(EnvelopeError::Malformed { .. })));
}

#[test]
fn rejects_semantically_invalid_envelopes() {
    let limits = Limits::default();
    let mut fbb = FlatBufferBuilder::new();
    // Nil id.
    let b = alice_to_bob().id(EnvelopeId::default());
    assert_eq!(Envelope::parse(b.build_into(&mut fbb), &limits).unwrap_err(), EnvelopeError::NilId);
    // Reserved flag bits.
    let b = alice_to_bob().flags(EnvelopeFlags(0x8000));
    assert_eq!(Envelope::parse(b.build_into(&mut fbb), &limits).unwrap_err(), EnvelopeError::ReservedFlags(0x8000));
    // Bad content type.
    let b = alice_to_bob().content_type("text/plain\n");
    assert_eq!(Envelope::parse(b.build_into(&mut fbb), &limits).unwrap_err(), EnvelopeError::ContentType);
    // Too many metadata entries.
    let keys: Vec<String> = (0..17).map(|i| format!("k{i}")).collect();
    let b = keys.iter().fold(alice_to_bob(), |b, k| b.metadata(k, "v"));
    let err = Envelope::parse(b.build_into(&mut fbb), &limits).unwrap_err();
    assert_eq!(err, EnvelopeError::TooManyMetadata { count: 17, max: 16 });
    // Repeated, invalid and oversized metadata.
    let b = alice_to_bob().metadata("k", "1").metadata("k", "2");
    assert!(matches!(Envelope::parse(b.build_into(&mut fbb), &limits), Err(EnvelopeError::Metadata { index: 1, .. })));
    let b = alice_to_bob().metadata("bad key", "1");
    assert!(matches!(Envelope::parse(b.build_into(&mut fbb), &limits), Err(EnvelopeError::Metadata { index: 0, .. })));
    let long = "v".repeat(MAX_METADATA_VALUE_LEN + 1);
    let b = alice_to_bob().metadata("k", &long);
    assert!(matches!(Envelope::parse(b.build_into(&mut fbb), &limits), Err(EnvelopeError::Metadata { index: 0, .. })));
}

#[test]
fn repeated_metadata_keys_are_found_under_a_raised_limit() {
    let limits = Limits { max_metadata_entries: 24, ..Limits::default() };
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let distinct = keys.iter().fold(alice_to_bob(), |b, k| b.metadata(k, "v"));
    let mut fbb = FlatBufferBuilder::new();
    assert_eq!(Envelope::parse(distinct.build_into(&mut fbb), &limits).unwrap().metadata().count(), 20);
    // A repeat of one of the first 16 keys, and of a later one.
    for (repeat, of) in [(18, 3), (19, 17), (16, 15)] {
        let b = keys
            .iter()
            .enumerate()
            .fold(alice_to_bob(), |b, (i, k)| b.metadata(if i == repeat { &keys[of] } else { k }, "v"));
        let bytes = b.build_into(&mut fbb);
        let err = Envelope::parse(bytes, &limits).unwrap_err();
        assert_eq!(err, EnvelopeError::Metadata { index: repeat, reason: "key is repeated" });
        assert_eq!(Envelope::parse_generic(bytes, &limits).unwrap_err(), err);
    }
}

#[test]
fn rejects_invalid_names_written_by_a_foreign_encoder() {
    // Write the table by hand, as a buggy or hostile client could.
    let limits = Limits::default();
    let build = |sender: &str, kind: u8, dest: &str| {
        let mut fbb = FlatBufferBuilder::new();
        let sender_user = Some(fbb.create_string(sender));
        let destination = Some(fbb.create_string(dest));
        let header = fb::RoutingHeader::new(&id().0, 1, 0, 0, 128, fb::DestinationKind(kind));
        let root = fb::SecureEnvelope::create(
            &mut fbb,
            &fb::SecureEnvelopeArgs { header: Some(&header), sender_user, destination, ..Default::default() },
        );
        fb::finish_secure_envelope_buffer(&mut fbb, root);
        fbb.finished_data().to_vec()
    };
    assert!(Envelope::parse(&build("alice", 1, "lobby"), &limits).is_ok());
    assert!(matches!(Envelope::parse(&build("al/ice", 0, "bob"), &limits), Err(EnvelopeError::Sender(_))));
    let err = Envelope::parse(&build("alice", 0, "bo b"), &limits).unwrap_err();
    assert!(matches!(err, EnvelopeError::Destination(_)));
    assert_eq!(err.code(), ErrorCode::InvalidDestination);
    let err = Envelope::parse(&build("alice", 9, "bob"), &limits).unwrap_err();
    assert_eq!(err, EnvelopeError::UnknownDestinationKind(9));
    let room = build("alice", 1, "lobby");
    let env = Envelope::parse(&room, &limits).unwrap();
    assert_eq!(env.destination(), Destination::Room(RoomName::parse("lobby").unwrap()));
}

#[test]
fn rejects_a_misaligned_routing_header() {
    // Shift the table by 4 bytes: offsets stay valid, the struct lands on a
    // 4-byte boundary. The generic Rust verifier alone would accept it.
    let good = alice_to_bob().build().unwrap();
    let root = u32::from_le_bytes(good[..4].try_into().unwrap()) as usize;
    let mut shifted = Vec::with_capacity(good.len() + 4);
    shifted.extend_from_slice(&((root + 4) as u32).to_le_bytes());
    shifted.extend_from_slice(&good[4..8]);
    shifted.extend_from_slice(&[0; 4]);
    shifted.extend_from_slice(&good[8..]);
    assert_eq!(Envelope::parse(&shifted, &Limits::default()).unwrap_err(), EnvelopeError::MisalignedHeader);
    assert_eq!(Envelope::parse_generic(&shifted, &Limits::default()).unwrap_err(), EnvelopeError::MisalignedHeader);
}

#[test]
fn peek_id_reads_the_id_of_a_valid_envelope_and_nothing_from_a_cut_one() {
    let bytes = alice_to_bob().build().unwrap();
    assert_eq!(Envelope::peek_id(&bytes), Some(id()));
    assert_eq!(Envelope::peek_id(&bytes), Some(Envelope::parse(&bytes, &Limits::default()).unwrap().id()));
    assert_eq!(Envelope::peek_id(&[]), None);
    assert_eq!(Envelope::peek_id(&bytes[..8]), None);
}

#[test]
fn flag_names_round_trip() {
    for (name, flag) in EnvelopeFlags::NAMES {
        assert_eq!(EnvelopeFlags::from_name(name), Some(flag));
    }
    assert_eq!(EnvelopeFlags::from_name("nope"), None);
    assert_eq!(EnvelopeFlags::from_bits(0x10), None);
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._@~=:-]{1,40}"
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::parse(&bytes, &Limits::default());
    }

    #[test]
    fn peek_id_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::peek_id(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_identifier_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 8..512)) {
        bytes[4..8].copy_from_slice(FILE_IDENTIFIER);
        if let Ok(env) = Envelope::parse(&bytes, &Limits::default()) {
            // Whatever verified must be readable without panics.
            let _ = (env.id(), env.sender(), env.destination(), env.payload(), env.metadata().count());
        }
    }

    #[test]
    fn build_then_parse_round_trips(
        sender in name(), dest in name(), kind in 0u8..3, created in any::<u64>(), ttl in any::<u32>(),
        flags in 0u16..16, priority in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..1024),
        meta in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,20}", 0..8),
        rand in any::<[u8; 10]>(),
    ) {
        let id = EnvelopeId::new_v7(created >> 16, &rand);
        let kind = DestinationKind::from_wire(kind).unwrap();
        let destination = Destination::new(kind, &dest).unwrap();
        let b = meta.iter().fold(
            EnvelopeBuilder::new(id, UserId::parse(&sender).unwrap(), destination, created)
                .ttl_ms(ttl).flags(EnvelopeFlags::from_bits(flags).unwrap()).priority(priority).payload(&payload),
            |b, (k, v)| b.metadata(k, v),
        );
        let bytes = b.build().unwrap();
        let env = Envelope::parse(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(env.id(), id);
        prop_assert_eq!(env.sender().as_str(), sender.as_str());
        prop_assert_eq!(env.destination(), destination);
        prop_assert_eq!(env.created_at_ms(), created);
        prop_assert_eq!(env.ttl_ms(), ttl);
        prop_assert_eq!(env.flags().bits(), flags);
        prop_assert_eq!(env.priority(), priority);
        prop_assert_eq!(env.payload(), &payload[..]);
        let got: Vec<_> = env.metadata().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let want: Vec<_> = meta.into_iter().collect();
        prop_assert_eq!(got, want);
    }
}
