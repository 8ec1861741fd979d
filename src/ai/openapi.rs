//! The gateway's three endpoints in the OpenAPI document. They are served
//! by the handlers in this module rather than the route table, so they are
//! described here by hand, in OpenAI's own shapes (bodies are passed to
//! and from the upstreams as sent, so only the fields the gateway reads or
//! guarantees are listed, and every object admits more).

use serde_json::{Map, Value, json};

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OpenAIError" } } }
    })
}

/// Answers every gateway endpoint may give besides its success.
fn errors(responses: &mut Map<String, Value>, model_in_body: bool) {
    responses.insert(
        "401".into(),
        error("Missing, unknown, expired or revoked token (`code: invalid_api_key`)"),
    );
    if model_in_body {
        responses.insert(
            "400".into(),
            error("Malformed body or a field of the wrong type; `param` names it"),
        );
        responses.insert(
            "404".into(),
            error("Unknown model (`code: model_not_found`, `param: model`)"),
        );
        responses.insert(
            "429".into(),
            error(
                "The token's requests or tokens per minute (`code: rate_limit_exceeded`, with `retry-after`), or the organisation's monthly budget (`code: insufficient_quota`, with `x-should-retry: false`)",
            ),
        );
        responses.insert(
            "502".into(),
            error("No upstream gave a usable answer (`code: upstream_error`)"),
        );
        responses.insert(
            "504".into(),
            error("The upstream timed out (`code: upstream_error`)"),
        );
    }
}

fn rate_limit_headers() -> Value {
    let header = |description: &str, ty: &str| json!({ "description": description, "schema": { "type": ty } });
    json!({
        "x-ratelimit-limit-requests": header("Requests per minute allowed to this token (when limited)", "integer"),
        "x-ratelimit-remaining-requests": header("Requests left in this minute", "integer"),
        "x-ratelimit-reset-requests": header("Until the window resets, e.g. `42s`", "string"),
        "x-ratelimit-limit-tokens": header("Tokens per minute allowed to this token (when limited)", "integer"),
        "x-ratelimit-remaining-tokens": header("Tokens left in this minute", "integer"),
        "x-ratelimit-reset-tokens": header("Until the window resets, e.g. `42s`", "string"),
    })
}

fn usage() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prompt_tokens": { "type": "integer" },
            "completion_tokens": { "type": "integer" },
            "total_tokens": { "type": "integer" }
        },
        "required": ["prompt_tokens", "total_tokens"]
    })
}

fn chat_completions() -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "A `chat.completion` object, or with `stream: true` server-sent events: `chat.completion.chunk` objects, then `data: [DONE]`. A failure after the stream began arrives as one `data: {\"error\": …}` event. Silent periods carry `: keepalive` comments.",
            "headers": rate_limit_headers(),
            "content": {
                "application/json": { "schema": { "$ref": "#/components/schemas/ChatCompletion" } },
                "text/event-stream": { "schema": { "type": "string" } }
            }
        }),
    );
    errors(&mut responses, true);
    json!({
        "operationId": "createChatCompletion",
        "summary": "Create a chat completion (OpenAI-compatible)",
        "tags": ["AI"],
        "x-contract-endpoint": 54,
        "security": [{ "bearerAuth": [] }],
        "requestBody": {
            "required": true,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ChatCompletionRequest" } } }
        },
        "responses": responses,
    })
}

fn embeddings() -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "Embeddings as float arrays, or base64 little-endian f32 with `encoding_format: base64`",
            "headers": rate_limit_headers(),
            "content": { "application/json": { "schema": {
                "type": "object",
                "properties": {
                    "object": { "const": "list" },
                    "data": { "type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "object": { "const": "embedding" },
                            "index": { "type": "integer" },
                            "embedding": { "oneOf": [
                                { "type": "array", "items": { "type": "number" } },
                                { "type": "string", "contentEncoding": "base64" }
                            ] }
                        },
                        "required": ["object", "index", "embedding"]
                    } },
                    "model": { "type": "string" },
                    "usage": usage()
                },
                "required": ["object", "data", "model"]
            } } }
        }),
    );
    errors(&mut responses, true);
    json!({
        "operationId": "createEmbedding",
        "summary": "Create embeddings (OpenAI-compatible)",
        "tags": ["AI"],
        "x-contract-endpoint": 55,
        "security": [{ "bearerAuth": [] }],
        "requestBody": {
            "required": true,
            "content": { "application/json": { "schema": {
                "type": "object",
                "properties": {
                    "model": { "type": "string" },
                    "input": { "oneOf": [
                        { "type": "string" },
                        { "type": "array", "items": { "type": "string" } },
                        { "type": "array", "items": { "type": "integer" } },
                        { "type": "array", "items": { "type": "array", "items": { "type": "integer" } } }
                    ] },
                    "encoding_format": { "type": "string", "enum": ["float", "base64"] },
                    "dimensions": { "type": "integer" }
                },
                "required": ["model", "input"]
            } } }
        },
        "responses": responses,
    })
}

fn models() -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({
            "description": "Every configured model and alias",
            "content": { "application/json": { "schema": {
                "type": "object",
                "properties": {
                    "object": { "const": "list" },
                    "data": { "type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "id": { "type": "string" },
                            "object": { "const": "model" },
                            "created": { "type": "integer" },
                            "owned_by": { "type": "string", "description": "The provider serving it" }
                        },
                        "required": ["id", "object", "created", "owned_by"]
                    } }
                },
                "required": ["object", "data"]
            } } }
        }),
    );
    errors(&mut responses, false);
    json!({
        "operationId": "listModels",
        "summary": "List models (OpenAI-compatible)",
        "tags": ["AI"],
        "x-contract-endpoint": 56,
        "security": [{ "bearerAuth": [] }],
        "responses": responses,
    })
}

/// `(path, method, operation)` of each endpoint.
pub fn operations() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("/chat/completions", "post", chat_completions()),
        ("/embeddings", "post", embeddings()),
        ("/models", "get", models()),
    ]
}

/// The component schemas the operations refer to.
pub fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "OpenAIError",
            json!({
                "type": "object",
                "properties": { "error": {
                    "type": "object",
                    "properties": {
                        "message": { "type": "string" },
                        "type": { "type": "string" },
                        "param": { "type": ["string", "null"] },
                        "code": { "type": ["string", "null"] }
                    },
                    "required": ["message", "type", "param", "code"]
                } },
                "required": ["error"]
            }),
        ),
        (
            "ChatCompletionRequest",
            json!({
                "type": "object",
                "description": "OpenAI's chat completion request. Fields not listed are passed to OpenAI-compatible upstreams unchanged.",
                "properties": {
                    "model": { "type": "string", "description": "A model id or alias from GET /models" },
                    "messages": { "type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "role": { "type": "string", "enum": ["system", "developer", "user", "assistant", "tool"] },
                            "content": {}
                        },
                        "required": ["role"]
                    } },
                    "stream": { "type": "boolean" },
                    "stream_options": { "type": "object", "properties": { "include_usage": { "type": "boolean" } } },
                    "temperature": { "type": "number" },
                    "max_tokens": { "type": "integer" },
                    "max_completion_tokens": { "type": "integer" },
                    "tools": { "type": "array", "items": { "type": "object" } },
                    "tool_choice": {}
                },
                "required": ["model", "messages"]
            }),
        ),
        (
            "ChatCompletion",
            json!({
                "type": "object",
                "properties": {
                    "id": { "type": "string" },
                    "object": { "const": "chat.completion" },
                    "created": { "type": "integer" },
                    "model": { "type": "string", "description": "As the upstream that answered names it" },
                    "choices": { "type": "array", "items": {
                        "type": "object",
                        "properties": {
                            "index": { "type": "integer" },
                            "message": {
                                "type": "object",
                                "properties": {
                                    "role": { "const": "assistant" },
                                    "content": { "type": ["string", "null"] },
                                    "tool_calls": { "type": "array", "items": { "type": "object" } }
                                },
                                "required": ["role"]
                            },
                            "finish_reason": { "type": ["string", "null"] }
                        },
                        "required": ["index", "message"]
                    } },
                    "usage": usage()
                },
                "required": ["id", "object", "model", "choices"]
            }),
        ),
    ]
}
