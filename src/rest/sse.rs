//! `GET /projects/:id/logs` as Server-Sent Events (`?stream=true`, or
//! `Accept: text/event-stream`): the `logs` subscription run in-process,
//! one event per line, `id:` its cursor, so that `Last-Event-ID` (or
//! `?after=`) resumes exactly after the last line a client saw.

use std::convert::Infallible;
use std::time::Duration;

use async_graphql::Executor;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::RestState;
use crate::domain::Ctx;
use crate::error::{Error, Result};

/// The subscription behind the stream.
const LOGS: &str = "subscription($id: String!, $envType: String, $tail: Int, $deploymentId: ID, $after: String, $service: String, $filter: String) { logs(projectId: $id, envType: $envType, tail: $tail, deploymentId: $deploymentId, after: $after, service: $service, filter: $filter) { cursor ts source stream level msg service replica deploymentId } }";

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

/// The event stream for the route's variables.
pub fn logs(
    s: &RestState,
    ctx: &Ctx,
    mut vars: Map<String, Value>,
    after: Option<String>,
) -> Result<Response> {
    if let Some(a) = after {
        if a.trim().parse::<u64>().is_err() {
            return Err(Error::field(
                "Last-Event-ID",
                "must be the id of an event of this stream",
            ));
        }
        vars.insert("after".into(), json!(a.trim()));
    }
    let request = async_graphql::Request::new(LOGS)
        .variables(async_graphql::Variables::from_json(Value::Object(vars)));
    let request = crate::graphql::with_request_data(request, s.app.db(), ctx.clone());
    let events = s.core.execute_stream(request, None).map(|resp| {
        let event = if resp.errors.is_empty() {
            let line = resp.data.into_json().unwrap_or_default()["logs"].take();
            let mut event = Event::default();
            if let Some(cursor) = line["cursor"].as_str() {
                event = event.id(cursor);
            }
            if line["source"] == crate::runtime::LogLine::LAGGED {
                event = event.event("lagged");
            }
            event.data(line.to_string())
        } else {
            let errors = serde_json::to_string(&resp.errors).unwrap_or_default();
            Event::default().event("error").data(errors)
        };
        Ok::<_, Infallible>(event)
    });
    // A followed deployment's stream ends with an `end` event.
    let end = futures_util::stream::once(async {
        Ok::<_, Infallible>(Event::default().event("end").data("{}"))
    });
    // Counted as open until dropped; ends when the server stops.
    let (open, mut stopping) = s.app.open_stream();
    let events = events
        .chain(end)
        .take_until(async move { crate::graphql::ws::stopped(&mut stopping).await })
        .map(move |e| {
            let _counted = &open;
            e
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}
