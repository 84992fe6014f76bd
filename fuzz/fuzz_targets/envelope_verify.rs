//! `Envelope::parse` on arbitrary bytes. A buffer that verifies must be safe
//! to read through every accessor, and must be kept byte for byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::limits::{MAX_CONTENT_TYPE_LEN, MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN};
use switchboard_protocol::{Destination, DeviceId, Envelope, Limits, RoomName, ServiceName, UserId};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(env) = Envelope::parse(data, &limits) else {
        return;
    };

    assert!(!env.id().is_nil());
    // Names read back through the "trusted" accessors must be valid names.
    let sender = env.sender();
    assert!(UserId::parse(sender.as_str()).is_ok());
    if let Some(device) = env.sender_device() {
        assert!(DeviceId::parse(device.as_str()).is_ok());
    }
    let destination = env.destination();
    let valid = match destination {
        Destination::User(u) => UserId::parse(u.as_str()).is_ok(),
        Destination::Room(r) => RoomName::parse(r.as_str()).is_ok(),
        Destination::Service(s) => ServiceName::parse(s.as_str()).is_ok(),
        _ => true,
    };
    assert!(valid, "destination {destination} is not a valid name");
    assert_eq!(
        Destination::new(destination.kind(), destination.name()),
        Ok(destination)
    );

    let created = env.created_at_ms();
    let ttl = env.ttl_ms();
    for max_ttl in [0, 1, ttl, u32::MAX] {
        let expires = env.expires_at_ms(max_ttl);
        assert!(expires >= created);
        assert!(expires - created <= u64::from(max_ttl));
        let _ = env.is_expired(created, max_ttl);
    }

    let flags = env.flags();
    assert_eq!(
        switchboard_protocol::EnvelopeFlags::from_bits(flags.bits()),
        Some(flags)
    );
    let _ = env.priority();

    if let Some(ct) = env.content_type() {
        assert!(!ct.is_empty() && ct.len() <= MAX_CONTENT_TYPE_LEN);
    }
    let mut entries = 0;
    for (key, value) in env.metadata() {
        assert!(!key.is_empty() && key.len() <= MAX_METADATA_KEY_LEN);
        assert!(value.len() <= MAX_METADATA_VALUE_LEN);
        entries += 1;
    }
    assert!(entries <= limits.max_metadata_entries);

    let payload = env.payload();
    assert!(payload.len() <= data.len());
    let _ = format!("{env:?}");

    assert_eq!(env.as_bytes(), data);
});
