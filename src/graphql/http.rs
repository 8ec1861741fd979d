//! GraphQL over HTTP (`/graphql`) and over a websocket (`/graphql/ws`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_graphql::Executor;
use async_graphql::ParseRequestError;
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::ws::Message;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use serde_json::json;

use super::Core;
use crate::auth::Principal;
use crate::domain::Ctx;
use crate::error::Error;
use crate::state::{AppState, has_session_cookie, request_id};

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
    req: Result<GraphQLRequest, GraphQLRejection>,
) -> Response {
    let req = match req {
        Ok(req) => req.into_inner(),
        Err(GraphQLRejection(e)) => {
            let (status, err) = match e {
                ParseRequestError::PayloadTooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Error::bad_request("request body too large"),
                ),
                ParseRequestError::UnsupportedBatch => (
                    StatusCode::BAD_REQUEST,
                    Error::bad_request("batched requests are not supported: send one operation"),
                ),
                e => (StatusCode::BAD_REQUEST, Error::bad_request(e.to_string())),
            };
            return (status, Json(graphql_error(&err))).into_response();
        }
    };
    // GraphQL over HTTP: a GET must never change anything.
    if method == Method::GET && s.core.is_mutation(&req) {
        let err = Error::bad_request("mutations must be sent with POST");
        return (StatusCode::METHOD_NOT_ALLOWED, Json(graphql_error(&err))).into_response();
    }
    let standing = match s
        .app
        .rate_limits()
        .charge(&ctx.principal, s.core.cost(&req.query))
    {
        None => None,
        Some(Ok(standing)) => Some(standing),
        Some(Err(refused)) => {
            let mut resp =
                (refused.error.status(), Json(graphql_error(&refused.error))).into_response();
            refused.apply(resp.headers_mut());
            return resp;
        }
    };
    let mut resp = match s.core.execute_direct(&req, s.app.db(), &ctx).await {
        Some(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/graphql-response+json"),
            )],
            body,
        )
            .into_response(),
        None => {
            let mut req = super::with_request_data(req, s.app.db(), ctx);
            if let Some(standing) = standing {
                req = req.data(standing);
            }
            GraphQLResponse::from(s.core.execute(req).await).into_response()
        }
    };
    if let Some(standing) = standing {
        standing.apply(resp.headers_mut());
    }
    resp
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
    // A page of another origin could open the socket with the user's cookie:
    // with the cookie (and no bearer token) the origin must be allowed.
    if has_session_cookie(&headers)
        && !headers.contains_key(header::AUTHORIZATION)
        && let Err(e) = s.app.check_origin(&headers)
    {
        return e.into_response();
    }
    let from_headers = s.app.authenticate(&Method::GET, &headers).await.ok();
    let request_id = request_id(&headers);
    let max_message = s.app.config().max_websocket_message_bytes;
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            let GraphqlState { app, core } = s;
            let accepted = Arc::new(AtomicBool::new(false));
            let (sink, stream) = socket.split();
            // Until `connection_init` is accepted, a message may hold at
            // most INIT_MESSAGE_BYTES; a bigger one ends the connection.
            let stream = {
                let accepted = accepted.clone();
                stream.map(move |m| match m {
                    Ok(msg)
                        if !accepted.load(Ordering::Acquire)
                            && msg_len(&msg) > INIT_MESSAGE_BYTES =>
                    {
                        Err(axum::Error::new("message too large before connection_init"))
                    }
                    other => other,
                })
            };
            // Every operation started on the socket is charged like one sent
            // over HTTP; a refused one is answered with an error for its id
            // and never reaches the executor.
            let sink = Arc::new(tokio::sync::Mutex::new(sink));
            let caller: Arc<std::sync::OnceLock<Principal>> = Arc::default();
            let stream = {
                let (app, core, sink, caller) =
                    (app.clone(), core.clone(), sink.clone(), caller.clone());
                stream.filter_map(move |m| {
                    let (app, core, sink, caller) =
                        (app.clone(), core.clone(), sink.clone(), caller.clone());
                    async move {
                        let Ok(Message::Text(text)) = &m else {
                            return Some(m);
                        };
                        let Some(p) = caller.get() else {
                            return Some(m);
                        };
                        match refusal(&app, &core, p, text) {
                            None => Some(m),
                            Some(answer) => {
                                use futures_util::SinkExt;
                                let sent = sink.lock().await.send(answer).await;
                                // A socket that cannot take the answer is done.
                                sent.err().map(|e| Err(axum::Error::new(e)))
                            }
                        }
                    }
                })
            };
            let sink = futures_util::sink::unfold(sink, |sink, msg: Message| async move {
                use futures_util::SinkExt;
                sink.lock().await.send(msg).await?;
                Ok::<_, axum::Error>(sink)
            });
            GraphQLWebSocket::new_with_pair(sink, stream, core, protocol)
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
                    caller.set(ctx.principal.clone()).ok();
                    accepted.store(true, Ordering::Release);
                    Ok(super::connection_data(app.db(), ctx))
                })
                .keepalive_timeout(Duration::from_secs(30))
                .serve()
        })
}

/// The error message that refuses an operation started on a websocket
/// (`subscribe` of graphql-transport-ws, `start` of the older graphql-ws)
/// when it would overspend the caller's rate limit; `None` lets it run.
fn refusal(app: &AppState, core: &Core, principal: &Principal, text: &str) -> Option<Message> {
    #[derive(serde::Deserialize)]
    struct Start {
        #[serde(rename = "type")]
        kind: String,
        id: Option<String>,
        payload: Option<StartPayload>,
    }
    #[derive(serde::Deserialize)]
    struct StartPayload {
        query: Option<String>,
    }
    if !app.rate_limits().enabled() {
        return None;
    }
    let start: Start = serde_json::from_str(text).ok()?;
    if start.kind != "subscribe" && start.kind != "start" {
        return None;
    }
    let query = start.payload.and_then(|p| p.query).unwrap_or_default();
    let Some(Err(refused)) = app.rate_limits().charge(principal, core.cost(&query)) else {
        return None;
    };
    let errors = graphql_error(&refused.error)["errors"].clone();
    // graphql-transport-ws sends the list of errors; graphql-ws one error.
    let payload = if start.kind == "subscribe" {
        errors
    } else {
        errors[0].clone()
    };
    let answer = json!({ "type": "error", "id": start.id, "payload": payload });
    Some(Message::Text(answer.to_string().into()))
}

/// The largest message a websocket may send before its `connection_init`
/// is accepted.
pub const INIT_MESSAGE_BYTES: usize = 64 * 1024;

fn msg_len(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}
