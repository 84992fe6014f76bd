//! `http_json::envelope_from_json` on arbitrary `POST /send` JSON bodies.
//! An envelope it builds verifies under the default limits, is sent by the
//! authenticated user at the server's clock, and carries what the body says
//! (read again with `serde_json` and `base64`); an error has a code and a
//! reason the server can answer with.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use libfuzzer_sys::fuzz_target;
use switchboard::frontend::http;
use switchboard::frontend::http_json::envelope_from_json;
use switchboard_protocol::limits::MAX_ENVELOPE_LEN;
use switchboard_protocol::{Destination, Envelope, EnvelopeBuilder, EnvelopeId, ErrorCode, Limits, UserId};

const NOW_MS: u64 = 1_764_000_000_000;

fuzz_target!(|data: &[u8]| {
    let alice = UserId::parse("alice").unwrap();
    match envelope_from_json(data, alice, NOW_MS) {
        Ok(bytes) => {
            assert!(bytes.len() <= MAX_ENVELOPE_LEN);
            let env = Envelope::parse(&bytes, &Limits::default()).expect("a built envelope verifies");
            assert_eq!(env.sender(), alice);
            assert_eq!(env.sender_device(), None);
            assert_eq!(env.created_at_ms(), NOW_MS);
            assert!(!env.id().is_nil());

            // Accepted, so the body is a JSON object without unknown or
            // repeated fields: read it again.
            let body: serde_json::Value = serde_json::from_slice(data).expect("accepted body is JSON");
            let to = body["to"].as_str().expect("`to` is required");
            assert_eq!(Destination::parse(to), Ok(env.destination()));
            let payload = body.get("payload").map_or("", |p| p.as_str().expect("string payload"));
            assert!(BASE64.decode(payload).expect("base64 payload") == env.payload());
            match body.get("id").and_then(|v| v.as_str()) {
                Some(id) => assert_eq!(id.parse::<EnvelopeId>(), Ok(env.id())),
                None => {
                    // A UUIDv7 of the server's clock.
                    let ms = env.id().as_bytes()[..6].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
                    assert_eq!(ms, NOW_MS);
                }
            }
            assert_eq!(u64::from(env.ttl_ms()), body.get("ttl_ms").and_then(|v| v.as_u64()).unwrap_or(0));
            let priority = body.get("priority").and_then(|v| v.as_u64());
            assert_eq!(u64::from(env.priority()), priority.unwrap_or(u64::from(EnvelopeBuilder::NORMAL_PRIORITY)));
            assert_eq!(env.content_type(), body.get("content_type").and_then(|v| v.as_str()));
            let metadata = body.get("metadata").and_then(|m| m.as_object()).map_or(0, |m| m.len());
            assert_eq!(env.metadata().count(), metadata);
            for (key, value) in env.metadata() {
                assert_eq!(body["metadata"][key].as_str(), Some(value));
            }
            let flags: Vec<&str> = env.flags().names().collect();
            if let Some(named) = body.get("flags").and_then(|f| f.as_array()) {
                for name in named {
                    assert!(flags.contains(&name.as_str().expect("flag names are strings")));
                }
            } else {
                assert!(flags.is_empty());
            }
        }
        Err((code, reason)) => {
            assert!(!reason.is_empty());
            assert!(
                !matches!(code, ErrorCode::Internal),
                "no randomness is the only internal error, and it has some: {reason}"
            );
            let status = code.http_status();
            assert!((400..500).contains(&status), "{code:?}: {status}");
            let response = String::from_utf8(http::error_response(code, &reason, false)).expect("UTF-8");
            assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "{response}");
        }
    }
});
