//! The built-in HTTP router of the local runtime: routes by `Host` to a
//! ready replica of the environment's web service.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Shared;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn host(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    Some(
        h.rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(h)
            .to_ascii_lowercase(),
    )
}

#[derive(Clone)]
pub(super) struct RouterState {
    pub shared: Arc<Shared>,
    pub client: reqwest::Client,
    pub next: Arc<AtomicUsize>,
    /// How long a request for a known host waits for a ready replica (a
    /// release coming back after a restart, a crashed one restarting).
    pub hold: std::time::Duration,
}

/// A ready replica for `host`: at once, or once one becomes ready within
/// the hold time. `Err` is the answer when there is none.
async fn target(
    st: &RouterState,
    host: &str,
) -> Result<(u16, Arc<super::process::ReplicaState>), Response> {
    let deadline = tokio::time::Instant::now() + st.hold;
    loop {
        // Registered before looking, so no change is missed.
        let changed = st.shared.changed.notified();
        if let Some(t) = st
            .shared
            .pick(host, st.next.fetch_add(1, Ordering::Relaxed))
        {
            return Ok(t);
        }
        if !st.shared.knows(host) {
            return Err(
                (StatusCode::NOT_FOUND, format!("no app is served at {host}")).into_response(),
            );
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "no ready replica").into_response());
        }
    }
}

/// Counts a request in flight to a replica for as long as it lives.
struct InFlight(Arc<super::process::ReplicaState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) async fn proxy(State(st): State<RouterState>, req: Request) -> Response {
    let Some(host) = host(req.headers()) else {
        return (StatusCode::BAD_REQUEST, "missing Host header").into_response();
    };
    let (port, state) = match target(&st, &host).await {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight(state);
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = st
        .client
        .request(parts.method, format!("http://127.0.0.1:{port}{path}"))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    let resp = match upstream.send().await {
        Ok(r) => r,
        Err(_) => return (StatusCode::BAD_GATEWAY, "the app did not answer").into_response(),
    };
    let mut out = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let stream = futures_util::StreamExt::map(resp.bytes_stream(), move |chunk| {
        let _keep = &guard;
        chunk
    });
    out.body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
