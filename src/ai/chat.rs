//! `POST /chat/completions`: complete answers passed through (or
//! translated), streams relayed event by event as they arrive. [`ask`]
//! runs the same path for typed callers (GraphQL's `aiChatCompletion`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::AiState;
use super::anthropic::{self, StreamTranslator};
use super::config::ProviderKind;
use super::upstream::{Body, Chunks, Endpoint, upstream_error};
use super::wire::{self, ApiError, ChatRequest, EventSplitter, Usage};
use super::{Caller, Charge, Gateway, json_response, spender};

/// The handler: the bearer token, then [`complete`].
pub async fn handler(State(app): State<AiState>, headers: HeaderMap, body: Bytes) -> Response {
    match spender(&app, &headers).await {
        Ok(caller) => complete(app.ai(), caller, body).await,
        Err(e) => e.into_response(),
    }
}

/// Answers one chat completion request body for an authenticated caller,
/// exactly as `POST /chat/completions` does: the organisation's budget and
/// the caller's per-token limits, model and alias resolution, deployments
/// with fallback, translation, and metering. The REST handler and [`ask`]
/// both come through here.
pub async fn complete(gw: &Arc<Gateway>, caller: Caller, body: Bytes) -> Response {
    gw.admitted(caller, || run(gw, &caller, body)).await
}

/// A chat request from a typed caller; sent as OpenAI's request body.
#[derive(Debug, Clone, Serialize)]
pub struct Prompt {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// One message of a [`Prompt`].
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    pub content: String,
}

/// The first choice of a `chat.completion` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: String,
    /// The model as the upstream that answered names it.
    pub model: String,
    /// None when the model produced no text.
    pub content: Option<String>,
    pub finish_reason: Option<String>,
    /// As the upstream reported it; None when it reported none (the
    /// gateway then meters an estimate).
    pub usage: Option<Usage>,
}

/// A request the gateway refused or could not serve, as its OpenAI error
/// body describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (OpenAI's name for it).
    pub param: Option<String>,
    pub code: Option<String>,
}

impl Refusal {
    /// Reads `{"error": {"message", "param", "code", …}}`.
    fn read(status: StatusCode, body: &[u8]) -> Refusal {
        #[derive(Deserialize)]
        struct Body {
            error: Object,
        }
        #[derive(Deserialize)]
        struct Object {
            message: Option<String>,
            param: Option<String>,
            code: Option<serde_json::Value>,
        }
        let error = serde_json::from_slice::<Body>(body).ok().map(|b| b.error);
        let (message, param, code) = match error {
            Some(e) => (e.message, e.param, e.code),
            None => (None, None, None),
        };
        Refusal {
            status,
            message: message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("The upstream provider answered {}.", status.as_u16())),
            param,
            code: code.and_then(|c| c.as_str().map(str::to_string)),
        }
    }
}

impl Reply {
    fn read(body: &[u8]) -> Option<Reply> {
        #[derive(Deserialize)]
        struct Completion {
            #[serde(default)]
            id: String,
            #[serde(default)]
            model: String,
            choices: Vec<Choice>,
            usage: Option<Usage>,
        }
        #[derive(Deserialize)]
        struct Choice {
            message: Option<ChoiceMessage>,
            finish_reason: Option<String>,
        }
        #[derive(Deserialize)]
        struct ChoiceMessage {
            content: Option<String>,
        }
        let c: Completion = serde_json::from_slice(body).ok()?;
        let first = c.choices.into_iter().next();
        Some(Reply {
            id: c.id,
            model: c.model,
            content: first
                .as_ref()
                .and_then(|f| f.message.as_ref())
                .and_then(|m| m.content.clone()),
            finish_reason: first.and_then(|f| f.finish_reason),
            usage: c.usage,
        })
    }
}

/// Sends `prompt` (never streamed) through [`complete`] and reads the
/// answer back, so a typed caller gets what an SDK would.
pub async fn ask(gw: &Arc<Gateway>, caller: Caller, prompt: &Prompt) -> Result<Reply, Refusal> {
    let body = Bytes::from(serde_json::to_vec(prompt).expect("a prompt serialises"));
    let resp = complete(gw, caller, body).await;
    let status = resp.status();
    // The answer is already in memory: a non-streaming response is one buffer.
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading the gateway's answer failed");
            Refusal {
                status: StatusCode::BAD_GATEWAY,
                message: "The upstream's answer could not be read.".into(),
                param: None,
                code: Some("upstream_error".into()),
            }
        })?;
    if !status.is_success() {
        return Err(Refusal::read(status, &bytes));
    }
    Reply::read(&bytes).ok_or_else(|| Refusal {
        status: StatusCode::BAD_GATEWAY,
        message: "The upstream's answer is not a chat completion.".into(),
        param: None,
        code: Some("upstream_error".into()),
    })
}

async fn run(gw: &Arc<Gateway>, caller: &Caller, body: Bytes) -> Response {
    let req = match ChatRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(model) = gw.catalog.get(&req.model) else {
        return ApiError::model_not_found(&req.model).into_response();
    };
    let answer = gw
        .call(model, Endpoint::Chat, req.stream, |d| {
            match d.provider.kind {
                ProviderKind::Openai => Ok(req.upstream_body(&body, &d.upstream_model_json)),
                ProviderKind::Anthropic => {
                    anthropic::request(&body, &d.upstream_model, d.provider.default_max_tokens)
                }
            }
        })
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let d = answer.deployment;
    let charge = Charge::new(caller, &model.id, d);
    let kind = d.provider.kind;
    match answer.body {
        Body::Whole(resp) => {
            let bytes = match tokio::time::timeout_at(answer.deadline, resp.bytes()).await {
                Ok(Ok(b)) => b,
                Ok(Err(_)) => {
                    return ApiError::upstream(
                        StatusCode::BAD_GATEWAY,
                        "The upstream connection failed while answering.",
                    )
                    .into_response();
                }
                Err(_) => {
                    return ApiError::upstream(
                        StatusCode::GATEWAY_TIMEOUT,
                        "The upstream timed out while answering.",
                    )
                    .into_response();
                }
            };
            if !answer.status.is_success() {
                return upstream_error(&d.provider, answer.status, bytes);
            }
            let (bytes, usage) = match kind {
                ProviderKind::Openai => {
                    let usage = wire::usage_of(&bytes)
                        .unwrap_or_else(|| estimate(body.len(), bytes.len() as u64 / 4));
                    (bytes, usage)
                }
                ProviderKind::Anthropic => match anthropic::response(&bytes) {
                    Ok(t) => t,
                    Err(e) => return e.into_response(),
                },
            };
            gw.charge(&charge, usage);
            json_response(answer.status, bytes)
        }
        Body::Stream { first, rest } => {
            let relay = Relay {
                gw: gw.clone(),
                charge,
                request_len: body.len(),
                first,
                rest,
                splitter: EventSplitter::default(),
                translate: match kind {
                    ProviderKind::Openai => Translate::Pass(PassThrough {
                        client_wants_usage: req.include_usage,
                        ..PassThrough::default()
                    }),
                    ProviderKind::Anthropic => {
                        Translate::Anthropic(StreamTranslator::new(req.include_usage))
                    }
                },
                out: VecDeque::new(),
                last_heard: tokio::time::Instant::now(),
                idle: Box::pin(tokio::time::sleep(gw.timeouts.keepalive)),
                ended: false,
            };
            let stream = futures_util::stream::unfold(relay, Relay::next);
            let mut resp = axum::body::Body::from_stream(stream).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // Tells nginx-style proxies in front not to buffer the stream.
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            resp
        }
    }
}

/// Usage guessed when an upstream reports none (about four bytes a token).
fn estimate(request_len: usize, completion_tokens: u64) -> Usage {
    Usage {
        prompt_tokens: request_len as u64 / 4,
        completion_tokens,
    }
}

/// OpenAI-compatible streams pass through; this watches them go by.
#[derive(Default)]
struct PassThrough {
    client_wants_usage: bool,
    usage: Option<Usage>,
    done: bool,
    finished: bool,
    failed: bool,
    /// Content events, the token estimate if the stream breaks before usage.
    chunks: u64,
}

impl PassThrough {
    /// Looks at one event; false when it must not reach the client (the
    /// usage chunk the gateway asked for on its own account).
    fn keep(&mut self, event: &[u8]) -> bool {
        let Some(data) = wire::data_of(event) else {
            return true;
        };
        if data.starts_with(b"[DONE]") {
            self.done = true;
            return true;
        }
        if wire::value_after(&data, b"\"usage\"").is_some_and(|v| v.starts_with(b"{")) {
            #[derive(serde::Deserialize)]
            struct UsageChunk {
                usage: Usage,
                #[serde(default)]
                choices: Vec<serde::de::IgnoredAny>,
            }
            if let Ok(c) = serde_json::from_slice::<UsageChunk>(&data) {
                self.usage = Some(c.usage);
                if c.choices.is_empty() {
                    return self.client_wants_usage;
                }
            }
        }
        if wire::value_after(&data, b"\"finish_reason\"").is_some_and(|v| v.starts_with(b"\"")) {
            self.finished = true;
        }
        if data.starts_with(b"{\"error\"") || wire::find(&data, b"\"error\":{").is_some() {
            self.failed = true;
        }
        self.chunks += 1;
        true
    }
}

enum Translate {
    Pass(PassThrough),
    Anthropic(StreamTranslator),
}

/// One stream from upstream to client. Dropping it (end of stream or the
/// client went away) charges the usage seen.
struct Relay {
    gw: Arc<Gateway>,
    charge: Charge,
    request_len: usize,
    first: Option<Bytes>,
    rest: Chunks,
    splitter: EventSplitter,
    translate: Translate,
    out: VecDeque<Bytes>,
    /// When upstream last sent a chunk (or the stream started).
    last_heard: tokio::time::Instant,
    /// Fires `keepalive` after `last_heard` at the earliest. Not reset per
    /// chunk: re-armed when it fires early, so chunks cost no timer work.
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    ended: bool,
}

impl Relay {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Relay)> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some((Ok(b), self));
            }
            if self.ended {
                return None;
            }
            if let Some(first) = self.first.take() {
                self.push(first);
                continue;
            }
            let keepalive = self.gw.timeouts.keepalive;
            let next = tokio::select! {
                biased;
                next = self.rest.next() => Some(next),
                () = self.idle.as_mut() => None,
            };
            match next {
                Some(Some(Ok(chunk))) => {
                    self.last_heard = tokio::time::Instant::now();
                    self.push(chunk);
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, model = %self.charge.model, "AI upstream stream broke");
                    self.fail("The upstream connection failed mid-stream.");
                }
                Some(None) => self.finish(),
                None => {
                    let now = tokio::time::Instant::now();
                    let silent = now - self.last_heard;
                    if silent < keepalive {
                        // Chunks came since it was armed: not silent yet.
                        self.idle.as_mut().reset(self.last_heard + keepalive);
                    } else if silent >= self.gw.timeouts.stream_idle {
                        self.fail("The upstream stream went silent for too long.");
                    } else {
                        // A comment: SDKs skip it, idle-timeout proxies see traffic.
                        self.out.push_back(Bytes::from_static(b": keepalive\n\n"));
                        self.idle.as_mut().reset(now + keepalive);
                    }
                }
            }
        }
    }

    /// Relays the complete events a chunk finishes.
    fn push(&mut self, chunk: Bytes) {
        let block = self.splitter.push(chunk);
        if block.is_empty() {
            return;
        }
        self.relay(block);
    }

    fn relay(&mut self, block: Bytes) {
        match &mut self.translate {
            Translate::Pass(p) => {
                let mut kept = Vec::new();
                let mut all = true;
                for ev in wire::events(&block) {
                    if p.keep(&ev) {
                        kept.push(ev);
                    } else {
                        all = false;
                    }
                }
                if all {
                    // The common case: the chunk goes on as it came.
                    self.out.push_back(block);
                } else {
                    self.out.extend(kept);
                }
            }
            Translate::Anthropic(t) => {
                let mut out = BytesMut::new();
                for ev in wire::events(&block) {
                    if let Some(data) = wire::data_of(&ev) {
                        t.event(&data, &mut out);
                    }
                }
                if !out.is_empty() {
                    self.out.push_back(out.freeze());
                }
            }
        }
    }

    /// Upstream ended: relay an unterminated last event, and make sure the
    /// client sees a proper end or an error.
    fn finish(&mut self) {
        let rest = self.splitter.rest();
        if !rest.iter().all(u8::is_ascii_whitespace) {
            let mut ev = BytesMut::from(&rest[..]);
            ev.extend_from_slice(b"\n\n");
            self.relay(ev.freeze());
        }
        let (ok, failed) = match &self.translate {
            Translate::Pass(p) => (p.done, p.failed),
            Translate::Anthropic(t) => (t.finished, t.failed),
        };
        self.ended = true;
        if ok || failed {
            return;
        }
        match &self.translate {
            // Finished but without the terminator some servers omit: add it.
            Translate::Pass(p) if p.finished => {
                self.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            _ => self.fail("The upstream closed the stream before it finished."),
        }
    }

    fn fail(&mut self, message: &str) {
        self.out
            .push_back(ApiError::upstream(StatusCode::BAD_GATEWAY, message).event());
        self.ended = true;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let usage = match &self.translate {
            Translate::Pass(p) => p
                .usage
                .unwrap_or_else(|| estimate(self.request_len, p.chunks)),
            Translate::Anthropic(t) if t.usage() != Usage::default() => t.usage(),
            Translate::Anthropic(_) => estimate(self.request_len, 0),
        };
        self.gw.charge(&self.charge, usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_from_openai_shapes() {
        let reply = Reply::read(
            br#"{"id":"c1","object":"chat.completion","model":"m","x":1,
                "choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        )
        .unwrap();
        assert_eq!(reply.content.as_deref(), Some("Hi"));
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
        assert_eq!(reply.usage.unwrap().total(), 5);
        let bare = Reply::read(br#"{"choices":[]}"#).unwrap();
        assert_eq!((bare.content, bare.usage), (None, None));
        assert!(Reply::read(b"[]").is_none());
    }

    #[test]
    fn refusals_are_read_from_openai_errors() {
        let r = Refusal::read(
            StatusCode::NOT_FOUND,
            &ApiError::model_not_found("x").body(),
        );
        assert_eq!(r.param.as_deref(), Some("model"));
        assert_eq!(r.code.as_deref(), Some("model_not_found"));
        assert!(r.message.contains("`x`"));
        // Anything else still gets a message.
        let r = Refusal::read(StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(r.message, "The upstream provider answered 502.");
        assert_eq!(r.param, None);
    }

    #[test]
    fn prompts_are_openai_requests() {
        let p = Prompt {
            model: "m".into(),
            messages: vec![Message {
                role: "user",
                content: "Hi".into(),
            }],
            temperature: None,
            max_tokens: Some(5),
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":5}"#
        );
    }
}
