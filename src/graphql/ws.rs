//! The websocket protocol loop of `/graphql/ws`: graphql-transport-ws and
//! the older graphql-ws (subscriptions-transport-ws), over
//! `Executor::execute_stream`.
//!
//! - `connection_init` must come within [`INIT_TIMEOUT`] (else close 4408)
//!   and hold at most [`INIT_MESSAGE_BYTES`]; bad credentials close with
//!   4401, a forbidden caller with 4403, before any data.
//! - Each started operation is charged against the caller's rate limit;
//!   at most [`MAX_ACTIVE`] run at once on one connection. A refused one
//!   gets an `error` message for its id; the connection stays.
//! - The credentials are checked again every [`RECHECK`]: a token revoked
//!   or expired meanwhile ends the connection (4401/4403) and its
//!   subscriptions.
//! - The server pings every [`PING_EVERY`] (the older protocol's `ka` too),
//!   and answers the client's pings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::Executor;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Core;
use crate::auth::Principal;
use crate::domain::Ctx;
use crate::error::Error;
use crate::error::graphql_error;
use crate::state::AppState;

/// Time a client has to send `connection_init`.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::settings::INIT_MESSAGE_BYTES;
/// Operations one connection may run at once.
pub const MAX_ACTIVE: usize = 100;
/// How often the credentials are checked again.
pub const RECHECK: Duration = Duration::from_secs(2);
/// How often the server pings an idle client.
pub const PING_EVERY: Duration = Duration::from_secs(15);

/// The two protocols, by their `Sec-WebSocket-Protocol` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws`.
    TransportWs,
    /// `graphql-ws`, the older subscriptions-transport-ws.
    Legacy,
}

impl Protocol {
    /// The first protocol the client offers that the server speaks;
    /// graphql-transport-ws when it names none.
    pub fn choose(offered: Option<&str>) -> Option<Protocol> {
        let Some(offered) = offered else {
            return Some(Protocol::TransportWs);
        };
        offered.split(',').find_map(|p| match p.trim() {
            p if p.eq_ignore_ascii_case("graphql-transport-ws") => Some(Protocol::TransportWs),
            p if p.eq_ignore_ascii_case("graphql-ws") => Some(Protocol::Legacy),
            _ => None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::Legacy => "graphql-ws",
        }
    }
}

/// What one connection needs.
pub struct Connection {
    pub app: AppState,
    pub core: Core,
    pub protocol: Protocol,
    /// The caller as the upgrade request (cookie or header) showed it, for
    /// a `connection_init` without a token.
    pub upgrade: Result<Principal, Error>,
    /// The upgrade request's credentials (`Authorization`, `Cookie`), checked
    /// again like a `connection_init` token while the socket is open.
    pub upgrade_credentials: axum::http::HeaderMap,
    pub request_id: Option<String>,
}

enum Outcome {
    Close(u16, String),
    Gone,
}

fn close(code: u16, reason: impl Into<String>) -> Outcome {
    let mut reason: String = reason.into();
    // A close frame's reason holds at most 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    Outcome::Close(code, reason)
}

/// The close code for a credential that could not be accepted: 4403
/// forbidden, 4401 unknown, revoked or expired; 1013 (try again later)
/// when the store could not tell, so that clients retry rather than
/// give up on their token.
fn refusal_code(e: &Error) -> u16 {
    match e {
        Error::Forbidden(_) => 4403,
        Error::Unavailable(_) => 1013,
        _ => 4401,
    }
}

/// Resolves once the server stops (never, if it cannot tell).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// The sending half of a connection, shared by its loop and its
/// operations: whoever sends a message writes it, with no task in between.
#[derive(Clone)]
struct Outbox(Arc<tokio::sync::Mutex<SplitSink<WebSocket, Message>>>);

impl Outbox {
    async fn send(&self, m: Message) -> Result<(), axum::Error> {
        self.0.lock().await.send(m).await
    }
}

impl Connection {
    /// Runs the connection until either side ends it.
    pub async fn run(self, socket: WebSocket) {
        let (_open, stopping) = self.app.open_stream();
        let (sink, mut stream) = socket.split();
        let out = Outbox(Arc::new(tokio::sync::Mutex::new(sink)));
        let mut active: HashMap<String, JoinHandle<()>> = HashMap::new();
        let outcome = self.serve(&mut stream, &out, &mut active, stopping).await;
        let stopping = matches!(&outcome, Outcome::Close(1001, _));
        for (id, task) in active.drain() {
            task.abort();
            if stopping && !task.is_finished() {
                let _ = out
                    .send(text(json!({ "type": "complete", "id": id })))
                    .await;
            }
        }
        if let Outcome::Close(code, reason) = outcome {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = out.send(Message::Close(Some(frame))).await;
        }
        let _ = out.0.lock().await.close().await;
    }

    async fn serve(
        &self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
        out: &Outbox,
        active: &mut HashMap<String, JoinHandle<()>>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Outcome {
        const GOING_AWAY: &str = "the server is shutting down";
        // Until `connection_init`: small messages, a deadline.
        let deadline = tokio::time::Instant::now() + INIT_TIMEOUT;
        let (principal, token) = loop {
            let next = tokio::select! {
                m = tokio::time::timeout_at(deadline, stream.next()) => m,
                () = stopped(&mut stopping) => return close(1001, GOING_AWAY),
            };
            let msg = match next {
                Err(_) => return close(4408, "connection initialisation timeout"),
                Ok(None | Some(Err(_))) => return Outcome::Gone,
                Ok(Some(Ok(m))) => m,
            };
            if message_len(&msg) > INIT_MESSAGE_BYTES {
                return close(1009, "message too large before connection_init");
            }
            let Some(v) = self.parse(&msg) else {
                match msg {
                    Message::Close(_) => return Outcome::Gone,
                    Message::Text(_) | Message::Binary(_) => {
                        return close(4400, "invalid message");
                    }
                    _ => continue,
                }
            };
            match v["type"].as_str() {
                Some("connection_init") => {
                    let token = token_from_payload(&v["payload"]);
                    let who = match &token {
                        Some(t) => self.app.authenticate_token(t).await,
                        None => self.upgrade.clone().map_err(|_| {
                            Error::Unauthenticated("missing credentials in connection_init".into())
                        }),
                    };
                    match who {
                        Ok(p) => break (p, token),
                        Err(e) => return close(refusal_code(&e), e.public_message()),
                    }
                }
                Some("ping") => {
                    let _ = out.send(text(json!({ "type": "pong" }))).await;
                }
                Some("pong") => {}
                _ => return close(4401, "unauthorized: send connection_init first"),
            }
        };
        let _ = out.send(text(json!({ "type": "connection_ack" }))).await;
        let ctx = Ctx {
            principal: principal.clone(),
            request_id: self.request_id.clone(),
        };

        // An operation refused as forbidden ends the connection (4403).
        let (forbid, mut forbidden) = mpsc::channel::<String>(1);
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let msg = match msg {
                        None | Some(Err(_)) => return Outcome::Gone,
                        Some(Ok(m)) => m,
                    };
                    if let Some(end) = self.handle(msg, &ctx, out, active, &forbid).await {
                        return end;
                    }
                }
                Some(reason) = forbidden.recv() => return close(4403, reason),
                _ = recheck.tick() => {
                    match self.still_valid(token.as_deref()).await {
                        // The store could not tell: checked again next time.
                        Ok(()) | Err(Error::Unavailable(_)) => {}
                        Err(e) => return close(refusal_code(&e), e.public_message()),
                    }
                }
                () = stopped(&mut stopping) => return close(1001, GOING_AWAY),
                _ = ping.tick() => {
                    let keepalive = match self.protocol {
                        Protocol::Legacy => text(json!({ "type": "ka" })),
                        Protocol::TransportWs => Message::Ping(Vec::new().into()),
                    };
                    // A socket busy writing needs no keepalive, and the
                    // loop does not wait behind a client slow to read.
                    if let Ok(mut sink) = out.0.try_lock() {
                        let _ = sink.send(keepalive).await;
                    }
                }
            }
        }
    }

    /// The credentials still hold: a store that cannot be reached is not a
    /// refusal (the next check decides).
    async fn still_valid(&self, token: Option<&str>) -> Result<(), Error> {
        let who = match token {
            Some(token) => self.app.authenticate_token(token).await,
            // A token or session from the upgrade request: revoked,
            // expired or of an organisation since deleted ends it as well.
            None => {
                self.app
                    .authenticate(&axum::http::Method::GET, &self.upgrade_credentials)
                    .await
            }
        };
        match who {
            Ok(_) | Err(Error::Unavailable(_) | Error::Internal(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn parse(&self, msg: &Message) -> Option<Value> {
        let text = match msg {
            Message::Text(t) => t.as_str(),
            Message::Binary(b) => std::str::from_utf8(b).ok()?,
            _ => return None,
        };
        serde_json::from_str::<Value>(text)
            .ok()
            .filter(|v| v["type"].is_string())
    }

    /// One message after `connection_init`; `Some` ends the connection.
    async fn handle(
        &self,
        msg: Message,
        ctx: &Ctx,
        out: &Outbox,
        active: &mut HashMap<String, JoinHandle<()>>,
        forbid: &mpsc::Sender<String>,
    ) -> Option<Outcome> {
        let v = match &msg {
            Message::Close(_) => return Some(Outcome::Gone),
            Message::Ping(_) | Message::Pong(_) => return None,
            _ => match self.parse(&msg) {
                Some(v) => v,
                None => return Some(close(4400, "invalid message")),
            },
        };
        let id = v["id"].as_str().map(str::to_string);
        match (v["type"].as_str().unwrap_or_default(), id) {
            ("subscribe" | "start", Some(id)) => {
                active.retain(|_, t| !t.is_finished());
                if active.contains_key(&id) {
                    return Some(close(4409, format!("subscriber for {id} already exists")));
                }
                if active.len() >= MAX_ACTIVE {
                    let e = Error::RateLimited(format!(
                        "at most {MAX_ACTIVE} operations may run at once on one connection"
                    ));
                    let _ = out.send(self.error(&id, &e)).await;
                    return None;
                }
                let request: async_graphql::Request =
                    match serde_json::from_value(v["payload"].clone()) {
                        Ok(r) => r,
                        Err(e) => {
                            let e = Error::bad_request(format!("invalid operation: {e}"));
                            let _ = out.send(self.error(&id, &e)).await;
                            return None;
                        }
                    };
                let cost = self.core.cost(&request.query);
                if let Some(Err(refused)) = self.app.rate_limits().charge(&ctx.principal, cost) {
                    let _ = out.send(self.error(&id, &refused.error)).await;
                    return None;
                }
                let task = self.start(
                    id.clone(),
                    request,
                    ctx.clone(),
                    (out.clone(), forbid.clone()),
                );
                active.insert(id, task);
                None
            }
            ("complete" | "stop", Some(id)) => {
                if let Some(task) = active.remove(&id) {
                    task.abort();
                }
                None
            }
            ("ping", _) => {
                let _ = out.send(text(json!({ "type": "pong" }))).await;
                None
            }
            ("pong", _) => None,
            ("connection_terminate", _) => Some(close(1000, "terminated")),
            ("connection_init", _) => Some(close(4429, "too many initialisation requests")),
            _ => Some(close(4400, "invalid message")),
        }
    }

    /// Runs one operation, sending each response, then `complete`; one
    /// refused as forbidden (another organisation's project, a role that
    /// may not) gets its `error` message, and the connection closes 4403.
    fn start(
        &self,
        id: String,
        request: async_graphql::Request,
        ctx: Ctx,
        (out, forbid): (Outbox, mpsc::Sender<String>),
    ) -> JoinHandle<()> {
        let core = self.core.clone();
        let db = self.app.db().clone();
        let protocol = self.protocol;
        let next = match protocol {
            Protocol::TransportWs => "next",
            Protocol::Legacy => "data",
        };
        tokio::spawn(async move {
            // `{"type":"next","id":"…","payload":` once; each response is
            // written straight into the message after it.
            let head = format!(
                "{{\"type\":\"{next}\",\"id\":{},\"payload\":",
                Value::String(id.clone())
            );
            let message = |payload: &[u8]| {
                let mut m = String::with_capacity(head.len() + payload.len() + 1);
                m.push_str(&head);
                // Payloads are JSON written by serde_json: UTF-8.
                m.push_str(std::str::from_utf8(payload).unwrap_or("null"));
                m.push('}');
                Message::Text(m.into())
            };
            // A log subscription run before: its lines written once for
            // every follower with this selection.
            // (Boxed: its state is freed once it has started following.)
            if let Some(mut lines) = Box::pin(core.follow_direct(&request, &ctx)).await {
                while let Some(payload) = lines.next().await {
                    if out.send(message(&payload)).await.is_err() {
                        return;
                    }
                }
            } else {
                // The executor's data for this operation: the caller and
                // batch loaders, which cache nothing between batches.
                let data = Arc::new(super::connection_data(&db, ctx));
                let mut responses = core.execute_stream(request, Some(data));
                let mut buf = Vec::new();
                while let Some(resp) = responses.next().await {
                    if resp.data == async_graphql::Value::Null && !resp.errors.is_empty() {
                        let payload = serde_json::to_value(&resp).unwrap_or(Value::Null);
                        let refused = &payload["errors"][0];
                        if refused["extensions"]["code"] == "FORBIDDEN" {
                            let errors = match protocol {
                                Protocol::TransportWs => payload["errors"].clone(),
                                Protocol::Legacy => refused.clone(),
                            };
                            let m = text(json!({ "type": "error", "id": id, "payload": errors }));
                            let _ = out.send(m).await;
                            let reason = refused["message"].as_str().unwrap_or("forbidden");
                            let _ = forbid.send(reason.to_string()).await;
                            return;
                        }
                    }
                    buf.clear();
                    if serde_json::to_writer(&mut buf, &resp).is_err()
                        || out.send(message(&buf)).await.is_err()
                    {
                        return;
                    }
                }
            }
            let _ = out
                .send(text(json!({ "type": "complete", "id": id })))
                .await;
        })
    }

    /// The `error` message for operation `id`.
    fn error(&self, id: &str, e: &Error) -> Message {
        let errors = graphql_error(e)["errors"].clone();
        // graphql-transport-ws sends the list of errors; graphql-ws one.
        let payload = match self.protocol {
            Protocol::TransportWs => errors,
            Protocol::Legacy => errors[0].clone(),
        };
        text(json!({ "type": "error", "id": id, "payload": payload }))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_the_first_offered_that_is_spoken() {
        assert_eq!(Protocol::choose(None), Some(Protocol::TransportWs));
        assert_eq!(
            Protocol::choose(Some("graphql-ws, graphql-transport-ws")),
            Some(Protocol::Legacy)
        );
        assert_eq!(
            Protocol::choose(Some("chat, GRAPHQL-TRANSPORT-WS")),
            Some(Protocol::TransportWs)
        );
        assert_eq!(Protocol::choose(Some("chat")), None);
    }

    #[test]
    fn close_reasons_fit_a_frame() {
        let Outcome::Close(_, reason) = close(4401, "x".repeat(500)) else {
            panic!()
        };
        assert!(reason.len() <= 123);
    }
}
