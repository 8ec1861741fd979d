//! `POST /api/v1/webhooks/github`: a push to a project's repository and
//! branch deploys its production environment with the pushed commit.
//! The `X-Hub-Signature-256` HMAC is verified before anything happens; a
//! delivery (`X-GitHub-Delivery`) is acted on once, a replay answers
//! `{"duplicate": true}` and does nothing. Without a webhook secret the
//! endpoint does not exist (404).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::auth::{Actor, Principal, Role};
use crate::domain::Ctx;
use crate::domain::deployments::Trigger;
use crate::error::{Error, Result};
use crate::state::AppState;
use entity::{projects, webhook_deliveries as deliveries};

/// Checks `sha256=<hex>` against the body in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The names a repository goes by in project settings.
fn repository_names(repo: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for key in [
        "full_name",
        "clone_url",
        "html_url",
        "ssh_url",
        "git_url",
        "url",
    ] {
        if let Some(s) = repo[key].as_str() {
            names.push(s.trim_end_matches(".git").to_ascii_lowercase());
        }
    }
    names
}

fn normalise(repo: &str) -> String {
    repo.trim()
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .to_ascii_lowercase()
}

async fn push(app: &AppState, event: &Value) -> Result<Vec<Value>> {
    let Some(branch) = event["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("refs/heads/"))
    else {
        return Ok(Vec::new()); // Tags and other refs deploy nothing.
    };
    let commit = event["after"].as_str().map(str::to_string);
    if event["deleted"].as_bool() == Some(true) {
        return Ok(Vec::new());
    }
    let names = repository_names(&event["repository"]);
    let candidates = projects::Entity::find()
        .filter(projects::Column::GitBranch.eq(branch))
        .filter(projects::Column::IsActive.eq(true))
        .all(app.db())
        .await?;
    let mut out = Vec::new();
    for project in candidates {
        let Some(repo) = project.git_repository.as_deref() else {
            continue;
        };
        if !names.contains(&normalise(repo)) {
            continue;
        }
        let ctx = Ctx {
            principal: Principal {
                org_id: project.organization_id,
                role: Role::Write,
                actor: Actor::User("github-webhook".into()),
            },
            request_id: None,
        };
        let (d, env) = app
            .deployer()
            .deploy(
                &ctx,
                &project.id.to_string(),
                None,
                Trigger::Push,
                commit.clone(),
            )
            .await?;
        out.push(json!({ "projectId": project.id, "deploymentId": d.id, "environment": env.name }));
    }
    Ok(out)
}

/// Records a delivery; false when it was recorded before (a replay).
async fn first_delivery(app: &AppState, id: &str) -> Result<bool> {
    let row = deliveries::ActiveModel {
        delivery_id: Set(id.to_string()),
        received_at: Set(crate::domain::now()),
    };
    match deliveries::Entity::insert(row).exec(app.db()).await {
        Ok(_) => Ok(true),
        Err(e) => match Error::from(e) {
            Error::Conflict(_) => Ok(false),
            e => Err(e),
        },
    }
}

/// How long deliveries are remembered (GitHub redelivers on request for
/// a few days).
const DELIVERY_RETENTION_DAYS: i64 = 30;

/// Forgets deliveries older than the retention; run periodically.
pub async fn purge_deliveries(db: &sea_orm::DatabaseConnection) -> Result<u64> {
    let cutoff = crate::domain::now() - chrono::Duration::days(DELIVERY_RETENTION_DAYS);
    let res = deliveries::Entity::delete_many()
        .filter(deliveries::Column::ReceivedAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

/// The webhook handler.
pub async fn github(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = app.config().github_webhook_secret.clone() else {
        return Error::NotFound(
            "the GitHub webhook is not configured on this server (no webhook secret)".into(),
        )
        .into_response();
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !verify(secret.expose().as_bytes(), &body, signature) {
        return Error::Unauthenticated("missing or invalid X-Hub-Signature-256".into())
            .into_response();
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return Error::bad_request(format!("malformed JSON body: {e}")).into_response(),
    };
    match headers.get("x-github-event").and_then(|v| v.to_str().ok()) {
        Some("ping") => (StatusCode::OK, axum::Json(json!({ "ok": true }))).into_response(),
        Some("push") => {
            let delivery = match headers.get("x-github-delivery").map(|v| v.to_str()) {
                None => None,
                Some(Ok(d)) if !d.is_empty() && d.len() <= 128 && d.is_ascii() => Some(d),
                Some(_) => {
                    return Error::field("X-GitHub-Delivery", "must be 1-128 ASCII characters")
                        .into_response();
                }
            };
            if let Some(d) = delivery {
                match first_delivery(&app, d).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return (
                            StatusCode::OK,
                            axum::Json(json!({ "duplicate": true, "deployments": [] })),
                        )
                            .into_response();
                    }
                    Err(e) => return e.into_response(),
                }
            }
            match push(&app, &event).await {
                Ok(deployments) => (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({ "deployments": deployments })),
                )
                    .into_response(),
                Err(e) => {
                    if let Some(d) = delivery
                        && e.status().is_server_error()
                    {
                        // Nothing may have been done: a redelivery may try again.
                        let _ = deliveries::Entity::delete_by_id(d.to_string())
                            .exec(app.db())
                            .await;
                    }
                    e.into_response()
                }
            }
        }
        _ => (StatusCode::OK, axum::Json(json!({ "ignored": true }))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{}");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(verify(b"s3cret", b"{}", Some(&good)));
        assert!(!verify(b"other", b"{}", Some(&good)));
        assert!(!verify(b"s3cret", b"{ }", Some(&good)));
        assert!(!verify(b"s3cret", b"{}", None));
        assert!(!verify(b"s3cret", b"{}", Some("sha1=abc")));
    }
}
