//! An OpenAI-compatible upstream that answers at once, for the AI gateway
//! benchmark (bench/ai.sh).
//!
//! `POST /v1/chat/completions` answers a fixed completion, or, when the body
//! asks for `"stream": true`, a fixed stream of six events (plus a usage
//! event when `stream_options.include_usage` is set) followed by
//! `data: [DONE]`; `POST /v1/embeddings` answers a fixed 16-float vector;
//! `GET /v1/models` lists the two models. Bodies are not parsed: the two
//! flags are found by a byte search, so the mock costs next to nothing.
//!
//! Usage: `mock-upstream [ADDR]` (default `127.0.0.1:0`); prints
//! `listening on http://ADDR` once it accepts connections.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;

const CHAT: &str = r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"mock-chat","system_fingerprint":"fp_mock","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;

const EMBEDDING: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023,-0.0093,0.0157,-0.0072,0.0211,0.0005,-0.0118,0.0301,-0.0047,0.0066,0.0139,-0.0254,0.0012,0.0087,-0.0163,0.0049]}],"model":"mock-embed","usage":{"prompt_tokens":5,"total_tokens":5}}"#;

const MODELS: &str = r#"{"object":"list","data":[{"id":"mock-chat","object":"model","created":1700000000,"owned_by":"mock"},{"id":"mock-embed","object":"model","created":1700000000,"owned_by":"mock"}]}"#;

const PREFIX: &str = r#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock-chat","system_fingerprint":"fp_mock","choices":[{"index":0,"delta":"#;

/// The stream's events, each one SSE event, sent as separate body chunks.
fn events(include_usage: bool) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(8);
    let deltas = [
        (r#"{"role":"assistant","content":""}"#, "null"),
        (r#"{"content":"Hello!"}"#, "null"),
        (r#"{"content":" How can I"}"#, "null"),
        (r#"{"content":" help you"}"#, "null"),
        (r#"{"content":" today?"}"#, "null"),
        (r#"{}"#, r#""stop""#),
    ];
    for (delta, finish) in deltas {
        out.push(Bytes::from(format!(
            "{PREFIX}{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        )));
    }
    if include_usage {
        out.push(Bytes::from_static(
            br#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock-chat","system_fingerprint":"fp_mock","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}

"#,
        ));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// Whether `"key"` is followed (after `:` and blanks) by `true`.
fn flag(body: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = find(&body[from..], key) {
        let rest = &body[from + i + key.len()..];
        let rest: Vec<u8> = rest
            .iter()
            .copied()
            .skip_while(|b| b.is_ascii_whitespace() || *b == b':')
            .take(4)
            .collect();
        if rest == b"true" {
            return true;
        }
        from += i + key.len();
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn json(body: &'static str) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn chat(body: Bytes) -> Response {
    if !flag(&body, b"\"stream\"") {
        return json(CHAT);
    }
    let items = events(flag(&body, b"\"include_usage\""))
        .into_iter()
        .map(Ok::<_, Infallible>);
    let mut resp = Body::from_stream(futures_util::stream::iter(items)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn embeddings() -> Response {
    json(EMBEDDING)
}

async fn models() -> Response {
    json(MODELS)
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models));
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    let local = listener.local_addr().unwrap();
    // Every small event leaves at once, as from a real upstream.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    println!("listening on http://{local}");
    axum::serve(listener, app).await.unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert!(flag(br#"{"model":"m","stream":true}"#, b"\"stream\""));
        assert!(flag(br#"{"stream" : true}"#, b"\"stream\""));
        assert!(!flag(br#"{"stream":false}"#, b"\"stream\""));
        assert!(!flag(br#"{"model":"m"}"#, b"\"stream\""));
        assert!(flag(
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            b"\"include_usage\""
        ));
    }
}
