//! Dashboard sessions: an HS256 JWT in the `slx_session` cookie.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Actor, Principal, Role};
use crate::error::{Error, Result};
use crate::secrets::SecretString;

/// The cookie that carries a session.
pub const COOKIE: &str = "slx_session";

/// The claims of a session token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The organisation id.
    pub org: Uuid,
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// Signs and verifies session tokens.
#[derive(Clone)]
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(***)")
    }
}

impl SessionKeys {
    pub fn new(secret: &SecretString) -> Result<Self> {
        let bytes = secret.expose().as_bytes();
        if bytes.len() < 32 {
            return Err(Error::bad_request(
                "the session secret must be at least 32 bytes",
            ));
        }
        let invalid = |_| Error::bad_request("the session secret is not a valid HS256 key");
        Ok(SessionKeys {
            encoding: EncodingKey::from_secret(bytes).map_err(invalid)?,
            decoding: DecodingKey::from_secret(bytes).map_err(invalid)?,
        })
    }

    /// Issues a session token (the dashboard's login flow uses this).
    pub fn issue(&self, claims: &Claims) -> Result<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| Error::internal(format!("cannot sign session: {e}")))
    }

    /// Verifies the signature and expiry of a session token.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Error::Unauthenticated("the session has expired".into())
                }
                _ => Error::Unauthenticated("invalid session".into()),
            },
        )?;
        Ok(Principal {
            org_id: data.claims.org,
            role: data.claims.role,
            actor: Actor::User(data.claims.sub),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::new(&SecretString::new("test-secret-of-enough-length-000")).unwrap()
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "user-1".into(),
            org: Uuid::nil(),
            role: Role::Write,
            exp,
        }
    }

    #[test]
    fn round_trip() {
        let exp = (chrono::Utc::now().timestamp() + 60) as u64;
        let token = keys().issue(&claims(exp)).unwrap();
        let p = keys().verify(&token).unwrap();
        assert_eq!(p.role, Role::Write);
        assert_eq!(p.actor, Actor::User("user-1".into()));
    }

    #[test]
    fn expired_and_forged_are_refused() {
        let past = (chrono::Utc::now().timestamp() - 5) as u64;
        let token = keys().issue(&claims(past)).unwrap();
        assert!(
            matches!(keys().verify(&token), Err(Error::Unauthenticated(m)) if m.contains("expired"))
        );
        let other =
            SessionKeys::new(&SecretString::new("another-secret-another-secret-00")).unwrap();
        let exp = (chrono::Utc::now().timestamp() + 60) as u64;
        let forged = other.issue(&claims(exp)).unwrap();
        assert!(keys().verify(&forged).is_err());
    }
}
