//! The AI gateway as users meet it: the real `openai` Python package
//! (tests/ai/sdk.py) and the dashboard's GraphQL mutation against the real
//! server, in front of stub upstreams started here that speak OpenAI's and
//! Anthropic's wire formats.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use bytes::Bytes;
use common::{Backend, TestServer, serve_router};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sylphx::auth::Role;
use sylphx::auth::session::Claims;

const STUB_KEY: &str = "sk-stub-key-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-stub-0123456789";
const EMBEDDING: [f32; 3] = [0.5, -1.25, 2.0];

/// What a stub upstream saw and said.
#[derive(Clone, Default)]
struct Upstream {
    /// Answers every request with this status (a 500 or a 429, with
    /// `retry-after`) in OpenAI's error shape.
    fails_with: Option<StatusCode>,
    hits: Arc<AtomicUsize>,
    /// Request bodies, in order.
    requests: Arc<Mutex<Vec<Value>>>,
    /// `(prompt, completion)` of each usage it reported.
    usage: Arc<Mutex<Vec<(i64, i64)>>>,
}

impl Upstream {
    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    fn reported(&self) -> (i64, i64) {
        self.usage
            .lock()
            .unwrap()
            .iter()
            .fold((0, 0), |(p, c), (a, b)| (p + a, c + b))
    }

    fn report(&self, prompt: i64, completion: i64) {
        self.usage.lock().unwrap().push((prompt, completion));
    }
}

fn sse(events: Vec<String>) -> Response {
    let items: Vec<Result<Bytes, std::io::Error>> =
        events.into_iter().map(|e| Ok(Bytes::from(e))).collect();
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures_util::stream::iter(items)))
        .unwrap()
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

/// `POST /v1/chat/completions` as OpenAI answers it.
async fn openai_chat(State(up): State<Upstream>, headers: HeaderMap, body: Bytes) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = up.fails_with {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return (
                status,
                [("retry-after", "7")],
                axum::Json(json!({"error": {"message": "stub upstream is busy", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
            )
                .into_response();
        }
        return (
            status,
            axum::Json(json!({"error": {"message": "stub upstream is down", "type": "server_error", "param": null, "code": null}})),
        )
            .into_response();
    }
    if headers["authorization"] != format!("Bearer {STUB_KEY}").as_str() {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"message": "Incorrect API key provided: sk-stub***", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
        )
            .into_response();
    }
    let req: Value = serde_json::from_slice(&body).unwrap();
    up.requests.lock().unwrap().push(req.clone());
    let model = req["model"].as_str().unwrap().to_string();
    let tools = req.get("tools").is_some();
    let (prompt, completion) = if tools { (20, 9) } else { (11, 7) };
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}});
    let call = json!({"id": "call_stub", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}});
    if req["stream"] != json!(true) {
        up.report(prompt, completion);
        let message = if tools {
            json!({"role": "assistant", "content": null, "tool_calls": [call], "refusal": null})
        } else {
            json!({"role": "assistant", "content": "Hello there", "refusal": null})
        };
        return axum::Json(json!({
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "system_fingerprint": "fp_stub",
            "choices": [{"index": 0, "message": message, "logprobs": null,
                "finish_reason": if tools { "tool_calls" } else { "stop" }}],
            "usage": usage,
            "x_stub_extra": {"kept": true},
        }))
        .into_response();
    }
    let include_usage = req["stream_options"]["include_usage"] == json!(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "system_fingerprint": "fp_stub",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        data(c)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if tools {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_stub", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ));
        for part in ["{\"city\":", "\"Paris\"}"] {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
        events.push(chunk(json!({}), json!("tool_calls")));
    } else {
        for part in ["Hel", "lo there"] {
            events.push(chunk(json!({"content": part}), Value::Null));
        }
        events.push(chunk(json!({}), json!("stop")));
    }
    if include_usage {
        up.report(prompt, completion);
        events.push(data(json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "system_fingerprint": "fp_stub", "choices": [], "usage": usage})));
    }
    events.push("data: [DONE]\n\n".into());
    sse(events)
}

/// `POST /v1/embeddings`.
async fn openai_embeddings(State(up): State<Upstream>, body: Bytes) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    let req: Value = serde_json::from_slice(&body).unwrap();
    up.requests.lock().unwrap().push(req.clone());
    let n = req["input"].as_array().map_or(1, Vec::len);
    let embedding = if req["encoding_format"] == "base64" {
        let bytes: Vec<u8> = EMBEDDING.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(EMBEDDING)
    };
    let prompt = 5 * n as i64;
    up.report(prompt, 0);
    axum::Json(json!({
        "object": "list",
        "data": (0..n).map(|i| json!({"object": "embedding", "index": i, "embedding": embedding})).collect::<Vec<_>>(),
        "model": req["model"],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }))
    .into_response()
}

/// `POST /v1/messages` as Anthropic answers it.
async fn anthropic_messages(
    State(up): State<Upstream>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    if headers["x-api-key"] != ANTHROPIC_KEY || !headers.contains_key("anthropic-version") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})),
        )
            .into_response();
    }
    let req: Value = serde_json::from_slice(&body).unwrap();
    up.requests.lock().unwrap().push(req.clone());
    if body.windows(11).any(|w| w == b"please fail") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "stub refuses"}})),
        )
            .into_response();
    }
    let tools = req.get("tools").is_some();
    let (input, output) = if tools { (25, 12) } else { (13, 6) };
    up.report(input, output);
    let model = req["model"].clone();
    if req["stream"] != json!(true) {
        let content = if tools {
            json!([{"type": "tool_use", "id": "toolu_stub", "name": "get_weather", "input": {"city": "Paris"}}])
        } else {
            json!([{"type": "text", "text": "Bonjour"}])
        };
        return axum::Json(json!({
            "id": "msg_stub", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output},
        }))
        .into_response();
    }
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut events = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_stub", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    if tools {
        events.push(ev("content_block_start", json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_stub", "name": "get_weather", "input": {}}})));
        for part in ["{\"city\":", "\"Paris\"}"] {
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
    } else {
        events.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ));
        for part in ["Bon", "jour"] {
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": part}}),
            ));
        }
    }
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(ev("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null},
        "usage": {"output_tokens": output}})));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    sse(events)
}

/// An upstream that answers every request with the start of a stream (a
/// role chunk and "Hel"), flushed, and then drops the connection without
/// ending the chunked body: a failure that always comes after the first byte.
async fn serve_truncating_stub() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                // Read the request head and its body before answering.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let body_end = loop {
                    let n = socket.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the gateway closed before sending its request");
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(head) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head_text = String::from_utf8_lossy(&seen[..head]).to_lowercase();
                        let length = head_text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        break head + 4 + length;
                    }
                };
                while seen.len() < body_end {
                    let n = socket.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the gateway closed mid-request");
                    seen.extend_from_slice(&buf[..n]);
                }
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                for delta in [
                    json!({"role": "assistant", "content": ""}),
                    json!({"content": "Hel"}),
                ] {
                    let event = data(
                        json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                        "created": 1_700_000_000, "model": "stub-broken",
                        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]}),
                    );
                    out.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
                }
                socket.write_all(out.as_bytes()).await.unwrap();
                socket.flush().await.unwrap();
                // Dropping the socket here ends the stream mid-body.
            });
        }
    });
    format!("http://{addr}")
}

/// The server and its stub upstreams.
struct Env {
    server: TestServer,
    openai: Upstream,
    down: Upstream,
    anthropic: Upstream,
    _config: tempfile::TempDir,
}

static KEYS: Once = Once::new();

/// The OpenAI Python package the SDK tests use.
const OPENAI_PACKAGE: &str = "openai>=1.50,<4";

/// A Python that can `import openai`.
fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| common::python_with("openai", OPENAI_PACKAGE, env!("CARGO_TARGET_TMPDIR")))
}

impl Env {
    async fn start(backend: Backend, extra: &str) -> Env {
        Env::start_with(backend, extra, "").await
    }

    /// As [`Env::start`], with `providers` (`[[ai.providers]]` tables for
    /// upstreams the test started) listed after the usual ones.
    async fn start_with(backend: Backend, extra: &str, providers: &str) -> Env {
        KEYS.call_once(|| {
            // SAFETY: set once, before any server of this binary reads them;
            // nothing else in these tests writes the environment.
            unsafe {
                std::env::set_var("SYLPHX_TEST_STUB_KEY", STUB_KEY);
                std::env::set_var("SYLPHX_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY);
            }
        });
        let openai = Upstream::default();
        let down = Upstream {
            fails_with: Some(StatusCode::INTERNAL_SERVER_ERROR),
            ..Upstream::default()
        };
        let anthropic = Upstream::default();
        let openai_url = serve_router(
            Router::new()
                .route("/v1/chat/completions", post(openai_chat))
                .route("/v1/embeddings", post(openai_embeddings))
                .with_state(openai.clone()),
        )
        .await;
        let down_url = serve_router(
            Router::new()
                .route("/v1/chat/completions", post(openai_chat))
                .with_state(down.clone()),
        )
        .await;
        let broken_url = serve_truncating_stub().await;
        let anthropic_url = serve_router(
            Router::new()
                .route("/v1/messages", post(anthropic_messages))
                .with_state(anthropic.clone()),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sylphx.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[ai]
usage_flush_ms = 20
{extra}

[ai.aliases]
stub-latest = "stub-chat"

# Listed first, so the first request for stub-fallback meets the failing deployment.
[[ai.providers]]
name = "down"
base_url = "{down_url}/v1"
models = ["stub-fallback"]

[[ai.providers]]
name = "stub"
base_url = "{openai_url}/v1/"
api_key_env = "SYLPHX_TEST_STUB_KEY"
models = [
  {{ id = "stub-chat", upstream = "gpt-stub", input_usd_per_mtok = 1000.0, output_usd_per_mtok = 2000.0 }},
  "stub-embed", "stub-fallback",
]

[[ai.providers]]
name = "truncating"
base_url = "{broken_url}/v1"
models = ["stub-broken"]

[[ai.providers]]
name = "claude"
kind = "anthropic"
base_url = "{anthropic_url}"
api_key_env = "SYLPHX_TEST_ANTHROPIC_KEY"
models = [{{ id = "claude-stub", upstream = "claude-3-stub" }}]

{providers}
"#
            ),
        )
        .unwrap();
        let server = TestServer::start_with_config(backend, Some(path)).await;
        Env {
            server,
            openai,
            down,
            anthropic,
            _config: dir,
        }
    }

    /// Runs one scenario of tests/ai/sdk.py with `token` as the API key.
    async fn sdk(&self, token: &str, scenario: &str) -> Value {
        let out = tokio::process::Command::new(python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ai/sdk.py"))
            .arg(scenario)
            .env("OPENAI_BASE_URL", format!("{}/api/v1", self.server.base))
            .env("OPENAI_API_KEY", token)
            .output()
            .await
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "sdk.py {scenario} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sdk.py {scenario} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `aiUsage` rows once the gateway has recorded `requests` requests.
    async fn usage_after(&self, token: &str, requests: i64) -> Value {
        let query = "{ aiUsage { requests promptTokens completionTokens costUsd monthToDateUsd
            rows { day model apiKeyId requests promptTokens completionTokens totalTokens } } }";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let body = self.server.graphql(token, query, json!({})).await;
            let usage = &body["data"]["aiUsage"];
            assert!(usage.is_object(), "{body}");
            if usage["requests"].as_i64() >= Some(requests) {
                return usage.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "usage never reached {requests} requests: {usage}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The dashboard's completion mutation, asking for everything it returns.
const CHAT: &str = "mutation($input: AiChatInput!) { aiChatCompletion(input: $input) {
    id model content finishReason usage { promptTokens completionTokens totalTokens } } }";

/// A chat input with one user message.
fn ask(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

impl Env {
    /// `aiChatCompletion(input)` with `token`; the whole response body.
    async fn chat(&self, token: &str, input: Value) -> Value {
        self.server
            .graphql(token, CHAT, json!({ "input": input }))
            .await
    }

    /// `aiChatCompletion(input)` with a dashboard session cookie (or,
    /// with None, no credentials at all): status and body.
    async fn chat_as(&self, session: Option<&str>, input: Value) -> (StatusCode, Value) {
        let mut req = self
            .server
            .client()
            .post(self.server.url("/graphql"))
            .json(&json!({ "query": CHAT, "variables": { "input": input } }));
        if let Some(jwt) = session {
            req = req
                .header("cookie", format!("slx_session={jwt}"))
                .header("origin", &self.server.base);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    /// A signed dashboard session for user `sub` of the token's organisation.
    async fn session(&self, token: &str, sub: &str, role: Role) -> (uuid::Uuid, String) {
        let org = self
            .server
            .graphql(token, "{ organization { id } }", json!({}))
            .await;
        let org =
            uuid::Uuid::parse_str(org["data"]["organization"]["id"].as_str().unwrap()).unwrap();
        let jwt = self
            .server
            .app
            .sessions()
            .issue(&Claims {
                sub: sub.into(),
                org,
                role,
                exp: chrono::Utc::now().timestamp() as u64 + 3600,
            })
            .unwrap();
        (org, jwt)
    }

    /// Hits on every stub upstream.
    fn upstream_hits(&self) -> usize {
        [&self.openai, &self.down, &self.anthropic]
            .iter()
            .map(|u| u.hits.load(Ordering::SeqCst))
            .sum()
    }
}

/// The id of the API key behind `token`.
async fn key_id(server: &TestServer, token: &str) -> String {
    let viewer = server
        .graphql(token, "{ viewer { actorType actorId } }", json!({}))
        .await;
    assert_eq!(viewer["data"]["viewer"]["actorType"], "token", "{viewer}");
    viewer["data"]["viewer"]["actorId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The answer of a successful `aiChatCompletion`.
fn completion(resp: &Value) -> &Value {
    assert!(resp["errors"].is_null(), "{resp}");
    &resp["data"]["aiChatCompletion"]
}

/// The single error of a refused `aiChatCompletion`: (code, field, message).
fn refusal(resp: &Value) -> (String, Option<String>, String) {
    assert_eq!(resp["data"], Value::Null, "{resp}");
    let errors = resp["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{resp}"));
    assert_eq!(errors.len(), 1, "{resp}");
    let e = &errors[0];
    (
        e["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        e["extensions"]["details"]["field"]
            .as_str()
            .map(str::to_string),
        e["message"].as_str().unwrap().to_string(),
    )
}

/// Sums a model's rows of an `aiUsage` answer: (requests, prompt, completion).
fn model_usage(usage: &Value, model: &str) -> (i64, i64, i64) {
    usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["model"] == model)
        .fold((0, 0, 0), |(n, p, c), r| {
            (
                n + r["requests"].as_i64().unwrap(),
                p + r["promptTokens"].as_i64().unwrap(),
                c + r["completionTokens"].as_i64().unwrap(),
            )
        })
}

backend_tests!(
    openai_sdk_round_trips,
    upstream_500_falls_back,
    mid_stream_failure_raises_in_the_sdk,
    invalid_token_is_401_in_openai_shape,
    spent_budget_is_429,
    anthropic_translation,
    graphql_completion_goes_through_the_gateway,
    graphql_completion_names_the_bad_field,
    graphql_completion_follows_the_mutation_roles,
    graphql_completion_shares_the_budget_with_rest,
);

async fn openai_sdk_round_trips(backend: Backend) {
    let env = Env::start(backend, "").await;
    let token = env.server.admin_token.clone();
    let r = env.sdk(&token, "suite").await;

    // A plain completion, byte for byte: the upstream's own fields arrive,
    // and the upstream got the request's unknown fields.
    let chat = &r["chat"];
    assert_eq!(chat["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    assert_eq!(chat["model"], "gpt-stub", "the upstream's id for the model");
    assert_eq!(chat["system_fingerprint"], "fp_stub");
    assert_eq!(chat["usage"]["prompt_tokens"], 11);
    assert_eq!(chat["usage"]["completion_tokens"], 7);
    assert_eq!(r["chat_extra"], json!({"kept": true}));
    let seen = env.openai.requests();
    assert_eq!(seen[0]["x_custom_field"], json!({"nested": [1, 2]}));
    assert_eq!(seen[0]["model"], "gpt-stub");
    assert_eq!(r["alias"], "Hello there");

    // Streams: every chunk, one id, usage when asked for and only then.
    let stream = &r["stream"];
    assert_eq!(stream["content"], "Hello there");
    assert_eq!(stream["finish"], json!(["stop"]));
    assert_eq!(stream["ids"], 1);
    assert_eq!(stream["chunks"], 5, "role, two deltas, finish, usage");
    assert_eq!(
        stream["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    let quiet = &r["stream_no_usage"];
    assert_eq!(quiet["content"], "Hello there");
    assert_eq!(quiet["usage"], Value::Null);
    assert_eq!(quiet["chunks"], 4);
    // The gateway asked for usage itself, to meter the stream.
    let forced = seen
        .iter()
        .filter(|b| b["stream"] == json!(true))
        .nth(1)
        .unwrap();
    assert_eq!(forced["stream_options"]["include_usage"], true);

    // Tool calls, whole and streamed.
    let call = &r["tools"]["choices"][0];
    assert_eq!(call["finish_reason"], "tool_calls");
    assert_eq!(
        call["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        call["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    let streamed = &r["tools_stream"];
    assert_eq!(
        streamed["tool_calls"]["0"],
        json!({"id": "call_stub", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(streamed["finish"], json!(["tool_calls"]));

    // Embeddings: floats, and base64 (the SDK's default) decoded by the SDK.
    let floats = &r["embed_float"];
    assert_eq!(floats["data"].as_array().unwrap().len(), 2);
    assert_eq!(floats["data"][1]["embedding"], json!(EMBEDDING));
    assert_eq!(r["embed_default"]["data"][0]["embedding"], json!(EMBEDDING));
    let embeds: Vec<Value> = seen
        .iter()
        .filter(|b| b.get("input").is_some())
        .cloned()
        .collect();
    assert_eq!(embeds[0]["encoding_format"], "float");
    assert_eq!(embeds[1]["encoding_format"], "base64");

    // Models: what is configured, aliases included.
    assert_eq!(
        r["models"],
        json!([
            "claude-stub",
            "stub-broken",
            "stub-chat",
            "stub-embed",
            "stub-fallback",
            "stub-latest"
        ])
    );
    assert_eq!(r["model"]["id"], "stub-latest");
    assert_eq!(r["model"]["owned_by"], "stub");
    let unknown = &r["unknown_model"];
    assert_eq!(unknown["class"], "NotFoundError");
    assert_eq!(unknown["body"]["code"], "model_not_found");

    // Usage recorded is what the upstream reported, per model.
    let usage = env.usage_after(&token, 8).await;
    assert_eq!(usage["requests"], 8, "{usage}");
    let (chat_prompt, chat_completion) = {
        let all = env.openai.usage.lock().unwrap().clone();
        // Embedding reports have no completion tokens; chat reports all do.
        all.iter()
            .filter(|(_, c)| *c > 0)
            .fold((0, 0), |(p, c), (a, b)| (p + a, c + b))
    };
    assert_eq!(
        model_usage(&usage, "stub-chat"),
        (6, chat_prompt, chat_completion)
    );
    let (all_prompt, _) = env.openai.reported();
    assert_eq!(
        model_usage(&usage, "stub-embed"),
        (2, all_prompt - chat_prompt, 0)
    );
    // 11+11+11+11+20+20 prompt and 7*4+9*2 completion tokens at $1000 and $2000 per million.
    assert_eq!(usage["costUsd"], json!(0.176));
    assert_eq!(usage["monthToDateUsd"], json!(0.176));
}

async fn upstream_500_falls_back(backend: Backend) {
    let env = Env::start(backend, "").await;
    let r = env.sdk(&env.server.admin_token, "fallback").await;
    assert_eq!(r["content"], "Hello there");
    assert_eq!(
        env.down.hits.load(Ordering::SeqCst),
        1,
        "the failing deployment was tried first"
    );
    assert_eq!(env.openai.hits.load(Ordering::SeqCst), 1);
}

async fn mid_stream_failure_raises_in_the_sdk(backend: Backend) {
    let env = Env::start(backend, "").await;
    let r = env.sdk(&env.server.admin_token, "broken").await;
    // What arrived before the break reached the caller.
    assert_eq!(r["received"], "Hel", "{r}");
    let raised = &r["raised"];
    assert_eq!(raised["class"], "APIError", "{r}");
    assert!(
        raised["message"].as_str().unwrap().contains("mid-stream"),
        "{raised}"
    );
    assert_eq!(raised["body"]["type"], "server_error");
}

async fn invalid_token_is_401_in_openai_shape(backend: Backend) {
    let env = Env::start(backend, "").await;
    let r = env.sdk("unused", "bad-key").await;
    for case in ["unknown", "garbage"] {
        let e = &r[case];
        assert_eq!(e["class"], "AuthenticationError", "{case}: {e}");
        assert_eq!(e["status"], 401);
        assert_eq!(e["body"]["type"], "invalid_request_error");
        assert_eq!(e["body"]["code"], "invalid_api_key");
        assert_eq!(e["requests_sent"], 1, "a 401 is not retried");
    }
    assert_eq!(env.openai.hits.load(Ordering::SeqCst), 0);

    // The raw body is exactly OpenAI's shape.
    let resp = env
        .server
        .client()
        .get(env.server.url("/api/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    let error = body["error"].as_object().unwrap();
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["code", "message", "param", "type"]);
    assert_eq!(body.as_object().unwrap().len(), 1);
}

async fn spent_budget_is_429(backend: Backend) {
    let env = Env::start(backend, "").await;
    let token = env.server.token("thrifty", Role::Admin).await;
    // One stub-chat completion costs 2.5 cents; the budget is 1 cent.
    let set = env
        .server
        .graphql(
            &token,
            "mutation { setAiBudget(monthlyBudgetCents: 1) { monthlyBudgetCents } }",
            json!({}),
        )
        .await;
    assert_eq!(set["data"]["setAiBudget"]["monthlyBudgetCents"], 1, "{set}");
    let r = env.sdk(&token, "budget").await;
    assert_eq!(r["first"], "Hello there");
    let second = &r["second"];
    assert_eq!(second["class"], "RateLimitError", "{r}");
    assert_eq!(second["status"], 429);
    assert_eq!(second["headers"]["x-should-retry"], "false");
    assert_eq!(second["body"]["code"], "insufficient_quota");
    assert_eq!(r["second_requests_sent"], 1, "the SDK did not retry");
    assert_eq!(env.openai.hits.load(Ordering::SeqCst), 1);

    // Another organisation is not affected.
    let other = env.sdk(&env.server.admin_token, "fallback").await;
    assert_eq!(other["content"], "Hello there");
}

async fn anthropic_translation(backend: Backend) {
    let env = Env::start(backend, "").await;
    let token = env.server.admin_token.clone();
    let r = env.sdk(&token, "anthropic").await;

    // The request as Anthropic wants it: system on top, tool use and result as blocks.
    let seen = env.anthropic.requests();
    let first = &seen[0];
    assert_eq!(first["model"], "claude-3-stub");
    assert_eq!(first["system"], "You are terse.");
    assert_eq!(first["max_tokens"], 300);
    assert_eq!(
        first["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_prev", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_prev", "content": "18C and sunny"}]},
        ])
    );
    assert_eq!(seen[1]["tools"][0]["name"], "get_weather");
    assert_eq!(
        seen[1]["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert_eq!(seen[1]["max_tokens"], 4096, "Anthropic requires max_tokens");

    // And the answers as OpenAI shapes them.
    let chat = &r["chat"];
    assert_eq!(chat["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    assert_eq!(chat["usage"]["prompt_tokens"], 13);
    assert_eq!(chat["usage"]["completion_tokens"], 6);
    assert_eq!(chat["usage"]["total_tokens"], 19);
    let tools = &r["tools"]["choices"][0];
    assert_eq!(tools["finish_reason"], "tool_calls");
    assert_eq!(tools["message"]["tool_calls"][0]["id"], "toolu_stub");
    assert_eq!(
        tools["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let args: Value = serde_json::from_str(
        tools["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    let stream = &r["stream"];
    assert_eq!(stream["content"], "Bonjour");
    assert_eq!(stream["finish"], json!(["stop"]));
    assert_eq!(stream["ids"], 1);
    assert_eq!(stream["usage"]["prompt_tokens"], 13);
    assert_eq!(stream["usage"]["completion_tokens"], 6);
    let streamed = &r["tools_stream"];
    assert_eq!(
        streamed["tool_calls"]["0"],
        json!({"id": "toolu_stub", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(streamed["finish"], json!(["tool_calls"]));
    assert_eq!(streamed["usage"], Value::Null, "not asked for");

    // Anthropic's errors arrive in OpenAI's shape with their status.
    let error = &r["error"];
    assert_eq!(error["class"], "BadRequestError");
    assert_eq!(error["status"], 400);
    assert_eq!(error["body"]["message"], "stub refuses");

    // Usage recorded is what the upstream reported.
    let usage = env.usage_after(&token, 4).await;
    let (prompt, completion) = env.anthropic.reported();
    assert_eq!(model_usage(&usage, "claude-stub"), (4, prompt, completion));
}

/// A key sent twice could be read one way by the gateway's checks and
/// another by the upstream: it is refused, naming the key, and nothing is
/// forwarded or billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_before_anything_is_forwarded() {
    let env = Env::start(Backend::Sqlite, "").await;
    let token = env.server.token("dupes", Role::Write).await;
    let hi = r#"[{"role":"user","content":"hi"}]"#;
    for (path, body, key) in [
        (
            "/api/v1/chat/completions",
            format!(r#"{{"model":"stub-chat","messages":{hi},"model":"gpt-unlisted"}}"#),
            "model",
        ),
        (
            "/api/v1/chat/completions",
            format!(r#"{{"model":"stub-chat","stream":false,"messages":{hi},"stream":true}}"#),
            "stream",
        ),
        (
            "/api/v1/chat/completions",
            format!(
                r#"{{"model":"stub-chat","messages":{hi},"stream":true,"stream_options":{{"include_usage":false,"include_usage":true}}}}"#
            ),
            "include_usage",
        ),
        (
            "/api/v1/embeddings",
            r#"{"model":"stub-embed","input":"x","model":"gpt-unlisted"}"#.to_string(),
            "model",
        ),
    ] {
        let resp = env
            .server
            .client()
            .post(env.server.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("duplicate key '{key}'")),
            "{body}: {message}"
        );
    }
    assert_eq!(env.upstream_hits(), 0, "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_rate_limits_with_headers() {
    let env = Env::start(
        Backend::Sqlite,
        "requests_per_minute = 2\ntokens_per_minute = 100000",
    )
    .await;
    let token = env.server.token("limited", Role::Write).await;
    let send = || {
        env.server
            .client()
            .post(env.server.url("/api/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": "stub-chat", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers()["x-ratelimit-limit-tokens"], "100000");
    assert!(first.headers().contains_key("x-ratelimit-reset-requests"));
    let mut refused = None;
    // The window may roll over between requests; within three more it must refuse.
    for _ in 0..3 {
        let resp = send().await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("a third request in one minute is refused");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");

    // Another token of the same organisation has its own window.
    let other = env.server.token("limited", Role::Write).await;
    let resp = env
        .server
        .client()
        .post(env.server.url("/api/v1/chat/completions"))
        .bearer_auth(&other)
        .json(&json!({"model": "stub-chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn graphql_completion_goes_through_the_gateway(backend: Backend) {
    let env = Env::start(backend, "").await;
    let token = env.server.admin_token.clone();

    // An alias, resolved like the REST endpoint resolves it; the optional
    // settings reach the upstream in OpenAI's names.
    let resp = env
        .chat(
            &token,
            json!({"model": "stub-latest", "temperature": 0.5, "maxTokens": 50, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]}),
        )
        .await;
    assert_eq!(
        completion(&resp),
        &json!({"id": "chatcmpl-stub", "model": "gpt-stub", "content": "Hello there", "finishReason": "stop",
            "usage": {"promptTokens": 11, "completionTokens": 7, "totalTokens": 18}})
    );
    let sent = &env.openai.requests()[0];
    assert_eq!(sent["model"], "gpt-stub");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    );
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["max_tokens"], 50);
    assert!(sent.get("stream").is_none(), "{sent}");

    // A failing deployment is passed over for the next one.
    let resp = env.chat(&token, ask("stub-fallback", "Hi")).await;
    assert_eq!(completion(&resp)["content"], "Hello there");
    assert_eq!(env.down.hits.load(Ordering::SeqCst), 1);

    // Anthropic models answer in the same shape.
    let resp = env
        .chat(
            &token,
            json!({"model": "claude-stub", "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Salut"},
            ]}),
        )
        .await;
    let answer = completion(&resp);
    assert_eq!(answer["content"], "Bonjour");
    assert_eq!(answer["finishReason"], "stop");
    assert_eq!(
        answer["usage"],
        json!({"promptTokens": 13, "completionTokens": 6, "totalTokens": 19})
    );
    let sent = &env.anthropic.requests()[0];
    assert_eq!(sent["system"], "You are terse.");
    assert_eq!(sent["max_tokens"], 4096);

    // An upstream's refusal is the caller's error, with its message.
    let resp = env.chat(&token, ask("claude-stub", "please fail")).await;
    assert_eq!(
        refusal(&resp),
        ("BAD_REQUEST".into(), None, "stub refuses".into())
    );

    // Usage is recorded per model, under the caller's token; the refused
    // request and the failed attempt cost nothing.
    let usage = env.usage_after(&token, 3).await;
    assert_eq!(usage["requests"], 3, "{usage}");
    assert_eq!(model_usage(&usage, "stub-chat"), (1, 11, 7));
    assert_eq!(model_usage(&usage, "stub-fallback"), (1, 11, 7));
    assert_eq!(model_usage(&usage, "claude-stub"), (1, 13, 6));
    let key = key_id(&env.server, &token).await;
    for row in usage["rows"].as_array().unwrap() {
        assert_eq!(row["apiKeyId"], key.as_str(), "{row}");
    }
    // 11 prompt and 7 completion tokens of stub-chat at $1000 and $2000 per million.
    assert_eq!(usage["costUsd"], json!(0.025));
}

async fn graphql_completion_names_the_bad_field(backend: Backend) {
    let env = Env::start(backend, "").await;
    let token = env.server.admin_token.clone();
    let resp = env.chat(&token, ask("no-such-model", "Hi")).await;
    let (code, field, message) = refusal(&resp);
    assert_eq!(code, "BAD_REQUEST");
    assert_eq!(field.as_deref(), Some("model"));
    assert!(
        message.starts_with("model: ") && message.contains("`no-such-model` does not exist"),
        "{message}"
    );
    for (input, field) in [
        (json!({"model": "stub-chat", "messages": []}), "messages"),
        (
            json!({"model": "stub-chat", "temperature": 2.5, "messages": [{"role": "user", "content": "Hi"}]}),
            "temperature",
        ),
        (
            json!({"model": "stub-chat", "maxTokens": 0, "messages": [{"role": "user", "content": "Hi"}]}),
            "maxTokens",
        ),
    ] {
        let resp = env.chat(&token, input).await;
        let (code, named, _) = refusal(&resp);
        assert_eq!(
            (code.as_str(), named.as_deref()),
            ("BAD_REQUEST", Some(field)),
            "{resp}"
        );
    }
    // An unknown role is refused by the schema itself.
    let resp = env
        .chat(
            &token,
            json!({"model": "stub-chat", "messages": [{"role": "robot", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(resp["data"], Value::Null, "{resp}");
    assert!(
        resp["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("robot"),
        "{resp}"
    );
    assert_eq!(env.upstream_hits(), 0, "nothing reached an upstream");
    // And nothing was metered: a good request is the only one counted.
    completion(&env.chat(&token, ask("stub-chat", "Hi")).await);
    let usage = env.usage_after(&token, 1).await;
    assert_eq!(usage["requests"], 1, "{usage}");
}

async fn graphql_completion_follows_the_mutation_roles(backend: Backend) {
    let env = Env::start(backend, "").await;
    let admin = env.server.admin_token.clone();

    // A read-only token or session may not run it, like every mutation.
    let reader = env.server.token("default", Role::Read).await;
    let resp = env.chat(&reader, ask("stub-chat", "Hi")).await;
    assert_eq!(
        refusal(&resp),
        ("FORBIDDEN".into(), None, "this token is read-only".into())
    );
    let (_, read_session) = env.session(&admin, "viewer-1", Role::Read).await;
    let (status, resp) = env
        .chat_as(Some(&read_session), ask("stub-chat", "Hi"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(refusal(&resp).0, "FORBIDDEN", "{resp}");

    // Over REST too: a read token lists models but spends nothing.
    let rest = |path: &str| {
        env.server
            .client()
            .post(env.server.url(&format!("/api/v1{path}")))
            .bearer_auth(&reader)
    };
    for resp in [
        rest("/chat/completions")
            .json(&json!({"model": "stub-chat", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap(),
        rest("/embeddings")
            .json(&json!({"model": "stub-embed", "input": "Hi"}))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "permission_denied", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let models = env
        .server
        .client()
        .get(env.server.url("/api/v1/models"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::OK);

    // Without credentials the request never reaches GraphQL.
    let (status, resp) = env.chat_as(None, ask("stub-chat", "Hi")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
    assert_eq!(resp["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(
        env.upstream_hits(),
        0,
        "refused callers reached no upstream"
    );

    // A write token and a dashboard user may. The user has no API token:
    // their usage is recorded under a key derived from their id, the same
    // in every session and different for another user.
    let writer = env.server.token("default", Role::Write).await;
    completion(&env.chat(&writer, ask("stub-chat", "Hi")).await);
    let (org, ann) = env.session(&admin, "user-ann", Role::Write).await;
    let (_, ann_again) = env.session(&admin, "user-ann", Role::Write).await;
    let (_, bob) = env.session(&admin, "user-bob", Role::Admin).await;
    for jwt in [&ann, &ann_again, &bob] {
        let (status, resp) = env.chat_as(Some(jwt), ask("stub-chat", "Hi")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(completion(&resp)["content"], "Hello there");
    }
    let usage = env.usage_after(&admin, 4).await;
    let requests_by = |key: String| -> i64 {
        usage["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["apiKeyId"] == key.as_str())
            .map(|r| r["requests"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(
        requests_by(key_id(&env.server, &writer).await),
        1,
        "{usage}"
    );
    let ann_key = sylphx::ai::user_key(org, "user-ann");
    let bob_key = sylphx::ai::user_key(org, "user-bob");
    assert_ne!(ann_key, bob_key);
    assert_eq!(requests_by(ann_key.to_string()), 2, "{usage}");
    assert_eq!(requests_by(bob_key.to_string()), 1, "{usage}");
    assert_eq!(usage["requests"], 4, "{usage}");
}

async fn graphql_completion_shares_the_budget_with_rest(backend: Backend) {
    let env = Env::start(backend, "").await;
    let token = env.server.token("frugal", Role::Admin).await;
    // One stub-chat completion costs 2.5 cents; the budget is 1 cent.
    let set = env
        .server
        .graphql(
            &token,
            "mutation { setAiBudget(monthlyBudgetCents: 1) { monthlyBudgetCents } }",
            json!({}),
        )
        .await;
    assert_eq!(set["data"]["setAiBudget"]["monthlyBudgetCents"], 1, "{set}");
    assert_eq!(
        completion(&env.chat(&token, ask("stub-chat", "Hi")).await)["content"],
        "Hello there"
    );
    // The budget is spent for GraphQL and REST alike.
    let (code, field, message) = refusal(&env.chat(&token, ask("stub-chat", "Hi")).await);
    assert_eq!((code.as_str(), field), ("RATE_LIMITED", None));
    assert!(message.contains("monthly AI budget"), "{message}");
    let rest = env
        .server
        .client()
        .post(env.server.url("/api/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&ask("stub-chat", "Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rest.headers()["x-should-retry"], "false");
    let body: Value = rest.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(env.openai.hits.load(Ordering::SeqCst), 1);
    let usage = env.usage_after(&token, 1).await;
    assert_eq!(usage["monthToDateUsd"], json!(0.025), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_completion_counts_against_the_tokens_rate_limit() {
    let env = Env::start(Backend::Sqlite, "requests_per_minute = 1").await;
    // Each attempt uses a fresh token, so a minute that ends between its
    // requests only costs a retry.
    let mut shared = false;
    for _ in 0..3 {
        let token = env.server.token("limited", Role::Write).await;
        let first = env.chat(&token, ask("stub-chat", "Hi")).await;
        assert_eq!(completion(&first)["content"], "Hello there");
        let rest = env
            .server
            .client()
            .post(env.server.url("/api/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&ask("stub-chat", "Hi"))
            .send()
            .await
            .unwrap();
        let again = env.chat(&token, ask("stub-chat", "Hi")).await;
        if rest.status() == StatusCode::TOO_MANY_REQUESTS && again["errors"].is_array() {
            let body: Value = rest.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limit_exceeded");
            let (code, _, message) = refusal(&again);
            assert_eq!(code, "RATE_LIMITED");
            assert!(message.contains("requests per minute"), "{message}");
            shared = true;
            break;
        }
    }
    assert!(
        shared,
        "a GraphQL completion uses up the token's per-minute requests for REST too"
    );
}

/// The gateway trusts a checked token for a few seconds so its requests
/// never wait on the store; a revocation reaches it within that time,
/// while the rest of the API refuses the token at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_the_gateway_within_seconds() {
    let s = TestServer::start(Backend::Sqlite).await;
    let admin = s.admin_token.clone();
    let created = s
        .graphql(
            &admin,
            r#"mutation { createApiKey(input: {name: "app", role: write}) { apiKey { id } token } }"#,
            json!({}),
        )
        .await;
    let id = created["data"]["createApiKey"]["apiKey"]["id"].clone();
    let token = created["data"]["createApiKey"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    let models = || {
        s.client()
            .get(s.url("/api/v1/models"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(models().await.unwrap().status(), StatusCode::OK);

    let revoked = s
        .graphql(
            &admin,
            "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }",
            json!({"id": id}),
        )
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    assert_eq!(s.get("/projects", &token).await.0, StatusCode::UNAUTHORIZED);

    let deadline =
        tokio::time::Instant::now() + sylphx::auth::tokens::TOKEN_TTL + Duration::from_secs(5);
    let refused = loop {
        let resp = models().await.unwrap();
        if resp.status() == StatusCode::UNAUTHORIZED {
            break resp;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
}

// Deployments: several providers serving one model share its traffic by
// weight and stand in for each other when one fails before answering.

/// An OpenAI-compatible stub answering chat completions as `up` says; its
/// base URL.
async fn chat_stub(up: Upstream) -> String {
    serve_router(
        Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .with_state(up),
    )
    .await
}

/// `POST /v1/chat/completions` that reads the request and never answers.
async fn never_answer(State(up): State<Upstream>) -> Response {
    up.hits.fetch_add(1, Ordering::SeqCst);
    std::future::pending().await
}

/// An upstream that accepts every request and stays silent; its base URL.
async fn silent_stub(up: Upstream) -> String {
    serve_router(
        Router::new()
            .route("/v1/chat/completions", post(never_answer))
            .with_state(up),
    )
    .await
}

/// A base URL nothing answers at: a port bound but not listening, so
/// connections to it are refused. The port stays reserved while the
/// returned socket lives.
fn refusing_url() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    (socket, url)
}

/// An `[[ai.providers]]` table: the OpenAI-compatible stub at `url`
/// serving `model`, which it knows as `upstream` (and names so in its
/// answers, which shows the client which deployment answered).
fn provider(name: &str, url: &str, weight: u32, model: &str, upstream: &str) -> String {
    format!(
        r#"
[[ai.providers]]
name = "{name}"
base_url = "{url}/v1"
api_key_env = "SYLPHX_TEST_STUB_KEY"
weight = {weight}
models = [{{ id = "{model}", upstream = "{upstream}" }}]
"#
    )
}

impl Env {
    /// `POST /api/v1/chat/completions` with `body`, as an SDK sends it.
    async fn complete(&self, token: &str, body: &Value) -> reqwest::Response {
        self.server
            .client()
            .post(self.server.url("/api/v1/chat/completions"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// Status and `{"error": …}` object of a failed answer, checking that the
/// body has OpenAI's error shape and nothing else.
async fn openai_error(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    let error = body["error"].clone();
    let mut keys: Vec<&str> = error
        .as_object()
        .unwrap_or_else(|| panic!("{body}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    (status, error)
}

/// A completion that succeeded: the upstream's name for the model (which
/// deployment answered) and the reply.
async fn answered(resp: reqwest::Response) -> (String, String) {
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    (
        body["model"].as_str().unwrap().to_string(),
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_deployments_share_a_model() {
    let heavy = Upstream::default();
    let light = Upstream::default();
    let providers = [
        provider(
            "heavy",
            &chat_stub(heavy.clone()).await,
            3,
            "stub-shared",
            "shared-heavy",
        ),
        provider(
            "light",
            &chat_stub(light.clone()).await,
            1,
            "stub-shared",
            "shared-light",
        ),
    ]
    .concat();
    let env = Env::start_with(Backend::Sqlite, "", &providers).await;
    let token = env.server.admin_token.clone();

    // Listed once, owned by the provider that lists it first.
    let models: Value = env
        .server
        .client()
        .get(env.server.url("/api/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shared: Vec<&Value> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == "stub-shared")
        .collect();
    assert_eq!(shared.len(), 1, "{models}");
    assert_eq!(shared[0]["owned_by"], "heavy");
    // One model by id, as `client.models.retrieve` asks for it.
    let get = |path: &str| {
        env.server
            .client()
            .get(env.server.url(&format!("/api/v1/models/{path}")))
            .bearer_auth(&token)
            .send()
    };
    let one = get("stub-shared").await.unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    assert_eq!(one.json::<Value>().await.unwrap(), *shared[0]);
    let missing = get("no-such-model").await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");

    // Weighted round robin, 3:1: three to the heavy deployment, one to the
    // light, and again.
    let mut served = Vec::new();
    for _ in 0..8 {
        let (model, content) =
            answered(env.complete(&token, &ask("stub-shared", "Hi")).await).await;
        assert_eq!(content, "Hello there");
        served.push(model);
    }
    let (h, l) = ("shared-heavy", "shared-light");
    assert_eq!(served, [h, h, h, l, h, h, h, l]);
    assert_eq!(heavy.hits.load(Ordering::SeqCst), 6);
    assert_eq!(light.hits.load(Ordering::SeqCst), 2);

    // Usage is recorded under the model, whichever deployment answered.
    let usage = env.usage_after(&token, 8).await;
    assert_eq!(model_usage(&usage, "stub-shared"), (8, 8 * 11, 8 * 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_is_retried_on_the_next_deployment() {
    let busy = Upstream {
        fails_with: Some(StatusCode::TOO_MANY_REQUESTS),
        ..Upstream::default()
    };
    let spare = Upstream::default();
    let busy_alone = Upstream {
        fails_with: Some(StatusCode::TOO_MANY_REQUESTS),
        ..Upstream::default()
    };
    // The busy deployment is listed first, so the first request meets it.
    let providers = [
        provider(
            "busy",
            &chat_stub(busy.clone()).await,
            1,
            "stub-busy",
            "busy-model",
        ),
        provider(
            "spare",
            &chat_stub(spare.clone()).await,
            1,
            "stub-busy",
            "spare-model",
        ),
        provider(
            "busy-alone",
            &chat_stub(busy_alone.clone()).await,
            1,
            "stub-busy-alone",
            "busy-model",
        ),
    ]
    .concat();
    let env = Env::start_with(Backend::Sqlite, "", &providers).await;
    let token = env.server.admin_token.clone();

    // The 429 came before any byte reached the client: the next deployment
    // answers, and the client sees only its 200.
    let resp = env.complete(&token, &ask("stub-busy", "Hi")).await;
    assert!(!resp.headers().contains_key("retry-after"), "{resp:?}");
    assert_eq!(
        answered(resp).await,
        ("spare-model".into(), "Hello there".into())
    );
    assert_eq!(busy.hits.load(Ordering::SeqCst), 1, "tried first");
    assert_eq!(spare.hits.load(Ordering::SeqCst), 1);

    // With no other deployment, every attempt (1 + `retries`) is refused
    // and the client gets the upstream's own 429 and `retry-after`.
    let resp = env.complete(&token, &ask("stub-busy-alone", "Hi")).await;
    assert_eq!(resp.headers()["retry-after"], "7");
    let (status, error) = openai_error(resp).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["message"], "stub upstream is busy");
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(busy_alone.hits.load(Ordering::SeqCst), 3);

    // Only the answered request is metered.
    let usage = env.usage_after(&token, 1).await;
    assert_eq!(usage["requests"], 1, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_deployment_falls_back() {
    let (_reserved, refusing) = refusing_url();
    let near = Upstream::default();
    let providers = [
        provider("gone", &refusing, 1, "stub-reach", "gone-model"),
        provider(
            "near",
            &chat_stub(near.clone()).await,
            1,
            "stub-reach",
            "near-model",
        ),
        provider("gone-alone", &refusing, 1, "stub-gone", "gone-model"),
    ]
    .concat();
    let env = Env::start_with(Backend::Sqlite, "", &providers).await;
    let token = env.server.admin_token.clone();

    // The first deployment refuses the connection; the next one answers.
    assert_eq!(
        answered(env.complete(&token, &ask("stub-reach", "Hi")).await).await,
        ("near-model".into(), "Hello there".into())
    );
    assert_eq!(near.hits.load(Ordering::SeqCst), 1);

    // No deployment can be reached: 502 in OpenAI's shape.
    let (status, error) = openai_error(env.complete(&token, &ask("stub-gone", "Hi")).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error["type"], "server_error");
    assert_eq!(error["code"], "upstream_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`stub-gone` could be reached"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_times_out() {
    let silent = Upstream::default();
    let prompt = Upstream::default();
    let silent_url = silent_stub(silent.clone()).await;
    let providers = [
        provider("silent", &silent_url, 1, "stub-slow", "silent-model"),
        provider(
            "prompt",
            &chat_stub(prompt.clone()).await,
            1,
            "stub-slow",
            "prompt-model",
        ),
        provider(
            "silent-alone",
            &silent_url,
            1,
            "stub-silent",
            "silent-model",
        ),
    ]
    .concat();
    let env = Env::start_with(Backend::Sqlite, "request_timeout_secs = 1", &providers).await;
    let token = env.server.admin_token.clone();

    // The first deployment takes the request and never answers; after
    // `request_timeout_secs` the next one is asked, and answers.
    assert_eq!(
        answered(env.complete(&token, &ask("stub-slow", "Hi")).await).await,
        ("prompt-model".into(), "Hello there".into())
    );
    assert_eq!(silent.hits.load(Ordering::SeqCst), 1, "tried first");
    assert_eq!(prompt.hits.load(Ordering::SeqCst), 1);

    // The only deployment times out on every attempt: 504 in OpenAI's shape.
    let (status, error) = openai_error(env.complete(&token, &ask("stub-silent", "Hi")).await).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error["type"], "server_error");
    assert_eq!(error["code"], "upstream_error");
    assert!(
        error["message"].as_str().unwrap().contains("timed out"),
        "{error}"
    );
    assert_eq!(silent.hits.load(Ordering::SeqCst), 1 + 3);
}

/// Seconds until the minute's window ends, as an answer states it.
fn reset_secs(resp: &reqwest::Response) -> u64 {
    let h = resp.headers();
    match h.get("x-ratelimit-reset-tokens") {
        Some(v) => v
            .to_str()
            .unwrap()
            .strip_suffix('s')
            .unwrap()
            .parse()
            .unwrap(),
        None => h["retry-after"].to_str().unwrap().parse().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_refuses_after_the_crossing_request() {
    // One stub-chat completion is 11 + 7 = 18 tokens: the second crosses 30.
    let env = Env::start(Backend::Sqlite, "tokens_per_minute = 30").await;
    let mut checked = false;
    // Each attempt uses a fresh token, so a minute that ends between its
    // requests only costs a retry.
    for _ in 0..3 {
        let token = env.server.token("metered", Role::Write).await;
        let hits_before = env.openai.hits.load(Ordering::SeqCst);
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(env.complete(&token, &ask("stub-chat", "Hi")).await);
        }
        let resets: Vec<u64> = answers.iter().map(reset_secs).collect();
        if resets.windows(2).any(|w| w[1] > w[0]) {
            continue; // a new minute began: the counts started over
        }
        let mut answers = answers.into_iter();

        // Admitted answers carry the limit, what was left when they were
        // admitted, and when the window ends; no request limit is set.
        let (first, second, third) = (
            answers.next().unwrap(),
            answers.next().unwrap(),
            answers.next().unwrap(),
        );
        for (resp, remaining) in [(&first, "30"), (&second, "12")] {
            assert_eq!(resp.status(), StatusCode::OK);
            let h = resp.headers();
            assert_eq!(h["x-ratelimit-limit-tokens"], "30");
            assert_eq!(h["x-ratelimit-remaining-tokens"], remaining);
            assert!(h.contains_key("x-ratelimit-reset-tokens"), "{h:?}");
            assert!(!h.contains_key("x-ratelimit-limit-requests"), "{h:?}");
        }
        assert_eq!(
            answered(second).await.1,
            "Hello there",
            "the crossing request completes"
        );

        // The next one is refused before reaching the upstream, with the
        // time left in the minute.
        let retry_after = reset_secs(&third);
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(
            third.headers()["retry-after-ms"],
            (retry_after * 1000).to_string().as_str()
        );
        let (status, error) = openai_error(third).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error["type"], "tokens");
        assert_eq!(error["code"], "rate_limit_exceeded");
        assert_eq!(
            env.openai.hits.load(Ordering::SeqCst) - hits_before,
            2,
            "the refused request reached no upstream"
        );
        checked = true;
        break;
    }
    assert!(checked, "three attempts each straddled a minute");
}

/// `POST /v1/chat/completions` streaming its role and first word at once
/// and the rest only once `release` is notified.
async fn gated_stream(State(release): State<Arc<tokio::sync::Notify>>) -> Response {
    let chunk = |delta: Value, finish: Value| {
        data(
            json!({"id": "chatcmpl-gated", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "gated-model", "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
        )
    };
    let first = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hel"}), Value::Null),
    ]
    .concat();
    let rest = [
        chunk(json!({"content": "lo there"}), Value::Null),
        chunk(json!({}), json!("stop")),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    let body =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) })
            .chain(futures_util::stream::once(async move {
                release.notified().await;
                Ok(Bytes::from(rest))
            }));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_relays_its_first_chunk_before_the_upstream_finishes() {
    let release = Arc::new(tokio::sync::Notify::new());
    let url = serve_router(
        Router::new()
            .route("/v1/chat/completions", post(gated_stream))
            .with_state(release.clone()),
    )
    .await;
    let env = Env::start_with(
        Backend::Sqlite,
        "",
        &format!(
            "[[ai.providers]]\nname = \"gated\"\nbase_url = \"{url}/v1\"\nmodels = [\"stub-gated\"]\n"
        ),
    )
    .await;
    let mut body = ask("stub-gated", "Hi");
    body["stream"] = json!(true);
    let resp = env.complete(&env.server.admin_token, &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut chunks = resp.bytes_stream();

    // The upstream has sent only its first chunk and waits; that chunk
    // reaches the client through the gateway all the same.
    let mut seen = String::new();
    let first = async {
        while !seen.contains(r#""content":"Hel""#) {
            let chunk = chunks
                .next()
                .await
                .expect("the stream ended before its first chunk")
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    // A guard against a hang, should the gateway hold the chunk back.
    tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the first chunk is relayed while the upstream is still answering");
    assert!(
        !seen.contains("lo there") && !seen.contains("[DONE]"),
        "{seen}"
    );

    // Let the upstream finish; the rest follows, ended as OpenAI ends it.
    release.notify_one();
    while let Some(chunk) = chunks.next().await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events: Vec<&str> = seen
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{seen}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello there");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

/// An upstream that sends the first event of a stream, then nothing: the
/// client sees the event, keepalive comments while upstream is silent, and
/// an error event once the silence reaches `stream_idle_timeout_secs`.
#[tokio::test]
async fn a_silent_stream_gets_keepalives_then_an_error_event() {
    let silent = serve_router(Router::new().route(
        "/v1/chat/completions",
        post(|| async {
            let first = data(
                json!({"id": "chatcmpl-quiet", "object": "chat.completion.chunk",
                "created": 1, "model": "quiet",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                             "finish_reason": null}]}),
            );
            let events = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures_util::stream::pending());
            (
                [("content-type", "text/event-stream")],
                Body::from_stream(events),
            )
                .into_response()
        }),
    ))
    .await;
    let env = Env::start_with(
        Backend::Sqlite,
        "keepalive_secs = 1\nstream_idle_timeout_secs = 3",
        &provider("quiet", &silent, 1, "stub-quiet", "quiet"),
    )
    .await;
    let resp = env
        .server
        .client()
        .post(env.server.url("/api/v1/chat/completions"))
        .bearer_auth(&env.server.admin_token)
        .json(&json!({"model": "stub-quiet", "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events[0].contains("\"content\":\"Hi\""), "{text}");
    let keepalives = events.iter().filter(|e| **e == ": keepalive").count();
    assert!(
        (1..=3).contains(&keepalives),
        "a keepalive per second of silence: {text}"
    );
    let last: Value = serde_json::from_str(
        events
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("silent for too long"),
        "{text}"
    );
}
