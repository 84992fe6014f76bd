//! Token verification: [`Verifier`] (the key set, immutable, shared by all
//! shards) turns a JWT into an [`Identity`]; [`ShardVerifier`] (owned by one
//! shard, `&mut self`, never shared) remembers verified tokens so that a
//! reconnect storm does not redo signature checks.
//!
//! No clock is read here: the caller passes `now` (Unix seconds). No error
//! carries the token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use lru::LruCache;
use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use switchboard_protocol::{DeviceId, ErrorCode, IdError, UserId};

use super::keys::{KeySet, SelectError};
use super::{AuthConfig, AuthConfigError, JwtAlgorithm};

/// Longest token accepted, in bytes; longer ones are rejected before any
/// decoding.
pub const MAX_TOKEN_LEN: usize = 8192;

/// How much of a token-supplied `kid` or `alg` an error repeats.
const MAX_ECHO_LEN: usize = 64;

/// Verifies tokens against the configured keys. Cheap to clone (the keys
/// sit behind an `Arc`), `Send + Sync`, and never changes: a reload builds a
/// new `Verifier`, which each shard then installs with
/// [`ShardVerifier::set_verifier`].
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    keys: KeySet,
    leeway_secs: u64,
    cache_size: usize,
    /// Kept for [`Verifier::reload`].
    config: AuthConfig,
    dev_secret: Option<Box<[u8]>>,
}

impl Verifier {
    /// Loads the keys `cfg` names (reading `public_key_file`s and the
    /// `jwks_file`). `dev_secret` is the HS256 development secret
    /// ([`Config::jwt_secret`](crate::config::Config::jwt_secret)); it
    /// verifies tokens with `kid` `"dev"`, and HS256 tokens without `kid`.
    pub fn from_config(cfg: &AuthConfig, dev_secret: Option<&[u8]>) -> Result<Self, AuthConfigError> {
        let keys = KeySet::load(cfg, dev_secret)?;
        tracing::info!(kids = ?keys.kids(), "token verification keys loaded");
        Ok(Self {
            inner: Arc::new(Inner {
                keys,
                leeway_secs: cfg.leeway_secs,
                cache_size: cfg.cache_size,
                config: cfg.clone(),
                dev_secret: dev_secret.map(Box::from),
            }),
        })
    }

    /// Builds a new `Verifier` from the same configuration, re-reading the
    /// key files and the JWKS file (for SIGHUP). On error the caller keeps
    /// using `self`. To apply a changed `[auth]` section, call
    /// [`from_config`](Self::from_config) instead.
    pub fn reload(&self) -> Result<Self, AuthConfigError> {
        Self::from_config(&self.inner.config, self.inner.dev_secret.as_deref())
    }

    /// Verifies `token` at time `now_unix_secs`, without any cache.
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Identity, AuthError> {
        self.verify_token(token, now_unix_secs).map(|v| v.identity)
    }

    /// The clock-skew allowance for `exp` and `nbf`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.inner.leeway_secs
    }

    /// How long a connection authenticated by `identity` may stay open
    /// from `now_unix_secs`: until its `exp` plus the leeway, or `None`
    /// when `auth.close_at_expiry` is off.
    pub fn time_left(&self, identity: &Identity, now_unix_secs: u64) -> Option<Duration> {
        let end = identity.expires_at.saturating_add(self.inner.leeway_secs);
        self.inner.config.close_at_expiry.then(|| Duration::from_secs(end.saturating_sub(now_unix_secs)))
    }

    /// The configured key ids, sorted (`"dev"` is the development secret).
    pub fn kids(&self) -> Vec<&str> {
        self.inner.keys.kids()
    }

    fn verify_token(&self, token: &str, now: u64) -> Result<Verified, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("the token is too long"));
        }
        let header = parse_header(token)?;
        let alg = JwtAlgorithm::from_name(&header.alg)
            .ok_or_else(|| AuthError::UnsupportedAlgorithm { alg: clip(&header.alg) })?;
        let key = match self.inner.keys.select(header.kid.as_deref(), alg) {
            Ok(key) => key,
            Err(SelectError::UnknownKid) => {
                return Err(AuthError::UnknownKey { kid: clip(header.kid.as_deref().unwrap_or_default()) });
            }
            Err(SelectError::NoDefault) => return Err(AuthError::NoDefaultKey { alg }),
        };
        if key.alg != alg {
            return Err(AuthError::WrongAlgorithm { kid: key.kid.clone(), key_alg: key.alg, token_alg: alg });
        }
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &key.decoding, &key.validation)
            .map_err(|e| map_jwt_error(&e, &key.kid))?
            .claims;

        let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?.0;
        let leeway = self.inner.leeway_secs;
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::Expired { exp });
        }
        let not_before = claims.nbf.map_or(0, |n| n.0);
        if not_before > now.saturating_add(leeway) {
            return Err(AuthError::NotYetValid { nbf: not_before });
        }
        let sub = claims.sub.ok_or(AuthError::MissingClaim("sub"))?;
        let user = UserId::parse(&sub).map_err(|source| AuthError::InvalidClaim { claim: "sub", source })?;
        let device = match &claims.dev {
            Some(dev) => Some(DeviceId::parse(dev).map_err(|source| AuthError::InvalidClaim { claim: "dev", source })?),
            None => None,
        };
        let mut identity = Identity::new(user, device, claims.roles.unwrap_or_default(), exp);
        identity.not_before = not_before;
        Ok(Verified { identity })
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.kids())
            .field("leeway_secs", &self.inner.leeway_secs)
            .field("cache_size", &self.inner.cache_size)
            .finish_non_exhaustive()
    }
}

/// One shard's verifier: a [`Verifier`] plus a bounded LRU cache of the
/// tokens it verified, keyed by the token's SHA-256 digest (the token
/// itself is not stored; a forged token that hits a cached entry would be
/// a SHA-256 collision). Owned by one shard; every method takes `&mut
/// self`, so no lock is involved.
pub struct ShardVerifier {
    verifier: Verifier,
    /// `None` when `cache_size` is 0. Grown as tokens come, not allocated
    /// for `cache_size` up front (a table for 65,536 entries would be a
    /// megabyte per shard before the first connection); the size bound is
    /// kept by [`ShardVerifier::verify`].
    cache: Option<LruCache<[u8; 32], Arc<Identity>>>,
}

impl ShardVerifier {
    /// A shard's verifier with an empty cache of the configured size.
    pub fn new(verifier: Verifier) -> Self {
        let cache = (verifier.inner.cache_size > 0).then(LruCache::unbounded);
        Self { verifier, cache }
    }

    /// Verifies `token` at `now_unix_secs`. A token verified before is
    /// answered from the cache (its expiry is still checked against `now`);
    /// otherwise its signature and claims are checked and, if valid, it is
    /// cached until it expires or is evicted. Failures are not cached.
    pub fn verify(&mut self, token: &str, now_unix_secs: u64) -> Result<Arc<Identity>, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let leeway = self.verifier.inner.leeway_secs;
        if let Some(cache) = &mut self.cache
            && let Some(hit) = cache.get(&key)
        {
            if hit.is_expired(now_unix_secs, leeway) {
                let exp = hit.expires_at;
                cache.pop(&key);
                return Err(AuthError::Expired { exp });
            }
            if hit.not_before > now_unix_secs.saturating_add(leeway) {
                return Err(AuthError::NotYetValid { nbf: hit.not_before });
            }
            return Ok(Arc::clone(hit));
        }
        let verified = self.verifier.verify_token(token, now_unix_secs)?;
        let identity = Arc::new(verified.identity);
        if let Some(cache) = &mut self.cache {
            if cache.len() >= self.verifier.inner.cache_size {
                cache.pop_lru();
            }
            cache.put(key, Arc::clone(&identity));
        }
        Ok(identity)
    }

    /// Installs a new key set (after [`Verifier::reload`]) and empties the
    /// cache, so tokens of removed keys stop working at once.
    pub fn set_verifier(&mut self, verifier: Verifier) {
        self.cache = (verifier.inner.cache_size > 0).then(LruCache::unbounded);
        self.verifier = verifier;
    }

    /// The verifier in use.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Number of cached tokens.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, LruCache::len)
    }

    /// Forgets every cached token.
    pub fn clear_cache(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
    }
}

impl fmt::Debug for ShardVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardVerifier")
            .field("verifier", &self.verifier)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

/// Who a verified token says the client is. Holds only valid names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    user: Box<str>,
    device: Option<Box<str>>,
    roles: Box<[Box<str>]>,
    expires_at: u64,
    /// The token's `nbf` (0 without one), checked again on a cache hit.
    not_before: u64,
}

impl Identity {
    /// An identity for `user` (on `device`) with `roles`, valid until
    /// `expires_at` (Unix seconds).
    pub fn new<R: Into<Box<str>>>(
        user: UserId<'_>,
        device: Option<DeviceId<'_>>,
        roles: impl IntoIterator<Item = R>,
        expires_at: u64,
    ) -> Self {
        Self {
            user: user.as_str().into(),
            device: device.map(|d| d.as_str().into()),
            roles: roles.into_iter().map(Into::into).collect(),
            expires_at,
            not_before: 0,
        }
    }

    /// The user (the token's `sub`).
    pub fn user(&self) -> UserId<'_> {
        // Invariant: `user` came from a `UserId` in `new`.
        UserId::parse(&self.user).expect("Identity holds a valid user id")
    }

    /// The device (the token's `dev`), if any.
    pub fn device(&self) -> Option<DeviceId<'_>> {
        // Invariant: `device` came from a `DeviceId` in `new`.
        self.device.as_deref().map(|d| DeviceId::parse(d).expect("Identity holds a valid device id"))
    }

    /// The roles (the token's `roles`).
    pub fn roles(&self) -> &[Box<str>] {
        &self.roles
    }

    /// Whether the token grants `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }

    /// Whether the token grants the `admin` role (admin API).
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    /// The token's `exp`, Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether the token has expired at `now_unix_secs`, allowing
    /// `leeway_secs` of clock skew: expired from `exp + leeway` on.
    pub fn is_expired(&self, now_unix_secs: u64, leeway_secs: u64) -> bool {
        now_unix_secs >= self.expires_at.saturating_add(leeway_secs)
    }
}

/// Why a token was refused. Messages may repeat a (shortened) `kid` or
/// `alg` from the token header, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was presented (or it is empty).
    #[error("no token presented")]
    Missing,
    /// The token is not a well-formed JWS compact serialization with JSON
    /// header and claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not one Switchboard verifies (e.g. `none`).
    #[error("token algorithm {alg:?} is not accepted")]
    UnsupportedAlgorithm {
        /// The header's `alg`, shortened.
        alg: Box<str>,
    },
    /// The header's `kid` names no configured key.
    #[error("no key with kid {kid:?}")]
    UnknownKey {
        /// The header's `kid`, shortened.
        kid: Box<str>,
    },
    /// The token has no `kid` and no single key for its algorithm exists.
    #[error("token without kid, and no default {alg} key")]
    NoDefaultKey {
        /// The token's algorithm.
        alg: JwtAlgorithm,
    },
    /// The token's `alg` is not the one its key is configured for.
    #[error("key {kid:?} verifies {key_alg} only, the token says {token_alg}")]
    WrongAlgorithm {
        /// The key.
        kid: Box<str>,
        /// The key's algorithm.
        key_alg: JwtAlgorithm,
        /// The token's algorithm.
        token_alg: JwtAlgorithm,
    },
    /// The signature does not verify with the key.
    #[error("bad token signature (key {kid:?})")]
    BadSignature {
        /// The key tried.
        kid: Box<str>,
    },
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` is not (or does not contain) the configured audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// A required claim (`exp`, `sub`, `iss`, `aud`) is absent.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// `sub` is not a valid user id, or `dev` not a valid device id.
    #[error("invalid {claim} claim: {source}")]
    InvalidClaim {
        /// `sub` or `dev`.
        claim: &'static str,
        /// Why the name is invalid.
        source: IdError,
    },
    /// `exp` (plus leeway) has passed.
    #[error("token expired at {exp}")]
    Expired {
        /// The token's `exp`, Unix seconds.
        exp: u64,
    },
    /// `nbf` (minus leeway) is still in the future.
    #[error("token not valid before {nbf}")]
    NotYetValid {
        /// The token's `nbf`, Unix seconds.
        nbf: u64,
    },
}

impl AuthError {
    /// What the client is told: the reason, except that nothing about the
    /// server's keys (their ids, their algorithms) is given away; the log
    /// line has the whole reason.
    pub fn public_reason(&self) -> String {
        match self {
            Self::UnknownKey { .. }
            | Self::NoDefaultKey { .. }
            | Self::WrongAlgorithm { .. }
            | Self::BadSignature { .. } => "token signature or key not accepted".into(),
            other => other.to_string(),
        }
    }

    /// The protocol error code: `unauthenticated`, `invalid-token` or
    /// `token-expired`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing => ErrorCode::Unauthenticated,
            Self::Expired { .. } | Self::NotYetValid { .. } => ErrorCode::TokenExpired,
            Self::Malformed(_)
            | Self::UnsupportedAlgorithm { .. }
            | Self::UnknownKey { .. }
            | Self::NoDefaultKey { .. }
            | Self::WrongAlgorithm { .. }
            | Self::BadSignature { .. }
            | Self::WrongIssuer
            | Self::WrongAudience
            | Self::MissingClaim(_)
            | Self::InvalidClaim { .. } => ErrorCode::InvalidToken,
        }
    }
}

struct Verified {
    identity: Identity,
}

/// The JOSE header fields read before choosing a key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Critical extensions (RFC 7515 §4.1.11): none is understood here.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// The claims read from a token. Presence of `exp`, `sub`, `iss` and `aud`,
/// and the values of `iss` and `aud`, are checked by jsonwebtoken.
#[derive(Deserialize)]
struct TokenClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
}

/// RFC 7519 NumericDate: seconds, possibly fractional; fractions are
/// dropped.
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self(n)),
            // Truncation toward zero is the intent; the range is checked.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Raw::Float(f) if f.is_finite() && (0.0..1.8e19).contains(&f) => Ok(Self(f as u64)),
            Raw::Float(_) => Err(serde::de::Error::custom("NumericDate out of range")),
        }
    }
}

fn parse_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| AuthError::Malformed("the header is not base64url"))?;
    let header: RawHeader =
        serde_json::from_slice(&json).map_err(|_| AuthError::Malformed("the header is not a JOSE header with alg"))?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed("the header has critical extensions"));
    }
    Ok(header)
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error, kid: &str) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature { kid: kid.into() },
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(match claim.as_str() {
            "exp" => "exp",
            "sub" => "sub",
            "iss" => "iss",
            "aud" => "aud",
            _ => "required",
        }),
        ErrorKind::Base64(_) => AuthError::Malformed("a part is not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("the claims are not JSON of the expected shape")
        }
        ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed("a claim has the wrong type"),
        _ => AuthError::Malformed("the token cannot be decoded"),
    }
}

/// A token-supplied string, shortened for an error message.
fn clip(s: &str) -> Box<str> {
    match s.char_indices().nth(MAX_ECHO_LEN) {
        Some((at, _)) => format!("{}…", &s[..at]).into(),
        None => s.into(),
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
