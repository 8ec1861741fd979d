//! Requests-per-minute and tokens-per-minute limits per API token, kept in
//! memory in one-minute windows, with OpenAI's `x-ratelimit-*` headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use uuid::Uuid;

use super::wire::ApiError;

#[derive(Default)]
struct Window {
    minute: u64,
    requests: u32,
    tokens: u64,
}

/// Per-token counters for the current minute.
pub struct Limits {
    rpm: Option<u32>,
    tpm: Option<u64>,
    windows: RwLock<HashMap<Uuid, Arc<Mutex<Window>>>>,
}

/// What one admitted request may report back in headers.
pub struct Admitted {
    headers: Vec<(&'static str, HeaderValue)>,
}

impl Admitted {
    pub fn apply(self, headers: &mut HeaderMap) {
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Limits {
    pub fn new(rpm: Option<u32>, tpm: Option<u64>) -> Self {
        Limits {
            rpm,
            tpm,
            windows: RwLock::default(),
        }
    }

    fn window(&self, key: Uuid) -> Arc<Mutex<Window>> {
        if let Some(w) = self.windows.read().expect("lock").get(&key) {
            return w.clone();
        }
        self.windows
            .write()
            .expect("lock")
            .entry(key)
            .or_default()
            .clone()
    }

    /// Counts one request against `key`, or refuses it with a 429.
    pub fn admit(&self, key: Uuid) -> Result<Admitted, ApiError> {
        self.admit_at(key, now_secs())
    }

    fn admit_at(&self, key: Uuid, now: u64) -> Result<Admitted, ApiError> {
        if self.rpm.is_none() && self.tpm.is_none() {
            return Ok(Admitted { headers: vec![] });
        }
        let reset = format!("{}s", 60 - now % 60);
        let window = self.window(key);
        let mut w = window.lock().expect("lock");
        if w.minute != now / 60 {
            *w = Window {
                minute: now / 60,
                ..Window::default()
            };
        }
        let refuse = |kind: &'static str, limit: u64| {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                kind,
                format!("Rate limit reached for {kind} per minute on this API token: limit {limit}. Please try again in {reset}."),
            )
            .code("rate_limit_exceeded");
            e.retry_after = Some(60 - now % 60);
            e
        };
        if let Some(rpm) = self.rpm
            && w.requests >= rpm
        {
            return Err(refuse("requests", rpm as u64));
        }
        if let Some(tpm) = self.tpm
            && w.tokens >= tpm
        {
            return Err(refuse("tokens", tpm));
        }
        w.requests += 1;
        let mut headers = Vec::with_capacity(6);
        let reset = HeaderValue::from_str(&reset).expect("ascii");
        if let Some(rpm) = self.rpm {
            headers.push(("x-ratelimit-limit-requests", HeaderValue::from(rpm)));
            headers.push((
                "x-ratelimit-remaining-requests",
                HeaderValue::from(rpm - w.requests),
            ));
            headers.push(("x-ratelimit-reset-requests", reset.clone()));
        }
        if let Some(tpm) = self.tpm {
            headers.push(("x-ratelimit-limit-tokens", HeaderValue::from(tpm)));
            headers.push((
                "x-ratelimit-remaining-tokens",
                HeaderValue::from(tpm.saturating_sub(w.tokens)),
            ));
            headers.push(("x-ratelimit-reset-tokens", reset));
        }
        Ok(Admitted { headers })
    }

    /// Charges tokens used by a finished request.
    pub fn spend(&self, key: Uuid, tokens: u64) {
        self.spend_at(key, tokens, now_secs())
    }

    fn spend_at(&self, key: Uuid, tokens: u64, now: u64) {
        if self.tpm.is_none() {
            return;
        }
        let now = now / 60;
        let window = self.window(key);
        let mut w = window.lock().expect("lock");
        if w.minute == now {
            w.tokens += tokens;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_tokens_per_minute() {
        let limits = Limits::new(Some(2), Some(100));
        let key = Uuid::new_v4();
        let t = 60 * 1000 + 15;
        let mut h = HeaderMap::new();
        limits.admit_at(key, t).unwrap().apply(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        assert_eq!(h["x-ratelimit-reset-requests"], "45s");
        limits.spend_at(key, 150, t + 1);
        let e = limits.admit_at(key, t + 2).err().unwrap();
        assert_eq!(e.kind, "tokens");
        assert_eq!(e.retry_after, Some(43));
        // Another token has its own window, and the next minute starts afresh.
        assert!(limits.admit_at(Uuid::new_v4(), t).is_ok());
        assert!(limits.admit_at(key, t + 60).is_ok());
        assert!(limits.admit_at(key, t + 61).is_ok());
        assert_eq!(limits.admit_at(key, t + 62).err().unwrap().kind, "requests");
    }
}
