//! Assembles the application: state, middleware and routes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use sea_orm::ConnectionTrait;
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::ai::{AiState, Gateway};
use crate::auth::{Actor, Principal, Role};
use crate::domain::{self, Ctx};
use crate::error::{Error, Result};
use crate::graphql::http::{GraphqlState, graphql_error};
use crate::graphql::{self, Core};
pub use crate::listen::Serving;
use crate::rest::{self, Rest, RestState};
use crate::runtime::local::LocalRuntime;
use crate::secrets::SecretString;
pub use crate::state::AppState;
use crate::state::request_id;

/// How often the routing table is checked against the store even when
/// nothing asked for it.
const ROUTE_REFRESH: Duration = Duration::from_secs(15);
/// How often queued revocations of upstream blob keys are retried (and
/// those queued by project and environment deletions done).
const BLOB_KEY_SWEEP: Duration = Duration::from_secs(5);

/// How often captured log lines are written out to the history files (a
/// crash loses at most this much; a clean stop loses nothing).
const LOG_FLUSH: Duration = Duration::from_millis(200);

/// The whole application: the shared state and what each entry point adds.
#[derive(Clone)]
pub struct App {
    pub state: AppState,
    pub graphql: Core,
    pub rest: Arc<Rest>,
    pub ai: Arc<Gateway>,
}

impl std::ops::Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.state
    }
}

impl App {
    /// Opens the store, loads keys and compiles the schema and route table.
    pub async fn new(config: crate::config::Config) -> Result<App> {
        let state = AppState::new(config).await?;
        let ai = Arc::new(Gateway::new(&state.config().ai, state.db().clone())?);
        let graphql = graphql::build(graphql::Shared {
            db: state.db().clone(),
            reads: state.reads().clone(),
            keyring: state.deployer().keyring.clone(),
            deployer: state.deployer().clone(),
            ai: ai.clone(),
            tokens: state.tokens().clone(),
            storages: state.storages().clone(),
        });
        let rest = Rest::load(graphql.schema()).await?;
        Ok(App {
            state,
            graphql,
            rest,
            ai,
        })
    }

    /// Starts what runs beside the API: the job worker, the local app
    /// router, the routing refresh, and the restore of releases that ran
    /// before a restart. Returns the app router's address on the local
    /// runtime.
    pub async fn start_background(&self) -> Result<Option<std::net::SocketAddr>> {
        let deployer = self.deployer().clone();
        let apps = match deployer.runtime.as_any().downcast_ref::<LocalRuntime>() {
            Some(local) => {
                local.start().await?;
                // The table holds every live release before the router
                // answers: a request for one still coming back waits for it
                // instead of being told nothing is served there.
                deployer.refresh_routes().await?;
                deployer.spawn_route_refresh(ROUTE_REFRESH);
                Some(local.serve_router(self.config().apps_listen).await?)
            }
            None => None,
        };
        deployer.logs.spawn_flusher(LOG_FLUSH);
        // The S3 endpoint serves blob storage on every runtime, unless an
        // upstream provider (B2) does.
        if self.storages().serves_s3() {
            crate::blob::serve(
                self.storages().clone(),
                self.config().blob.listen,
                &self.config().data_dir,
            )
            .await?;
        }
        self.storages().spawn_sweeper(BLOB_KEY_SWEEP);
        self.storages().spawn_upstream_check();
        crate::store::spawn_listener(&deployer.db, deployer.changes.clone());
        let restorer = deployer.clone();
        let queue = deployer.queue.clone();
        let workers = self.config().job_workers;
        tokio::spawn(async move {
            // Releases come back before queued work resumes.
            if let Err(e) = restorer.restore().await {
                tracing::warn!(error = e.message(), "restoring releases failed");
            }
            if let Err(e) = restorer.restore_resources().await {
                tracing::warn!(error = e.message(), "restoring data services failed");
            }
            if let Err(e) = restorer.restore_tcp_proxies().await {
                tracing::warn!(error = e.message(), "restoring TCP proxies failed");
            }
            restorer.spawn_resource_upkeep(RESOURCE_BACKUPS);
            let handler: Arc<dyn crate::reconcile::Handler> = Arc::new(restorer);
            for _ in 0..workers {
                queue.spawn_worker(handler.clone());
            }
        });
        Ok(apps)
    }
}

/// How often a managed PostgreSQL gets a scheduled base backup.
const RESOURCE_BACKUPS: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

async fn require_auth(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    match app.authenticate(req.method(), req.headers()).await {
        Ok(principal) => {
            let ctx = Ctx {
                principal,
                request_id: request_id(req.headers()),
            };
            req.extensions_mut().insert(ctx);
            next.run(req).await
        }
        Err(err) => {
            let mut resp = if req.uri().path().starts_with("/graphql") {
                (err.status(), Json(graphql_error(&err))).into_response()
            } else {
                err.into_response()
            };
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

/// How long one health probe may take before its part counts as down.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs one probe under [`HEALTH_PROBE_TIMEOUT`]; `Err` carries why it failed.
async fn probe<F>(what: &str, check: F) -> std::result::Result<(), String>
where
    F: std::future::Future<Output = Result<()>>,
{
    match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.public_message()),
        Err(_) => {
            tracing::warn!(part = what, "health probe timed out");
            Err(format!(
                "no answer within {}s",
                HEALTH_PROBE_TIMEOUT.as_secs()
            ))
        }
    }
}

/// Writes, syncs, reads back and removes a file in the data directory,
/// where releases, keys and (on SQLite) the store live.
async fn storage_probe(dir: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let path = dir.join(format!(".health-{}", uuid::Uuid::new_v4().simple()));
        let fail = |e: std::io::Error| {
            tracing::warn!(error = %e, dir = %dir.display(), "storage health check");
            Error::Unavailable("the data directory is not writable".into())
        };
        let result = (|| {
            let mut f = std::fs::File::create_new(&path)?;
            std::io::Write::write_all(&mut f, b"ok")?;
            f.sync_all()?;
            if std::fs::read(&path)? != b"ok" {
                return Err(std::io::Error::other("read back differs"));
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&path);
        result.map_err(fail)
    })
    .await
    .map_err(|e| Error::internal(format!("storage probe: {e}")))?
}

/// `GET /health/status`: probes the store, the Kubernetes API (when that
/// runtime is on) and the data directory for real, concurrently.
async fn health(State(app): State<AppState>) -> Response {
    let db = app.db().clone();
    let runtime = app.deployer().runtime.clone();
    let on_kubernetes = runtime.kind() == "kubernetes";
    let (database, kubernetes, storage) = tokio::join!(
        probe("database", async move {
            db.execute_unprepared("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| {
                    tracing::warn!(error = %e, "store health check");
                    Error::Unavailable("the store does not answer".into())
                })
        }),
        async {
            if on_kubernetes {
                Some(probe("kubernetes", runtime.health()).await)
            } else {
                None
            }
        },
        probe("storage", storage_probe(app.config().data_dir.clone())),
    );
    let mut failing = serde_json::Map::new();
    let mut state = |name: &str, r: &std::result::Result<(), String>| match r {
        Ok(()) => "ok",
        Err(why) => {
            failing.insert(name.to_string(), json!(why));
            "down"
        }
    };
    let services = json!({
        "database": state("database", &database),
        "kubernetes": match &kubernetes {
            Some(r) => state("kubernetes", r),
            None => "disabled",
        },
        "storage": state("storage", &storage),
    });
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if failing.is_empty() {
        let body = json!({"status": "healthy", "services": services, "timestamp": timestamp});
        return (StatusCode::OK, Json(body)).into_response();
    }
    let names: Vec<&str> = failing.keys().map(String::as_str).collect();
    let body = json!({
        "status": "unhealthy",
        "services": services,
        "timestamp": timestamp,
        "error": format!("unhealthy: {} down", names.join(", ")),
        "details": failing,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /health/runners`: the CI runner pool (ARC `EphemeralRunner`s on
/// Kubernetes; an empty pool on the local runtime).
async fn health_runners(State(app): State<AppState>) -> Response {
    let runners = match app.deployer().runtime.runners().await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let count = |s: &str| runners.iter().filter(|r| r.status == s).count();
    let summary =
        json!({"idle": count("idle"), "busy": count("busy"), "offline": count("offline")});
    Json(json!({"runners": runners, "summary": summary})).into_response()
}

/// An ordinary request (REST, GraphQL over HTTP) that has not been
/// answered within `request_timeout_secs` is answered 503; what it was
/// doing is dropped, and a store transaction in progress rolls back.
/// Streams are not bound by it once their answer has started (SSE logs),
/// and the AI gateway and the websocket have their own limits.
async fn deadline(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let limit = app.config().request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Error::Unavailable(format!(
            "the request did not finish within {} s (request_timeout_secs)",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// `GET /api/v1/rate-limit`: where the caller stands, free of charge.
async fn rate_limit(
    State(app): State<AppState>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    match app.rate_limits().standing(&ctx.principal) {
        Some(s) => {
            let mut resp = Json(json!({
                "enabled": true,
                "limit": s.limit,
                "remaining": s.remaining,
                "resetSeconds": s.reset_seconds,
                "cost": 0,
            }))
            .into_response();
            s.apply(resp.headers_mut());
            resp
        }
        None => Json(json!({
            "enabled": false,
            "limit": null,
            "remaining": null,
            "resetSeconds": null,
            "cost": 0,
        }))
        .into_response(),
    }
}

async fn not_found() -> Response {
    Error::NotFound("no such endpoint".into()).into_response()
}

/// The whole HTTP application.
pub fn router(app: App) -> Router {
    let state = app.state.clone();
    // Authentication first, then idempotency, then the handler within its
    // deadline.
    let authed = |r: Router| {
        r.route_layer(middleware::from_fn_with_state(state.clone(), deadline))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                crate::idempotency::layer,
            ))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_auth))
    };
    let authed_api = authed(rest::router(RestState {
        app: state.clone(),
        core: app.graphql.clone(),
        rest: app.rest.clone(),
    }));
    let rate_limit = authed(
        Router::new()
            .route("/rate-limit", get(rate_limit))
            .with_state(state.clone()),
    );
    let openapi = Bytes::from(serde_json::to_vec(&app.rest.openapi).unwrap_or_default());
    let api = Router::new()
        .route("/health/status", get(health))
        .route("/health/runners", get(health_runners))
        .route(
            "/webhooks/github",
            axum::routing::post(crate::webhooks::github),
        )
        .with_state(state.clone())
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    openapi.clone(),
                )
            }),
        )
        .merge(authed_api)
        .merge(rate_limit)
        .merge(crate::ai::router(AiState {
            app: state.clone(),
            gateway: app.ai.clone(),
        }))
        .fallback(not_found);
    let (graphql_http, graphql_ws) = graphql::http::routes(GraphqlState {
        app: state.clone(),
        core: app.graphql.clone(),
    });
    Router::new()
        .nest("/api/v1", api)
        .merge(authed(graphql_http))
        .merge(graphql_ws)
        .merge(crate::playground::routes())
        .layer(RequestBodyLimitLayer::new(state.config().max_request_bytes))
        .layer(middleware::from_fn_with_state(
            state.config().max_request_bytes,
            crate::rejections::refuse_oversized,
        ))
        .layer(RequestBodyTimeoutLayer::new(
            state.config().connections.body_timeout,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::map_request(drop_odd_request_id))
        .layer(middleware::from_fn(crate::rejections::json_errors))
}

/// A client's `X-Request-Id` is kept (echoed, logged, stored in audit
/// events) only when it is at most 128 characters of `[A-Za-z0-9._:-]`;
/// any other is dropped, and the request gets a fresh id.
async fn drop_odd_request_id(mut req: Request) -> Request {
    let ok = |v: &HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
    };
    let headers = req.headers_mut();
    if headers.get_all("x-request-id").iter().count() > 1
        || headers.get("x-request-id").is_some_and(|v| !ok(v))
    {
        headers.remove("x-request-id");
    }
    req
}

/// On an empty store: creates the `default` organisation and an admin token,
/// prints the token once and writes it to `<data-dir>/admin-token` (0600).
pub async fn bootstrap(app: &AppState) -> Result<Option<SecretString>> {
    if !domain::organizations::is_empty(app.db()).await? {
        return Ok(None);
    }
    let org = domain::organizations::ensure(app.db(), "default").await?;
    let ctx = Ctx {
        principal: Principal {
            org_id: org.id,
            role: Role::Admin,
            actor: Actor::System,
        },
        request_id: None,
    };
    let (_, token) = domain::api_keys::create(
        app.db(),
        &ctx,
        domain::api_keys::NewKey {
            name: "bootstrap admin".into(),
            role: Role::Admin,
            expires_at: None,
        },
    )
    .await?;
    let path = app.config().data_dir.join("admin-token");
    let _ = std::fs::remove_file(&path);
    crate::config::write_private_file(&path, &format!("{}\n", token.expose()))
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))?;
    Ok(Some(token))
}

/// Serves until ctrl-c / SIGTERM, then finishes open requests, writes
/// the AI usage still pending and returns.
pub async fn serve(app: App) -> Result<()> {
    let listen = app.config().listen;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| Error::internal(format!("cannot listen on {listen}: {e}")))?;
    let db = app.db().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Err(e) = crate::idempotency::purge_expired(&db).await {
                tracing::warn!(error = e.message(), "purging idempotency keys failed");
            }
            if let Err(e) = crate::webhooks::purge_deliveries(&db).await {
                tracing::warn!(error = e.message(), "purging webhook deliveries failed");
            }
        }
    });
    let threads = app.config().http_threads;
    tracing::info!(addr = %listen, threads, "listening");
    let ai = app.ai.clone();
    let runtime = app.deployer().runtime.clone();
    let limits = app.config().connections.clone();
    let state = app.state.clone();
    let mut serving = Serving::start(listener, router(app), threads, limits)?;
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        e = serving.failed() => Some(e),
    };
    // Websockets and event streams end with a goodbye, not a reset.
    state.end_streams(Duration::from_secs(3)).await;
    // Tenant processes stop within their own bound, whatever the API's
    // connections do meanwhile.
    let (stopped, ()) = tokio::join!(serving.stop(), runtime.shutdown());
    ai.meter.flush().await;
    state.deployer().logs.flush();
    match failed {
        Some(e) => Err(e),
        None => stopped,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
