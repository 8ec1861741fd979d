//! API rate limits: points per minute for each caller (an API token, or a
//! dashboard session's user) by role, and for each organisation, counted in
//! memory by each server process in calendar-minute windows. A GraphQL
//! operation costs its field selections (fragments expanded, each alias
//! apart, as [`crate::graphql::size`] counts them); a REST request costs
//! its operation's. Asking where one stands costs nothing. The AI gateway
//! keeps its own limits and is not counted here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::{Actor, Principal, Role};
use crate::error::Error;

/// Limits in points per minute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default = "RateLimitConfig::default_read")]
    pub read: u64,
    #[serde(default = "RateLimitConfig::default_write")]
    pub write: u64,
    #[serde(default = "RateLimitConfig::default_admin")]
    pub admin: u64,
    /// All callers of one organisation together.
    #[serde(default = "RateLimitConfig::default_organization")]
    pub organization: u64,
}

impl RateLimitConfig {
    fn default_read() -> u64 {
        60_000
    }
    fn default_write() -> u64 {
        60_000
    }
    fn default_admin() -> u64 {
        60_000
    }
    fn default_organization() -> u64 {
        300_000
    }

    fn for_role(&self, role: Role) -> u64 {
        match role {
            Role::Read => self.read,
            Role::Write => self.write,
            Role::Admin => self.admin,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            read: Self::default_read(),
            write: Self::default_write(),
            admin: Self::default_admin(),
            organization: Self::default_organization(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Caller(String),
    Organization(Uuid),
}

#[derive(Default)]
struct Window {
    minute: u64,
    used: u64,
}

/// Where a caller stands after (or without) a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The tighter of the caller's and the organisation's limits.
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until the window resets.
    pub reset_seconds: u64,
    /// What the request cost.
    pub cost: u64,
}

impl Standing {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            ("x-ratelimit-limit", self.limit),
            ("x-ratelimit-remaining", self.remaining),
            ("x-ratelimit-reset", self.reset_seconds),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
        }
    }
}

/// A refused request: the error and where the caller stands.
pub struct Refused {
    pub error: Error,
    pub standing: Standing,
}

impl Refused {
    /// The headers of the refusal, `Retry-After` included.
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.standing.apply(headers);
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.standing.reset_seconds.max(1)),
        );
    }
}

/// The counters of one process.
pub struct RateLimiter {
    /// `None`: limits are off.
    config: Option<RateLimitConfig>,
    windows: RwLock<HashMap<Key, Arc<Mutex<Window>>>>,
}

/// Windows kept before stale ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn caller_key(p: &Principal) -> Key {
    Key::Caller(match &p.actor {
        Actor::Token(id) => format!("token:{id}"),
        Actor::User(sub) => format!("user:{}:{sub}", p.org_id),
        Actor::System => format!("system:{}", p.org_id),
    })
}

impl RateLimiter {
    pub fn new(config: Option<RateLimitConfig>) -> Self {
        RateLimiter {
            config,
            windows: RwLock::default(),
        }
    }

    /// Whether limits are on.
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    fn window(&self, key: &Key, minute: u64) -> Arc<Mutex<Window>> {
        if let Some(w) = self.windows.read().expect("lock").get(key) {
            return w.clone();
        }
        let mut windows = self.windows.write().expect("lock");
        if windows.len() >= PRUNE_ABOVE {
            windows.retain(|_, w| w.lock().map(|w| w.minute >= minute).unwrap_or(false));
        }
        windows.entry(key.clone()).or_default().clone()
    }

    /// Charges `cost` points to the caller and its organisation, or refuses
    /// with 429 (nothing charged). `None` when limits are off.
    pub fn charge(&self, p: &Principal, cost: u64) -> Option<Result<Standing, Refused>> {
        self.charge_at(p, cost, now_secs())
    }

    /// Where the caller stands, without charging anything.
    pub fn standing(&self, p: &Principal) -> Option<Standing> {
        match self.charge_at(p, 0, now_secs())? {
            Ok(s) => Some(s),
            Err(r) => Some(r.standing),
        }
    }

    fn charge_at(&self, p: &Principal, cost: u64, now: u64) -> Option<Result<Standing, Refused>> {
        let config = self.config.as_ref()?;
        let minute = now / 60;
        let reset_seconds = 60 - now % 60;
        let caller = self.window(&caller_key(p), minute);
        let org = self.window(&Key::Organization(p.org_id), minute);
        // Always in this order (caller, then organisation): no deadlock.
        let mut c = caller.lock().expect("lock");
        let mut o = org.lock().expect("lock");
        for w in [&mut *c, &mut *o] {
            if w.minute != minute {
                *w = Window { minute, used: 0 };
            }
        }
        let caller_limit = config.for_role(p.role);
        let limit = caller_limit.min(config.organization);
        let left = |c: &Window, o: &Window| {
            caller_limit
                .saturating_sub(c.used)
                .min(config.organization.saturating_sub(o.used))
        };
        let caller_over = c.used.saturating_add(cost) > caller_limit;
        let org_over = o.used.saturating_add(cost) > config.organization;
        if cost > 0 && (caller_over || org_over) {
            let (whose, of) = if caller_over {
                ("this caller's", caller_limit)
            } else {
                ("the organisation's", config.organization)
            };
            let remaining = left(&c, &o);
            return Some(Err(Refused {
                error: Error::RateLimited(format!(
                    "rate limit exceeded: this request costs {cost} points and {whose} limit of \
                     {of} points per minute has {remaining} left; try again in {reset_seconds} s"
                )),
                standing: Standing {
                    limit,
                    remaining,
                    reset_seconds,
                    cost,
                },
            }));
        }
        c.used += cost;
        o.used += cost;
        Some(Ok(Standing {
            limit,
            remaining: left(&c, &o),
            reset_seconds,
            cost,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(org: Uuid, role: Role, id: Uuid) -> Principal {
        Principal {
            org_id: org,
            role,
            actor: Actor::Token(id),
        }
    }

    #[test]
    fn charges_callers_and_organisations_per_minute() {
        let limiter = RateLimiter::new(Some(RateLimitConfig {
            read: 100,
            write: 100,
            admin: 100,
            organization: 150,
        }));
        let org = Uuid::now_v7();
        let (a, b) = (
            principal(org, Role::Read, Uuid::now_v7()),
            principal(org, Role::Read, Uuid::now_v7()),
        );
        let t = 60 * 1000 + 10;
        let s = limiter.charge_at(&a, 60, t).unwrap().ok().unwrap();
        assert_eq!((s.limit, s.remaining, s.reset_seconds), (100, 40, 50));
        let refused = limiter.charge_at(&a, 41, t).unwrap().err().unwrap();
        assert_eq!(refused.standing.remaining, 40);
        // The organisation's 150 runs out before b's own 100.
        let s = limiter.charge_at(&b, 80, t).unwrap().ok().unwrap();
        assert_eq!(s.remaining, 10);
        assert!(limiter.charge_at(&b, 11, t).unwrap().is_err());
        // Another organisation is not affected.
        let c = principal(Uuid::now_v7(), Role::Read, Uuid::now_v7());
        assert!(limiter.charge_at(&c, 100, t).unwrap().is_ok());
        // A new minute starts afresh.
        assert!(limiter.charge_at(&a, 100, t + 60).unwrap().is_ok());
        // Off: nothing is counted.
        assert!(RateLimiter::new(None).charge(&a, 1_000_000).is_none());
    }
}
