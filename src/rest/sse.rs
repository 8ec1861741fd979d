//! `GET /projects/:id/logs` as Server-Sent Events (`?stream=true`, or
//! `Accept: text/event-stream`): the lines the `logs` subscription
//! follows, one event per line, `id:` its cursor, so that `Last-Event-ID`
//! (or `?after=`) resumes exactly after the last line a client saw.

use std::convert::Infallible;
use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::RestState;
use crate::domain::Ctx;
use crate::domain::deployments::LogArgs;
use crate::error::{Error, Result};
use crate::graphql::live::LogPlan;

/// A heartbeat comment this often keeps proxies from closing an idle
/// stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// `Some(resume point)` when the client asks for a stream: `?stream=true`
/// (or `1`), or `Accept: text/event-stream`. The resume point is
/// `Last-Event-ID`, else `?after=`.
pub fn wanted(query: &[(String, String)], headers: &HeaderMap) -> Option<Option<String>> {
    let by_query = query
        .iter()
        .any(|(k, v)| k == "stream" && matches!(v.as_str(), "true" | "1" | ""));
    let by_accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !(by_query || by_accept) {
        return None;
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.clone())
        });
    Some(after)
}

/// The event stream for the route's variables: the caller's lines, each
/// written once for every stream that follows it. Bad arguments and an
/// unknown or foreign project are answered before any event, as for the
/// text form.
pub async fn logs(
    s: &RestState,
    ctx: &Ctx,
    vars: Map<String, Value>,
    after: Option<String>,
) -> Result<Response> {
    let after = after
        .map(|a| a.trim().parse::<u64>())
        .transpose()
        .map_err(|_| Error::field("Last-Event-ID", "must be the id of an event of this stream"))?;
    let text = |k: &str| vars.get(k).and_then(Value::as_str);
    let tail = match vars.get("tail") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|t| i32::try_from(t).ok())
                .ok_or_else(|| Error::field("tail", "must be between 0 and 1000"))?,
        ),
    };
    let args = LogArgs {
        env_type: text("envType"),
        service: text("service"),
        deployment: text("deploymentId"),
        filter: text("filter"),
        tail,
        after,
    };
    let project = text("id").unwrap_or_default();
    let lines = s.app.deployer().follow(ctx, project, &args).await?;
    static EVERY_FIELD: LazyLock<LogPlan> = LazyLock::new(LogPlan::every_field);
    // Each line's event is written once for every stream that gets it.
    let events = lines.map(|line| EVERY_FIELD.event(&line));
    // A followed deployment's stream ends with an `end` event.
    let end = futures_util::stream::iter([Bytes::from_static(b"event: end\ndata: {}\n\n")]);
    let mut events = events.chain(end);
    // A comment now and then keeps proxies from closing a quiet stream.
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures_util::stream::poll_fn(move |cx| match events.poll_next_unpin(cx) {
        std::task::Poll::Pending => beat
            .poll_tick(cx)
            .map(|_| Some(Bytes::from_static(b": heartbeat\n\n"))),
        done => done,
    });
    // Counted as open until dropped; ends when the server stops.
    let (open, mut stopping) = s.app.open_stream();
    let events = events
        .take_until(async move { crate::graphql::ws::stopped(&mut stopping).await })
        .map(move |e| {
            let _counted = &open;
            Ok::<_, Infallible>(e)
        });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response())
}
