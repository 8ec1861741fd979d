//! Every error answer is JSON in the documented shape, including the ones
//! no handler wrote: the body limit, undecodable paths, unknown methods and
//! routes, and the extractors' rejections. An error body that is not JSON
//! already is replaced by `{"error": …, "details": null}` (GraphQL's
//! `{"errors": [{message, extensions: {code}}]}` under `/graphql`), keeping
//! the status and the headers.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;

/// The longest plain-text reason kept in the message.
const MAX_REASON: usize = 300;

/// Most bytes of a refused body read (and thrown away) before answering.
const DRAIN_MAX: u64 = 16 * 1024 * 1024;

/// A body declared larger than `limit` is refused with 413 before anything
/// runs. A client usually sends the whole body before it reads an answer:
/// closing on it unread would reset the connection and lose the 413, so up
/// to [`DRAIN_MAX`] bytes are read and dropped first (within the body
/// timeout, which wraps this). A larger declared body is not read at all.
pub async fn refuse_oversized(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|n| *n > limit as u64) else {
        return next.run(req).await;
    };
    if declared <= DRAIN_MAX {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        while let Some(Ok(_)) = body.frame().await {}
    }
    Response::builder()
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .body(Body::from("length limit exceeded"))
        .unwrap_or_default()
}

/// The middleware.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let graphql = req.uri().path().starts_with("/graphql");
    let mut resp = next.run(req).await;
    let status = resp.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was not read: the connection cannot carry
        // another request, and the client must not reuse it.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.split(';').next().unwrap_or_default().trim();
            ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
        });
    if json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let message = message(status, &String::from_utf8_lossy(&text));
    let code = crate::error::code_for_status(status);
    let body = if graphql {
        json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })
    } else {
        json!({ "error": message, "details": null })
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.to_string()))
}

/// The status's reason, with the original text when it reads as a sentence
/// for a client (not a program's debug output).
fn message(status: StatusCode, text: &str) -> String {
    let reason = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large",
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this path",
        StatusCode::NOT_FOUND => "not found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported Content-Type",
        StatusCode::REQUEST_TIMEOUT => "the request body arrived too slowly",
        s if s.is_server_error() => "internal server error",
        s => s.canonical_reason().unwrap_or("bad request"),
    };
    let text = text.trim();
    let readable = !text.is_empty()
        && text.len() <= MAX_REASON
        && !status.is_server_error()
        && text.chars().all(|c| !c.is_control())
        // Debug output of error types: `Variant(Error("…"))`, `Struct { … }`.
        && !text.contains("Error(")
        && !text.contains(" { ")
        && !text.eq_ignore_ascii_case(reason)
        && text != "length limit exceeded";
    if readable {
        format!("{reason}: {text}")
    } else {
        reason.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_readable_reasons_and_drops_debug_output() {
        assert_eq!(
            message(
                StatusCode::BAD_REQUEST,
                "Invalid URL: Invalid UTF-8 in `id`"
            ),
            "Bad Request: Invalid URL: Invalid UTF-8 in `id`"
        );
        assert_eq!(
            message(
                StatusCode::BAD_REQUEST,
                "InvalidRequest(Error(\"recursion limit exceeded\", line: 1, column: 130))"
            ),
            "Bad Request"
        );
        assert_eq!(
            message(StatusCode::PAYLOAD_TOO_LARGE, "length limit exceeded"),
            "request body too large"
        );
        assert_eq!(
            message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "thread panicked at src/x.rs"
            ),
            "internal server error"
        );
    }
}
