//! `slx_cli_…` API tokens: 256 random bits, stored only as a SHA-256 hash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Duration;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, sea_query::Expr};

use super::{Actor, Principal, Role};
use crate::domain::now;
use crate::error::{Error, Result};
use crate::secrets::{SecretString, random_hex, sha256_hex};
use entity::api_keys;

/// The prefix every API token starts with.
pub const TOKEN_PREFIX: &str = "slx_cli_";

/// How stale `last_used_at` may get before a request refreshes it.
const LAST_USED_GRANULARITY: i64 = 60;

/// A freshly minted token: the plaintext (shown once) and what is stored.
pub struct NewToken {
    pub plaintext: SecretString,
    pub hash: String,
    pub display_prefix: String,
}

/// Mints a new token.
pub fn mint() -> NewToken {
    let plaintext = format!("{TOKEN_PREFIX}{}", random_hex(32));
    NewToken {
        hash: sha256_hex(plaintext.as_bytes()),
        display_prefix: plaintext[..TOKEN_PREFIX.len() + 6].to_string(),
        plaintext: SecretString::new(plaintext),
    }
}

/// How long a checked token is trusted without reading the store again: a
/// revocation or expiry made elsewhere (another server on the same store)
/// is refused everywhere within this time. A revocation through this
/// server takes effect on it at once.
pub const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Entries the token cache holds before it is emptied.
const CACHE_LIMIT: usize = 10_000;

/// Resolves bearer tokens to principals, trusting an answer for
/// [`TOKEN_TTL`], and keeps `last_used_at` roughly current without writing
/// on every request. One instance serves the API, the websocket and the AI
/// gateway.
#[derive(Clone, Default)]
pub struct TokenAuthenticator {
    refreshing: Arc<Mutex<HashSet<uuid::Uuid>>>,
    /// Token hash → principal and until when it may be trusted.
    recent: Arc<Mutex<HashMap<String, (Principal, Instant)>>>,
    /// Token hash → the store read under way for it and, once done, its
    /// answer: callers that miss the cache at once (thousands of websockets
    /// re-checking one token) share one read instead of each reading the
    /// store, also when it fails.
    reading: Arc<Mutex<HashMap<String, Reading>>>,
    /// Organisations a session cookie named, and until when they are known
    /// to exist.
    orgs: Arc<Mutex<HashMap<uuid::Uuid, Instant>>>,
}

/// One store read of a token, shared by the callers that wait for it.
type Reading = Arc<tokio::sync::Mutex<Option<Result<Principal>>>>;

/// Forgets a token's read under way when dropped.
struct Finished<'a>(&'a Mutex<HashMap<String, Reading>>, &'a str);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("lock").remove(self.1);
    }
}

/// Drops expired entries of a bounded cache, and everything if it is still full.
fn make_room<K, V>(map: &mut HashMap<K, V>, now: Instant, until: impl Fn(&V) -> Instant) {
    if map.len() >= CACHE_LIMIT {
        map.retain(|_, v| until(v) > now);
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
    }
}

impl TokenAuthenticator {
    /// The principal behind `token`: from the cache when it was checked
    /// less than [`TOKEN_TTL`] ago (never past the token's expiry), else
    /// from the store.
    pub async fn authenticate(&self, db: &DatabaseConnection, token: &str) -> Result<Principal> {
        let hash = sha256_hex(token.as_bytes());
        if let Some(principal) = self.cached(&hash) {
            return Ok(principal);
        }
        let read = self
            .reading
            .lock()
            .expect("lock")
            .entry(hash.clone())
            .or_default()
            .clone();
        let mut answer = read.lock().await;
        if let Some(shared) = answer.as_ref() {
            return shared.clone();
        }
        // Later callers start a read of their own, also when this one is
        // abandoned half-way.
        let finished = Finished(&self.reading, &hash);
        let checked = self.check(db, token, &hash).await;
        drop(finished);
        let (principal, expires_at) = match checked {
            Ok(c) => c,
            Err(e) => {
                *answer = Some(Err(e.clone()));
                return Err(e);
            }
        };
        *answer = Some(Ok(principal.clone()));
        let now = Instant::now();
        let mut until = now + TOKEN_TTL;
        if let Some(at) = expires_at {
            let left = (at - crate::domain::now()).to_std().unwrap_or_default();
            until = until.min(now + left);
        }
        let mut recent = self.recent.lock().expect("lock");
        make_room(&mut recent, now, |(_, u)| *u);
        recent.insert(hash, (principal.clone(), until));
        Ok(principal)
    }

    /// The principal behind the token hashed `hash`, when a check of it is
    /// still trusted.
    fn cached(&self, hash: &str) -> Option<Principal> {
        let recent = self.recent.lock().expect("lock");
        let (principal, until) = recent.get(hash)?;
        (*until > Instant::now()).then(|| principal.clone())
    }

    /// Stops trusting every cached answer for the key `id` (on revocation).
    pub fn forget(&self, id: uuid::Uuid) {
        self.recent
            .lock()
            .expect("lock")
            .retain(|_, (p, _)| p.actor != Actor::Token(id));
    }

    /// Whether the organisation `id` exists, asking the store at most once
    /// per [`TOKEN_TTL`] while it does.
    pub async fn organization_exists(&self, db: &DatabaseConnection, id: uuid::Uuid) -> bool {
        let now = Instant::now();
        if self
            .orgs
            .lock()
            .expect("lock")
            .get(&id)
            .is_some_and(|until| *until > now)
        {
            return true;
        }
        if crate::domain::organizations::get(db, id).await.is_err() {
            return false;
        }
        let mut orgs = self.orgs.lock().expect("lock");
        make_room(&mut orgs, now, |u| *u);
        orgs.insert(id, now + TOKEN_TTL);
        true
    }

    /// The principal and the token's expiry; `hash` is the token's SHA-256.
    async fn check(
        &self,
        db: &DatabaseConnection,
        token: &str,
        hash: &str,
    ) -> Result<(Principal, Option<chrono::DateTime<chrono::Utc>>)> {
        let well_formed = token.len() == TOKEN_PREFIX.len() + 64
            && token.starts_with(TOKEN_PREFIX)
            && token[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Err(Error::Unauthenticated("malformed API token".into()));
        }
        let key = api_keys::Entity::find()
            .filter(api_keys::Column::TokenHash.eq(hash))
            .one(db)
            .await?
            .ok_or_else(|| Error::Unauthenticated("invalid API token".into()))?;
        let now = now();
        if key.revoked_at.is_some() {
            return Err(Error::Unauthenticated("this API token was revoked".into()));
        }
        if key.expires_at.is_some_and(|t| t <= now) {
            return Err(Error::Unauthenticated("this API token has expired".into()));
        }
        let role = Role::parse(&key.role)
            .ok_or_else(|| Error::internal(format!("api key {} has role {}", key.id, key.role)))?;
        let stale = key
            .last_used_at
            .is_none_or(|t| now - t > Duration::seconds(LAST_USED_GRANULARITY));
        if stale {
            self.refresh_last_used(db.clone(), key.id);
        }
        let principal = Principal {
            org_id: key.organization_id,
            role,
            actor: Actor::Token(key.id),
        };
        Ok((principal, key.expires_at))
    }

    /// Records use in the background, once per key at a time.
    fn refresh_last_used(&self, db: DatabaseConnection, id: uuid::Uuid) {
        if !self.refreshing.lock().expect("lock").insert(id) {
            return;
        }
        let refreshing = self.refreshing.clone();
        tokio::spawn(async move {
            let res = api_keys::Entity::update_many()
                .col_expr(api_keys::Column::LastUsedAt, Expr::value(now()))
                .filter(api_keys::Column::Id.eq(id))
                .exec(&db)
                .await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "could not record API key use");
            }
            refreshing.lock().expect("lock").remove(&id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers that all miss the cache at once (thousands of websockets
    /// re-checking one token when its entry expires) cost the store one
    /// read, and share its answer, a refusal too.
    #[tokio::test]
    async fn callers_missing_the_cache_together_share_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        let (db, statements) = crate::store::connect(&url, crate::store::DEFAULT_POOL)
            .await
            .unwrap();
        let org = crate::domain::organizations::ensure(&db, "acme")
            .await
            .unwrap();
        let ctx = crate::domain::Ctx {
            principal: Principal {
                org_id: org.id,
                role: Role::Admin,
                actor: Actor::System,
            },
            request_id: None,
        };
        let key = crate::domain::api_keys::NewKey {
            name: "k".into(),
            role: Role::Read,
            expires_at: None,
        };
        let (_, token) = crate::domain::api_keys::create(&db, &ctx, key)
            .await
            .unwrap();
        let auth = TokenAuthenticator::default();
        // Each caller is polled once before any read can answer: all miss.
        let before = statements.get();
        let all =
            futures_util::future::join_all((0..50).map(|_| auth.authenticate(&db, token.expose())))
                .await;
        assert!(all.iter().all(|p| p.as_ref().unwrap().org_id == org.id));
        let reads = statements.get() - before;
        // The key's lookup, and at most the write of its last use.
        assert!(reads <= 2, "{reads} statements for 50 callers");

        let unknown = format!("{TOKEN_PREFIX}{}", "ab".repeat(32));
        let before = statements.get();
        let all =
            futures_util::future::join_all((0..50).map(|_| auth.authenticate(&db, &unknown))).await;
        assert!(
            all.iter()
                .all(|p| matches!(p, Err(Error::Unauthenticated(_))))
        );
        assert_eq!(statements.get() - before, 1);
    }

    #[test]
    fn minted_tokens_are_long_random_and_hashed() {
        let a = mint();
        let b = mint();
        assert!(a.plaintext.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.plaintext.expose().len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.hash, sha256_hex(a.plaintext.expose().as_bytes()));
        assert!(!a.hash.contains(&a.plaintext.expose()[TOKEN_PREFIX.len()..]));
    }
}
