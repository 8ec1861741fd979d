//! Public health endpoints (57–58): real probes of the store, the data
//! directory and, on the Kubernetes runtime, the API server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::routing::get;
use common::{Backend, TestServer, serve_router};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

async fn public_get(s: &TestServer, path: &str) -> (StatusCode, Value) {
    TestServer::send(s.client().get(s.url(&format!("/api/v1{path}")))).await
}

/// Polls `/health/status` until it answers `want` (probes are live, so a
/// change shows on the next request; the loop only absorbs pool reconnects).
async fn health_until(s: &TestServer, want: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = public_get(s, "/health/status").await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want}: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn assert_timestamp(body: &Value) {
    let ts = body["timestamp"].as_str().expect("a timestamp");
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
}

backend_tests!(
    healthy_on_the_local_runtime,
    lost_data_directory_is_503_naming_storage,
    runners_on_the_local_runtime_are_an_empty_pool,
);

async fn healthy_on_the_local_runtime(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, body) = public_get(&s, "/health/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "healthy");
    assert_eq!(
        body["services"],
        json!({"database": "ok", "kubernetes": "disabled", "storage": "ok"})
    );
    assert_timestamp(&body);
    // The storage probe cleans up after itself.
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".health"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

async fn lost_data_directory_is_503_naming_storage(backend: Backend) {
    let s = TestServer::start(backend).await;
    let dir = s.dir.path().to_path_buf();
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    let (status, body) = public_get(&s, "/health/status").await;
    std::fs::rename(&aside, &dir).unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["services"]["storage"], "down");
    assert_eq!(body["services"]["database"], "ok");
    assert_eq!(body["error"], "unhealthy: storage down");
    assert_eq!(
        body["details"]["storage"],
        "the data directory is not writable"
    );
    assert_timestamp(&body);
    // Back in place: healthy again.
    let body = health_until(&s, StatusCode::OK).await;
    assert_eq!(body["services"]["storage"], "ok");
}

/// PostgreSQL only: an embedded SQLite file cannot be taken away from a
/// running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_503_naming_it() {
    let Some(Backend::Postgres(admin)) = Backend::postgres() else {
        eprintln!("skipped: SYLPHX_TEST_DATABASE_URL is not set");
        return;
    };
    let s = TestServer::start(Backend::Postgres(admin.clone())).await;
    let name = s.database_url.rsplit('/').next().unwrap().to_string();
    let pg = Database::connect(admin.as_str()).await.unwrap();
    pg.execute_unprepared(&format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await
    .unwrap();
    let body = health_until(&s, StatusCode::SERVICE_UNAVAILABLE).await;
    pg.execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(
        body["services"],
        json!({"database": "down", "kubernetes": "disabled", "storage": "ok"})
    );
    assert_eq!(body["error"], "unhealthy: database down");
    let why = body["details"]["database"].as_str().unwrap();
    assert!(
        !why.contains("postgres://"),
        "no connection details leak: {why}"
    );

    let body = health_until(&s, StatusCode::OK).await;
    assert_eq!(body["services"]["database"], "ok");
}

async fn runners_on_the_local_runtime_are_an_empty_pool(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, body) = public_get(&s, "/health/runners").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"runners": [], "summary": {"idle": 0, "busy": 0, "offline": 0}})
    );
}

/// A stand-in for the Kubernetes API server: `/version` and ARC's
/// `EphemeralRunner` list, answering 500 like a control plane whose etcd
/// is gone while `up` is false.
async fn fake_kubernetes_api(up: Arc<AtomicBool>) -> String {
    async fn version(State(up): State<Arc<AtomicBool>>) -> (AxumStatus, axum::Json<Value>) {
        if up.load(Ordering::SeqCst) {
            (
                AxumStatus::OK,
                axum::Json(json!({"major": "1", "minor": "34", "gitVersion": "v1.34.1",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "",
                    "compiler": "gc", "platform": "linux/amd64"})),
            )
        } else {
            unavailable()
        }
    }
    fn unavailable() -> (AxumStatus, axum::Json<Value>) {
        (
            AxumStatus::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "etcdserver: request timed out",
                "reason": "InternalError", "code": 500})),
        )
    }
    async fn runners(State(up): State<Arc<AtomicBool>>) -> (AxumStatus, axum::Json<Value>) {
        if !up.load(Ordering::SeqCst) {
            return unavailable();
        }
        let runner = |name: &str, status: Value| {
            json!({"apiVersion": "actions.github.com/v1alpha1", "kind": "EphemeralRunner",
                "metadata": {"name": name, "namespace": "arc-runners",
                    "labels": {"actions.github.com/scale-set-name": "linux-x64"}},
                "status": status})
        };
        (
            AxumStatus::OK,
            axum::Json(
                json!({"apiVersion": "actions.github.com/v1alpha1", "kind": "EphemeralRunnerList",
                "metadata": {"resourceVersion": "1"},
                "items": [
                    runner("arc-b", json!({"phase": "Running", "ready": true, "jobId": "41", "runnerName": "arc-b"})),
                    runner("arc-a", json!({"phase": "Pending", "ready": true, "runnerName": "arc-a"})),
                    runner("arc-c", json!({"phase": "Failed", "ready": false, "runnerName": "arc-c"})),
                ]}),
            ),
        )
    }
    let app = Router::new()
        .route("/version", get(version))
        .route(
            "/apis/actions.github.com/v1alpha1/ephemeralrunners",
            get(runners),
        )
        .with_state(up);
    serve_router(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_runtime_probes_the_api_and_reads_arc_runners() {
    let up = Arc::new(AtomicBool::new(true));
    let api = fake_kubernetes_api(up.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: \"{api}\"}}}}]
users: [{{name: fake, user: {{}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]
current-context: fake
"
        ),
    )
    .unwrap();
    let config = dir.path().join("sylphx.toml");
    std::fs::write(
        &config,
        format!(
            "runtime = \"kubernetes\"\nkubeconfig = \"{}\"\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    let s = TestServer::start_with_config(Backend::Sqlite, Some(config)).await;

    let (status, body) = public_get(&s, "/health/status").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["services"],
        json!({"database": "ok", "kubernetes": "ok", "storage": "ok"})
    );

    let (status, body) = public_get(&s, "/health/runners").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "runners": [
                {"name": "arc-a", "status": "idle", "labels": ["linux-x64"]},
                {"name": "arc-b", "status": "busy", "labels": ["linux-x64"]},
                {"name": "arc-c", "status": "offline", "labels": ["linux-x64"]},
            ],
            "summary": {"idle": 1, "busy": 1, "offline": 1},
        })
    );

    up.store(false, Ordering::SeqCst);
    let (status, body) = public_get(&s, "/health/status").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(
        body["services"],
        json!({"database": "ok", "kubernetes": "down", "storage": "ok"})
    );
    assert_eq!(body["error"], "unhealthy: kubernetes down");
    assert_eq!(
        body["details"]["kubernetes"],
        "the Kubernetes API does not answer"
    );
    let (status, body) = public_get(&s, "/health/runners").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].is_string(), "{body}");

    up.store(true, Ordering::SeqCst);
    let (status, _) = public_get(&s, "/health/status").await;
    assert_eq!(status, StatusCode::OK);
}
