//! Authentication: JWT claims, development-token issuing and token
//! verification.
//!
//! Clients authenticate with a JWT whose `sub` is their user id (see
//! `docs/protocol.md` section 2). This module owns:
//!
//! - the `[auth]` configuration ([`AuthConfig`], [`KeyConfig`]);
//! - issuing HS256 development tokens ([`issue_hs256`], `switchboard token`);
//! - verifying tokens into an [`Identity`]: the key set ([`Verifier`], shared
//!   by all shards, immutable, rebuilt by [`Verifier::reload`] on SIGHUP) and
//!   the per-shard cache of verified tokens ([`ShardVerifier`], owned by one
//!   shard, never shared).
//!
//! It does not find the token in a request (the frontends do) and reads no
//! clock: every check takes `now` from the caller. It never logs or reports
//! a token.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{DeviceId, UserId};

mod keys;
mod verify;

pub use keys::AuthConfigError;
pub use verify::{AuthError, Identity, MAX_TOKEN_LEN, ShardVerifier, Verifier};

/// Default clock-skew allowance for `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Largest accepted `auth.leeway_secs`.
pub const MAX_LEEWAY_SECS: u64 = 600;
/// Default number of verified tokens each shard remembers.
pub const DEFAULT_CACHE_SIZE: usize = 65536;
/// The `kid` reserved for the HS256 development secret.
pub const DEV_KID: &str = "dev";

/// `[auth]` section.
///
/// Which key verifies a token:
///
/// - a token with a `kid` is verified with the key of that `kid` (from
///   [`keys`](Self::keys) or the [`jwks_file`](Self::jwks_file)); the
///   `kid` [`DEV_KID`] (`"dev"`) names the HS256 development secret;
/// - a token without a `kid` is verified with the development secret when
///   its `alg` is HS256, else with the only configured key of its `alg`;
///   with none or several such keys it is rejected;
/// - the token's `alg` must be exactly the key's algorithm (no algorithm
///   confusion), and `alg: none` is never accepted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for development tokens; overrides the generated one.
    pub jwt_secret: Option<String>,
    /// `iss` claim written into and required from tokens.
    pub issuer: String,
    /// `aud` claim written into and required from tokens.
    pub audience: String,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds
    /// (default [`DEFAULT_LEEWAY_SECS`], at most [`MAX_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// Verified tokens each shard caches (default [`DEFAULT_CACHE_SIZE`]);
    /// 0 disables the cache.
    pub cache_size: usize,
    /// Close a connection with `token-expired` when its token's `exp`
    /// (plus the leeway) passes (default true); false keeps connections
    /// open past it (a token is then only checked when connecting).
    pub close_at_expiry: bool,
    /// Verification keys, selected by the token's `kid`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyConfig>,
    /// A JWK Set file (RFC 7517) with more verification keys; re-read by
    /// [`Verifier::reload`]. A relative path is relative to the working
    /// directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            issuer: "switchboard".into(),
            audience: "switchboard".into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            cache_size: DEFAULT_CACHE_SIZE,
            close_at_expiry: true,
            keys: Vec::new(),
            jwks_file: None,
        }
    }
}

/// One verification key in `[[auth.keys]]`: a `kid`, an `alg` and exactly
/// one of `secret` (HS256), `public_key_file` or `public_key_pem` (RS256,
/// ES256, EdDSA; an SPKI `PUBLIC KEY` PEM, or `RSA PUBLIC KEY` for RS256).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id tokens name in their header.
    pub kid: String,
    /// The only algorithm this key verifies.
    pub alg: JwtAlgorithm,
    /// HS256 shared secret (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Path of a PEM public key, re-read by [`Verifier::reload`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// PEM public key, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("public_key_file", &self.public_key_file)
            .field("public_key_pem", &self.public_key_pem.as_ref().map(|_| "[PEM]"))
            .finish()
    }
}

/// The JWT signature algorithms Switchboard verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret; development).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// Every supported algorithm.
    pub const ALL: [JwtAlgorithm; 4] = [Self::HS256, Self::RS256, Self::ES256, Self::EdDSA];

    /// The JOSE name (`alg` header value).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE name; `None` for anything else (including `none`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    fn jsonwebtoken(self) -> Algorithm {
        match self {
            Self::HS256 => Algorithm::HS256,
            Self::RS256 => Algorithm::RS256,
            Self::ES256 => Algorithm::ES256,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims Switchboard reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id; becomes the sender of every envelope on the connection.
    pub sub: String,
    /// Optional device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Roles, e.g. `admin` for the admin API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before, seconds since the epoch.
    pub nbf: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// What to put in a new token.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// The user.
    pub user: UserId<'a>,
    /// The device, if any.
    pub device: Option<DeviceId<'a>>,
    /// Roles to grant.
    pub roles: Vec<String>,
    /// Lifetime.
    pub ttl: Duration,
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
}

/// Errors issuing a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A role is empty or holds characters other than `[a-z0-9_-]`.
    #[error("role {0:?} must be 1..=32 characters of [a-z0-9_-]")]
    BadRole(String),
    /// The ttl is zero or overflows the clock.
    #[error("token ttl must be between 1 second and 10 years")]
    BadTtl,
    /// Signing failed.
    #[error("cannot sign token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Longest lifetime `switchboard token` issues.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Issues an HS256 token for `req`, valid from `now`.
pub fn issue_hs256(req: &TokenRequest<'_>, secret: &[u8], now: SystemTime) -> Result<String, TokenError> {
    for r in &req.roles {
        let ok = (1..=32).contains(&r.len()) && r.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if !ok {
            return Err(TokenError::BadRole(r.clone()));
        }
    }
    if req.ttl.is_zero() || req.ttl > MAX_TOKEN_TTL {
        return Err(TokenError::BadTtl);
    }
    let iat = now.duration_since(UNIX_EPOCH).map_err(|_| TokenError::BadTtl)?.as_secs();
    let claims = Claims {
        sub: req.user.as_str().to_owned(),
        dev: req.device.map(|d| d.as_str().to_owned()),
        roles: req.roles.clone(),
        iss: req.issuer.to_owned(),
        aud: req.audience.to_owned(),
        iat,
        nbf: iat,
        exp: iat + req.ttl.as_secs().max(1),
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?;
    Ok(token)
}

/// The wall clock in Unix seconds, as token claims count time (0 before
/// 1970).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    fn request(roles: Vec<String>) -> TokenRequest<'static> {
        TokenRequest {
            user: UserId::parse("alice").unwrap(),
            device: Some(DeviceId::parse("d1").unwrap()),
            roles,
            ttl: Duration::from_secs(3600),
            issuer: "switchboard",
            audience: "switchboard",
        }
    }

    #[test]
    fn issued_token_verifies_with_the_same_secret_only() {
        let secret = [7u8; 32];
        let token = issue_hs256(&request(vec!["admin".into()]), &secret, SystemTime::now()).unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["switchboard"]);
        v.set_issuer(&["switchboard"]);
        let data = jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(&secret), &v).unwrap();
        assert_eq!(data.claims.sub, "alice");
        assert_eq!(data.claims.dev.as_deref(), Some("d1"));
        assert_eq!(data.claims.roles, ["admin"]);
        assert_eq!(data.claims.exp - data.claims.iat, 3600);
        assert!(jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(&[8u8; 32]), &v).is_err());
    }

    #[test]
    fn rejects_bad_roles_and_ttls() {
        let now = SystemTime::now();
        assert!(matches!(issue_hs256(&request(vec!["Admin".into()]), &[1; 32], now), Err(TokenError::BadRole(_))));
        assert!(matches!(issue_hs256(&request(vec![String::new()]), &[1; 32], now), Err(TokenError::BadRole(_))));
        let mut r = request(vec![]);
        r.ttl = Duration::ZERO;
        assert!(matches!(issue_hs256(&r, &[1; 32], now), Err(TokenError::BadTtl)));
    }
}
