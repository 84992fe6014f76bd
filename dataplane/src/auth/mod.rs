//! JWT claims and development-token issuing.
//!
//! Clients authenticate with a JWT whose `sub` is their user id (see
//! `docs/protocol.md`). This module owns the claim set and issues HS256
//! tokens with the development secret (`switchboard token`). Verification
//! with key rotation and JWKS arrives with the server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{DeviceId, UserId};

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
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::BadTtl)?
        .as_secs();
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
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?;
    Ok(token)
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
        assert!(matches!(
            issue_hs256(&request(vec!["Admin".into()]), &[1; 32], now),
            Err(TokenError::BadRole(_))
        ));
        assert!(matches!(
            issue_hs256(&request(vec![String::new()]), &[1; 32], now),
            Err(TokenError::BadRole(_))
        ));
        let mut r = request(vec![]);
        r.ttl = Duration::ZERO;
        assert!(matches!(issue_hs256(&r, &[1; 32], now), Err(TokenError::BadTtl)));
    }
}
