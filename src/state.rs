//! What every request handler shares: configuration, the store, the
//! deployer, and the caller's authentication. The handlers (REST, GraphQL,
//! AI gateway, webhooks) add what is theirs alone in their own state.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use sea_orm::DatabaseConnection;

use crate::auth::Principal;
use crate::auth::session::{self, SessionKeys};
use crate::auth::tokens::TokenAuthenticator;
use crate::config::{Config, RuntimeKind, read_or_create_secret_file};
use crate::domain::deployments::Deployer;
use crate::error::{Error, Result};
use crate::ratelimit::RateLimiter;
use crate::reconcile::{Queue, QueueConfig};
use crate::runtime::Runtime;
use crate::runtime::local::sandbox::SandboxSettings;
use crate::runtime::local::{LocalConfig, LocalRuntime};
use crate::secrets::{Keyring, SecretString, random_hex};
use crate::store::{self, StatementCounter};
use crate::streams::LogStore;

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
        postgres_bin_dir: config.postgres_bin_dir.clone(),
        typesense_bin: config.typesense_bin.clone(),
        tcp_proxy_address: config.tcp_proxy.address,
    }
}

struct Inner {
    config: Config,
    deployer: Deployer,
    db: DatabaseConnection,
    tokens: TokenAuthenticator,
    sessions: SessionKeys,
    statements: StatementCounter,
    reads: store::Reads,
    rate_limits: RateLimiter,
    streams: Streams,
    storages: Arc<crate::domain::storage::Storages>,
}

/// The long-lived answers (websockets, event streams): told when the
/// server stops, and counted, so that shutdown can wait for them to say
/// goodbye.
#[derive(Default)]
pub struct Streams {
    stop: tokio::sync::watch::Sender<bool>,
    open: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

/// Held by an open stream; dropping it counts the stream closed.
pub struct StreamGuard(AppState);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let s = &self.0.0.streams;
        s.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        s.closed.notify_waiters();
    }
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Opens the store, loads keys and starts the runtime's client.
    pub async fn new(config: Config) -> Result<AppState> {
        config.ensure_data_dir()?;
        let (db, statements) =
            store::connect(&config.database_url, config.db_max_connections).await?;
        let reads = store::Reads::new(
            &db,
            config.db_read_connections,
            (config.http_threads, crate::listen::http_thread),
            statements.clone(),
        );
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
        let logs = LogStore::open(&config.data_dir.join("logs"), config.log_history)
            .map_err(|e| Error::internal(format!("cannot open the log history: {e}")))?;
        let runtime: Arc<dyn Runtime> = match config.runtime {
            RuntimeKind::Local => {
                if store::postgres_without_password(&config.database_url) {
                    tracing::warn!(
                        "the store's PostgreSQL accepted a connection without a password while the local runtime runs tenant code on this machine: tenants share its loopback network and can connect to it; require a password (see the README)"
                    );
                }
                Arc::new(LocalRuntime::new(local_config(&config), logs.clone()))
            }
            RuntimeKind::Kubernetes => {
                crate::runtime::connect_kubernetes(config.kubeconfig.as_deref()).await?
            }
        };
        let queue = Queue::new(
            db.clone(),
            QueueConfig {
                lease: config.job_lease,
                ..QueueConfig::default()
            },
        );
        let upstream: Option<Arc<dyn crate::domain::storage::Upstream>> =
            match &config.blob.upstream {
                Some(b2) => Some(Arc::new(crate::blob::b2::B2::new(b2.clone())?)),
                None => None,
            };
        let storages = Arc::new(crate::domain::storage::Storages::new(
            db.clone(),
            keyring.clone(),
            config.blob.bucket.clone(),
            config.blob.max_storages_per_organization,
            config.blob.public_url.clone(),
            upstream,
        ));
        let deployer = Deployer {
            db: db.clone(),
            keyring,
            runtime,
            queue,
            logs,
            sandbox_ids: config.sandbox_ids,
            refresh: Arc::default(),
            changes: Arc::default(),
            public_host: config.public_host.clone(),
            resource_ports: config.resource_ports,
            resource_quota: config.max_resources_per_organization,
            tcp_proxy: config.tcp_proxy,
            samples: Arc::default(),
            storages: storages.clone(),
            volumes: config.volumes,
        };
        let rate_limits = RateLimiter::new(config.rate_limits.clone());
        Ok(AppState(Arc::new(Inner {
            config,
            deployer,
            db,
            tokens: TokenAuthenticator::default(),
            sessions: SessionKeys::new(&session_secret)?,
            statements,
            reads,
            rate_limits,
            streams: Streams::default(),
            storages,
        })))
    }

    /// Registers a long-lived stream: the guard to hold while it is open,
    /// and a receiver that turns `true` when the server stops.
    pub fn open_stream(&self) -> (StreamGuard, tokio::sync::watch::Receiver<bool>) {
        let s = &self.0.streams;
        s.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        (StreamGuard(self.clone()), s.stop.subscribe())
    }

    /// Tells every open stream that the server stops, and waits (at most
    /// `grace`) until they have ended.
    pub async fn end_streams(&self, grace: std::time::Duration) {
        let s = &self.0.streams;
        s.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let closed = s.closed.notified();
            if s.open.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return;
            }
        }
    }

    /// Deployments, runtime and job queue.
    pub fn deployer(&self) -> &Deployer {
        &self.0.deployer
    }
    pub fn db(&self) -> &DatabaseConnection {
        &self.0.db
    }
    /// The list pages' reads (see `store::Reads`).
    pub fn reads(&self) -> &store::Reads {
        &self.0.reads
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
    /// The API's rate limits (REST and GraphQL over HTTP).
    pub fn rate_limits(&self) -> &RateLimiter {
        &self.0.rate_limits
    }
    /// Blob storages and the settings of their S3 endpoint.
    pub fn storages(&self) -> &Arc<crate::domain::storage::Storages> {
        &self.0.storages
    }
    /// The token cache every entry point shares.
    pub fn tokens(&self) -> &TokenAuthenticator {
        &self.0.tokens
    }

    /// Resolves the caller from `Authorization: Bearer …` or the session
    /// cookie. A cookie-authenticated write (any method but GET, HEAD and
    /// OPTIONS) must come from an allowed origin with a JSON body: a page
    /// elsewhere cannot make the browser send either.
    pub async fn authenticate(&self, method: &Method, headers: &HeaderMap) -> Result<Principal> {
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
            if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
                let json = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
                if !json {
                    return Err(Error::UnsupportedMediaType(
                        "a write with the session cookie must send Content-Type: application/json"
                            .into(),
                    ));
                }
                self.check_origin(headers)?;
            }
            let principal = self.0.sessions.verify(&jwt)?;
            if !self
                .0
                .tokens
                .organization_exists(self.db(), principal.org_id)
                .await
            {
                return Err(Error::Unauthenticated("invalid session".into()));
            }
            return Ok(principal);
        }
        Err(Error::Unauthenticated(
            "missing credentials: send Authorization: Bearer slx_cli_…".into(),
        ))
    }

    /// Refuses a request whose `Origin` (or, lacking it, `Referer`) is not
    /// allowed: one of `allowed_origins`, or when none are configured, the
    /// server's own origin (the host the request was sent to).
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<()> {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let origin = match text(header::ORIGIN) {
            Some(o) => Some(o.trim_end_matches('/').to_ascii_lowercase()),
            None => text(header::REFERER).and_then(|r| {
                let (scheme, rest) = r.split_once("://")?;
                let host = rest.split(['/', '?', '#']).next()?;
                Some(format!("{scheme}://{host}").to_ascii_lowercase())
            }),
        };
        let Some(origin) = origin else {
            return Err(Error::Forbidden(
                "a write with the session cookie must send Origin (or Referer)".into(),
            ));
        };
        let allowed = &self.config().allowed_origins;
        let ok = if allowed.is_empty() {
            let host = text(header::HOST).map(str::to_ascii_lowercase);
            origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && Some(rest) == host.as_deref()
            })
        } else {
            allowed.contains(&origin)
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "origin '{origin}' may not use the session cookie here (allowed_origins)"
            )))
        }
    }

    /// The principal behind an API token; a revoked or expired token is
    /// refused within [`crate::auth::tokens::TOKEN_TTL`].
    pub async fn authenticate_token(&self, token: &str) -> Result<Principal> {
        self.0.tokens.authenticate(self.db(), token).await
    }
}

/// Whether the request carries the dashboard's session cookie.
pub fn has_session_cookie(headers: &HeaderMap) -> bool {
    session_cookie(headers).is_some()
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

/// The request id the client sent or the server assigned.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
