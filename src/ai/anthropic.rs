//! Anthropic's Messages API spoken on behalf of OpenAI clients: requests
//! translated to Anthropic's shape, responses, stream events, usage, stop
//! reasons and errors translated back.

use std::collections::HashMap;

use axum::http::StatusCode;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::wire::{ApiError, Usage};

/// An OpenAI chat request as an Anthropic Messages request.
pub fn request(
    openai: &[u8],
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<Bytes, ApiError> {
    let req: Map<String, Value> = serde_json::from_slice(openai)
        .map_err(|e| ApiError::invalid(format!("We could not parse the JSON body: {e}")))?;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
    let msgs = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("'messages' must be an array").param("messages"))?;
    for m in msgs {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.push(text_of(content));
                continue;
            }
            "user" => ("user", user_blocks(content)?),
            "assistant" => {
                let mut blocks = user_blocks(content)?;
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = &call["function"];
                    let args = f["arguments"].as_str().unwrap_or("{}");
                    let input: Value = if args.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args).map_err(|_| {
                            ApiError::invalid("tool_calls[].function.arguments must be JSON")
                                .param("messages")
                        })?
                    };
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call["id"],
                        "name": f["name"],
                        "input": input,
                    }));
                }
                ("assistant", blocks)
            }
            "tool" => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": text_of(content),
                })],
            ),
            other => {
                return Err(
                    ApiError::invalid(format!("unsupported message role '{other}'"))
                        .param("messages"),
                );
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic wants alternating roles: consecutive ones are merged.
        match messages.last_mut() {
            Some((last, b)) if last == role => b.extend(blocks),
            _ => messages.push((role.to_string(), blocks)),
        }
    }
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }
    out.insert(
        "messages".into(),
        messages
            .into_iter()
            .map(|(role, content)| json!({ "role": role, "content": content }))
            .collect(),
    );
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default_max_tokens as u64);
    out.insert("max_tokens".into(), max_tokens.into());
    for key in ["temperature", "top_p", "stream"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut tool = json!({
                    "name": f["name"],
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
                if let Some(d) = f.get("description") {
                    tool["description"] = d.clone();
                }
                tool
            })
            .collect();
        out.insert("tools".into(), tools.into());
    }
    let mut choice = match req.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::Object(o)) => {
            Some(json!({"type": "tool", "name": o.get("function").and_then(|f| f.get("name"))}))
        }
        _ => None,
    };
    if req.get("parallel_tool_calls") == Some(&Value::Bool(false)) && req.contains_key("tools") {
        choice
            .get_or_insert_with(|| json!({"type": "auto"}))
            .as_object_mut()
            .expect("an object")
            .insert("disable_parallel_tool_use".into(), true.into());
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(ApiError::invalid("n > 1 is not supported for this model").param("n"));
    }
    Ok(Bytes::from(
        serde_json::to_vec(&Value::Object(out)).expect("JSON serialises"),
    ))
}

/// Plain text of an OpenAI content value (a string or text parts).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// OpenAI content parts as Anthropic content blocks.
fn user_blocks(content: &Value) -> Result<Vec<Value>, ApiError> {
    match content {
        Value::Null => Ok(vec![]),
        Value::String(s) if s.is_empty() => Ok(vec![]),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| !(p["type"] == "text" && p["text"] == ""))
            .map(|p| match p["type"].as_str() {
                Some("text") => Ok(json!({"type": "text", "text": p["text"]})),
                Some("image_url") => {
                    let url = p["image_url"]["url"].as_str().unwrap_or_default();
                    Ok(match url
                        .strip_prefix("data:")
                        .and_then(|r| r.split_once(";base64,"))
                    {
                        Some((media_type, data)) => json!({
                            "type": "image",
                            "source": {"type": "base64", "media_type": media_type, "data": data},
                        }),
                        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
                    })
                }
                other => Err(ApiError::invalid(format!(
                    "content part type '{}' is not supported for this model",
                    other.unwrap_or("?")
                ))
                .param("messages")),
            })
            .collect(),
        _ => Err(ApiError::invalid("message content must be a string or an array").param("messages")),
    }
}

/// Anthropic's stop reason as OpenAI's finish reason.
fn finish_reason(stop: Option<&str>) -> Value {
    match stop {
        None => Value::Null,
        Some("max_tokens") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        Some(_) => "stop".into(),
    }
}

/// Anthropic usage as OpenAI's (prompt tokens include cached ones, as OpenAI counts them).
fn usage_of(u: &Value) -> (Usage, u64) {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    (
        Usage {
            prompt_tokens: n("input_tokens") + cached + n("cache_creation_input_tokens"),
            completion_tokens: n("output_tokens"),
        },
        cached,
    )
}

fn usage_json(u: Usage, cached: u64) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total(),
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A complete Anthropic message as an OpenAI chat completion.
pub fn response(body: &[u8]) -> Result<(Bytes, Usage), ApiError> {
    let msg: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::upstream(
            StatusCode::BAD_GATEWAY,
            "the upstream sent an unreadable response",
        )
    })?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in msg["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {
                    "name": block["name"],
                    "arguments": serde_json::to_string(&block["input"]).expect("JSON serialises"),
                },
            })),
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = calls.into();
    }
    let (usage, cached) = usage_of(&msg["usage"]);
    let out = json!({
        "id": msg["id"],
        "object": "chat.completion",
        "created": unix_now(),
        "model": msg["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(msg["stop_reason"].as_str()),
        }],
        "usage": usage_json(usage, cached),
        "system_fingerprint": null,
    });
    Ok((
        Bytes::from(serde_json::to_vec(&out).expect("JSON serialises")),
        usage,
    ))
}

/// An Anthropic error body (`{"type":"error","error":{"type","message"}}`)
/// as an OpenAI error with a matching status.
pub fn error(status: StatusCode, body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or("the upstream provider returned an error")
        .to_string();
    // 529 (overloaded) is not a status the SDKs know; 503 means the same.
    let status = if status.as_u16() == 529 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    };
    let kind = match status.as_u16() {
        400..=499 if status != StatusCode::TOO_MANY_REQUESTS => "invalid_request_error",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    ApiError::new(status, kind, message)
}

/// Translates Anthropic stream events into OpenAI chunks as they arrive.
pub struct StreamTranslator {
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    /// Anthropic content block index → OpenAI tool call index.
    tools: HashMap<u64, u64>,
    usage: Usage,
    cached: u64,
    pub finished: bool,
    pub failed: bool,
}

impl StreamTranslator {
    pub fn new(include_usage: bool) -> Self {
        StreamTranslator {
            include_usage,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            tools: HashMap::new(),
            usage: Usage::default(),
            cached: 0,
            finished: false,
            failed: false,
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Value) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        write_event(out, &chunk);
    }

    /// Handles one Anthropic event, appending OpenAI events to `out`.
    pub fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        let Ok(ev) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match ev["type"].as_str().unwrap_or_default() {
            "message_start" => {
                let m = &ev["message"];
                self.id = m["id"].as_str().unwrap_or_default().to_string();
                self.model = m["model"].as_str().unwrap_or_default().to_string();
                (self.usage, self.cached) = usage_of(&m["usage"]);
                self.chunk(
                    out,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                );
            }
            "content_block_start" => {
                let block = &ev["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tools.len() as u64;
                        self.tools.insert(ev["index"].as_u64().unwrap_or(0), index);
                        self.chunk(
                            out,
                            json!({"tool_calls": [{
                                "index": index,
                                "id": block["id"],
                                "type": "function",
                                "function": {"name": block["name"], "arguments": ""},
                            }]}),
                            Value::Null,
                        );
                    }
                    Some("text") if block["text"].as_str().is_some_and(|t| !t.is_empty()) => {
                        self.chunk(out, json!({"content": block["text"]}), Value::Null);
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = &ev["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        self.chunk(out, json!({"content": d["text"]}), Value::Null);
                    }
                    Some("input_json_delta") => {
                        let index = ev["index"].as_u64().unwrap_or(0);
                        let index = self.tools.get(&index).copied().unwrap_or(0);
                        self.chunk(
                            out,
                            json!({"tool_calls": [{"index": index, "function": {"arguments": d["partial_json"]}}]}),
                            Value::Null,
                        );
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                let u = &ev["usage"];
                if let Some(n) = u["output_tokens"].as_u64() {
                    self.usage.completion_tokens = n;
                }
                if u.get("input_tokens").is_some_and(|v| v.is_u64()) {
                    // Newer servers repeat the final input counts here.
                    (self.usage.prompt_tokens, self.cached) = {
                        let (p, c) = usage_of(u);
                        (p.prompt_tokens, c)
                    };
                }
                self.chunk(
                    out,
                    json!({}),
                    finish_reason(ev["delta"]["stop_reason"].as_str()),
                );
            }
            "message_stop" => {
                if self.include_usage {
                    write_event(
                        out,
                        &json!({
                            "id": self.id,
                            "object": "chat.completion.chunk",
                            "created": self.created,
                            "model": self.model,
                            "system_fingerprint": null,
                            "choices": [],
                            "usage": usage_json(self.usage, self.cached),
                        }),
                    );
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.finished = true;
            }
            "error" => {
                let message = ev["error"]["message"]
                    .as_str()
                    .unwrap_or("the upstream provider failed")
                    .to_string();
                let kind = match ev["error"]["type"].as_str() {
                    Some("overloaded_error") | Some("api_error") => "server_error",
                    Some("rate_limit_error") => "rate_limit_exceeded",
                    _ => "invalid_request_error",
                };
                out.extend_from_slice(
                    &ApiError::new(StatusCode::BAD_GATEWAY, kind, message).event(),
                );
                self.failed = true;
            }
            _ => {}
        }
    }
}

fn write_event(out: &mut BytesMut, v: &Value) {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer((&mut *out).writer(), v).expect("JSON serialises");
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_translation() {
        let body = json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "user", "content": [{"type": "text", "text": "And?"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "stop": "END",
            "stream": true,
        });
        let out: Value = serde_json::from_slice(
            &request(&serde_json::to_vec(&body).unwrap(), "claude-x", 1024).unwrap(),
        )
        .unwrap();
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["system"], "Be brief.");
        assert_eq!(out["max_tokens"], 1024);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[1]["content"][0]["input"], json!({"city": "Paris"}));
        // The tool result and the next user turn merge into one user message.
        assert_eq!(msgs[2]["role"], "user");
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(msgs[2]["content"][1]["text"], "And?");
    }

    #[test]
    fn response_translation() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2},
        });
        let (out, usage) = response(&serde_json::to_vec(&body).unwrap()).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 5
            }
        );
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    }

    #[test]
    fn stream_translation() {
        let mut t = StreamTranslator::new(true);
        let mut out = BytesMut::new();
        for ev in [
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ] {
            t.event(&serde_json::to_vec(&ev).unwrap(), &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 7, "{text}");
        assert!(events[1].contains(r#""content":"Hi""#));
        assert!(events[2].contains(r#""id":"toolu_1""#));
        assert!(events[3].contains(r#""arguments":"{\"a\":""#));
        assert!(events[4].contains(r#""finish_reason":"tool_calls""#));
        assert!(
            events[5].contains(r#""completion_tokens":9"#) && events[5].contains(r#""choices":[]"#)
        );
        assert_eq!(events[6], "data: [DONE]");
        assert_eq!(
            t.usage(),
            Usage {
                prompt_tokens: 7,
                completion_tokens: 9
            }
        );
        assert!(t.finished);
    }
}
