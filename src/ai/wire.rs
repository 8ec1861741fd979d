//! OpenAI's wire format: the error shape, the few request fields the
//! gateway reads, body rewriting that keeps every other byte, usage, and
//! SSE event framing.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

/// An error as OpenAI sends it: `{"error":{"message","type","param","code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
    /// `x-should-retry`: tells the SDKs whether retrying can help.
    pub should_retry: Option<bool>,
    /// `retry-after`, in seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            should_retry: None,
            retry_after: None,
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// A 400 about the request body.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .code("invalid_api_key")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .param("model")
        .code("model_not_found")
    }

    /// 502 (or 504 for timeouts): no upstream gave a usable answer.
    pub fn upstream(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "server_error", message).code("upstream_error")
    }

    /// The JSON object under `"error"`.
    pub fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        })
    }

    /// The whole body.
    pub fn body(&self) -> Bytes {
        Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "error": self.object() }))
                .expect("JSON serialises"),
        )
    }

    /// The same error as one SSE event, for failures after a stream began.
    pub fn event(&self) -> Bytes {
        let mut out = BytesMut::from(&b"data: "[..]);
        out.extend_from_slice(&self.body());
        out.extend_from_slice(b"\n\n");
        out.freeze()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(retry) = self.should_retry {
            h.insert(
                "x-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            h.insert("retry-after-ms", HeaderValue::from(secs * 1000));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Token counts as an upstream reported them (or as estimated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The `usage` of a complete OpenAI-shaped response body, if it has one.
pub fn usage_of(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct WithUsage {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// A request body's top-level members, values kept as the raw bytes sent.
pub struct RawObject<'a> {
    pub members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    /// Parses a JSON object; a 400 for anything else.
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    // What is checked must be what is forwarded: a key sent
                    // twice could be read one way here and another upstream.
                    if out.iter().any(|(k, _)| *k == key.0) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate key '{}'",
                            key.0
                        )));
                    }
                    out.push((key.0, map.next_value()?));
                }
                Ok(out)
            }
        }
        struct Key<'a>(Cow<'a, str>);
        impl<'de> Deserialize<'de> for Key<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct KV;
                impl<'de> Visitor<'de> for KV {
                    type Value = Key<'de>;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                        Ok(Key(Cow::Borrowed(v)))
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                        Ok(Key(Cow::Owned(v.to_string())))
                    }
                }
                d.deserialize_str(KV)
            }
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let members = serde::Deserializer::deserialize_map(&mut de, V)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| {
                ApiError::invalid(format!(
                    "We could not parse the JSON body of your request: {e}"
                ))
            })?;
        Ok(RawObject { members })
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A member as `T`; a 400 naming it when it has the wrong type.
    pub fn field<T: Deserialize<'a>>(
        &self,
        key: &'static str,
        what: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|_| ApiError::invalid(format!("'{key}' must be {what}")).param(key)),
        }
    }

    /// The body again with some members replaced (or appended when absent);
    /// every other member keeps its bytes and its place.
    pub fn rewrite(&self, replace: &[(&str, &[u8])]) -> Bytes {
        let len: usize = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = BytesMut::with_capacity(len + 64);
        out.extend_from_slice(b"{");
        let mut first = true;
        let mut push = |out: &mut BytesMut, key: &str, value: &[u8]| {
            if !first {
                out.extend_from_slice(b",");
            }
            first = false;
            out.extend_from_slice(&serde_json::to_vec(key).expect("a string serialises"));
            out.extend_from_slice(b":");
            out.extend_from_slice(value);
        };
        for (k, v) in &self.members {
            match replace.iter().find(|(r, _)| r == k) {
                Some((_, value)) => push(&mut out, k, value),
                None => push(&mut out, k, v.get().as_bytes()),
            }
        }
        for (key, value) in replace {
            if !self.members.iter().any(|(k, _)| k == key) {
                push(&mut out, key, value);
            }
        }
        out.extend_from_slice(b"}");
        out.freeze()
    }
}

/// The request fields the gateway acts on.
pub struct ChatRequest<'a> {
    pub raw: RawObject<'a>,
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
}

impl<'a> ChatRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        let raw = RawObject::parse(body)?;
        let model: String = raw.field("model", "a string")?.ok_or_else(|| {
            ApiError::invalid("you must provide a model parameter").param("model")
        })?;
        let stream = raw.field::<bool>("stream", "a boolean")?.unwrap_or(false);
        let include_usage = match raw.get("stream_options") {
            Some(o) if o.get() != "null" => {
                let options = RawObject::parse(o.get().as_bytes()).map_err(|e| {
                    ApiError::invalid(format!("'stream_options': {}", e.message))
                        .param("stream_options")
                })?;
                options
                    .field::<bool>("include_usage", "a boolean")?
                    .unwrap_or(false)
            }
            _ => false,
        };
        Ok(ChatRequest {
            raw,
            model,
            stream,
            include_usage,
        })
    }

    /// The body for an OpenAI-compatible upstream: the upstream's model id,
    /// and usage always requested on streams so they can be metered.
    /// Unchanged bytes when nothing needs changing.
    pub fn upstream_body(&self, original: &Bytes, upstream_model_json: &[u8]) -> Bytes {
        let model_same = self
            .raw
            .get("model")
            .is_some_and(|m| m.get().as_bytes() == upstream_model_json);
        let force_usage = self.stream && !self.include_usage;
        if model_same && !force_usage {
            return original.clone();
        }
        let mut replace: Vec<(&str, &[u8])> = vec![("model", upstream_model_json)];
        let options;
        if force_usage {
            let mut o: serde_json::Map<String, serde_json::Value> = self
                .raw
                .get("stream_options")
                .and_then(|v| serde_json::from_str(v.get()).ok())
                .unwrap_or_default();
            o.insert("include_usage".into(), true.into());
            options = serde_json::to_vec(&o).expect("JSON serialises");
            replace.push(("stream_options", &options));
        }
        self.raw.rewrite(&replace)
    }
}

/// Finds `"key"` followed by `:` and returns the byte after the colon and
/// any whitespace.
pub fn value_after<'a>(haystack: &'a [u8], quoted_key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(i) = find(&haystack[from..], quoted_key) {
        let rest = &haystack[from + i + quoted_key.len()..];
        let rest = trim_start(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            return Some(trim_start(rest));
        }
        from += i + 1;
    }
    None
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Byte-string search.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a byte stream into SSE events (each kept with its terminating
/// blank line). A chunk that holds only whole events is passed on without
/// a copy; only an event split across chunks is copied to be joined.
#[derive(Default)]
pub struct EventSplitter {
    partial: BytesMut,
}

impl EventSplitter {
    /// Feeds one chunk; returns the block of complete events it finished
    /// (possibly empty) — callers walk it with [`events`].
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.partial.is_empty() {
            let end = last_boundary(&chunk, 0);
            if end == chunk.len() {
                return chunk;
            }
            self.partial.extend_from_slice(&chunk[end..]);
            return chunk.slice(..end);
        }
        // Only the tail can hold a new boundary (a `\n\n` may straddle the join).
        let scan_from = self.partial.len().saturating_sub(3);
        self.partial.extend_from_slice(&chunk);
        let end = last_boundary(&self.partial, scan_from);
        self.partial.split_to(end).freeze()
    }

    /// Whatever is left when the stream ends (an unterminated event).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.partial).freeze()
    }
}

/// The end of the next event boundary at or after `from`, if any.
fn next_boundary(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                if b.get(i + 1) == Some(&b'\n') {
                    return Some(i + 2);
                }
                if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                    return Some(i + 3);
                }
            }
            b'\r' if b.get(i + 1) == Some(&b'\r') => return Some(i + 2),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The end of the last boundary in `b` (scanning from `from`), or 0.
fn last_boundary(b: &[u8], from: usize) -> usize {
    let mut end = 0;
    let mut at = from;
    while let Some(e) = next_boundary(b, at) {
        end = e;
        at = e;
    }
    end
}

/// The events in a block returned by [`EventSplitter::push`], as slices of it.
pub fn events(block: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= block.len() {
            return None;
        }
        let end = next_boundary(block, at).unwrap_or(block.len());
        let ev = block.slice(at..end);
        at = end;
        Some(ev)
    })
}

/// The `data` of one SSE event (several `data:` lines joined by `\n`);
/// None for comments and events without data.
pub fn data_of(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<[u8]>> = None;
    for line in event.split(|&b| b == b'\n' || b == b'\r') {
        let Some(rest) = line.strip_prefix(b"data:") else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        data = Some(match data {
            None => Cow::Borrowed(rest),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(rest);
                Cow::Owned(joined)
            }
        });
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_other_bytes_and_order() {
        let body = br#"{"messages":[{"role":"user","content":"hi \u00e9"}],"model":"a","temperature":1.0e0,"x_vendor":{"k":[1,2]}}"#;
        let raw = RawObject::parse(body).unwrap();
        let out = raw.rewrite(&[
            ("model", br#""b""#),
            ("stream_options", br#"{"include_usage":true}"#),
        ]);
        assert_eq!(
            &out[..],
            &br#"{"messages":[{"role":"user","content":"hi \u00e9"}],"model":"b","temperature":1.0e0,"x_vendor":{"k":[1,2]},"stream_options":{"include_usage":true}}"#[..]
        );
    }

    #[test]
    fn chat_request_fields_and_upstream_body() {
        let original =
            Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#);
        let req = ChatRequest::parse(&original).unwrap();
        assert!(req.stream && !req.include_usage);
        let out = req.upstream_body(&original, br#""m""#);
        assert_eq!(
            &out[..],
            br#"{"model":"m","stream":true,"stream_options":{"x":1,"include_usage":true}}"#
        );
        let plain = Bytes::from_static(br#"{"model":"m", "messages":[]}"#);
        let req = ChatRequest::parse(&plain).unwrap();
        assert_eq!(req.upstream_body(&plain, br#""m""#), plain);
        assert_eq!(
            ChatRequest::parse(b"{}").err().unwrap().param,
            Some("model")
        );
        assert_eq!(
            ChatRequest::parse(b"[1]").err().unwrap().status,
            StatusCode::BAD_REQUEST
        );
        assert!(ChatRequest::parse(br#"{"model":"m","stream":"yes"}"#).is_err());
    }

    #[test]
    fn splitter_passes_whole_events_without_copying() {
        let mut s = EventSplitter::default();
        let chunk = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let out = s.push(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(events(&out).count(), 2);
    }

    #[test]
    fn splitter_joins_split_events() {
        let mut s = EventSplitter::default();
        assert!(s.push(Bytes::from_static(b"data: a\n")).is_empty());
        let out = s.push(Bytes::from_static(b"\ndata: b\r\n\r\ndata: c"));
        let evs: Vec<Bytes> = events(&out).collect();
        assert_eq!(
            evs,
            [
                Bytes::from_static(b"data: a\n\n"),
                Bytes::from_static(b"data: b\r\n\r\n")
            ]
        );
        assert_eq!(&s.rest()[..], b"data: c");
        assert_eq!(
            data_of(b"event: x\ndata: 1\ndata: 2\n\n").unwrap().as_ref(),
            b"1\n2"
        );
        assert!(data_of(b": keepalive\n\n").is_none());
    }

    #[test]
    fn finds_values_after_keys() {
        assert_eq!(
            value_after(br#"{"usage" : {"a":1}}"#, br#""usage""#).unwrap()[0],
            b'{'
        );
        assert_eq!(
            value_after(br#"{"usage":null}"#, br#""usage""#).unwrap()[0],
            b'n'
        );
        assert!(value_after(br#"{"x":"usage"}"#, br#""usage""#).is_none());
        assert_eq!(
            usage_of(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#)
                .unwrap()
                .total(),
            7
        );
    }
}
