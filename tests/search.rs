//! Search resources (`kind: search`, provider typesense) on the local
//! runtime: a real `typesense-server` when one is installed (found on
//! `PATH` or named by `SYLPHX_TEST_TYPESENSE_BIN`), else the stand-in in
//! tests/search/ that speaks the part of its API these tests use, and
//! the clear failure of a machine without Typesense.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sylphx::auth::Role;

/// A server whose search resources run `program`.
async fn server_with(backend: Backend, program: Option<&Path>) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sylphx.toml");
    let text = match program {
        Some(p) => format!("typesense_bin = {:?}\n", p.to_str().unwrap()),
        None => String::new(),
    };
    std::fs::write(&path, text).unwrap();
    TestServer::start_with_config(backend, Some(path)).await
}

/// Polls `GET /resources/:id` until `ready` or `failed`.
async fn settled(s: &TestServer, t: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, r) = s.get(&format!("/resources/{id}"), t).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        if matches!(r["status"].as_str(), Some("ready" | "failed")) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "never settled: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stand_in() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/search/typesense-stand-in.py")
}

/// The installed Typesense, if any.
fn real_typesense() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SYLPHX_TEST_TYPESENSE_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("typesense-server"))
            .find(|p| p.is_file())
    })
}

/// `(host, port, key)` of a ready search resource's connection string
/// (`http://:key@host:port`).
fn parts(url: &str) -> (String, u16, String) {
    let rest = url.strip_prefix("http://:").expect(url);
    let (key, host_port) = rest.rsplit_once('@').unwrap();
    let (host, port) = host_port.rsplit_once(':').unwrap();
    (host.to_string(), port.parse().unwrap(), key.to_string())
}

async fn a_search_instance_serves_its_key_and_binds(backend: Backend, program: &Path) {
    let s = server_with(backend, Some(program)).await;
    let t = &s.admin_token;
    let (status, r) = s
        .post(
            "/resources",
            t,
            json!({"name": "Catalogue", "kind": "search", "config": {"memoryMb": 256}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["provider"], "typesense");
    assert!(r["message"].as_str().unwrap().contains("Search"), "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let r = settled(&s, t, &id).await;
    assert_eq!(r["status"], "ready", "{r}");
    assert_eq!(r["config"]["memoryMb"], 256);
    assert_eq!(r["config"]["storageGb"], 5);
    let url = r["connectionString"].as_str().unwrap();
    let (host, port, key) = parts(url);
    assert_eq!(host, "127.0.0.1");
    assert!(key.len() >= 32, "{url}");
    assert!(!r["maskedConnectionString"].as_str().unwrap().contains(&key));

    // The key works; no key, or another, is refused.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let created = http
        .post(format!("{base}/collections"))
        .header("X-TYPESENSE-API-KEY", &key)
        .json(&json!({"name": "books", "fields": [{"name": "title", "type": "string"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    for wrong in [None, Some("not-the-key")] {
        let mut req = http.get(format!("{base}/collections"));
        if let Some(k) = wrong {
            req = req.header("X-TYPESENSE-API-KEY", k);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // A read token sees no key.
    let reader = s.token("acme", Role::Read).await;
    let (_, seen) = s.get(&format!("/resources/{id}"), &reader).await;
    assert!(seen["connectionString"].is_null(), "{seen}");
    assert!(!seen.to_string().contains(&key));

    // Figures are not collected: said, not faked.
    let (status, m) = s.get(&format!("/resources/{id}/metrics"), t).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["available"], false, "{m}");
    assert!(m["reason"].as_str().unwrap().contains("Typesense"), "{m}");

    // A binding writes the client's settings.
    let p = s.project(t, "shop").await;
    let env_id = p["environments"][0]["id"].as_str().unwrap();
    let (status, b) = s
        .post(
            &format!("/resources/{id}/bindings"),
            t,
            json!({"projectEnvironmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_eq!(b["resourceType"], "search");
    let (_, vars) = s.get("/projects/shop/env-vars", t).await;
    let mut keys: Vec<&str> = vars
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "TYPESENSE_API_KEY",
            "TYPESENSE_HOST",
            "TYPESENSE_PORT",
            "TYPESENSE_PROTOCOL",
            "TYPESENSE_URL"
        ]
    );
    assert!(!vars.to_string().contains(&key), "secret shown: {vars}");

    // Its data survives a restart of the instance's server process: the
    // collection is still there after the resource is resized.
    let (status, r) = s
        .call(
            reqwest::Method::PATCH,
            &format!("/resources/{id}"),
            t,
            Some(json!({"config": {"memoryMb": 384}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, r) = s.get(&format!("/resources/{id}"), t).await;
        if r["reconcileStatus"] == "synced" && r["status"] == "ready" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let books = http
        .get(format!("{base}/collections/books"))
        .header("X-TYPESENSE-API-KEY", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(books.status(), StatusCode::OK);

    // Deleting it stops the server and removes its data.
    let hex = id.replace('-', "");
    let dir = s
        .dir
        .path()
        .join("resources")
        .join(format!("ts-{}", &hex[hex.len() - 12..]));
    assert!(dir.is_dir(), "{}", dir.display());
    let (status, _) = s
        .call(
            reqwest::Method::DELETE,
            &format!("/resources/{id}"),
            t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dir.exists() || http.get(format!("{base}/health")).send().await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, vars) = s.get("/projects/shop/env-vars", t).await;
    assert_eq!(vars, json!([]));
}

async fn without_typesense_the_resource_fails_naming_the_program(backend: Backend) {
    let s = server_with(backend, None).await;
    let t = &s.admin_token;
    let (status, r) = s
        .post(
            "/resources",
            t,
            json!({"name": "Catalogue", "kind": "search"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let r = settled(&s, t, r["id"].as_str().unwrap()).await;
    assert_eq!(r["status"], "failed", "{r}");
    let message = r["message"].as_str().unwrap();
    assert!(message.contains("typesense-server"), "{r}");
    assert!(message.contains("typesense_bin"), "{r}");
}

async fn search_config_is_checked(backend: Backend) {
    let s = server_with(backend, Some(&stand_in())).await;
    let t = &s.admin_token;
    for (body, field) in [
        (
            json!({"name": "x", "kind": "search", "provider": "elastic"}),
            "provider",
        ),
        (
            json!({"name": "x", "kind": "search", "config": {"memoryMb": 1}}),
            "config.memoryMb",
        ),
        (
            json!({"name": "x", "kind": "search", "config": {"maxMemoryMb": 64}}),
            "config.maxMemoryMb",
        ),
    ] {
        let (status, e) = s.post("/resources", t, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {e}");
        assert!(e["error"].as_str().unwrap().contains(field), "{e}");
    }
    let (_, list) = s.get("/resources?kind=search", t).await;
    assert_eq!(list["data"], json!([]));
    // Backups are for databases.
    let (_, r) = s
        .post("/resources", t, json!({"name": "y", "kind": "search"}))
        .await;
    let id = r["id"].as_str().unwrap();
    let (status, e) = s.get(&format!("/resources/{id}/backups"), t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
}

async fn search_with_the_stand_in(backend: Backend) {
    a_search_instance_serves_its_key_and_binds(backend, &stand_in()).await;
}

async fn search_without_typesense(backend: Backend) {
    if real_typesense().is_some() {
        eprintln!("typesense-server is installed here: skipped");
        return;
    }
    without_typesense_the_resource_fails_naming_the_program(backend).await;
}

backend_tests!(
    search_with_the_stand_in,
    search_without_typesense,
    search_config_is_checked,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_with_real_typesense() {
    let Some(program) = real_typesense() else {
        eprintln!("typesense-server is not installed here: skipped");
        return;
    };
    a_search_instance_serves_its_key_and_binds(Backend::Sqlite, &program).await;
}
