//! The verification key set: loading keys from `[auth]` (inline secrets and
//! PEMs, PEM files, a JWK Set file) and choosing the key for a token header.
//!
//! Every key is pinned to one algorithm when it is loaded; lookups hand out
//! the key together with that algorithm, never a key for "whatever the
//! token says". Loading reads files; nothing here runs on the hot path
//! except [`KeySet::select`].

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{DecodingKey, Validation};

use super::{AuthConfig, DEV_KID, JwtAlgorithm, KeyConfig, MAX_LEEWAY_SECS};
use crate::config::MIN_SECRET_LEN;

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_LEN: usize = 256;

/// Errors building a [`Verifier`](super::Verifier) from `[auth]`. Each names
/// the setting, key or file at fault; none contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// A plain `[auth]` setting is out of range.
    #[error("auth.{field}: {reason}")]
    Setting {
        /// The setting, e.g. `leeway_secs`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An `[[auth.keys]]` entry is unusable.
    #[error("auth.keys entry with kid {kid:?}: {reason}")]
    Key {
        /// The entry's `kid`.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `[[auth.keys]]` entry's `public_key_file` cannot be read.
    #[error("auth.keys entry with kid {kid:?}: cannot read public_key_file {path}: {source}")]
    KeyFile {
        /// The entry's `kid`.
        kid: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The JWKS file cannot be read.
    #[error("cannot read auth.jwks_file {path}: {source}")]
    JwksRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The JWKS file is not a JWK Set.
    #[error("auth.jwks_file {path} is not a JWK Set (RFC 7517): {source}")]
    JwksParse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A key in the JWKS file is unusable.
    #[error("auth.jwks_file {path}, key {key}: {reason}")]
    JwksKey {
        /// The file.
        path: PathBuf,
        /// The key: `kid "..."`, or its position when it has no `kid`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two keys share a `kid`.
    #[error("kid {kid:?} is defined twice, in {first} and in {second}")]
    DuplicateKid {
        /// The `kid`.
        kid: String,
        /// Where the first definition is.
        first: String,
        /// Where the second definition is.
        second: String,
    },
    /// The development secret is shorter than HS256 allows.
    #[error("the development JWT secret is {len} bytes; HS256 needs at least {MIN_SECRET_LEN}")]
    WeakDevSecret {
        /// Its length.
        len: usize,
    },
    /// No key at all: no development secret, no `[[auth.keys]]`, no JWKS.
    #[error("no token verification key: set auth.keys, auth.jwks_file or a development secret")]
    NoKeys,
}

/// One loaded key, pinned to its algorithm.
pub(super) struct Key {
    pub(super) kid: Box<str>,
    pub(super) alg: JwtAlgorithm,
    pub(super) decoding: DecodingKey,
    /// Validation for exactly `alg`, with the configured `iss` and `aud`.
    pub(super) validation: Validation,
}

/// Why no key was found for a token header.
pub(super) enum SelectError {
    /// The `kid` names no key.
    UnknownKid,
    /// No `kid`, and no single key for the token's algorithm.
    NoDefault,
}

/// All keys, by `kid`, plus the defaults for tokens without one.
pub(super) struct KeySet {
    by_kid: HashMap<Box<str>, Key>,
    /// For a token without `kid`: the kid of the key to use, per algorithm.
    default_kid: HashMap<JwtAlgorithm, Box<str>>,
}

impl KeySet {
    /// Loads every key `cfg` names (reading PEM and JWKS files) plus the
    /// development secret under [`DEV_KID`].
    pub(super) fn load(cfg: &AuthConfig, dev_secret: Option<&[u8]>) -> Result<Self, AuthConfigError> {
        check_settings(cfg)?;
        let validation = |alg: JwtAlgorithm| validation(cfg, alg);
        let mut loaded: Vec<(Key, String)> = Vec::new();
        if let Some(secret) = dev_secret {
            if secret.len() < MIN_SECRET_LEN {
                return Err(AuthConfigError::WeakDevSecret { len: secret.len() });
            }
            let key = Key {
                kid: DEV_KID.into(),
                alg: JwtAlgorithm::HS256,
                decoding: DecodingKey::from_secret(secret),
                validation: validation(JwtAlgorithm::HS256),
            };
            loaded.push((key, "the development secret".into()));
        }
        for kc in &cfg.keys {
            let (alg, decoding) = load_configured(kc)?;
            let key = Key { kid: kc.kid.as_str().into(), alg, decoding, validation: validation(alg) };
            loaded.push((key, "auth.keys".into()));
        }
        if let Some(path) = &cfg.jwks_file {
            for (kid, alg, decoding) in load_jwks(path)? {
                let key = Key { kid, alg, decoding, validation: validation(alg) };
                loaded.push((key, format!("auth.jwks_file {}", path.display())));
            }
        }
        if loaded.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }

        let mut by_kid = HashMap::with_capacity(loaded.len());
        let mut origin: HashMap<Box<str>, String> = HashMap::with_capacity(loaded.len());
        // Per algorithm: the configured key ids, for tokens without `kid`.
        let mut per_alg: HashMap<JwtAlgorithm, Vec<Box<str>>> = HashMap::new();
        for (key, from) in loaded {
            if let Some(first) = origin.get(&key.kid) {
                return Err(AuthConfigError::DuplicateKid { kid: key.kid.into(), first: first.clone(), second: from });
            }
            if &*key.kid != DEV_KID {
                per_alg.entry(key.alg).or_default().push(key.kid.clone());
            }
            origin.insert(key.kid.clone(), from);
            by_kid.insert(key.kid.clone(), key);
        }
        let mut default_kid = HashMap::new();
        for (alg, kids) in per_alg {
            if let [only] = &kids[..] {
                default_kid.insert(alg, only.clone());
            }
        }
        if by_kid.contains_key(DEV_KID) {
            // The development secret wins for HS256 tokens without `kid`
            // (those `switchboard token` issues).
            default_kid.insert(JwtAlgorithm::HS256, DEV_KID.into());
        }
        Ok(Self { by_kid, default_kid })
    }

    /// The key for a token header: by `kid`, else the default for `alg`.
    /// The caller still checks that the key's algorithm is `alg`.
    pub(super) fn select(&self, kid: Option<&str>, alg: JwtAlgorithm) -> Result<&Key, SelectError> {
        match kid {
            Some(kid) => self.by_kid.get(kid).ok_or(SelectError::UnknownKid),
            None => self.default_kid.get(&alg).and_then(|kid| self.by_kid.get(kid)).ok_or(SelectError::NoDefault),
        }
    }

    /// Every `kid`, sorted.
    pub(super) fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(|k| &**k).collect();
        kids.sort_unstable();
        kids
    }
}

fn check_settings(cfg: &AuthConfig) -> Result<(), AuthConfigError> {
    let setting = |field, reason: &str| AuthConfigError::Setting { field, reason: reason.into() };
    if cfg.issuer.is_empty() {
        return Err(setting("issuer", "must not be empty"));
    }
    if cfg.audience.is_empty() {
        return Err(setting("audience", "must not be empty"));
    }
    if cfg.leeway_secs > MAX_LEEWAY_SECS {
        return Err(AuthConfigError::Setting {
            field: "leeway_secs",
            reason: format!("{} is more than the maximum of {MAX_LEEWAY_SECS}", cfg.leeway_secs),
        });
    }
    Ok(())
}

/// jsonwebtoken's checks for a key of `alg`: signature with exactly `alg`,
/// `iss` and `aud` present and equal to the configured ones, `sub` and
/// `exp` present. Time is checked by the caller against its own `now`, so
/// jsonwebtoken's clock-based `exp`/`nbf` checks are off.
fn validation(cfg: &AuthConfig, alg: JwtAlgorithm) -> Validation {
    let mut v = Validation::new(alg.jsonwebtoken());
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.validate_aud = true;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.set_issuer(&[&cfg.issuer]);
    v.set_audience(&[&cfg.audience]);
    v
}

/// Loads one `[[auth.keys]]` entry.
fn load_configured(kc: &KeyConfig) -> Result<(JwtAlgorithm, DecodingKey), AuthConfigError> {
    let bad = |reason: String| AuthConfigError::Key { kid: kc.kid.clone(), reason };
    if kc.kid.is_empty() {
        return Err(bad("kid must not be empty".into()));
    }
    if kc.kid == DEV_KID {
        return Err(bad(format!("kid {DEV_KID:?} is reserved for the development secret (auth.jwt_secret)")));
    }
    let alg = kc.alg;
    let pem: Vec<u8> = match (&kc.secret, &kc.public_key_file, &kc.public_key_pem) {
        (Some(secret), None, None) => {
            if alg != JwtAlgorithm::HS256 {
                return Err(bad(format!("secret is for HS256 keys; an {alg} key needs a public key")));
            }
            check_secret_len(secret.len()).map_err(bad)?;
            return Ok((alg, DecodingKey::from_secret(secret.as_bytes())));
        }
        (None, Some(path), None) => fs::read(path).map_err(|source| AuthConfigError::KeyFile {
            kid: kc.kid.clone(),
            path: path.clone(),
            source,
        })?,
        (None, None, Some(pem)) => pem.clone().into_bytes(),
        _ => {
            return Err(bad("set exactly one of secret (HS256), public_key_file or public_key_pem".into()));
        }
    };
    let key = match alg {
        JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
        JwtAlgorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
        JwtAlgorithm::HS256 => return Err(bad("an HS256 key takes secret, not a public key".into())),
    }
    .map_err(|e| bad(format!("not a PEM {alg} public key ({e})")))?;
    check_public_key(&key, alg).map_err(bad)?;
    Ok((alg, key))
}

/// Reads a JWK Set. Keys not meant for signatures (`use: enc`) or for
/// algorithms Switchboard does not verify are skipped with a warning; a key
/// that looks usable but is broken, or has no `kid`, is an error.
fn load_jwks(path: &Path) -> Result<Vec<(Box<str>, JwtAlgorithm, DecodingKey)>, AuthConfigError> {
    let text = fs::read(path).map_err(|source| AuthConfigError::JwksRead { path: path.into(), source })?;
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|source| AuthConfigError::JwksParse { path: path.into(), source })?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = match &jwk.common.key_id {
            Some(kid) => format!("kid {kid:?}"),
            None => format!("#{i} (no kid)"),
        };
        let bad = |reason: String| AuthConfigError::JwksKey { path: path.into(), key: name.clone(), reason };
        match jwk_algorithm(jwk) {
            Ok(Some(alg)) => {
                let Some(kid) = &jwk.common.key_id else {
                    return Err(bad("a key needs a kid".into()));
                };
                if kid.is_empty() || kid == DEV_KID {
                    return Err(bad(format!("kid must be non-empty and not {DEV_KID:?}")));
                }
                let key = jwk_key(jwk, alg).map_err(bad)?;
                keys.push((kid.as_str().into(), alg, key));
            }
            Ok(None) => {
                tracing::warn!(file = %path.display(), key = %name, "skipping JWKS key not usable for JWT signatures");
            }
            Err(reason) => return Err(bad(reason)),
        }
    }
    if keys.is_empty() {
        return Err(AuthConfigError::JwksKey {
            path: path.into(),
            key: "(all)".into(),
            reason: "the set holds no usable signature key".into(),
        });
    }
    Ok(keys)
}

/// The algorithm a JWK verifies: its `alg`, else the one its key type
/// implies. `Ok(None)` for keys to skip; `Err` when `alg` and the key type
/// disagree.
fn jwk_algorithm(jwk: &Jwk) -> Result<Option<JwtAlgorithm>, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return Ok(None);
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => JwtAlgorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => JwtAlgorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => JwtAlgorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => JwtAlgorithm::HS256,
        // Other curves and key types: nothing Switchboard verifies.
        _ => return Ok(None),
    };
    let declared = match jwk.common.key_algorithm {
        None => return Ok(Some(implied)),
        Some(KeyAlgorithm::HS256) => JwtAlgorithm::HS256,
        Some(KeyAlgorithm::RS256) => JwtAlgorithm::RS256,
        Some(KeyAlgorithm::ES256) => JwtAlgorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => JwtAlgorithm::EdDSA,
        // RS384, PS256, RSA-OAEP, ...: not verified here.
        Some(_) => return Ok(None),
    };
    if declared != implied {
        return Err(format!("alg {declared} does not match the key type (a {implied} key)"));
    }
    Ok(Some(declared))
}

fn jwk_key(jwk: &Jwk, alg: JwtAlgorithm) -> Result<DecodingKey, String> {
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("invalid key parameters ({e})"))?;
    if alg == JwtAlgorithm::HS256 {
        let secret = key.try_get_as_bytes().map_err(|e| e.to_string())?;
        check_secret_len(secret.len())?;
        return Ok(key);
    }
    check_public_key(&key, alg)?;
    Ok(key)
}

fn check_secret_len(len: usize) -> Result<(), String> {
    if len < MIN_SECRET_LEN {
        return Err(format!("the HS256 secret is {len} bytes; at least {MIN_SECRET_LEN} are needed"));
    }
    Ok(())
}

/// Checks a public key at load time, so a broken key is a configuration
/// error rather than every token failing later.
fn check_public_key(key: &DecodingKey, alg: JwtAlgorithm) -> Result<(), String> {
    match alg {
        JwtAlgorithm::RS256 => {
            // Extracting (n, e) parses the DER key.
            let jwk = Jwk::from_decoding_key(key, None).map_err(|e| format!("not an RSA public key ({e})"))?;
            let AlgorithmParameters::RSA(p) = &jwk.algorithm else {
                return Err("not an RSA public key".into());
            };
            let n = URL_SAFE_NO_PAD.decode(&p.n).map_err(|e| format!("bad RSA modulus ({e})"))?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_LEN {
                return Err(format!(
                    "the RSA key has {} bits; at least {} are needed",
                    significant * 8,
                    MIN_RSA_MODULUS_LEN * 8
                ));
            }
            if p.e.is_empty() {
                return Err("the RSA key has no exponent".into());
            }
        }
        JwtAlgorithm::ES256 | JwtAlgorithm::EdDSA => {
            let bytes = key.try_get_as_bytes().map_err(|e| e.to_string())?;
            // Uncompressed P-256 point (0x04 || x || y), or a raw Ed25519 key.
            // The length check also keeps jsonwebtoken's Ed25519 verifier,
            // which slices the first 32 bytes, from panicking.
            let want = if alg == JwtAlgorithm::ES256 { 65 } else { 32 };
            if bytes.len() != want {
                return Err(format!("not an {alg} public key ({} bytes, expected {want})", bytes.len()));
            }
            // Building a verifier parses the point; an empty signature then
            // simply fails to verify.
            jsonwebtoken::crypto::verify("", b"", key, alg.jsonwebtoken())
                .map_err(|e| format!("not a valid {alg} public key ({e})"))?;
        }
        JwtAlgorithm::HS256 => {}
    }
    Ok(())
}
