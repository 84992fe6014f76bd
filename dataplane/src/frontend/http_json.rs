//! `POST /send` with `Content-Type: application/json`: the envelope's
//! fields as JSON, the payload in base64, turned into a SecureEnvelope once
//! at the edge. The sender is always the authenticated user.
//!
//! ```json
//! {"to": "user:bob", "payload": "aGVsbG8=", "id": "0193…", "ttl_ms": 60000,
//!  "priority": 128, "content_type": "text/plain", "flags": ["persist-if-offline"],
//!  "metadata": {"schema": "chat.v1"}}
//! ```
//! Only `to` is required. Without `id`, the server makes a UUIDv7.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use switchboard_protocol::envelope::EnvelopeFlags;
use switchboard_protocol::{Destination, EnvelopeBuilder, EnvelopeId, ErrorCode, UserId};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendJson {
    to: String,
    #[serde(default)]
    payload: String,
    id: Option<String>,
    #[serde(default)]
    ttl_ms: u32,
    priority: Option<u8>,
    content_type: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Builds the envelope a JSON body describes, sent by `sender` at `now_ms`;
/// an error has the code the same fault has in the binary protocol (a bad
/// `to` is `invalid-destination`, anything else about the body
/// `invalid-envelope`).
pub fn envelope_from_json(body: &[u8], sender: UserId<'_>, now_ms: u64) -> Result<Vec<u8>, (ErrorCode, String)> {
    let invalid = |reason: String| (ErrorCode::InvalidEnvelope, reason);
    let req: SendJson = serde_json::from_slice(body).map_err(|e| invalid(format!("invalid JSON body: {e}")))?;
    let to = Destination::parse(&req.to).map_err(|e| (ErrorCode::InvalidDestination, format!("to: {e}")))?;
    let payload = BASE64.decode(req.payload.as_bytes()).map_err(|e| invalid(format!("payload is not base64: {e}")))?;
    let id = match &req.id {
        Some(id) => id.parse::<EnvelopeId>().map_err(|e| invalid(format!("id: {e}")))?,
        None => {
            let mut random = [0u8; 10];
            getrandom::fill(&mut random).map_err(|e| (ErrorCode::Internal, format!("no randomness: {e}")))?;
            EnvelopeId::new_v7(now_ms, &random)
        }
    };
    let mut flags = EnvelopeFlags::empty();
    for f in &req.flags {
        flags = flags | EnvelopeFlags::from_name(f).ok_or_else(|| invalid(format!("unknown flag {f:?}")))?;
    }
    let mut b = EnvelopeBuilder::new(id, sender, to, now_ms)
        .ttl_ms(req.ttl_ms)
        .flags(flags)
        .priority(req.priority.unwrap_or(EnvelopeBuilder::NORMAL_PRIORITY))
        .payload(&payload);
    if let Some(ct) = &req.content_type {
        b = b.content_type(ct);
    }
    for (k, v) in &req.metadata {
        b = b.metadata(k, v);
    }
    b.build().map_err(|e| (e.code(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::{Envelope, Limits};

    use super::*;

    #[test]
    fn builds_the_envelope_described() {
        let alice = UserId::parse("alice").unwrap();
        let body = br#"{"to":"room:lobby","payload":"aGk=","ttl_ms":5000,"flags":["no-push"],"metadata":{"k":"v"}}"#;
        let bytes = envelope_from_json(body, alice, 1_000).unwrap();
        let env = Envelope::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(env.sender(), alice);
        assert_eq!(env.destination().to_string(), "room:lobby");
        assert_eq!(env.payload(), b"hi");
        assert_eq!(env.created_at_ms(), 1_000);
        assert!(env.flags().contains(EnvelopeFlags::NO_PUSH));
        assert!(!env.id().is_nil());
    }

    #[test]
    fn reports_bad_bodies() {
        let alice = UserId::parse("alice").unwrap();
        for body in [
            &b"{"[..],
            br#"{"payload":"aGk="}"#,
            br#"{"to":"bob"}"#,
            br#"{"to":"user:b","payload":"!!"}"#,
            br#"{"to":"user:b","flags":["loud"]}"#,
            br#"{"to":"user:b","extra":1}"#,
        ] {
            assert!(envelope_from_json(body, alice, 0).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let code = |body: &[u8]| envelope_from_json(body, alice, 0).unwrap_err().0;
        assert_eq!(code(br#"{"to":"bob"}"#), ErrorCode::InvalidDestination);
        assert_eq!(code(br#"{"to":"user:b/c"}"#), ErrorCode::InvalidDestination);
        assert_eq!(code(br#"{"to":"user:b","payload":"!!"}"#), ErrorCode::InvalidEnvelope);
    }
}
