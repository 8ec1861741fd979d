//! `POST /chat/completions`: complete answers passed through (or
//! translated), streams relayed event by event as they arrive.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::anthropic::{self, StreamTranslator};
use super::config::ProviderKind;
use super::upstream::{Body, Endpoint, upstream_error};
use super::wire::{self, ApiError, ChatRequest, EventSplitter, Usage};
use super::{Caller, Charge, Gateway, json_response, serve};
use crate::server::AppState;

/// The handler.
pub async fn complete(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    serve(app, headers, |app, caller| async move {
        run(app.ai(), &caller, body).await
    })
    .await
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
                silent: std::time::Duration::ZERO,
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
    rest: BoxStream<'static, reqwest::Result<Bytes>>,
    splitter: EventSplitter,
    translate: Translate,
    out: VecDeque<Bytes>,
    /// How long upstream has been silent.
    silent: std::time::Duration,
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
            match tokio::time::timeout(keepalive, self.rest.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.silent = std::time::Duration::ZERO;
                    self.push(chunk);
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, model = %self.charge.model, "AI upstream stream broke");
                    self.fail("The upstream connection failed mid-stream.");
                }
                Ok(None) => self.finish(),
                Err(_) => {
                    self.silent += keepalive;
                    if self.silent >= self.gw.timeouts.stream_idle {
                        self.fail("The upstream stream went silent for too long.");
                    } else {
                        // A comment: SDKs skip it, idle-timeout proxies see traffic.
                        self.out.push_back(Bytes::from_static(b": keepalive\n\n"));
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
