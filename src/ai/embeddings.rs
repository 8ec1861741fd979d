//! `POST /embeddings`, passed through; base64 produced here when an
//! upstream ignored `encoding_format: "base64"` (the Python SDK's default).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::AiState;
use super::upstream::{Body, Endpoint, upstream_error};
use super::wire::{self, ApiError, RawObject};
use super::{Charge, json_response, serve};

/// The handler.
pub async fn embed(State(app): State<AiState>, headers: HeaderMap, body: Bytes) -> Response {
    serve(app, headers, |app, caller| async move {
        let raw = match RawObject::parse(&body) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let parsed = raw.field::<String>("model", "a string").and_then(|m| {
            let model = m.ok_or_else(|| {
                ApiError::invalid("you must provide a model parameter").param("model")
            })?;
            let format = raw.field::<String>("encoding_format", "a string")?;
            Ok((model, format))
        });
        let (model_id, format) = match parsed {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let gw = app.ai();
        let Some(model) = gw.catalog.get(&model_id) else {
            return ApiError::model_not_found(&model_id).into_response();
        };
        let answer = gw
            .call(model, Endpoint::Embeddings, false, |d| {
                Ok(match raw.get("model") {
                    Some(m) if m.get().as_bytes() == &d.upstream_model_json[..] => body.clone(),
                    _ => raw.rewrite(&[("model", &d.upstream_model_json)]),
                })
            })
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(resp) => return resp,
        };
        let d = answer.deployment;
        let Body::Whole(resp) = answer.body else {
            unreachable!("embeddings are never streamed")
        };
        let bytes = match tokio::time::timeout_at(answer.deadline, resp.bytes()).await {
            Ok(Ok(b)) => b,
            _ => {
                return ApiError::upstream(
                    StatusCode::BAD_GATEWAY,
                    "The upstream failed while answering.",
                )
                .into_response();
            }
        };
        if !answer.status.is_success() {
            return upstream_error(&d.provider, answer.status, bytes);
        }
        let usage = wire::usage_of(&bytes).unwrap_or_default();
        gw.charge(&Charge::new(&caller, &model.id, d), usage);
        let bytes = if format.as_deref() == Some("base64") {
            to_base64(bytes)
        } else {
            bytes
        };
        json_response(answer.status, bytes)
    })
    .await
}

/// Float embeddings re-encoded as base64 of little-endian f32s, as OpenAI
/// sends them; anything else is returned untouched.
fn to_base64(body: Bytes) -> Bytes {
    let floats = wire::value_after(&body, b"\"embedding\"").is_some_and(|v| v.starts_with(b"["));
    if !floats {
        return body;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    for item in v["data"].as_array_mut().into_iter().flatten() {
        if let Some(floats) = item["embedding"].as_array() {
            let bytes: Vec<u8> = floats
                .iter()
                .flat_map(|f| (f.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                .collect();
            item["embedding"] = base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into();
        }
    }
    serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_become_little_endian_base64() {
        let out = to_base64(Bytes::from_static(
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[1.0,-2.5]}]}"#,
        ));
        let v: Value = serde_json::from_slice(&out).unwrap();
        let b64 = v["data"][0]["embedding"].as_str().unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            raw,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
        let already = Bytes::from_static(br#"{"data":[{"embedding":"AACAPw=="}]}"#);
        assert_eq!(to_base64(already.clone()), already);
    }
}
