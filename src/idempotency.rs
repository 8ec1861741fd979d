//! `Idempotency-Key` for every REST write and GraphQL mutation: the same key
//! and body within 24 hours replay the first response without repeating the
//! work; the same key with another body is refused with 422. Concurrent
//! requests with one key run the work once: the first inserts the key row,
//! the others wait for its response. A key belongs to the caller that first
//! used it (the API key, or the session's user): another caller of the same
//! organisation sending it is refused with 422, and never sees the stored
//! answer, which is sealed with the keyring since it may hold a new token.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Duration as ChronoDuration;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set,
    sea_query::Expr,
};
use uuid::Uuid;

use crate::auth::Actor;
use crate::domain::{Ctx, new_id, now};
use crate::error::{Error, Result};
use crate::secrets::{Keyring, sha256_hex};
use crate::state::AppState;
use entity::idempotency_keys as keys;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header set on a replay.
pub const REPLAYED: &str = "idempotent-replayed";

/// How long a key is remembered.
const RETENTION_HOURS: i64 = 24;
/// A key still in progress after this long is taken to be abandoned (a crash).
const ABANDONED_AFTER_SECS: i64 = 120;
/// How long a duplicate waits for the first request to finish.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

enum Claim {
    /// This request does the work; the row id to complete.
    Owner(Uuid),
    Replay(keys::Model),
    Mismatch,
    /// Another caller's key.
    Foreign,
    Busy,
}

/// The caller a stored answer belongs to.
fn principal(ctx: &Ctx) -> String {
    match &ctx.principal.actor {
        Actor::Token(id) => format!("token:{id}"),
        Actor::User(sub) => format!("user:{sub}"),
        Actor::System => "system".into(),
    }
}

async fn claim(
    db: &DatabaseConnection,
    org: Uuid,
    caller: &str,
    key: &str,
    hash: &str,
) -> Result<Claim> {
    let now = now();
    let row = keys::ActiveModel {
        id: Set(new_id()),
        organization_id: Set(org),
        key: Set(key.to_string()),
        request_hash: Set(hash.to_string()),
        state: Set("in_progress".into()),
        response_status: Set(None),
        response_body: Set(None),
        response_content_type: Set(None),
        principal: Set(Some(caller.to_string())),
        created_at: Set(now),
        expires_at: Set(now + ChronoDuration::hours(RETENTION_HOURS)),
    };
    match row.insert(db).await.map_err(Error::from) {
        Ok(r) => return Ok(Claim::Owner(r.id)),
        Err(Error::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    let Some(existing) = keys::Entity::find()
        .filter(keys::Column::OrganizationId.eq(org))
        .filter(keys::Column::Key.eq(key))
        .one(db)
        .await?
    else {
        return Ok(Claim::Busy); // Deleted meanwhile: try again.
    };
    let abandoned = existing.state == "in_progress"
        && now - existing.created_at > ChronoDuration::seconds(ABANDONED_AFTER_SECS);
    if existing.expires_at <= now || abandoned {
        // Expired or left behind by a crash: forget it, then claim again.
        keys::Entity::delete_by_id(existing.id).exec(db).await?;
        return Ok(Claim::Busy);
    }
    if existing.principal.as_deref() != Some(caller) {
        return Ok(Claim::Foreign);
    }
    if existing.request_hash != hash {
        return Ok(Claim::Mismatch);
    }
    if existing.state == "done" {
        return Ok(Claim::Replay(existing));
    }
    Ok(Claim::Busy)
}

fn replay(keyring: &Keyring, row: keys::Model) -> Response {
    let body = match row.response_body.as_deref().map(|b| keyring.open(b)) {
        Some(Ok(body)) => body.expose().to_string(),
        Some(Err(e)) => return e.into_response(),
        None => String::new(),
    };
    let status = row
        .response_status
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = (status, body).into_response();
    let ct = row
        .response_content_type
        .unwrap_or_else(|| "application/json".into());
    if let Ok(v) = HeaderValue::from_str(&ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// Forgets a claimed key so that a retry runs the request again. In the
/// background: when the store is what failed, waiting for it here would
/// hold the answer back by another acquire timeout.
fn release(db: &DatabaseConnection, row_id: Uuid) {
    let db = db.clone();
    tokio::spawn(async move {
        if let Err(e) = keys::Entity::delete_by_id(row_id).exec(&db).await {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
    });
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The middleware. Runs after authentication, which supplies the organisation.
pub async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    if !is_write(req.method()) {
        return next.run(req).await;
    }
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
        _ => {
            return Error::field("Idempotency-Key", "must be 1-255 visible ASCII characters")
                .into_response();
        }
    };
    let Some(ctx) = req.extensions().get::<Ctx>().cloned() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, app.config().max_request_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({"error": "request body too large", "details": null})),
            )
                .into_response();
        }
    };
    let mut fingerprint = format!("{} {}\n", parts.method, parts.uri).into_bytes();
    fingerprint.extend_from_slice(&bytes);
    let hash = sha256_hex(&fingerprint);
    let db = app.db().clone();
    let started = tokio::time::Instant::now();
    let caller = principal(&ctx);
    let row_id = loop {
        match claim(&db, ctx.org_id(), &caller, &key, &hash).await {
            Ok(Claim::Owner(id)) => break id,
            Ok(Claim::Replay(row)) => return replay(&app.deployer().keyring, row),
            Ok(Claim::Foreign) => {
                return Error::Unprocessable(
                    "Idempotency-Key was already used by another caller".into(),
                )
                .into_response();
            }
            Ok(Claim::Mismatch) => {
                return Error::Unprocessable(
                    "Idempotency-Key was already used with a different request".into(),
                )
                .into_response();
            }
            Ok(Claim::Busy) if started.elapsed() < WAIT_LIMIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Claim::Busy) => {
                return Error::Conflict(
                    "a request with this Idempotency-Key is still in progress".into(),
                )
                .into_response();
            }
            Err(e) => return e.into_response(),
        }
    };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = resp.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => {
            release(&db, row_id);
            return Error::internal("response body failed").into_response();
        }
    };
    if parts.status.is_server_error() {
        // Nothing was done that a retry must not repeat: let it run again.
        release(&db, row_id);
    } else {
        let sealed = match app.deployer().keyring.seal(&String::from_utf8_lossy(&body)) {
            Ok(s) => s,
            Err(e) => {
                release(&db, row_id);
                return e.into_response();
            }
        };
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let stored = keys::Entity::update_many()
            .col_expr(keys::Column::State, Expr::value("done"))
            .col_expr(
                keys::Column::ResponseStatus,
                Expr::value(parts.status.as_u16() as i32),
            )
            .col_expr(keys::Column::ResponseBody, Expr::value(sealed))
            .col_expr(keys::Column::ResponseContentType, Expr::value(ct))
            .filter(keys::Column::Id.eq(row_id))
            .exec(&db)
            .await;
        if let Err(e) = stored {
            tracing::error!(error = %e, "could not store an idempotent response");
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// Deletes expired keys; run periodically.
pub async fn purge_expired(db: &DatabaseConnection) -> Result<u64> {
    let res = keys::Entity::delete_many()
        .filter(keys::Column::ExpiresAt.lt(now()))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
