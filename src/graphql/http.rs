//! GraphQL over HTTP (`/graphql`) and over a websocket (`/graphql/ws`).

use async_graphql::Executor;
use async_graphql::ParseRequestError;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::Core;
use crate::domain::Ctx;
use crate::error::Error;
use crate::state::{AppState, has_session_cookie, request_id};

/// A websocket connection's read buffer (grown for a larger message):
/// subscribers send little.
const WS_READ_BUFFER: usize = 1024;
/// How much a websocket connection gathers before writing.
const WS_WRITE_BUFFER: usize = 4 * 1024;

/// What the GraphQL endpoints need.
#[derive(Clone)]
pub struct GraphqlState {
    pub app: AppState,
    pub core: Core,
}

pub use crate::error::graphql_error;

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
    let mut resp = match s.core.execute_direct(&req, s.app.reads(), &ctx).await {
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

async fn graphql_ws(
    State(s): State<GraphqlState>,
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
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    let Some(protocol) = super::ws::Protocol::choose(offered) else {
        return Error::bad_request(
            "Sec-WebSocket-Protocol: speak graphql-transport-ws or graphql-ws",
        )
        .into_response();
    };
    let from_headers = s.app.authenticate(&Method::GET, &headers).await;
    let mut upgrade_credentials = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::COOKIE] {
        for v in headers.get_all(&name) {
            upgrade_credentials.append(name.clone(), v.clone());
        }
    }
    let max_message = s.app.config().max_websocket_message_bytes;
    let connection = super::ws::Connection {
        app: s.app,
        core: s.core,
        protocol,
        upgrade: from_headers,
        upgrade_credentials,
        request_id: request_id(&headers),
    };
    upgrade
        .protocols([protocol.name()])
        // Small buffers, grown for a large message: an idle subscriber
        // costs a few KiB, not 256.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| connection.run(socket))
}
