//! Test harness: a real server on a random port, on SQLite or on its own
//! PostgreSQL database, driven over real HTTP.
#![allow(dead_code)]

pub mod apps;
pub mod binary;
pub mod procs;
pub mod ws;

use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use sylphx::auth::{Actor, Principal, Role};
use sylphx::config::{Config, ServeArgs, StoreArgs};
use sylphx::domain::{self, Ctx};
use sylphx::server::{self, App};
use tempfile::TempDir;

/// The GitHub webhook secret of test servers.
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

/// Which state store a test runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// The admin URL of a PostgreSQL server; each test gets its own database.
    Postgres(String),
}

impl Backend {
    /// PostgreSQL when `SYLPHX_TEST_DATABASE_URL` is set.
    pub fn postgres() -> Option<Backend> {
        std::env::var("SYLPHX_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }
}

/// Runs each listed `async fn name(backend: Backend)` on SQLite, and on
/// PostgreSQL when `SYLPHX_TEST_DATABASE_URL` is set.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    match $crate::common::Backend::postgres() {
                        Some(b) => super::$name(b).await,
                        None => eprintln!("PostgreSQL run skipped: SYLPHX_TEST_DATABASE_URL is not set"),
                    }
                }
            )*
        }
    };
}

/// A Python that can `import module`: the machine's `python3` when it can,
/// else one of a virtualenv under `tmp` (the test binary's
/// `CARGO_TARGET_TMPDIR`), made once with `package` installed from PyPI, so
/// `cargo test` needs nothing beforehand.
pub fn python_with(module: &str, package: &str, tmp: &str) -> String {
    let imports = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if imports("python3") {
        return "python3".into();
    }
    let venv = std::path::Path::new(tmp).join(format!("{module}-venv"));
    let venv_python = venv.join("bin/python3").to_string_lossy().into_owned();
    if imports(&venv_python) {
        return venv_python;
    }
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} cannot run: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("python3", &["-m", "venv", venv.to_str().unwrap()]);
    run(&venv_python, &["-m", "pip", "install", "--quiet", package]);
    venv_python
}

/// The local runtime's sandboxes need bubblewrap: installed from Debian's
/// packages when it is missing, once per test binary.
pub fn ensure_bubblewrap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| ensure_command("bwrap", "bubblewrap"));
}

/// Installs Debian's `package` when `command` is not on the PATH (the tests
/// run as root), refreshing the package lists if the first try fails.
pub fn ensure_command(command: &str, package: &str) {
    let found = || {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if found() {
        return;
    }
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            })
    };
    let install = ["install", "-y", "-qq", "--no-install-recommends", package];
    let outcome = apt(&install).or_else(|_| {
        let _ = apt(&["update", "-qq"]);
        apt(&install)
    });
    assert!(
        found(),
        "the tests need {command}: install the '{package}' package ({outcome:?})"
    );
}

/// A range of sandbox ids of its own for each test server: servers with
/// stores of their own on one machine must not hand one uid to two
/// tenants.
pub fn sandbox_ids() -> String {
    let base = 2_100_000_000 + rand::random_range(0..40_000u32) * 1000;
    format!("{base}-{}", base + 999)
}

/// A range of data service ports of its own for each test server, below
/// the ephemeral ports other tests take.
pub fn resource_ports() -> String {
    let base = 21_000 + rand::random_range(0..400u16) * 20;
    format!("{base}-{}", base + 19)
}

/// A new, empty database on the test PostgreSQL server
/// (`SYLPHX_TEST_DATABASE_URL`): its URL and its name; None when there is
/// no such server.
pub async fn fresh_postgres() -> Option<(String, String)> {
    let admin = std::env::var("SYLPHX_TEST_DATABASE_URL").ok()?;
    let name = format!("sylphx_t_{}", uuid::Uuid::new_v4().simple());
    let pg = Database::connect(admin.as_str()).await.unwrap();
    pg.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    Some((
        format!("{}/{name}", admin.rsplit_once('/').unwrap().0),
        name,
    ))
}

/// Drops a database [`fresh_postgres`] made.
pub async fn drop_postgres(name: &str) {
    let admin = std::env::var("SYLPHX_TEST_DATABASE_URL").unwrap();
    let pg = Database::connect(admin.as_str()).await.unwrap();
    pg.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let prefix = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{db}?{q}"),
        None => format!("{prefix}/{db}"),
    }
}

/// Serves `router` on a free local port (a stub upstream or API) for the
/// rest of the test; returns its `http://` base URL.
pub async fn serve_router(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Sends `requests` all at once; returns how many created (201). Every
/// other answer must be 409 with `conflict` as its error.
pub async fn race(requests: Vec<RequestBuilder>, conflict: &str) -> usize {
    let sent: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(TestServer::send(r)))
        .collect();
    let mut created = 0;
    for r in sent {
        let (status, body) = r.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert_eq!(body["error"], conflict, "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    created
}

/// A running server.
pub struct TestServer {
    pub base: String,
    pub app: App,
    pub admin_token: String,
    pub dir: TempDir,
    pub database_url: String,
    /// The local runtime's app router (`0.0.0.0:0` on Kubernetes).
    pub apps: std::net::SocketAddr,
    http: Client,
    serving: server::Serving,
    pg: Option<(String, String)>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with_config(backend, None).await
    }

    /// Starts with a config file (`--config`).
    pub async fn start_with_config(
        backend: Backend,
        config_file: Option<std::path::PathBuf>,
    ) -> TestServer {
        Self::start_full(backend, config_file, true).await
    }

    /// Starts with no GitHub webhook secret configured.
    #[allow(dead_code)]
    pub async fn start_without_webhook(backend: Backend) -> TestServer {
        Self::start_full(backend, None, false).await
    }

    async fn start_full(
        backend: Backend,
        config_file: Option<std::path::PathBuf>,
        webhook: bool,
    ) -> TestServer {
        ensure_bubblewrap();
        let dir = tempfile::tempdir().expect("tempdir");
        let (database_url, pg) = match &backend {
            Backend::Sqlite => (
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("sylphx.db").display()
                ),
                None,
            ),
            Backend::Postgres(admin) => {
                let name = format!("sylphx_t_{}", uuid::Uuid::new_v4().simple());
                let conn = Database::connect(admin.as_str())
                    .await
                    .expect("connect to PostgreSQL");
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                conn.close().await.ok();
                (with_database(admin, &name), Some((admin.clone(), name)))
            }
        };
        let config = Config::load(&ServeArgs {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            apps_listen: Some("127.0.0.1:0".parse().unwrap()),
            s3_listen: Some("127.0.0.1:0".parse().unwrap()),
            store: StoreArgs {
                data_dir: Some(dir.path().to_path_buf()),
                database_url: Some(database_url.clone()),
                config: config_file,
            },
            ..ServeArgs::default()
        })
        .expect("config");
        let mut config = config;
        config.github_webhook_secret =
            webhook.then(|| sylphx::secrets::SecretString::new(WEBHOOK_SECRET));
        // New replicas that never listen fail fast in tests.
        config.ready_timeout = Duration::from_secs(5);
        config.sandbox_ids = sylphx::config::SandboxIds::parse(&sandbox_ids()).unwrap();
        config.resource_ports = sylphx::config::PortRange::parse(&resource_ports()).unwrap();
        let app = App::new(config).await.expect("app state");
        let admin_token = server::bootstrap(&app)
            .await
            .expect("bootstrap")
            .expect("fresh store")
            .expose()
            .to_string();
        let apps = app
            .start_background()
            .await
            .expect("background tasks")
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        // Served as `sylphx serve` serves: HTTP threads of their own.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let serving = server::Serving::start(
            listener,
            server::router(app.clone()),
            2,
            app.config().connections.clone(),
        )
        .expect("HTTP threads");
        TestServer {
            base,
            app,
            admin_token,
            dir,
            database_url,
            apps,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            serving,
            pg,
        }
    }

    /// A new token in organisation `org` (created if missing).
    pub async fn token(&self, org: &str, role: Role) -> String {
        let org = domain::organizations::ensure(self.app.db(), org)
            .await
            .unwrap();
        let ctx = Ctx {
            principal: Principal {
                org_id: org.id,
                role: Role::Admin,
                actor: Actor::System,
            },
            request_id: None,
        };
        let (_, token) = domain::api_keys::create(
            self.app.db(),
            &ctx,
            domain::api_keys::NewKey {
                name: format!("{org:?}-{role:?}").chars().take(90).collect(),
                role,
                expires_at: None,
            },
        )
        .await
        .unwrap();
        token.expose().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to `/api/v1{path}` with `token`.
    pub fn api(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{}", self.base, path))
            .bearer_auth(token)
    }

    pub fn client(&self) -> &Client {
        &self.http
    }

    /// Sends and returns status and JSON body (Null when the body is empty).
    pub async fn send(req: RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            // Text endpoints (logs) come back as a JSON string.
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// Sends a raw (possibly malformed) JSON body.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        Self::send(
            self.api(method, path, token)
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        Self::send(self.api(Method::GET, path, token)).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        Self::send(self.api(Method::POST, path, token).json(&body)).await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.api(method, path, token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::send(req).await
    }

    /// Runs a GraphQL operation; returns the whole response body.
    pub async fn graphql(&self, token: &str, query: &str, variables: Value) -> Value {
        let resp = self
            .http
            .post(self.url("/graphql"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("graphql request");
        resp.json().await.expect("graphql JSON")
    }

    /// Creates a project and returns its JSON.
    pub async fn project(&self, token: &str, slug: &str) -> Value {
        let (status, body) = self
            .post(
                "/projects",
                token,
                serde_json::json!({ "name": slug, "slug": slug }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.serving.signal_stop();
        if let Some((admin, name)) = self.pg.take() {
            // Best effort: drop the per-test database from a separate runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    // A store that is gone (a test that stopped its own
                    // cluster) is given up on soon, not after sqlx's 30 s.
                    let mut opts = sea_orm::ConnectOptions::new(admin);
                    opts.connect_timeout(Duration::from_secs(3))
                        .acquire_timeout(Duration::from_secs(3));
                    let conn = Database::connect(opts).await.ok()?;
                    conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}
