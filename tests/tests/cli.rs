//! The `switchboard` client subcommands, run as a user would run them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use switchboard_e2e::Switchboard;
use switchboard_protocol::{Envelope, Limits};

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn verify(token: &str, secret: &[u8]) -> serde_json::Value {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["switchboard"]);
    v.set_issuer(&["switchboard"]);
    v.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_secret(secret), &v)
        .expect("token verifies")
        .claims
}

#[test]
fn token_is_signed_with_the_generated_data_dir_secret() {
    let sb = Switchboard::new();
    let out = sb.run(&["token", "--user", "alice", "--device", "d1", "--ttl", "2h", "--role", "admin"], b"");
    let token = stdout(&out);
    let token = token.trim_end();
    let secret = std::fs::read(sb.data_dir().join("jwt-secret")).expect("secret generated into the data dir");
    let claims = verify(token, &secret);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["dev"], "d1");
    assert_eq!(claims["roles"], serde_json::json!(["admin"]));
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 7200);
    // A second run reuses the same secret.
    let again = stdout(&sb.run(&["token", "--user", "bob"], b""));
    assert_eq!(verify(again.trim_end(), &secret)["sub"], "bob");
    assert!(!claims.as_object().unwrap().contains_key("payload"));
}

#[test]
fn token_secret_from_environment_and_config() {
    let sb = Switchboard::new();
    let secret = "an-environment-secret-of-32-bytes-or-more";
    let out = sb.command(&["token", "--user", "carol"]).env("SWITCHBOARD_JWT_SECRET", secret).output().unwrap();
    verify(stdout(&out).trim_end(), secret.as_bytes());

    let cfg = sb.data_dir().join("switchboard.toml");
    std::fs::write(&cfg, "[auth]\njwt_secret = \"a-config-file-secret-that-is-long-enough\"\n").unwrap();
    let out = sb.run(&["--config", cfg.to_str().unwrap(), "token", "--user", "dave"], b"");
    verify(stdout(&out).trim_end(), b"a-config-file-secret-that-is-long-enough");

    let out = sb.command(&["token", "--user", "carol"]).env("SWITCHBOARD_JWT_SECRET", "short").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));

    std::fs::write(&cfg, "[auth]\njwt_secrett = \"typo\"\n").unwrap();
    let out = sb.run(&["--config", cfg.to_str().unwrap(), "token", "--user", "dave"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"), "{out:?}");
}

#[test]
fn token_rejects_invalid_users() {
    let sb = Switchboard::new();
    for user in ["", "a/b", "has space"] {
        let out = sb.run(&["token", "--user", user], b"");
        assert!(!out.status.success(), "accepted {user:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn envelope_encode_decode_round_trip() {
    let sb = Switchboard::new();
    let payload: Vec<u8> = (0..=255u8).collect();
    let file = sb.data_dir().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let args = [
        "envelope",
        "encode",
        "--from",
        "alice",
        "--device",
        "laptop",
        "--to",
        "room:lobby",
        "--payload-file",
        file.to_str().unwrap(),
        "--ttl",
        "30s",
        "--priority",
        "200",
        "--flag",
        "persist-if-offline",
        "--flag",
        "ack-requested",
        "--meta",
        "schema=chat.v1",
        "--content-type",
        "application/octet-stream",
    ];
    let out = sb.run(&args, b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = out.stdout;
    // The bytes are a valid envelope for an independent reader.
    let env = Envelope::parse(&bytes, &Limits::default()).expect("valid envelope");
    assert_eq!(env.payload(), &payload[..]);
    assert_eq!(env.sender().as_str(), "alice");

    let line = stdout(&sb.run(&["envelope", "decode"], &bytes));
    assert_eq!(line.lines().count(), 1);
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["id"], env.id().to_string());
    assert_eq!(json["sender"], "alice");
    assert_eq!(json["sender_device"], "laptop");
    assert_eq!(json["destination"], "room:lobby");
    assert_eq!(json["ttl_ms"], 30_000);
    assert_eq!(json["priority"], 200);
    assert_eq!(json["flags"], serde_json::json!(["persist-if-offline", "ack-requested"]));
    assert_eq!(json["metadata"], serde_json::json!({"schema": "chat.v1"}));
    assert_eq!(json["content_type"], "application/octet-stream");
    assert_eq!(BASE64.decode(json["payload"].as_str().unwrap()).unwrap(), payload);

    // Payload from stdin, written as a send frame.
    let framed =
        sb.run(&["envelope", "encode", "--from", "a", "--to", "user:b", "--payload-file", "-", "--frame"], b"xyz");
    let framed = framed.stdout;
    assert_eq!(&framed[..4], &[1, 1, 0, 0]);
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&sb.run(&["envelope", "decode", "--frame"], &framed))).unwrap();
    assert_eq!(json["payload"], BASE64.encode(b"xyz"));
}

#[test]
fn envelope_decode_refuses_garbage() {
    let sb = Switchboard::new();
    for input in [&b""[..], b"garbage", &[0xff; 100], b"\x08\0\0\0SBv1\0\0\0\0"] {
        let out = sb.run(&["envelope", "decode"], input);
        assert!(!out.status.success(), "accepted {input:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid envelope"), "{err}");
    }
    let out = sb.run(&["envelope", "encode", "--from", "alice", "--to", "bob"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"));
}
