//! The AI gateway: OpenAI's `/chat/completions`, `/embeddings` and
//! `/models` under `/api/v1`, served straight from axum handlers so that
//! unmodified OpenAI SDKs work byte for byte, in front of the upstreams
//! named in the config file's `[ai]` section. GraphQL's
//! `aiChatCompletion` runs the same chat path ([`chat::complete`]) for the
//! dashboard.
//!
//! The request path touches no database write and no store lock: the
//! platform token is checked through the API's shared token cache
//! (a checked token is trusted for a few seconds), budgets
//! and per-token limits are in-memory counters, and usage is handed to a
//! background writer (see [`usage`]).

pub mod anthropic;
pub mod catalog;
pub mod chat;
pub mod config;
pub mod embeddings;
pub mod limits;
pub mod openapi;
pub mod upstream;
pub mod usage;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use sea_orm::DatabaseConnection;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{Actor, Principal};
use crate::error::{Error, Result};

use catalog::{Catalog, Deployment};
pub use config::AiConfig;
use limits::Limits;
use usage::{Meter, Record};
use wire::{ApiError, Usage};

/// How long upstreams get, and how silence on a stream is handled.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub request: Duration,
    pub stream_idle: Duration,
    pub keepalive: Duration,
}

/// The gateway's shared state: catalog, pooled clients, meter and limits.
pub struct Gateway {
    pub catalog: Catalog,
    pub meter: Meter,
    /// A pooled upstream client per thread, so that a connection's I/O
    /// stays on the thread (and runtime) of the requests that use it.
    clients: thread_local::ThreadLocal<upstream::Client>,
    connector: upstream::Connector,
    limits: Limits,
    timeouts: Timeouts,
    /// Attempts per request: 1 + `retries`.
    attempts: usize,
    /// `GET /models`, rendered once.
    models_body: Bytes,
    /// `GET /models/{id}` of each listed model, rendered once.
    model_bodies: std::collections::HashMap<String, Bytes>,
}

impl Gateway {
    /// Resolves provider keys from the environment, builds the catalog and
    /// starts the usage writer.
    pub fn new(config: &AiConfig, db: DatabaseConnection) -> Result<Gateway> {
        let catalog = Catalog::new(config)?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let data: Vec<_> = catalog
            .listing
            .iter()
            .map(|(id, owner)| json!({"id": id, "object": "model", "created": created, "owned_by": owner}))
            .collect();
        let render = |v: &serde_json::Value| {
            serde_json::to_vec(v)
                .map(Bytes::from)
                .map_err(Error::internal)
        };
        let model_bodies = catalog
            .listing
            .iter()
            .zip(&data)
            .map(|((id, _), m)| Ok((id.clone(), render(m)?)))
            .collect::<Result<_>>()?;
        let models_body = render(&json!({"object": "list", "data": data}))?;
        Ok(Gateway {
            catalog,
            meter: Meter::start(
                db,
                Duration::from_millis(config.usage_flush_ms),
                Duration::from_secs(config.budget_refresh_secs),
            ),
            clients: thread_local::ThreadLocal::new(),
            connector: upstream::connector(Duration::from_secs(config.connect_timeout_secs))?,
            limits: Limits::new(config.requests_per_minute, config.tokens_per_minute),
            timeouts: Timeouts {
                request: Duration::from_secs(config.request_timeout_secs),
                stream_idle: Duration::from_secs(config.stream_idle_timeout_secs),
                keepalive: Duration::from_secs(config.keepalive_secs.max(1)),
            },
            attempts: config.retries as usize + 1,
            models_body,
            model_bodies,
        })
    }

    /// Counts a finished request's usage: budget, token limit, and the store.
    fn charge(&self, charge: &Charge, usage: Usage) {
        self.limits.spend(charge.key, usage.total());
        self.meter.record(Record {
            org: charge.org,
            key: charge.key,
            model: charge.model.clone(),
            usage,
            cost: (usage.prompt_tokens as f64 * charge.input_price
                + usage.completion_tokens as f64 * charge.output_price)
                .round() as i64,
        });
    }
}

/// Who pays for a request, and at what price.
#[derive(Debug, Clone)]
pub struct Charge {
    pub org: Uuid,
    pub key: Uuid,
    pub model: Arc<str>,
    /// Micro-dollars per token.
    pub input_price: f64,
    pub output_price: f64,
}

impl Charge {
    fn new(caller: &Caller, model: &Arc<str>, d: &Deployment) -> Charge {
        Charge {
            org: caller.org,
            key: caller.key,
            model: model.clone(),
            input_price: d.input_price,
            output_price: d.output_price,
        }
    }
}

/// An authenticated caller: the organisation that pays, and the key its
/// usage is recorded and rate-limited under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub org: Uuid,
    pub key: Uuid,
}

impl Caller {
    /// The caller behind a principal. An API token is metered under its
    /// own id; a dashboard user (session cookie, no token) under
    /// [`user_key`]; the server itself under the nil id.
    pub fn of(principal: &Principal) -> Caller {
        let key = match &principal.actor {
            Actor::Token(id) => *id,
            Actor::User(sub) => user_key(principal.org_id, sub),
            Actor::System => Uuid::nil(),
        };
        Caller {
            org: principal.org_id,
            key,
        }
    }
}

/// The key a dashboard user's gateway usage is recorded and rate-limited
/// under, in place of an API token's id: derived from the organisation
/// and the session's `sub`, so it is the same in every session of that
/// user, differs between users, and is never the id of an API key (it is
/// a version 8 UUID; key ids are version 7).
pub fn user_key(org: Uuid, sub: &str) -> Uuid {
    let digest = Sha256::digest(format!("sylphx-ai-user\0{org}\0{sub}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// What the gateway's handlers need.
#[derive(Clone)]
pub struct AiState {
    pub app: crate::state::AppState,
    pub gateway: Arc<Gateway>,
}

impl AiState {
    fn ai(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    async fn authenticate_token(&self, token: &str) -> crate::error::Result<Principal> {
        self.app.authenticate_token(token).await
    }
}

/// The three OpenAI endpoints, to be nested under `/api/v1`.
pub fn router(state: AiState) -> Router {
    Router::new()
        .route("/chat/completions", post(chat::handler))
        .route("/embeddings", post(embeddings::embed))
        .route("/models", get(models))
        .route("/models/{*id}", get(model))
        .with_state(state)
}

/// The bearer token of a request, or a 401 in OpenAI's shape.
async fn authenticate(app: &AiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "You didn't provide an API key. Send your Sylphx token (slx_cli_…) as the API key: Authorization: Bearer slx_cli_…",
            )
        })?;
    let principal = app.authenticate_token(token).await.map_err(|e| match e {
        Error::Unauthenticated(m) => {
            ApiError::unauthorized(format!("Incorrect API key provided: {m}."))
        }
        other => ApiError::new(other.status(), "server_error", other.public_message()),
    })?;
    Ok(principal)
}

/// The caller of a completion or embedding: authenticated, and not a read
/// token, which may list models but not spend the organisation's budget.
async fn spender(app: &AiState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let principal = authenticate(app, headers).await?;
    if principal.role == crate::auth::Role::Read {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "This token is read-only; completions and embeddings need a write or admin token.",
        )
        .code("permission_denied"));
    }
    Ok(Caller::of(&principal))
}

/// Authenticates, then runs `handle` through [`Gateway::admitted`].
async fn serve<F, Fut>(app: AiState, headers: HeaderMap, handle: F) -> Response
where
    F: FnOnce(AiState, Caller) -> Fut,
    Fut: Future<Output = Response>,
{
    match spender(&app, &headers).await {
        Ok(caller) => {
            let gw = app.ai().clone();
            gw.admitted(caller, || handle(app, caller)).await
        }
        Err(e) => e.into_response(),
    }
}

impl Gateway {
    /// Checks the organisation's monthly budget and the caller's
    /// per-token limits, runs `handle`, and puts the rate-limit headers
    /// on whatever it answers; a refusal is a 429 in OpenAI's shape.
    pub async fn admitted<F, Fut>(&self, caller: Caller, handle: F) -> Response
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Response>,
    {
        if let Err(e) = self.meter.check_budget(caller.org).await {
            return e.into_response();
        }
        match self.limits.admit(caller.key) {
            Ok(admitted) => {
                let mut resp = handle().await;
                admitted.apply(resp.headers_mut());
                resp
            }
            Err(e) => e.into_response(),
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET /models`: every configured model and alias.
async fn models(State(app): State<AiState>, headers: HeaderMap) -> Response {
    match authenticate(&app, &headers).await {
        Ok(_) => json_response(StatusCode::OK, app.ai().models_body.clone()),
        Err(e) => e.into_response(),
    }
}

/// `GET /models/{id}`.
async fn model(State(app): State<AiState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(e) = authenticate(&app, &headers).await {
        return e.into_response();
    }
    match app.ai().model_bodies.get(&id) {
        Some(body) => json_response(StatusCode::OK, body.clone()),
        None => ApiError::model_not_found(&id).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn callers_are_keyed_by_token_or_user() {
        let org = Uuid::now_v7();
        let token = Uuid::now_v7();
        let of = |actor| {
            Caller::of(&Principal {
                org_id: org,
                role: Role::Write,
                actor,
            })
        };
        assert_eq!(of(Actor::Token(token)), Caller { org, key: token });
        assert_eq!(of(Actor::System).key, Uuid::nil());
        let ann = of(Actor::User("ann".into())).key;
        assert_eq!(ann, user_key(org, "ann"));
        assert_eq!(ann.get_version_num(), 8, "never an API key's (v7) id");
        assert_ne!(ann, user_key(org, "bob"));
        assert_ne!(ann, user_key(Uuid::now_v7(), "ann"));
    }
}
