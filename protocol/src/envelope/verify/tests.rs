//! The schema-specific verifier against the generic one: a hand-assembled
//! envelope broken one rule at a time, every optional-field combination the
//! builder makes, shared (DAG) buffers for the apparent-size count, and
//! random mutations. Every case runs both verifiers
//! ([`Envelope::compare_verifiers`]): same verdict, same error code, same
//! values.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use proptest::prelude::*;

use super::super::{Envelope, EnvelopeBuilder, EnvelopeError, EnvelopeFlags, fb};
use crate::id::{Destination, DeviceId, EnvelopeId, UserId};
use crate::limits::{Limits, MAX_METADATA_ENTRIES};

/// The smallest kind of envelope, laid out by hand: required fields only.
#[rustfmt::skip]
const MINIMAL: [u8; 84] = [
    20, 0, 0, 0,                     // 0: the root table is at 20
    b'S', b'B', b'v', b'1',          // 4: file identifier
    12, 0, 44, 0,                    // 8: vtable: 12 bytes long, table 44 bytes inline
    12, 0, 4, 0,                     // 12: header at table + 12, sender_user at table + 4
    0, 0, 8, 0,                      // 16: no sender_device, destination at table + 8
    12, 0, 0, 0,                     // 20: the table; its vtable is 12 bytes before it
    40, 0, 0, 0,                     // 24: sender_user: string at 24 + 40 = 64
    48, 0, 0, 0,                     // 28: destination: string at 28 + 48 = 76
    1, 2, 3, 4, 5, 6, 7, 8,          // 32: RoutingHeader (8-aligned): id,
    9, 10, 11, 12, 13, 14, 15, 16,
    0, 0x10, 0, 0, 0, 0, 0, 0,       // 48: created_at_ms,
    0, 0, 0, 0,                      // 56: ttl_ms,
    0, 0, 128, 0,                    // 60: flags, priority, destination_kind User
    5, 0, 0, 0,                      // 64: "alice", NUL, padding
    b'a', b'l', b'i', b'c', b'e', 0, 0, 0,
    3, 0, 0, 0, b'b', b'o', b'b', 0, // 76: "bob", NUL
];
const VTABLE: usize = 8;
const SLOT_HEADER: usize = 12;
const SLOT_SENDER: usize = 14;
const SLOT_DESTINATION: usize = 18;
const TABLE: usize = 20;
const SENDER_OFFSET: usize = 24;
const HEADER: usize = 32;
const SENDER: usize = 64;

/// `MINIMAL` with little-endian `u16`/`u32` values written over it.
fn minimal_with(u16s: &[(usize, u16)], u32s: &[(usize, u32)]) -> Vec<u8> {
    let mut bytes = MINIMAL.to_vec();
    for &(at, v) in u16s {
        bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    for &(at, v) in u32s {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// Both verifiers accept `bytes` and read the same values.
#[track_caller]
fn accepted(bytes: &[u8], limits: &Limits) {
    assert_eq!(Envelope::compare_verifiers(bytes, limits), Ok(true));
}

/// Both verifiers reject `bytes` (with the same code); the schema-specific
/// verifier's error.
#[track_caller]
fn rejected(bytes: &[u8], limits: &Limits) -> EnvelopeError {
    assert_eq!(Envelope::compare_verifiers(bytes, limits), Ok(false));
    Envelope::parse(bytes, limits).expect_err("rejected")
}

/// Both verifiers reject `bytes` under the default limits, the
/// schema-specific one for breaking a layout rule whose text contains `rule`.
#[track_caller]
fn malformed(bytes: &[u8], rule: &str) {
    let err = rejected(bytes, &Limits::default());
    assert!(matches!(err, EnvelopeError::Malformed { reason, .. } if reason.contains(rule)), "{err}");
}

#[test]
fn hand_made_envelope_verifies() {
    accepted(&MINIMAL, &Limits::default());
    let env = Envelope::parse(&MINIMAL, &Limits::default()).unwrap();
    assert_eq!(env.sender().as_str(), "alice");
    assert_eq!(env.destination(), Destination::parse("user:bob").unwrap());
    assert_eq!((env.created_at_ms(), env.priority(), env.ttl_ms()), (0x1000, 128, 0));
    assert_eq!((env.sender_device(), env.content_type(), env.metadata().count()), (None, None, 0));
    assert_eq!(env.payload(), b"");
}

#[test]
fn every_truncation_is_rejected() {
    for len in 0..MINIMAL.len() {
        rejected(&MINIMAL[..len], &Limits::default());
    }
}

#[test]
fn wrong_identifier_is_rejected_first() {
    let mut bytes = MINIMAL;
    bytes[4..8].copy_from_slice(b"SBv0");
    assert_eq!(rejected(&bytes, &Limits::default()), EnvelopeError::UnsupportedVersion { found: *b"SBv0" });
}

#[test]
fn root_offset_must_reach_an_aligned_table() {
    malformed(&minimal_with(&[], &[(0, 22)]), "table is not 4-byte aligned");
    malformed(&minimal_with(&[], &[(0, 84)]), "past the end");
    // The largest 4-aligned offset: no wrap-around to the start.
    malformed(&minimal_with(&[], &[(0, u32::MAX - 3)]), "past the end");
    malformed(&minimal_with(&[], &[(0, u32::MAX)]), "not 4-byte aligned");
}

#[test]
fn vtable_must_lie_in_the_buffer_aligned_with_an_even_length() {
    // Before the start, beyond the end, odd.
    malformed(&minimal_with(&[], &[(TABLE, 21)]), "vtable offset points outside");
    malformed(&minimal_with(&[], &[(TABLE, -100_i32 as u32)]), "vtable offset points outside");
    malformed(&minimal_with(&[], &[(TABLE, i32::MIN as u32)]), "vtable offset points outside");
    malformed(&minimal_with(&[], &[(TABLE, 11)]), "vtable is not 2-byte aligned");
    malformed(&minimal_with(&[(VTABLE, 13)], &[]), "vtable length is odd");
    malformed(&minimal_with(&[(VTABLE, 200)], &[]), "past the end");
    // The vtable length's own two bytes must be in the buffer.
    let mut one_byte_vtable = minimal_with(&[], &[(TABLE, (TABLE as i32 - 84) as u32)]);
    one_byte_vtable.push(0);
    malformed(&one_byte_vtable, "past the end");
}

#[test]
fn vtable_may_follow_its_table_and_hold_fields_this_version_does_not_know() {
    // A copy of the vtable appended after the table, with one more slot
    // (a field of a later schema revision, pointing anywhere).
    let mut bytes = minimal_with(&[], &[(TABLE, (TABLE as i32 - 84) as u32)]);
    bytes.extend_from_slice(&[22, 0, 44, 0, 12, 0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0]);
    accepted(&bytes, &Limits::default());
    // The table's inline length is not checked, by either verifier.
    accepted(&minimal_with(&[(VTABLE + 2, 0)], &[]), &Limits::default());
}

#[test]
fn header_must_be_present_in_bounds_and_8_aligned() {
    malformed(&minimal_with(&[(SLOT_HEADER, 0)], &[]), "required field is missing");
    // A vtable too short to hold the header's slot.
    malformed(&minimal_with(&[(VTABLE, 4)], &[]), "required field is missing");
    // A table that is its own vtable (soffset 0): the vtable length is the
    // soffset's low half, 0, so the table has no fields.
    malformed(&minimal_with(&[], &[(TABLE, 0)]), "required field is missing");
    malformed(&minimal_with(&[(SLOT_HEADER, 60)], &[]), "past the end");
    // At table + 8 = 28: in bounds and 4-aligned, but not 8-aligned.
    let err = rejected(&minimal_with(&[(SLOT_HEADER, 8)], &[]), &Limits::default());
    assert_eq!(err, EnvelopeError::MisalignedHeader);
}

#[test]
fn strings_must_be_in_bounds_nul_terminated_utf8() {
    malformed(&minimal_with(&[(SLOT_SENDER, 5)], &[]), "not 4-byte aligned");
    malformed(&minimal_with(&[], &[(SENDER_OFFSET, 1000)]), "past the end");
    malformed(&minimal_with(&[], &[(SENDER_OFFSET, u32::MAX - 3)]), "past the end");
    malformed(&minimal_with(&[], &[(SENDER, u32::MAX)]), "past the end");
    malformed(&minimal_with(&[], &[(SENDER, 17)]), "past the end");
    // An offset of 0 points at itself: a string of length 0 whose NUL would
    // be the first byte of the next offset.
    malformed(&minimal_with(&[], &[(SENDER_OFFSET, 0)]), "NUL");
    // Eight bytes end on the length of "bob", not on a NUL.
    malformed(&minimal_with(&[], &[(SENDER, 8)]), "NUL");
    let mut no_nul = MINIMAL;
    no_nul[SENDER + 4 + 5] = b'x';
    malformed(&no_nul, "NUL");
    let mut not_utf8 = MINIMAL;
    not_utf8[SENDER + 4] = 0xff;
    malformed(&not_utf8, "UTF-8");
    // UTF-8 but not a user id: a semantic error, the same from both paths.
    let mut accented = MINIMAL;
    accented[SENDER + 4..SENDER + 6].copy_from_slice("é".as_bytes());
    assert!(matches!(rejected(&accented, &Limits::default()), EnvelopeError::Sender(_)));
}

#[test]
fn required_strings_must_be_present() {
    malformed(&minimal_with(&[(SLOT_SENDER, 0)], &[]), "required field is missing");
    malformed(&minimal_with(&[(SLOT_DESTINATION, 0)], &[]), "required field is missing");
    // A vtable that ends before the destination's slot (vtable offset 10).
    let err = rejected(&minimal_with(&[(VTABLE, 10)], &[]), &Limits::default());
    assert!(matches!(err, EnvelopeError::Malformed { what: "destination", .. }), "{err}");
}

#[test]
fn semantic_errors_are_the_same_from_both_paths() {
    let limits = Limits::default();
    let mut nil = MINIMAL;
    nil[HEADER..HEADER + 16].fill(0);
    assert_eq!(rejected(&nil, &limits), EnvelopeError::NilId);
    let mut flags = MINIMAL;
    flags[HEADER + 28] = 0x10;
    assert_eq!(rejected(&flags, &limits), EnvelopeError::ReservedFlags(0x10));
    let mut kind = MINIMAL;
    kind[HEADER + 31] = 3;
    assert_eq!(rejected(&kind, &limits), EnvelopeError::UnknownDestinationKind(3));
}

fn alice_to(destination: &str) -> EnvelopeBuilder<'_> {
    EnvelopeBuilder::new(
        EnvelopeId::new_v7(1_764_000_000_000, &[7; 10]),
        UserId::parse("alice").unwrap(),
        Destination::parse(destination).unwrap(),
        1_764_000_000_000,
    )
}

fn alice_to_bob<'a>() -> EnvelopeBuilder<'a> {
    alice_to("user:bob")
}

const KEYS: [&str; MAX_METADATA_ENTRIES + 1] =
    ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11", "k12", "k13", "k14", "k15", "k16"];

#[test]
fn builder_envelopes_with_every_optional_field_combination_verify() {
    let limits = Limits::default();
    let payload = vec![0xa5; 1000];
    let mut fbb = FlatBufferBuilder::new();
    for destination in ["user:bob", "room:lobby", "service:search"] {
        for device in [false, true] {
            for content_type in [false, true] {
                for entries in [0, 1, MAX_METADATA_ENTRIES] {
                    for payload_len in [0, 5, payload.len()] {
                        let b = alice_to(destination).payload(&payload[..payload_len]).flags(EnvelopeFlags::ALL);
                        let mut b = KEYS[..entries].iter().fold(b, |b, k| b.metadata(k, "value"));
                        if device {
                            b = b.sender_device(DeviceId::parse("phone").unwrap());
                        }
                        if content_type {
                            b = b.content_type("text/plain");
                        }
                        accepted(b.build_into(&mut fbb), &limits);
                    }
                }
            }
        }
    }
}

#[test]
fn metadata_entries_count_against_the_table_limit() {
    let mut fbb = FlatBufferBuilder::new();
    let b = KEYS.iter().fold(alice_to_bob(), |b, k| b.metadata(k, "v"));
    let err = rejected(b.build_into(&mut fbb), &Limits::default());
    assert_eq!(err, EnvelopeError::TooManyMetadata { count: 17, max: 16 });
    let two = Limits { max_metadata_entries: 2, ..Limits::default() };
    let b = KEYS[..2].iter().fold(alice_to_bob(), |b, k| b.metadata(k, "v"));
    accepted(b.build_into(&mut fbb), &two);
    let b = KEYS[..3].iter().fold(alice_to_bob(), |b, k| b.metadata(k, "v"));
    rejected(b.build_into(&mut fbb), &two);
    let none = Limits { max_metadata_entries: 0, ..Limits::default() };
    accepted(alice_to_bob().build_into(&mut fbb), &none);
    // A limit so large that 1 + it overflows.
    let unbounded = Limits { max_metadata_entries: usize::MAX, ..Limits::default() };
    let b = KEYS.iter().fold(alice_to_bob(), |b, k| b.metadata(k, "v"));
    accepted(b.build_into(&mut fbb), &unbounded);
}

/// Position of the metadata vector in a built envelope (a known-good one).
fn metadata_vector(bytes: &[u8]) -> usize {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let table = u32_at(0);
    let vtable = (table as i64 - i64::from(u32_at(table) as i32)) as usize;
    let slot = vtable + usize::from(fb::SecureEnvelope::VT_METADATA);
    let field = table + usize::from(u16::from_le_bytes([bytes[slot], bytes[slot + 1]]));
    field + u32_at(field)
}

#[test]
fn metadata_vector_and_entries_must_be_well_formed() {
    let mut fbb = FlatBufferBuilder::new();
    let good = alice_to_bob().metadata("a", "1").metadata("b", "2").build_into(&mut fbb).to_vec();
    accepted(&good, &Limits::default());
    let vector = metadata_vector(&good);
    let with_len = |len: u32| {
        let mut bytes = good.clone();
        bytes[vector..vector + 4].copy_from_slice(&len.to_le_bytes());
        bytes
    };
    // Longer than the buffer, with and without overflowing len * 4 in 32 bits.
    malformed(&with_len(1000), "past the end");
    malformed(&with_len(0x4000_0001), "past the end");
    malformed(&with_len(u32::MAX), "past the end");
    // Fewer entries than written is fine.
    accepted(&with_len(1), &Limits::default());
    accepted(&with_len(0), &Limits::default());
    // An entry offset leading outside, or to a misaligned table.
    let mut outside = good.clone();
    outside[vector + 4..vector + 8].copy_from_slice(&(u32::MAX - 3).to_le_bytes());
    malformed(&outside, "past the end");
    let mut misaligned = good.clone();
    misaligned[vector + 4] = misaligned[vector + 4].wrapping_add(2);
    malformed(&misaligned, "not 4-byte aligned");
}

#[test]
fn metadata_entries_need_key_and_value() {
    for (key, value) in [(true, false), (false, true)] {
        let mut fbb = FlatBufferBuilder::new();
        let k = fbb.create_string("k");
        let v = fbb.create_string("v");
        let start = fbb.start_table();
        if key {
            fbb.push_slot_always(fb::KeyValue::VT_KEY, k);
        }
        if value {
            fbb.push_slot_always(fb::KeyValue::VT_VALUE, v);
        }
        let entry = WIPOffset::<fb::KeyValue<'_>>::new(fbb.end_table(start).value());
        let metadata = Some(fbb.create_vector(&[entry]));
        let sender_user = Some(fbb.create_string("alice"));
        let destination = Some(fbb.create_string("bob"));
        let header = fb::RoutingHeader::new(&[1; 16], 1, 0, 0, 128, fb::DestinationKind::User);
        let root = fb::SecureEnvelope::create(
            &mut fbb,
            &fb::SecureEnvelopeArgs { header: Some(&header), sender_user, destination, metadata, ..Default::default() },
        );
        fb::finish_secure_envelope_buffer(&mut fbb, root);
        malformed(fbb.finished_data(), "required field is missing");
    }
}

/// An envelope whose objects are shared: 16 metadata entries with the same
/// 256-byte value, sender and destination the same string, content type and
/// payload the same bytes. Its apparent size is several times its length.
fn shared_envelope() -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let value = fbb.create_string(&"v".repeat(256));
    let entries: Vec<_> = KEYS[..MAX_METADATA_ENTRIES]
        .iter()
        .map(|k| {
            let key = Some(fbb.create_string(k));
            fb::KeyValue::create(&mut fbb, &fb::KeyValueArgs { key, value: Some(value) })
        })
        .collect();
    let metadata = Some(fbb.create_vector(&entries));
    let content_type = fbb.create_string(&"a".repeat(100));
    let payload = Some(WIPOffset::new(content_type.value()));
    let name = fbb.create_string("bob");
    let header = fb::RoutingHeader::new(&[1; 16], 1, 0, 0, 128, fb::DestinationKind::User);
    let args = fb::SecureEnvelopeArgs {
        header: Some(&header),
        sender_user: Some(name),
        sender_device: Some(name),
        destination: Some(name),
        content_type: Some(content_type),
        metadata,
        payload,
    };
    let root = fb::SecureEnvelope::create(&mut fbb, &args);
    fb::finish_secure_envelope_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn apparent_size_is_counted_exactly_as_the_generic_verifier_counts_it() {
    let bytes = shared_envelope();
    accepted(&bytes, &Limits::default());
    // The smallest limit that accepts it, found with the schema-specific
    // verifier; the generic one must switch at the same limit.
    let limit = |max| Limits::default().with_max_envelope_len(max);
    let (mut lo, mut hi) = (bytes.len(), 64 * 1024);
    assert!(Envelope::parse(&bytes, &limit(lo)).is_err(), "apparent size should exceed the length");
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if Envelope::parse(&bytes, &limit(mid)).is_ok() { hi = mid } else { lo = mid }
    }
    assert!(hi > 16 * 256, "apparent size {hi} should count the shared value 16 times");
    let err = rejected(&bytes, &limit(lo));
    assert!(matches!(err, EnvelopeError::Malformed { reason, .. } if reason.contains("apparent size")), "{err}");
    accepted(&bytes, &limit(hi));
}

/// One change to a valid envelope.
#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    /// A `u32` at a 4-aligned position (offsets and lengths live there).
    Word(usize, u32),
    Truncate(usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![Just(0), 1..16u32, (1..64u32).prop_map(|x| x * 4), Just(u32::MAX), any::<u32>()];
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Byte(at, b)),
        4 => (any::<usize>(), word).prop_map(|(at, w)| Mutation::Word(at, w)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 1..32).prop_map(Mutation::Append),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Byte(at, b) => bytes[at % len] = *b,
        Mutation::Word(at, w) if len >= 4 => {
            let at = (at % (len / 4)) * 4;
            bytes[at..at + 4].copy_from_slice(&w.to_le_bytes());
        }
        Mutation::Word(..) => {}
        Mutation::Truncate(to) => bytes.truncate((to % len).max(1)),
        Mutation::Append(tail) => bytes.extend_from_slice(tail),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn mutated_envelopes_get_the_same_verdict_from_both_verifiers(
        device in any::<bool>(), content_type in any::<bool>(), entries in 0..4usize,
        payload in proptest::collection::vec(any::<u8>(), 0..48), hand_made in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
        slack in prop_oneof![Just(None), (0..256usize).prop_map(Some)], max_entries in 0..20usize,
    ) {
        let mut bytes = if hand_made {
            MINIMAL.to_vec()
        } else {
            let mut b = KEYS[..entries].iter().fold(alice_to_bob().payload(&payload), |b, k| b.metadata(k, "v"));
            if device {
                b = b.sender_device(DeviceId::parse("phone").unwrap());
            }
            if content_type {
                b = b.content_type("text/plain");
            }
            b.build().unwrap()
        };
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        let limits = match slack {
            None => Limits::default(),
            Some(slack) => Limits { max_envelope_len: bytes.len() + slack, max_metadata_entries: max_entries },
        };
        let verdict = Envelope::compare_verifiers(&bytes, &limits);
        prop_assert!(verdict.is_ok(), "{verdict:?}\n{bytes:?}");
    }
}

#[test]
fn every_envelope_up_to_the_maximum_length_verifies() {
    // The apparent size of an envelope without shared objects exceeds its
    // length (vtable lengths and slots, the metadata entries' shared
    // vtable and their offsets are counted twice): a 65,536-byte envelope
    // whose payload left no padding was refused. Every length up to the
    // limit, with and without metadata, must pass both verifiers.
    let mut fbb = FlatBufferBuilder::new();
    let payload = vec![0xa5; 70_000];
    for max in [1024, crate::limits::MAX_ENVELOPE_LEN] {
        let limits = Limits::default().with_max_envelope_len(max);
        for entries in [0, 1, MAX_METADATA_ENTRIES] {
            for device in [false, true] {
                let mut build = |payload_len: usize| {
                    let b = alice_to("room:lobby").payload(&payload[..payload_len]).content_type("text/plain");
                    let mut b = KEYS[..entries].iter().fold(b, |b, k| b.metadata(k, "value"));
                    if device {
                        b = b.sender_device(DeviceId::parse("phone").unwrap());
                    }
                    b.build_into(&mut fbb).to_vec()
                };
                // The payload grows the envelope byte for byte (plus
                // padding): start 64 bytes below the limit.
                let empty = build(0).len();
                let mut at_limit = 0;
                for payload_len in (max - empty).saturating_sub(64).. {
                    let bytes = build(payload_len);
                    if bytes.len() > max {
                        break;
                    }
                    accepted(&bytes, &limits);
                    at_limit += usize::from(bytes.len() == max);
                }
                assert!(at_limit > 0, "no envelope of exactly {max} bytes ({entries} entries, device {device})");
            }
        }
    }
}
