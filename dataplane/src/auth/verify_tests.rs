//! Tests for token verification and key loading, with the fixture keys in
//! `testdata/` and a fixed clock.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};
use switchboard_protocol::{DeviceId, ErrorCode, UserId};

use super::*;
use crate::auth::{AuthConfig, AuthConfigError, JwtAlgorithm, KeyConfig, TokenRequest, issue_hs256};

const NOW: u64 = 1_700_000_000;
const DEV_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

const RSA_A_KEY: &str = include_str!("testdata/rsa-a.key.pem");
const RSA_A_PUB: &str = include_str!("testdata/rsa-a.pub.pem");
const RSA_B_KEY: &str = include_str!("testdata/rsa-b.key.pem");
const RSA_B_PUB: &str = include_str!("testdata/rsa-b.pub.pem");
const EC_KEY: &str = include_str!("testdata/ec.key.pem");
const EC_PUB: &str = include_str!("testdata/ec.pub.pem");
const ED_KEY: &str = include_str!("testdata/ed.key.pem");
const ED_PUB: &str = include_str!("testdata/ed.pub.pem");

fn claims() -> Value {
    json!({
        "sub": "alice",
        "dev": "phone-1",
        "roles": ["admin", "ops"],
        "iss": "switchboard",
        "aud": "switchboard",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 3600,
    })
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    claims[field] = value;
    claims
}

fn without(mut claims: Value, field: &str) -> Value {
    claims.as_object_mut().unwrap().remove(field);
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa_a() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_A_KEY.as_bytes()).unwrap()
}

fn rsa_b() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_B_KEY.as_bytes()).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap()
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap()
}

fn dev() -> EncodingKey {
    EncodingKey::from_secret(DEV_SECRET)
}

fn pem_key(kid: &str, alg: JwtAlgorithm, pem: &str) -> KeyConfig {
    KeyConfig { kid: kid.into(), alg, secret: None, public_key_file: None, public_key_pem: Some(pem.into()) }
}

fn config(keys: Vec<KeyConfig>) -> AuthConfig {
    AuthConfig { keys, ..AuthConfig::default() }
}

/// The dev secret plus one key of each asymmetric algorithm.
fn all_keys() -> Verifier {
    let cfg = config(vec![
        pem_key("rsa", JwtAlgorithm::RS256, RSA_A_PUB),
        pem_key("ec", JwtAlgorithm::ES256, EC_PUB),
        pem_key("ed", JwtAlgorithm::EdDSA, ED_PUB),
    ]);
    Verifier::from_config(&cfg, Some(DEV_SECRET)).unwrap()
}

fn jwk(kid: &str, alg: Algorithm, key: DecodingKey) -> Jwk {
    let mut jwk = Jwk::from_decoding_key(&key, Some(alg)).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn rsa_a_jwk(kid: &str) -> Jwk {
    jwk(kid, Algorithm::RS256, DecodingKey::from_rsa_pem(RSA_A_PUB.as_bytes()).unwrap())
}

fn ec_jwk(kid: &str) -> Jwk {
    jwk(kid, Algorithm::ES256, DecodingKey::from_ec_pem(EC_PUB.as_bytes()).unwrap())
}

fn ed_jwk(kid: &str) -> Jwk {
    jwk(kid, Algorithm::EdDSA, DecodingKey::from_ed_pem(ED_PUB.as_bytes()).unwrap())
}

fn write_jwks(path: &Path, keys: Vec<Jwk>) {
    std::fs::write(path, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap();
}

fn jwks_config(path: &Path) -> AuthConfig {
    AuthConfig { jwks_file: Some(path.into()), ..AuthConfig::default() }
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

/// A token with a hand-made header and claims and an arbitrary signature.
fn raw_token(header: &Value, claims: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims))
}

fn config_err(cfg: &AuthConfig, dev: Option<&[u8]>) -> String {
    Verifier::from_config(cfg, dev).unwrap_err().to_string()
}

#[test]
fn dev_token_from_issue_hs256_verifies() {
    let req = TokenRequest {
        user: UserId::parse("alice").unwrap(),
        device: Some(DeviceId::parse("d1").unwrap()),
        roles: vec!["admin".into()],
        ttl: Duration::from_secs(600),
        issuer: "switchboard",
        audience: "switchboard",
    };
    let token = issue_hs256(&req, DEV_SECRET, UNIX_EPOCH + Duration::from_secs(NOW)).unwrap();
    let v = Verifier::from_config(&AuthConfig::default(), Some(DEV_SECRET)).unwrap();
    let id = v.verify(&token, NOW).unwrap();
    assert_eq!(id.user().as_str(), "alice");
    assert_eq!(id.device().map(|d| d.as_str()), Some("d1"));
    assert!(id.is_admin());
    assert_eq!(id.expires_at(), NOW + 600);
    assert_eq!(v.kids(), ["dev"]);

    // The same secret under kid "dev" works too; another secret does not.
    assert!(v.verify(&sign(Algorithm::HS256, Some("dev"), &dev(), &claims()), NOW).is_ok());
    let other = issue_hs256(&req, &[9; 32], UNIX_EPOCH + Duration::from_secs(NOW)).unwrap();
    let err = v.verify(&other, NOW).unwrap_err();
    assert!(matches!(err, AuthError::BadSignature { .. }), "{err}");
    assert_eq!(err.code(), ErrorCode::InvalidToken);
}

#[test]
fn rs256_es256_and_eddsa_verify_by_kid_and_without() {
    let v = all_keys();
    assert_eq!(v.kids(), ["dev", "ec", "ed", "rsa"]);
    let cases = [(Algorithm::RS256, "rsa", rsa_a()), (Algorithm::ES256, "ec", ec()), (Algorithm::EdDSA, "ed", ed())];
    for (alg, kid, key) in &cases {
        let id = v.verify(&sign(*alg, Some(kid), key, &claims()), NOW).unwrap();
        assert_eq!(id.user().as_str(), "alice", "{kid}");
        assert_eq!(id.device().unwrap().as_str(), "phone-1");
        assert_eq!(id.roles(), [Box::from("admin"), Box::from("ops")]);
        assert!(id.has_role("ops") && !id.has_role("root"));
        // Without kid: the only key of the token's algorithm.
        assert_eq!(v.verify(&sign(*alg, None, key, &claims()), NOW).unwrap(), id);
    }
}

#[test]
fn wrong_key_and_unknown_kid_are_invalid() {
    let v = all_keys();
    let err = v.verify(&sign(Algorithm::RS256, Some("rsa"), &rsa_b(), &claims()), NOW).unwrap_err();
    assert_eq!(err, AuthError::BadSignature { kid: "rsa".into() });
    assert_eq!(err.code(), ErrorCode::InvalidToken);

    let err = v.verify(&sign(Algorithm::RS256, Some("rsa-2"), &rsa_a(), &claims()), NOW).unwrap_err();
    assert_eq!(err, AuthError::UnknownKey { kid: "rsa-2".into() });
    assert_eq!(err.code(), ErrorCode::InvalidToken);

    // A tampered payload under a valid signature.
    let good = sign(Algorithm::ES256, Some("ec"), &ec(), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&with(claims(), "sub", json!("mallory"))), parts[2]);
    assert!(matches!(v.verify(&forged, NOW), Err(AuthError::BadSignature { .. })));
}

#[test]
fn algorithm_confusion_is_rejected() {
    let v = all_keys();
    // HS256 signed with the RSA public key's PEM as the HMAC secret.
    let hmac_with_pub = EncodingKey::from_secret(RSA_A_PUB.as_bytes());
    let token = sign(Algorithm::HS256, Some("rsa"), &hmac_with_pub, &claims());
    let err = v.verify(&token, NOW).unwrap_err();
    assert_eq!(
        err,
        AuthError::WrongAlgorithm { kid: "rsa".into(), key_alg: JwtAlgorithm::RS256, token_alg: JwtAlgorithm::HS256 }
    );
    assert_eq!(err.code(), ErrorCode::InvalidToken);
    // Without kid the HS256 token goes to the dev secret, which it does not match.
    let token = sign(Algorithm::HS256, None, &hmac_with_pub, &claims());
    assert!(matches!(v.verify(&token, NOW), Err(AuthError::BadSignature { kid }) if &*kid == "dev"));
    // And with no dev secret there is no HS256 key at all.
    let no_dev = Verifier::from_config(&config(vec![pem_key("rsa", JwtAlgorithm::RS256, RSA_A_PUB)]), None).unwrap();
    assert_eq!(no_dev.verify(&token, NOW).unwrap_err(), AuthError::NoDefaultKey { alg: JwtAlgorithm::HS256 });

    // An asymmetric token aimed at another key type, and at the dev secret.
    let err = v.verify(&sign(Algorithm::ES256, Some("rsa"), &ec(), &claims()), NOW).unwrap_err();
    assert!(matches!(err, AuthError::WrongAlgorithm { .. }), "{err}");
    let err = v.verify(&sign(Algorithm::RS256, Some("dev"), &rsa_a(), &claims()), NOW).unwrap_err();
    assert!(matches!(err, AuthError::WrongAlgorithm { .. }), "{err}");
    // Algorithms of a supported family but not configured.
    let err = v.verify(&sign(Algorithm::RS512, Some("rsa"), &rsa_a(), &claims()), NOW).unwrap_err();
    assert_eq!(err, AuthError::UnsupportedAlgorithm { alg: "RS512".into() });
    let err = v.verify(&sign(Algorithm::PS256, Some("rsa"), &rsa_a(), &claims()), NOW).unwrap_err();
    assert_eq!(err, AuthError::UnsupportedAlgorithm { alg: "PS256".into() });
}

#[test]
fn alg_none_is_rejected() {
    let v = all_keys();
    let good = sign(Algorithm::HS256, Some("dev"), &dev(), &claims());
    let good_sig = good.rsplit('.').next().unwrap();
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "typ": "JWT", "kid": "dev"}),
        json!({"alg": "None", "kid": "rsa"}),
        json!({"alg": "NONE"}),
    ] {
        for sig in ["", good_sig] {
            let token = raw_token(&header, &claims(), sig);
            let err = v.verify(&token, NOW).unwrap_err();
            assert!(matches!(err, AuthError::UnsupportedAlgorithm { .. }), "{header}: {err}");
            assert_eq!(err.code(), ErrorCode::InvalidToken);
        }
    }
    let err = v.verify(&raw_token(&json!({"typ": "JWT"}), &claims(), ""), NOW).unwrap_err();
    assert!(matches!(err, AuthError::Malformed(_)), "{err}");
}

#[test]
fn expiry_is_checked_with_leeway() {
    let v = all_keys();
    assert_eq!(v.leeway_secs(), 30);
    let token = sign(Algorithm::EdDSA, Some("ed"), &ed(), &with(claims(), "exp", json!(NOW)));
    assert!(v.verify(&token, NOW + 29).is_ok());
    let err = v.verify(&token, NOW + 30).unwrap_err();
    assert_eq!(err, AuthError::Expired { exp: NOW });
    assert_eq!(err.code(), ErrorCode::TokenExpired);

    let strict = AuthConfig { leeway_secs: 0, ..config(vec![pem_key("ed", JwtAlgorithm::EdDSA, ED_PUB)]) };
    let strict = Verifier::from_config(&strict, None).unwrap();
    assert!(strict.verify(&token, NOW - 1).is_ok());
    assert!(matches!(strict.verify(&token, NOW), Err(AuthError::Expired { .. })));

    // NumericDate may be fractional.
    let token = sign(Algorithm::EdDSA, Some("ed"), &ed(), &with(claims(), "exp", json!(NOW as f64 + 0.5)));
    assert_eq!(strict.verify(&token, NOW - 1).unwrap().expires_at(), NOW);
}

#[test]
fn nbf_in_the_future_is_token_expired() {
    let v = all_keys();
    let token = sign(Algorithm::RS256, Some("rsa"), &rsa_a(), &with(claims(), "nbf", json!(NOW + 100)));
    let err = v.verify(&token, NOW).unwrap_err();
    assert_eq!(err, AuthError::NotYetValid { nbf: NOW + 100 });
    assert_eq!(err.code(), ErrorCode::TokenExpired);
    assert!(v.verify(&token, NOW + 70).is_ok(), "within the leeway");
    // nbf is optional.
    assert!(v.verify(&sign(Algorithm::RS256, Some("rsa"), &rsa_a(), &without(claims(), "nbf")), NOW).is_ok());
}

#[test]
fn issuer_audience_and_required_claims() {
    let v = all_keys();
    let check = |claims: Value| v.verify(&sign(Algorithm::ES256, Some("ec"), &ec(), &claims), NOW);
    assert_eq!(check(with(claims(), "aud", json!("other"))).unwrap_err(), AuthError::WrongAudience);
    assert_eq!(check(with(claims(), "aud", json!(["a", "b"]))).unwrap_err(), AuthError::WrongAudience);
    assert!(check(with(claims(), "aud", json!(["other", "switchboard"]))).is_ok());
    assert_eq!(check(with(claims(), "iss", json!("evil"))).unwrap_err(), AuthError::WrongIssuer);
    for claim in ["exp", "sub", "iss", "aud"] {
        let err = check(without(claims(), claim)).unwrap_err();
        assert_eq!(err, AuthError::MissingClaim(claim));
        assert_eq!(err.code(), ErrorCode::InvalidToken);
    }
    for claim in ["dev", "roles", "iat", "nbf"] {
        assert!(check(without(claims(), claim)).is_ok(), "{claim} is optional");
    }
    let id = check(without(without(claims(), "dev"), "roles")).unwrap();
    assert!(id.device().is_none() && id.roles().is_empty() && !id.is_admin());
}

#[test]
fn sub_and_dev_must_be_valid_names() {
    let v = all_keys();
    let check = |claims: Value| v.verify(&sign(Algorithm::ES256, Some("ec"), &ec(), &claims), NOW);
    for sub in [json!("a/b"), json!(""), json!("x".repeat(129))] {
        let err = check(with(claims(), "sub", sub)).unwrap_err();
        assert!(matches!(err, AuthError::InvalidClaim { claim: "sub", .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::InvalidToken);
    }
    let err = check(with(claims(), "dev", json!("a b"))).unwrap_err();
    assert!(matches!(err, AuthError::InvalidClaim { claim: "dev", .. }), "{err}");
    for (field, value) in [("sub", json!(5)), ("roles", json!("admin")), ("exp", json!("soon")), ("exp", json!(-1))] {
        let err = check(with(claims(), field, value)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidToken, "{field}: {err}");
    }
}

#[test]
fn malformed_tokens_are_invalid_and_empty_is_unauthenticated() {
    let v = all_keys();
    assert_eq!(v.verify("", NOW).unwrap_err().code(), ErrorCode::Unauthenticated);
    assert_eq!(AuthError::Missing.code(), ErrorCode::Unauthenticated);
    let good = sign(Algorithm::HS256, None, &dev(), &claims());
    let crit = raw_token(&json!({"alg": "HS256", "crit": ["exp"]}), &claims(), "x");
    for token in [
        "abc".to_owned(),
        "a.b".into(),
        "a.b.c.d".into(),
        "!!.e30.e30".into(),
        format!("{good}.x"),
        format!("{}=", good),
        "x".repeat(MAX_TOKEN_LEN + 1),
        crit,
        "\u{e9}.\u{e9}.\u{e9}".into(),
    ] {
        let err = v.verify(&token, NOW).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidToken, "{err}");
    }
}

#[test]
fn no_kid_with_two_keys_of_one_algorithm_is_rejected() {
    let cfg = config(vec![pem_key("a", JwtAlgorithm::RS256, RSA_A_PUB), pem_key("b", JwtAlgorithm::RS256, RSA_B_PUB)]);
    let v = Verifier::from_config(&cfg, None).unwrap();
    let err = v.verify(&sign(Algorithm::RS256, None, &rsa_a(), &claims()), NOW).unwrap_err();
    assert_eq!(err, AuthError::NoDefaultKey { alg: JwtAlgorithm::RS256 });
    assert!(v.verify(&sign(Algorithm::RS256, Some("b"), &rsa_b(), &claims()), NOW).is_ok());
}

#[test]
fn cache_hit_returns_the_same_identity_and_still_expires() {
    let mut shard = ShardVerifier::new(all_keys());
    let token = sign(Algorithm::RS256, Some("rsa"), &rsa_a(), &with(claims(), "exp", json!(NOW + 100)));
    let first = shard.verify(&token, NOW).unwrap();
    let second = shard.verify(&token, NOW + 1).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(shard.cached(), 1);
    assert!(shard.verify(&token, NOW + 129).is_ok());
    assert_eq!(shard.verify(&token, NOW + 130).unwrap_err(), AuthError::Expired { exp: NOW + 100 });
    assert_eq!(shard.cached(), 0, "an expired entry is dropped");
    // Connections close at exp + leeway (30 s here).
    assert_eq!(shard.verifier().time_left(&first, NOW + 20), Some(Duration::from_secs(110)));
    assert_eq!(shard.verifier().time_left(&first, NOW + 200), Some(Duration::ZERO));

    // A cached token is still refused before its nbf (a clock going back).
    let token = sign(Algorithm::RS256, Some("rsa"), &rsa_a(), &with(claims(), "nbf", json!(NOW)));
    assert!(shard.verify(&token, NOW).is_ok());
    assert!(matches!(shard.verify(&token, NOW - 31), Err(AuthError::NotYetValid { .. })));
    // Failures are not cached.
    assert!(shard.verify(&sign(Algorithm::RS256, Some("rsa"), &rsa_b(), &claims()), NOW).is_err());
    assert_eq!(shard.cached(), 1);
    assert_eq!(shard.verify("", NOW).unwrap_err(), AuthError::Missing);
    shard.clear_cache();
    assert_eq!(shard.cached(), 0);
}

#[test]
fn cache_is_bounded_and_can_be_disabled() {
    let cfg = AuthConfig { cache_size: 3, ..AuthConfig::default() };
    let mut shard = ShardVerifier::new(Verifier::from_config(&cfg, Some(DEV_SECRET)).unwrap());
    let tokens: Vec<String> = (0..5)
        .map(|i| sign(Algorithm::HS256, None, &dev(), &with(claims(), "sub", json!(format!("user{i}")))))
        .collect();
    for t in &tokens {
        shard.verify(t, NOW).unwrap();
    }
    assert_eq!(shard.cached(), 3);
    // The most recent ones are the cached ones.
    let again = shard.verify(&tokens[4], NOW).unwrap();
    assert!(Arc::ptr_eq(&again, &shard.verify(&tokens[4], NOW).unwrap()));

    let off = AuthConfig { cache_size: 0, ..AuthConfig::default() };
    let mut shard = ShardVerifier::new(Verifier::from_config(&off, Some(DEV_SECRET)).unwrap());
    let a = shard.verify(&tokens[0], NOW).unwrap();
    let b = shard.verify(&tokens[0], NOW).unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(a, b);
    assert_eq!(shard.cached(), 0);
}

#[test]
fn jwks_file_loads_and_reload_picks_up_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    write_jwks(&path, vec![rsa_a_jwk("k1")]);
    let v = Verifier::from_config(&jwks_config(&path), None).unwrap();
    assert_eq!(v.kids(), ["k1"]);
    let t1 = sign(Algorithm::RS256, Some("k1"), &rsa_a(), &claims());
    let t2 = sign(Algorithm::ES256, Some("k2"), &ec(), &claims());
    let t3 = sign(Algorithm::EdDSA, Some("k3"), &ed(), &claims());
    assert!(v.verify(&t1, NOW).is_ok());
    assert!(matches!(v.verify(&t2, NOW), Err(AuthError::UnknownKey { .. })));

    let mut shard = ShardVerifier::new(v.clone());
    shard.verify(&t1, NOW).unwrap();

    // Rotation: k1 retired, k2 and k3 added.
    write_jwks(&path, vec![ec_jwk("k2"), ed_jwk("k3")]);
    let reloaded = v.reload().unwrap();
    assert_eq!(reloaded.kids(), ["k2", "k3"]);
    assert!(reloaded.verify(&t2, NOW).is_ok());
    assert!(reloaded.verify(&t3, NOW).is_ok());
    assert!(v.verify(&t1, NOW).is_ok(), "the old verifier is unchanged");

    shard.set_verifier(reloaded.clone());
    assert_eq!(shard.cached(), 0);
    assert!(matches!(shard.verify(&t1, NOW), Err(AuthError::UnknownKey { .. })));
    assert!(shard.verify(&t2, NOW).is_ok());

    // A broken file fails the reload; the caller keeps the old verifier.
    std::fs::write(&path, b"{\"keys\": [").unwrap();
    let err = reloaded.reload().unwrap_err();
    assert!(matches!(err, AuthConfigError::JwksParse { .. }), "{err}");
    assert!(err.to_string().contains("jwks.json"), "{err}");
    std::fs::remove_file(&path).unwrap();
    let err = reloaded.reload().unwrap_err().to_string();
    assert!(err.contains("cannot read auth.jwks_file") && err.contains("jwks.json"), "{err}");
}

#[test]
fn jwks_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");

    // Encryption keys and unsupported algorithms are skipped.
    let mut enc = rsa_a_jwk("enc");
    enc.common.public_key_use = Some(PublicKeyUse::Encryption);
    let mut rs384 = rsa_a_jwk("rs384");
    rs384.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS384);
    write_jwks(&path, vec![enc, rs384, ed_jwk("ed")]);
    assert_eq!(Verifier::from_config(&jwks_config(&path), None).unwrap().kids(), ["ed"]);

    // Without "alg" the key type decides.
    let mut no_alg = ec_jwk("ec");
    no_alg.common.key_algorithm = None;
    write_jwks(&path, vec![no_alg]);
    let v = Verifier::from_config(&jwks_config(&path), None).unwrap();
    assert!(v.verify(&sign(Algorithm::ES256, Some("ec"), &ec(), &claims()), NOW).is_ok());

    let mut lying = rsa_a_jwk("lying");
    lying.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::HS256);
    let mut no_kid = ed_jwk("x");
    no_kid.common.key_id = None;
    for (keys, want) in [
        (vec![lying], "kid \"lying\": alg HS256 does not match"),
        (vec![no_kid], "#0 (no kid): a key needs a kid"),
        (vec![rsa_a_jwk("dev")], "not \"dev\""),
        (vec![], "no usable signature key"),
    ] {
        write_jwks(&path, keys);
        let err = config_err(&jwks_config(&path), None);
        assert!(err.contains(want) && err.contains("jwks.json"), "{err}");
    }
    // A short oct key.
    std::fs::write(&path, r#"{"keys":[{"kty":"oct","kid":"h","alg":"HS256","k":"c2hvcnQ"}]}"#).unwrap();
    let err = config_err(&jwks_config(&path), None);
    assert!(err.contains("kid \"h\"") && err.contains("5 bytes"), "{err}");
    // A bad point.
    let mut bad = ec_jwk("bad");
    if let jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) = &mut bad.algorithm {
        p.y = p.x.clone();
    }
    write_jwks(&path, vec![bad]);
    let err = config_err(&jwks_config(&path), None);
    assert!(err.contains("kid \"bad\"") && err.contains("ES256"), "{err}");
}

#[test]
fn key_files_and_config_errors_name_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let pub_file = dir.path().join("rsa.pub.pem");
    std::fs::write(&pub_file, RSA_A_PUB).unwrap();
    let file_key = KeyConfig {
        public_key_file: Some(pub_file.clone()),
        public_key_pem: None,
        ..pem_key("file", JwtAlgorithm::RS256, "")
    };
    let v = Verifier::from_config(&config(vec![file_key.clone()]), None).unwrap();
    assert!(v.verify(&sign(Algorithm::RS256, Some("file"), &rsa_a(), &claims()), NOW).is_ok());

    let secret_key = |kid: &str, alg, secret: &str| KeyConfig {
        secret: Some(secret.into()),
        public_key_pem: None,
        ..pem_key(kid, alg, "")
    };
    let hs = secret_key("hs", JwtAlgorithm::HS256, "s".repeat(32).as_str());
    let v = Verifier::from_config(&config(vec![hs.clone()]), Some(DEV_SECRET)).unwrap();
    let token = sign(Algorithm::HS256, Some("hs"), &EncodingKey::from_secret(&[b's'; 32]), &claims());
    assert!(v.verify(&token, NOW).is_ok());

    let missing = dir.path().join("nope.pem");
    let both = KeyConfig { secret: Some("s".repeat(32)), ..pem_key("both", JwtAlgorithm::HS256, RSA_A_PUB) };
    let cases: Vec<(AuthConfig, Option<&[u8]>, &str)> = vec![
        (config(vec![]), None, "no token verification key"),
        (config(vec![]), Some(b"short"), "development JWT secret is 5 bytes"),
        (
            config(vec![KeyConfig {
                public_key_file: Some(missing),
                public_key_pem: None,
                ..pem_key("gone", JwtAlgorithm::ES256, "")
            }]),
            None,
            "kid \"gone\": cannot read public_key_file",
        ),
        (config(vec![both]), None, "kid \"both\": set exactly one of"),
        (config(vec![pem_key("dev", JwtAlgorithm::EdDSA, ED_PUB)]), None, "reserved"),
        (config(vec![pem_key("", JwtAlgorithm::EdDSA, ED_PUB)]), None, "kid must not be empty"),
        (config(vec![pem_key("x", JwtAlgorithm::RS256, EC_PUB)]), None, "kid \"x\": not a PEM RS256 public key"),
        (config(vec![pem_key("x", JwtAlgorithm::ES256, ED_PUB)]), None, "kid \"x\": not a PEM ES256"),
        (config(vec![pem_key("x", JwtAlgorithm::EdDSA, "junk")]), None, "kid \"x\": not a PEM EdDSA"),
        (config(vec![pem_key("x", JwtAlgorithm::RS256, RSA_A_KEY)]), None, "kid \"x\""),
        (config(vec![pem_key("x", JwtAlgorithm::HS256, RSA_A_PUB)]), None, "takes secret"),
        (config(vec![secret_key("x", JwtAlgorithm::RS256, &"s".repeat(32))]), None, "needs a public key"),
        (config(vec![secret_key("x", JwtAlgorithm::HS256, "short")]), None, "5 bytes"),
        (config(vec![file_key.clone(), file_key]), None, "kid \"file\" is defined twice"),
        (AuthConfig { leeway_secs: 601, ..AuthConfig::default() }, Some(DEV_SECRET), "auth.leeway_secs"),
        (AuthConfig { issuer: String::new(), ..AuthConfig::default() }, Some(DEV_SECRET), "auth.issuer"),
    ];
    for (cfg, dev, want) in cases {
        let err = config_err(&cfg, dev);
        assert!(err.contains(want), "{err:?} should contain {want:?}");
        assert!(!err.contains("ssssssss"), "{err} shows a secret");
    }

    // The same kid in auth.keys and the JWKS file.
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, vec![rsa_a_jwk("k")]);
    let cfg = AuthConfig { jwks_file: Some(jwks), ..config(vec![pem_key("k", JwtAlgorithm::EdDSA, ED_PUB)]) };
    let err = config_err(&cfg, None);
    assert!(err.contains("kid \"k\" is defined twice, in auth.keys and in auth.jwks_file"), "{err}");
}

#[test]
fn errors_never_contain_the_token() {
    let v = all_keys();
    let long_kid = "k".repeat(500);
    let tokens = [
        sign(Algorithm::RS256, Some("rsa"), &rsa_b(), &claims()),
        sign(Algorithm::RS256, Some(&long_kid), &rsa_a(), &claims()),
        sign(Algorithm::HS256, Some("rsa"), &dev(), &claims()),
        sign(Algorithm::EdDSA, Some("ed"), &ed(), &with(claims(), "exp", json!(NOW - 100))),
        sign(Algorithm::EdDSA, Some("ed"), &ed(), &with(claims(), "sub", json!("a/b"))),
        sign(Algorithm::EdDSA, Some("ed"), &ed(), &with(claims(), "aud", json!("x"))),
        raw_token(&json!({"alg": "none"}), &claims(), ""),
        raw_token(&json!({"alg": "x".repeat(300)}), &claims(), ""),
        format!("{}.x", sign(Algorithm::HS256, None, &dev(), &claims())),
    ];
    for token in &tokens {
        let err = v.verify(token, NOW).unwrap_err();
        let texts = [err.to_string(), format!("{err:?}")];
        for text in &texts {
            assert!(text.len() < 200, "{text}");
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!text.contains(part), "{text} repeats part of the token");
            }
        }
    }
}

#[test]
fn auth_section_parses_from_toml() {
    let text = r#"
        [auth]
        issuer = "https://id.example"
        leeway_secs = 5
        cache_size = 10
        jwks_file = "/etc/switchboard/jwks.json"

        [[auth.keys]]
        kid = "2025-01"
        alg = "RS256"
        public_key_file = "/etc/switchboard/rsa.pem"

        [[auth.keys]]
        kid = "ed"
        alg = "EdDSA"
        public_key_pem = "-----BEGIN PUBLIC KEY-----"
    "#;
    let c: crate::config::Config = toml::from_str(text).unwrap();
    assert_eq!(c.auth.leeway_secs, 5);
    assert_eq!(c.auth.cache_size, 10);
    assert_eq!(c.auth.audience, "switchboard");
    assert_eq!(c.auth.keys.len(), 2);
    assert_eq!(c.auth.keys[1].alg, JwtAlgorithm::EdDSA);
    let back: crate::config::Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);

    let d: crate::config::Config = toml::from_str("").unwrap();
    assert_eq!(d.auth.leeway_secs, 30);
    assert_eq!(d.auth.cache_size, 65536);
    assert!(d.auth.keys.is_empty() && d.auth.jwks_file.is_none());

    for bad in [
        "[[auth.keys]]\nkid = \"a\"\nalg = \"none\"\nsecret = \"x\"",
        "[[auth.keys]]\nkid = \"a\"\nalg = \"HS256\"\nsecrt = \"x\"",
        "[auth]\nleeway = 5",
    ] {
        assert!(toml::from_str::<crate::config::Config>(bad).is_err(), "{bad}");
    }
    let hs = KeyConfig { secret: Some("hunter2hunter2".into()), ..pem_key("a", JwtAlgorithm::HS256, "") };
    assert!(!format!("{hs:?}").contains("hunter2"));
}

#[test]
fn verifier_and_identity_are_shareable() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Verifier>();
    send_sync::<Identity>();
    send::<ShardVerifier>();
    let id = Identity::new(UserId::parse("bob").unwrap(), None, ["admin"], 5);
    assert!(id.is_admin() && id.is_expired(5, 0) && !id.is_expired(4, 0) && !id.is_expired(5, 1));
}

#[test]
fn public_reasons_name_no_key() {
    let kid: Box<str> = "rk1".into();
    for e in [
        AuthError::UnknownKey { kid: kid.clone() },
        AuthError::NoDefaultKey { alg: JwtAlgorithm::RS256 },
        AuthError::WrongAlgorithm { kid: kid.clone(), key_alg: JwtAlgorithm::RS256, token_alg: JwtAlgorithm::HS256 },
        AuthError::BadSignature { kid },
    ] {
        let public = e.public_reason();
        assert!(!public.contains("rk1") && !public.contains("RS256"), "{e}: {public}");
        assert_eq!(e.code(), ErrorCode::InvalidToken);
    }
    assert_eq!(AuthError::WrongIssuer.public_reason(), AuthError::WrongIssuer.to_string());
}
