//! Assembles the application: state, middleware and routes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::{Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;
use tokio::sync::oneshot;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::session::{self, SessionKeys};
use crate::auth::tokens::TokenAuthenticator;
use crate::auth::{Actor, Principal, Role};
use crate::config::{Config, RuntimeKind, read_or_create_secret_file};
use crate::domain::deployments::Deployer;
use crate::domain::{self, Ctx};
use crate::error::{Error, Result};
use crate::graphql::{self, AppSchema};
use crate::reconcile::{Queue, QueueConfig};
use crate::rest::{self, Rest};
use crate::runtime::Runtime;
use crate::runtime::local::sandbox::SandboxSettings;
use crate::runtime::local::{LocalConfig, LocalRuntime};
use crate::secrets::{Keyring, SecretString, random_hex};
use crate::store::{self, StatementCounter};
use crate::streams::LogStore;

/// How often the routing table is checked against the store even when
/// nothing asked for it.
const ROUTE_REFRESH: Duration = Duration::from_secs(15);

/// The local runtime's settings from the configuration.
fn local_config(config: &Config) -> LocalConfig {
    let mut hidden = vec![config.data_dir.clone()];
    hidden.extend(config.config_file.clone());
    hidden.extend(config.kubeconfig.clone());
    hidden.extend(store::sqlite_path(&config.database_url));
    LocalConfig {
        data_dir: config.data_dir.clone(),
        ready_timeout: config.ready_timeout,
        sandbox: SandboxSettings {
            insecure_shared: config.insecure_shared_sandbox,
            ids: config.sandbox_ids,
            max_processes: config.sandbox_max_processes,
            hidden,
            bwrap: config.bwrap.clone(),
            data_dir: config.data_dir.clone(),
        },
        git_roots: config.local_git_roots.clone(),
    }
}

struct Inner {
    config: Config,
    deployer: Deployer,
    db: DatabaseConnection,
    schema: AppSchema,
    rest: Arc<Rest>,
    tokens: TokenAuthenticator,
    sessions: SessionKeys,
    statements: StatementCounter,
    ai: Arc<crate::ai::Gateway>,
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Opens the store, loads keys and compiles the schema and route table.
    pub async fn new(config: Config) -> Result<AppState> {
        config.ensure_data_dir()?;
        let (db, statements) = store::connect(&config.database_url).await?;
        let keyring = Arc::new(Keyring::load(
            config.master_key.as_ref(),
            &config.previous_master_keys,
            &config.data_dir,
        )?);
        let session_secret = match &config.session_secret {
            Some(s) => s.clone(),
            None => SecretString::new(read_or_create_secret_file(
                &config.data_dir.join("session.key"),
                || random_hex(32),
            )?),
        };
        let logs = LogStore::default();
        let runtime: Arc<dyn Runtime> = match config.runtime {
            RuntimeKind::Local => {
                if store::postgres_without_password(&config.database_url) {
                    tracing::warn!(
                        "the store's PostgreSQL accepted a connection without a password while the local runtime runs tenant code on this machine: tenants share its loopback network and can connect to it; require a password (see the README)"
                    );
                }
                Arc::new(LocalRuntime::new(local_config(&config), logs.clone()))
            }
            RuntimeKind::Kubernetes => crate::runtime::connect_kubernetes(&config).await?,
        };
        let queue = Queue::new(
            db.clone(),
            QueueConfig {
                lease: config.job_lease,
                ..QueueConfig::default()
            },
        );
        let deployer = Deployer {
            db: db.clone(),
            keyring: keyring.clone(),
            runtime,
            queue,
            logs,
            sandbox_ids: config.sandbox_ids,
            refresh: Arc::default(),
        };
        let ai = Arc::new(crate::ai::Gateway::new(&config.ai, db.clone())?);
        let schema = graphql::build(db.clone(), keyring, deployer.clone(), ai.clone());
        let rest = Rest::load(&schema).await?;
        Ok(AppState(Arc::new(Inner {
            config,
            deployer,
            db,
            schema,
            rest,
            tokens: TokenAuthenticator::default(),
            sessions: SessionKeys::new(&session_secret)?,
            statements,
            ai,
        })))
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
        let restorer = deployer.clone();
        let queue = deployer.queue.clone();
        let workers = self.config().job_workers;
        tokio::spawn(async move {
            // Releases come back before queued work resumes.
            if let Err(e) = restorer.restore().await {
                tracing::warn!(error = e.message(), "restoring releases failed");
            }
            let handler: Arc<dyn crate::reconcile::Handler> = Arc::new(restorer);
            for _ in 0..workers {
                queue.spawn_worker(handler.clone());
            }
        });
        Ok(apps)
    }

    /// Deployments, runtime and job queue.
    pub fn deployer(&self) -> &Deployer {
        &self.0.deployer
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.0.db
    }
    pub fn schema(&self) -> &AppSchema {
        &self.0.schema
    }
    pub fn rest(&self) -> &Rest {
        &self.0.rest
    }
    pub fn config(&self) -> &Config {
        &self.0.config
    }
    /// SQL statements sent so far (for tests and diagnostics).
    pub fn statements(&self) -> u64 {
        self.0.statements.get()
    }
    /// Signs dashboard sessions.
    pub fn sessions(&self) -> &SessionKeys {
        &self.0.sessions
    }
    /// The AI gateway.
    pub fn ai(&self) -> &Arc<crate::ai::Gateway> {
        &self.0.ai
    }

    /// Resolves the caller from `Authorization: Bearer …` or the session cookie.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    Error::Unauthenticated("malformed Authorization header: expected Bearer".into())
                })?;
            return self.authenticate_token(token).await;
        }
        if let Some(jwt) = session_cookie(headers) {
            let principal = self.0.sessions.verify(&jwt)?;
            domain::organizations::get(self.db(), principal.org_id)
                .await
                .map_err(|_| Error::Unauthenticated("invalid session".into()))?;
            return Ok(principal);
        }
        Err(Error::Unauthenticated(
            "missing credentials: send Authorization: Bearer slx_cli_…".into(),
        ))
    }

    pub async fn authenticate_token(&self, token: &str) -> Result<Principal> {
        self.0.tokens.authenticate(self.db(), token).await
    }

    /// [`Self::authenticate_token`] for the AI gateway: an answer is trusted
    /// for [`crate::auth::tokens::GATEWAY_TOKEN_TTL`], so its hot path
    /// touches no store.
    pub async fn authenticate_token_recent(&self, token: &str) -> Result<Principal> {
        self.0.tokens.authenticate_recent(self.db(), token).await
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(|c| c.ok())
        .find(|c| c.name() == session::COOKIE)
        .map(|c| c.value().to_string())
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A GraphQL-shaped error body for the GraphQL endpoints.
fn graphql_error(err: &Error) -> serde_json::Value {
    json!({ "errors": [{ "message": err.public_message(), "extensions": { "code": err.code() } }] })
}

async fn require_auth(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    match app.authenticate(req.headers()).await {
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

async fn graphql_http(
    State(app): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    method: Method,
    req: GraphQLRequest,
) -> Response {
    let mut req = req.into_inner();
    if method == Method::GET {
        // GraphQL over HTTP: a GET must never change anything.
        let op_name = req.operation_name.clone();
        if let Ok(doc) = req.parsed_query() {
            let mutation = doc.operations.iter().any(|(name, op)| {
                op.node.ty == async_graphql::parser::types::OperationType::Mutation
                    && (op_name.is_none() || name.map(|n| n.as_str()) == op_name.as_deref())
            });
            if mutation {
                let err = Error::bad_request("mutations must be sent with POST");
                return (StatusCode::METHOD_NOT_ALLOWED, Json(graphql_error(&err))).into_response();
            }
        }
    }
    let req = graphql::with_request_data(req, app.db(), ctx);
    GraphQLResponse::from(app.schema().execute(req).await).into_response()
}

/// Reads a token from the `connection_init` payload: `{"authorization": "Bearer …"}` or `{"token": "…"}`.
fn token_from_payload(payload: &serde_json::Value) -> Option<String> {
    let obj = payload.as_object()?;
    for (k, v) in obj {
        let Some(s) = v.as_str() else { continue };
        match k.to_ascii_lowercase().as_str() {
            "authorization" => {
                return Some(s.strip_prefix("Bearer ").unwrap_or(s).trim().to_string());
            }
            "token" => return Some(s.trim().to_string()),
            _ => {}
        }
    }
    None
}

async fn graphql_ws(
    State(app): State<AppState>,
    protocol: GraphQLProtocol,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Browsers cannot set headers on a websocket: the token normally comes in
    // `connection_init`; a session cookie or header on the upgrade also works.
    let from_headers = app.authenticate(&headers).await.ok();
    let request_id = request_id(&headers);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            let schema = app.schema().clone();
            GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let principal = match token_from_payload(&payload) {
                        Some(token) => app.authenticate_token(&token).await?,
                        None => from_headers.ok_or_else(|| {
                            Error::Unauthenticated("missing credentials in connection_init".into())
                        })?,
                    };
                    let ctx = Ctx {
                        principal,
                        request_id,
                    };
                    Ok(graphql::connection_data(app.db(), ctx))
                })
                .keepalive_timeout(Duration::from_secs(30))
                .serve()
        })
}

async fn playground() -> Html<&'static str> {
    Html(include_str!("../playground/index.html"))
}

async fn openapi(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(app.rest().openapi.clone())
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

async fn not_found() -> Response {
    Error::NotFound("no such endpoint".into()).into_response()
}

/// The whole HTTP application.
pub fn router(app: AppState) -> Router {
    let authed_api = rest::router(&app.rest().table)
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            crate::idempotency::layer,
        ))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_auth));
    let api = Router::new()
        .route("/health/status", get(health))
        .route("/health/runners", get(health_runners))
        .route("/openapi.json", get(openapi))
        .route(
            "/webhooks/github",
            axum::routing::post(crate::webhooks::github),
        )
        .merge(authed_api)
        .merge(crate::ai::router())
        .fallback(not_found);
    let graphql = Router::new()
        .route("/graphql", get(graphql_http).post(graphql_http))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            crate::idempotency::layer,
        ))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_auth));
    Router::new()
        .nest("/api/v1", api)
        .merge(graphql)
        .route("/graphql/ws", get(graphql_ws))
        .route("/playground", get(playground))
        .layer(RequestBodyLimitLayer::new(app.config().max_request_bytes))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(app)
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
pub async fn serve(app: AppState) -> Result<()> {
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
        }
    });
    let threads = app.config().http_threads;
    tracing::info!(addr = %listen, threads, "listening");
    let ai = app.ai().clone();
    let runtime = app.deployer().runtime.clone();
    let mut serving = Serving::start(listener, router(app), threads)?;
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        e = serving.failed() => Some(e),
    };
    // Tenant processes stop within their own bound, whatever the API's
    // connections do meanwhile.
    let (stopped, ()) = tokio::join!(serving.stop(), runtime.shutdown());
    ai.meter.flush().await;
    match failed {
        Some(e) => Err(e),
        None => stopped,
    }
}

/// HTTP threads serving one listening socket.
///
/// Each thread runs its own single-threaded runtime and accepts from the
/// same socket: a request, its handler and the upstream calls it makes
/// (the AI gateway keeps a pooled client per thread) stay on one thread,
/// with no hand-off between threads on the way. Work that outlives a
/// request (jobs, the app router, usage writes) runs on the main runtime.
pub struct Serving {
    stop: tokio::sync::watch::Sender<bool>,
    /// Each thread's outcome, as it stops.
    threads: FuturesUnordered<oneshot::Receiver<Result<()>>>,
}

impl Serving {
    /// Starts `threads` threads serving `routes` on `listener`.
    pub fn start(
        listener: std::net::TcpListener,
        routes: Router,
        threads: usize,
    ) -> Result<Serving> {
        let fail = |what: &str, e: std::io::Error| Error::internal(format!("{what}: {e}"));
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("listener", e))?;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let serving = Serving {
            stop,
            threads: FuturesUnordered::new(),
        };
        for n in 0..threads.max(1) {
            let listener = listener
                .try_clone()
                .map_err(|e| fail("cannot share the listener", e))?;
            let (done, finished) = oneshot::channel();
            let (routes, stopping) = (routes.clone(), stopping.clone());
            std::thread::Builder::new()
                .name(format!("sylphx-http-{n}"))
                .spawn(move || serve_thread(listener, routes, stopping, done))
                .map_err(|e| fail("cannot start an HTTP thread", e))?;
            serving.threads.push(finished);
        }
        Ok(serving)
    }

    /// Resolves only if a thread stops before [`Serving::stop`]: why it did.
    pub async fn failed(&mut self) -> Error {
        match self.threads.next().await {
            Some(Ok(Err(e))) => e,
            Some(_) => Error::internal("an HTTP thread stopped"),
            None => std::future::pending().await,
        }
    }

    /// Asks every thread to stop accepting; returns once the requests in
    /// flight are answered.
    pub async fn stop(mut self) -> Result<()> {
        self.signal_stop();
        let mut result = Ok(());
        while let Some(r) = self.threads.next().await {
            if let Ok(Err(e)) = r {
                result = Err(e);
            }
        }
        result
    }

    /// Asks every thread to stop accepting, without waiting.
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// One HTTP thread: serves `listener` on a current-thread runtime until
/// `stopping` turns true, reports through `done`, then keeps the runtime's
/// I/O driver running until the process exits, since sockets it opened
/// (pooled store connections) may still be used from other threads.
fn serve_thread(
    listener: std::net::TcpListener,
    routes: Router,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    done: oneshot::Sender<Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = done.send(Err(Error::internal(format!("HTTP thread runtime: {e}"))));
            return;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::internal(format!("HTTP thread listener: {e}")))?;
        // Small SSE chunks and JSON answers must leave at once (AI gateway).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, routes)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })
            .await
            .map_err(|e| Error::internal(format!("server failed: {e}")))
    });
    let _ = done.send(result);
    runtime.block_on(std::future::pending::<()>());
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
