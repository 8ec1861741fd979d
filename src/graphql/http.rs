//! GraphQL over HTTP (`/graphql`) and over a websocket (`/graphql/ws`).

use std::time::Duration;

use async_graphql::Executor;
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;

use super::Core;
use crate::domain::Ctx;
use crate::error::Error;
use crate::state::{AppState, request_id};

/// What the GraphQL endpoints need.
#[derive(Clone)]
pub struct GraphqlState {
    pub app: AppState,
    pub core: Core,
}

/// A GraphQL-shaped error body for the GraphQL endpoints.
pub fn graphql_error(err: &Error) -> serde_json::Value {
    json!({ "errors": [{ "message": err.public_message(), "extensions": { "code": err.code() } }] })
}

/// `/graphql` (GET and POST; callers authenticated by a layer the caller
/// adds) and the unauthenticated upgrade at `/graphql/ws`, which
/// authenticates in `connection_init`.
pub fn routes(state: GraphqlState) -> (Router, Router) {
    let http = Router::new()
        .route("/graphql", get(graphql_http).post(graphql_http))
        .with_state(state.clone());
    let ws = Router::new()
        .route("/graphql/ws", get(graphql_ws))
        .with_state(state);
    (http, ws)
}

async fn graphql_http(
    State(s): State<GraphqlState>,
    Extension(ctx): Extension<Ctx>,
    method: Method,
    req: GraphQLRequest,
) -> Response {
    let req = req.into_inner();
    // GraphQL over HTTP: a GET must never change anything.
    if method == Method::GET && s.core.is_mutation(&req) {
        let err = Error::bad_request("mutations must be sent with POST");
        return (StatusCode::METHOD_NOT_ALLOWED, Json(graphql_error(&err))).into_response();
    }
    if let Some(body) = s.core.execute_direct(&req, s.app.db(), &ctx).await {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/graphql-response+json"),
            )],
            body,
        )
            .into_response();
    }
    let req = super::with_request_data(req, s.app.db(), ctx);
    GraphQLResponse::from(s.core.execute(req).await).into_response()
}

/// Reads a token from the `connection_init` payload: `{"authorization": "Bearer …"}` or `{"token": "…"}`.
fn token_from_payload(payload: &serde_json::Value) -> Option<String> {
    let obj = payload.as_object()?;
    for (k, v) in obj {
        let Some(s) = v.as_str() else { continue };
        match k.to_ascii_lowercase().as_str() {
            "authorization" => {
                return Some(s.strip_prefix("Bearer ").unwrap_or(s).trim().to_string());
            }
            "token" => return Some(s.trim().to_string()),
            _ => {}
        }
    }
    None
}

async fn graphql_ws(
    State(s): State<GraphqlState>,
    protocol: GraphQLProtocol,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Browsers cannot set headers on a websocket: the token normally comes in
    // `connection_init`; a session cookie or header on the upgrade also works.
    let from_headers = s.app.authenticate(&headers).await.ok();
    let request_id = request_id(&headers);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            let GraphqlState { app, core } = s;
            GraphQLWebSocket::new(stream, core, protocol)
                .on_connection_init(move |payload| async move {
                    let principal = match token_from_payload(&payload) {
                        Some(token) => app.authenticate_token(&token).await?,
                        None => from_headers.ok_or_else(|| {
                            Error::Unauthenticated("missing credentials in connection_init".into())
                        })?,
                    };
                    let ctx = Ctx {
                        principal,
                        request_id,
                    };
                    Ok(super::connection_data(app.db(), ctx))
                })
                .keepalive_timeout(Duration::from_secs(30))
                .serve()
        })
}
