//! Managed data services (endpoints 30–41) on the local runtime, end to
//! end with real clients: psql, redis-cli and the MariaDB client against
//! real servers the control plane started.

mod common;

use std::process::Command;
use std::time::Duration;

use common::apps::{deploy, git};
use common::{Backend, TestServer, procs};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sylphx::auth::Role;

/// Serves the row count of `items` in `$DATABASE_URL`, read with psql.
const COUNTER: &str = r#"
import os, subprocess, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        out = subprocess.run(["psql", os.environ["DATABASE_URL"], "-tAc", "select count(*) from items"],
                             capture_output=True, text=True)
        body = (out.stdout.strip() or out.stderr.strip()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// Polls `GET /resources/:id` until it is `ready` (or `failed`: a panic).
async fn ready(s: &TestServer, t: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, r) = s.get(&format!("/resources/{id}"), t).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        match r["status"].as_str() {
            Some("ready") => return r,
            Some("failed") => panic!("resource failed: {r}"),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn provision(s: &TestServer, t: &str, body: Value) -> Value {
    let (status, r) = s.post("/resources", t, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["reconcileStatus"], "pending");
    assert_eq!(r["status"], "pending");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("Poll GET /resources/:id"),
        "{r}"
    );
    let id = r["id"].as_str().unwrap().to_string();
    ready(s, t, &id).await
}

/// `psql <url> -tAc <sql>`: its output, or its error.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-tAc", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn port_of(url: &str) -> u16 {
    let after_at = url.rsplit_once('@').unwrap().1;
    let host_port = after_at.split('/').next().unwrap();
    host_port.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// The instance directory of a resource under the server's data dir.
fn instance_dir(s: &TestServer, r: &Value) -> std::path::PathBuf {
    let id = r["id"].as_str().unwrap().replace('-', "");
    let short = match r["provider"].as_str().unwrap() {
        "postgresql" => "pg",
        "mysql" => "my",
        _ => "kv",
    };
    s.dir
        .path()
        .join("resources")
        .join(format!("{short}-{}", &id[id.len() - 12..]))
}

fn env_keys(vars: &Value) -> Vec<String> {
    vars.as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect()
}

async fn postgresql_end_to_end(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let db = provision(&s, t, json!({"name": "Main DB", "kind": "database"})).await;
    let id = db["id"].as_str().unwrap().to_string();
    assert_eq!(db["provider"], "postgresql");
    assert_eq!(db["reconcileStatus"], "synced");
    assert_eq!(db["backupRetentionDays"], 7);
    let url = db["connectionString"].as_str().unwrap().to_string();
    let masked = db["maskedConnectionString"].as_str().unwrap();
    assert!(url.starts_with("postgresql://app:"), "{url}");
    assert!(
        masked.starts_with("postgresql://app:***@127.0.0.1:"),
        "{masked}"
    );
    let password = url["postgresql://app:".len()..].split('@').next().unwrap();
    assert!(!masked.contains(password));
    assert_eq!(db["publicHost"], "127.0.0.1");
    assert_eq!(db["publicConnectionString"], url);

    // The list shows the masked form only.
    let (_, list) = s.get("/resources?kind=database", t).await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], id);
    assert!(!list.to_string().contains(password), "{list}");
    let (_, kv) = s.get("/resources?kind=kv", t).await;
    assert_eq!(kv["data"], json!([]));

    // The app's role owns its database and is no superuser.
    psql(
        &url,
        "create table items (n int); insert into items values (1), (2)",
    )
    .unwrap();
    assert_eq!(
        psql(
            &url,
            "select rolsuper from pg_roles where rolname = current_user"
        )
        .unwrap(),
        "f"
    );
    assert!(psql(&url, "create role intruder superuser").is_err());

    // Bound to an environment, the app reads DATABASE_URL.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("app.py"), COUNTER).unwrap();
    std::fs::write(src.path().join("Procfile"), "web: python3 app.py\n").unwrap();
    git(src.path(), &["init", "-q", "-b", "main"]);
    git(src.path(), &["add", "-A"]);
    git(src.path(), &["commit", "-qm", "app"]);
    let (status, p) = s
        .post(
            "/projects",
            t,
            json!({"name": "Counter", "slug": "counter", "gitRepository": src.path().to_str().unwrap(), "domain": "counter.test"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let env_id = p["environments"][0]["id"].as_str().unwrap().to_string();
    s.post(
        "/projects/counter/env-vars",
        t,
        json!({"envType": "production", "vars": [{"key": "KEEP", "value": "mine"}]}),
    )
    .await;
    let (status, b) = s
        .post(
            &format!("/resources/{id}/bindings"),
            t,
            json!({"projectEnvironmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_eq!(b["role"], "primary");
    assert_eq!(b["projectSlug"], "counter");
    assert_eq!(b["envName"], "production");
    assert_eq!(b["resourceType"], "database");
    let binding = b["id"].as_str().unwrap().to_string();
    let (_, listed) = s.get(&format!("/resources/{id}/bindings"), t).await;
    assert_eq!(listed["bindings"][0]["id"], binding);
    let (_, vars) = s.get("/projects/counter/env-vars", t).await;
    assert_eq!(
        env_keys(&vars),
        [
            "DATABASE_URL",
            "KEEP",
            "PGDATABASE",
            "PGHOST",
            "PGPASSWORD",
            "PGPORT",
            "PGUSER"
        ]
    );
    assert!(!vars.to_string().contains(password), "{vars}");
    for v in vars.as_array().unwrap() {
        if v["key"] != "KEEP" {
            assert_eq!(v["value"], "***", "{v}");
            assert_eq!(v["secret"], true);
        }
    }
    // Managed vars cannot be changed or deleted by hand.
    let (status, e) = s
        .post(
            "/projects/counter/env-vars",
            t,
            json!({"envType": "production", "vars": [{"key": "DATABASE_URL", "value": "postgresql://evil"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(e["error"].as_str().unwrap().contains(&binding), "{e}");
    let deleted = s
        .graphql(
            t,
            r#"mutation { deleteEnvVar(projectId: "counter", envType: "production", key: "PGPASSWORD") { deleted } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        deleted["errors"][0]["extensions"]["code"], "CONFLICT",
        "{deleted}"
    );
    let deployed = deploy(&s, "counter").await;
    assert_eq!(deployed["status"], "success", "{deployed}");
    let served = s
        .client()
        .get(format!("http://{}/", s.apps))
        .header("Host", "counter.test")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, "2");

    // Metrics are read from the instance.
    let (status, m) = s.get(&format!("/resources/{id}/metrics"), t).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["available"], true, "{m}");
    assert_eq!(m["kind"], "database");
    assert!(m["databaseSize"].as_i64().unwrap() > 0, "{m}");
    assert!(m["activeConnections"].as_i64().is_some(), "{m}");
    let ratio = m["cacheHitRatio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ratio) && ratio > 0.0, "{m}");
    assert!(m["queryThroughput"].is_array(), "{m}");
    assert!(m.get("memoryUsedBytes").is_none(), "{m}");

    // A backup is listed; a restore to a time between two inserts has
    // exactly the earlier rows, the source all of them.
    let (status, backups) = s.get(&format!("/resources/{id}/backups"), t).await;
    assert_eq!(status, StatusCode::OK, "{backups}");
    assert_eq!(backups["available"], true);
    assert_eq!(backups["backups"][0]["status"], "completed", "{backups}");
    let between = chrono::Utc::now();
    psql(&url, "insert into items values (3)").unwrap();
    let (status, restore) = s
        .post(
            &format!("/resources/{id}/restore"),
            t,
            json!({"targetTime": between.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{restore}");
    assert!(
        restore["restoredClusterName"]
            .as_str()
            .unwrap()
            .starts_with("pg-")
    );
    let restored = ready(&s, t, restore["restoreId"].as_str().unwrap()).await;
    assert_eq!(restored["sourceResourceId"], id);
    let restored_url = restored["connectionString"].as_str().unwrap();
    assert_ne!(port_of(restored_url), port_of(&url));
    assert!(
        !restored_url.contains(password),
        "a restore has its own password"
    );
    assert_eq!(
        psql(restored_url, "select count(*) from items").unwrap(),
        "2"
    );
    assert_eq!(psql(&url, "select count(*) from items").unwrap(), "3");

    // A fast branch has the rows and is independent.
    let (status, branch) = s
        .post(
            &format!("/resources/{id}/branch"),
            t,
            json!({"name": "preview", "fast": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{branch}");
    assert_eq!(branch["env"], "staging");
    let branch = ready(&s, t, branch["id"].as_str().unwrap()).await;
    let branch_url = branch["connectionString"].as_str().unwrap();
    assert_eq!(psql(branch_url, "select count(*) from items").unwrap(), "3");
    psql(branch_url, "insert into items values (4)").unwrap();
    assert_eq!(psql(&url, "select count(*) from items").unwrap(), "3");

    // An empty branch has none of it.
    let (status, empty) = s
        .post(
            &format!("/resources/{id}/branch"),
            t,
            json!({"env": "preview"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{empty}");
    assert_eq!(empty["env"], "preview");
    assert_eq!(empty["sourceResourceId"], id);
    let empty = ready(&s, t, empty["id"].as_str().unwrap()).await;
    let empty_url = empty["connectionString"].as_str().unwrap();
    assert!(psql(empty_url, "select count(*) from items").is_err());
    assert_eq!(psql(empty_url, "select current_user").unwrap(), "app");

    // Unbinding removes exactly the managed vars.
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/resources/{id}/bindings/{binding}"),
            t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, vars) = s.get("/projects/counter/env-vars", t).await;
    assert_eq!(env_keys(&vars), ["KEEP"]);

    // Delete: the port refuses connections and the data is gone.
    let dir = instance_dir(&s, &db);
    assert!(dir.exists(), "{}", dir.display());
    let port = port_of(&url);
    let resp = s
        .api(Method::DELETE, &format!("/resources/{id}"), t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty());
    let (status, _) = s.get(&format!("/resources/{id}"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while accepts(port) || dir.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never deprovisioned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The branch and the restore are resources of their own, untouched.
    assert_eq!(psql(branch_url, "select count(*) from items").unwrap(), "4");
}

async fn redis_end_to_end(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let kv = provision(
        &s,
        t,
        json!({"name": "Cache", "kind": "kv", "config": {"maxMemoryMb": 64}}),
    )
    .await;
    assert_eq!(kv["provider"], "redis");
    assert_eq!(kv["config"]["maxMemoryMb"], 64);
    let url = kv["connectionString"].as_str().unwrap();
    assert!(url.starts_with("redis://default:"), "{url}");
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + String::from_utf8_lossy(&out.stderr).trim()
    };
    assert_eq!(
        cli(&["-u", url, "--no-auth-warning", "set", "greeting", "hi"]),
        "OK"
    );
    assert_eq!(
        cli(&["-u", url, "--no-auth-warning", "get", "greeting"]),
        "hi"
    );
    let port = port_of(url).to_string();
    let anonymous = cli(&["-p", &port, "get", "greeting"]);
    assert!(anonymous.contains("NOAUTH"), "{anonymous}");
    let (status, m) = s
        .get(
            &format!("/resources/{}/metrics", kv["id"].as_str().unwrap()),
            t,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["available"], true, "{m}");
    assert_eq!(m["kind"], "kv");
    assert!(m["memoryUsedBytes"].as_i64().unwrap() > 0, "{m}");
    assert!(m["memoryUsedPercent"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["connectedClients"].as_i64().is_some(), "{m}");
    assert!(m["hitRatio"].as_f64().is_some(), "{m}");
    assert!(m["commandsPerSec"].is_array(), "{m}");
    assert!(m.get("databaseSize").is_none(), "{m}");
    // Backups and restores are for databases.
    let id = kv["id"].as_str().unwrap();
    let (status, e) = s.get(&format!("/resources/{id}/backups"), t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, e) = s
        .post(
            &format!("/resources/{id}/restore"),
            t,
            json!({"targetTime": chrono::Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    // A size change restarts it with the data kept.
    let (status, r) = s
        .call(
            Method::PATCH,
            &format!("/resources/{id}"),
            t,
            Some(json!({"name": "Cache 2", "config": {"maxMemoryMb": 128}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["name"], "Cache 2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, r) = s.get(&format!("/resources/{id}"), t).await;
        if r["reconcileStatus"] == "synced" && r["status"] == "ready" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cli(&["-u", url, "--no-auth-warning", "get", "greeting"]),
        "hi"
    );
    let config = cli(&["-u", url, "--no-auth-warning", "config", "get", "maxmemory"]);
    assert!(config.contains("NOPERM"), "{config}");
}

async fn mysql_end_to_end(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "shop").await;
    let env_id = p["environments"][0]["id"].as_str().unwrap().to_string();
    let (status, r) = s
        .post(
            "/resources",
            t,
            json!({"name": "Orders", "kind": "database", "provider": "mysql", "environmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let db = ready(&s, t, r["id"].as_str().unwrap()).await;
    let url = db["connectionString"].as_str().unwrap();
    assert!(url.starts_with("mysql://app:"), "{url}");
    let password = url["mysql://app:".len()..].split('@').next().unwrap();
    let port = port_of(url).to_string();
    let out = Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            &port,
            "-u",
            "app",
            "app",
            "-N",
            "-e",
        ])
        .arg("create table t (n int); insert into t values (7); select n from t")
        .env("MYSQL_PWD", password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    // environmentId bound it once ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, vars) = s.get("/projects/shop/env-vars", t).await;
        let keys = env_keys(&vars);
        if keys.contains(&"MYSQL_URL".to_string()) {
            assert_eq!(
                keys,
                [
                    "MYSQL_DATABASE",
                    "MYSQL_HOST",
                    "MYSQL_PASSWORD",
                    "MYSQL_PORT",
                    "MYSQL_URL",
                    "MYSQL_USER"
                ]
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{vars}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, b) = s
        .get(
            &format!("/resources/{}/backups", db["id"].as_str().unwrap()),
            t,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["available"], false);
    // Deleting the resource removes its binding's vars.
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/resources/{}", db["id"].as_str().unwrap()),
            t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, vars) = s.get("/projects/shop/env-vars", t).await;
    assert_eq!(vars, json!([]));
}

async fn bad_input_changes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    for (body, field) in [
        (json!({"name": "x", "kind": "rocket"}), "kind"),
        (
            json!({"name": "x", "kind": "kv", "provider": "postgresql"}),
            "provider",
        ),
        (
            json!({"name": "x", "kind": "database", "config": {"colour": 1}}),
            "config.colour",
        ),
        (
            json!({"name": "x", "kind": "database", "config": {"storageGb": 0}}),
            "config.storageGb",
        ),
        (
            json!({"name": "x", "kind": "database", "config": []}),
            "config",
        ),
        (json!({"name": " ", "kind": "database"}), "name"),
        (json!({"name": "x"}), "kind"),
        (
            json!({"name": "x", "kind": "database", "environmentId": "nope"}),
            "environmentId",
        ),
    ] {
        let (status, e) = s.post("/resources", t, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {e}");
        assert!(e["error"].as_str().unwrap().contains(field), "{body} → {e}");
    }
    // A provider whose server is not installed fails with a message that
    // names it (valkey is not on this machine unless valkey-server is).
    let has_valkey = Command::new("sh")
        .args(["-c", "command -v valkey-server"])
        .output()
        .unwrap()
        .status
        .success();
    if !has_valkey {
        let (status, r) = s
            .post(
                "/resources",
                t,
                json!({"name": "v", "kind": "kv", "provider": "valkey"}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{r}");
        let id = r["id"].as_str().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, r) = s.get(&format!("/resources/{id}"), t).await;
            if r["status"] == "failed" {
                assert_eq!(r["reconcileStatus"], "failed");
                assert!(
                    r["message"].as_str().unwrap().contains("valkey-server"),
                    "{r}"
                );
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, _) = s
            .call(Method::DELETE, &format!("/resources/{id}"), t, None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, e) = s.get("/resources?kind=rocket", t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (_, list) = s.get("/resources", t).await;
    assert_eq!(list, json!({"object": "list", "data": []}));
    let (status, _) = s
        .get(&format!("/resources/{}", uuid::Uuid::now_v7()), t)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Restore windows, on a real database with its first backup.
    let db = provision(&s, t, json!({"name": "db", "kind": "database"})).await;
    let id = db["id"].as_str().unwrap();
    let now = chrono::Utc::now();
    for target in [
        "yesterday".to_string(),
        (now + chrono::Duration::hours(1)).to_rfc3339(),
        (now - chrono::Duration::days(8)).to_rfc3339(),
        (now - chrono::Duration::days(1)).to_rfc3339(),
    ] {
        let (status, e) = s
            .post(
                &format!("/resources/{id}/restore"),
                t,
                json!({"targetTime": target}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{target} → {e}");
        assert!(e["error"].as_str().unwrap().contains("targetTime"), "{e}");
    }
    let (_, list) = s.get("/resources", t).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
}

/// Another organisation's token reaches nothing of a resource: not its
/// record, its secrets, its metrics or its bindings; and a binding cannot
/// reach into another organisation's environment.
async fn another_organisation_is_refused(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let db = provision(&s, t, json!({"name": "db", "kind": "kv"})).await;
    let id = db["id"].as_str().unwrap();
    let url = db["connectionString"].as_str().unwrap().to_string();
    let other = s.token("other", Role::Write).await;
    for path in ["", "/metrics", "/backups", "/bindings"] {
        let (status, body) = s.get(&format!("/resources/{id}{path}"), &other).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(!body.to_string().contains(&url));
    }
    let (status, _) = s
        .call(Method::DELETE, &format!("/resources/{id}"), &other, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/resources/{id}"),
            &other,
            Some(json!({"name": "mine"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = s.get("/resources", &other).await;
    assert_eq!(list["data"], json!([]));
    // Their environment is not ours to bind into, nor ours theirs.
    let theirs = s.project(&other, "theirs").await;
    let their_env = theirs["environments"][0]["id"].as_str().unwrap();
    let (status, _) = s
        .post(
            &format!("/resources/{id}/bindings"),
            t,
            json!({"projectEnvironmentId": their_env}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .post(
            "/resources",
            &other,
            json!({"name": "x", "kind": "kv", "environmentId": their_env}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A read token sees no password.
    let reader = s.token("default", Role::Read).await;
    let (status, r) = s.get(&format!("/resources/{id}"), &reader).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["connectionString"], Value::Null, "{r}");
    assert!(
        r["maskedConnectionString"]
            .as_str()
            .unwrap()
            .contains("***")
    );
    let (status, _) = s
        .post("/resources", &reader, json!({"name": "x", "kind": "kv"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The state survived: still ours, still answering with its password.
    let (status, still) = s.get(&format!("/resources/{id}"), t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(still["name"], "db");
    assert_eq!(still["connectionString"], url);
}

/// A SIGKILL of the instance's server brings it back, data intact.
async fn a_killed_database_comes_back(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let db = provision(&s, t, json!({"name": "db", "kind": "database"})).await;
    let url = db["connectionString"].as_str().unwrap().to_string();
    psql(
        &url,
        "create table items (n int); insert into items values (1)",
    )
    .unwrap();
    let pidfile = instance_dir(&s, &db).join("data").join("postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: a process of this test's own resource.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(n) = psql(&url, "select count(*) from items") {
            assert_eq!(n, "1");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, r) = s
        .get(&format!("/resources/{}", db["id"].as_str().unwrap()), t)
        .await;
    assert_eq!(r["status"], "ready", "{r}");
}

backend_tests!(
    postgresql_end_to_end,
    redis_end_to_end,
    mysql_end_to_end,
    bad_input_changes_nothing,
    another_organisation_is_refused,
    a_killed_database_comes_back,
    resource_status_follows_the_instance,
    the_resource_quota_holds_per_organisation,
);

/// `kill -9` of `serve` mid-provision, then a restart: the provision
/// finishes exactly once; a SIGTERM stops the instance with `serve`, and
/// the next `serve` starts it again with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_mid_provision_finishes_it_once_and_restarts_bring_it_back() {
    use common::binary::{ServeProcess, create_token, free_port, get, post};
    use sea_orm::{ConnectionTrait, Database, Statement};
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_s = data.to_str().unwrap().to_string();
    let ports = common::resource_ports();
    let sandbox_ids = common::sandbox_ids();
    let envs = [
        ("SYLPHX_DATA_DIR", data_s.as_str()),
        ("SYLPHX_JOB_LEASE_SECS", "2"),
        ("SYLPHX_RESOURCE_PORTS", ports.as_str()),
        ("SYLPHX_SANDBOX_IDS", sandbox_ids.as_str()),
    ];
    let token = create_token("acme", &envs);
    let port = free_port();
    let apps = format!("127.0.0.1:{}", free_port());
    let extra = ["--apps-listen", apps.as_str()];
    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    let (status, r) = post(
        &server.base,
        "/resources",
        &token,
        json!({"name": "db", "kind": "database"}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    // Killed while the instance is being made.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, r) = get(&server.base, &format!("/resources/{id}"), &token).await;
        assert_ne!(r["status"], "ready", "provisioned before the kill: {r}");
        if r["status"] == "provisioning" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();

    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let url = loop {
        let (_, r) = get(&server.base, &format!("/resources/{id}"), &token).await;
        assert_ne!(r["status"], "failed", "{r}");
        if r["status"] == "ready" {
            break r["connectionString"].as_str().unwrap().to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    psql(
        &url,
        "create table items (n int); insert into items values (1)",
    )
    .unwrap();
    let dirs: Vec<_> = std::fs::read_dir(data.join("resources"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let store = Database::connect(format!(
        "sqlite://{}?mode=ro",
        data.join("sylphx.db").display()
    ))
    .await
    .unwrap();
    let jobs = store
        .query_all_raw(Statement::from_string(
            store.get_database_backend(),
            "SELECT status FROM jobs WHERE kind = 'resource.provision'",
        ))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].try_get::<String>("", "status").unwrap(), "done");
    drop(store);

    // SIGTERM stops the instance; the next serve brings it back.
    let db_port = port_of(&url);
    assert!(server.terminate().success());
    assert!(!accepts(db_port), "the instance outlived serve");
    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(n) = psql(&url, "select count(*) from items") {
            assert_eq!(n, "1");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = common::binary::get(&server.base, &format!("/resources/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    drop(server);
}

/// `resourceStatus`: the status now, provisioning progress, `ready`; a
/// crash and the return; `deleted` and the end. Another organisation's
/// token is refused before any data.
async fn resource_status_follows_the_instance(backend: Backend) {
    use common::ws;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let (status, r) = s
        .post("/resources", t, json!({"name": "c", "kind": "kv"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let query = "subscription($id: ID!) { resourceStatus(id: $id) { status reconcileStatus message restarts } }";
    let subscribe = |sid: &str| {
        json!({"type": "subscribe", "id": sid, "payload": {"query": query, "variables": {"id": id}}})
            .to_string()
    };

    let other = s.token("other", Role::Admin).await;
    let mut theirs = ws::with_token(&s, &other).await;
    theirs.send(Message::text(subscribe("x"))).await.unwrap();
    let refused = ws::next_text(&mut theirs).await.unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "FORBIDDEN");

    let mut socket = ws::with_token(&s, t).await;
    socket.send(Message::text(subscribe("1"))).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let msg = next(&mut socket).await;
        assert_eq!(msg["type"], "next", "{msg}");
        let update = msg["payload"]["data"]["resourceStatus"].clone();
        seen.push(update.clone());
        if update["status"] == "ready" {
            assert_eq!(update["reconcileStatus"], "synced");
            break;
        }
        assert!(
            ["pending", "provisioning"].contains(&update["status"].as_str().unwrap()),
            "{seen:?}"
        );
    }
    assert_ne!(seen.len(), 1, "no progress before ready: {seen:?}");

    // The instance's server dies: crashed, then ready again, restarted once.
    let dir = {
        let (_, r) = s.get(&format!("/resources/{id}"), t).await;
        instance_dir(&s, &r)
    };
    let port = {
        let (_, r) = s.get(&format!("/resources/{id}"), t).await;
        port_of(r["connectionString"].as_str().unwrap())
    };
    let pid = procs::listener_pid(port).expect("the server's pid");
    assert!(dir.exists());
    // SAFETY: a process of this test's own resource.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    loop {
        let msg = next(&mut socket).await;
        let update = msg["payload"]["data"]["resourceStatus"].clone();
        seen.push(update.clone());
        if update["status"] == "ready" && update["restarts"] == 1 {
            break;
        }
    }
    assert!(
        seen.iter().any(|u| u["status"] == "crashed"),
        "the crash was not told: {seen:?}"
    );

    let (status, _) = s
        .call(Method::DELETE, &format!("/resources/{id}"), t, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let msg = next(&mut socket).await;
    assert_eq!(
        msg["payload"]["data"]["resourceStatus"]["status"], "deleted",
        "{msg}"
    );
    let msg = next(&mut socket).await;
    assert_eq!(msg, json!({"type": "complete", "id": "1"}));
}

/// The next message of `socket` (a bound for a broken server, not a
/// measurement).
async fn next(socket: &mut common::ws::Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(120), common::ws::next_text(socket))
        .await
        .expect("a message")
        .expect("an open socket")
}

/// A hostile organisation cannot take the machine's capacity: past its
/// quota it is refused (403) and nothing starts, while another
/// organisation still provisions.
async fn the_resource_quota_holds_per_organisation(backend: Backend) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "max_resources_per_organization = 2\n").unwrap();
    let s = TestServer::start_with_config(backend, Some(config.path().to_path_buf())).await;
    let t = &s.admin_token;
    for name in ["a", "b"] {
        let (status, r) = s
            .post("/resources", t, json!({"name": name, "kind": "kv"}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    }
    let (status, e) = s
        .post("/resources", t, json!({"name": "c", "kind": "kv"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("max_resources_per_organization"),
        "{e}"
    );
    let (_, list) = s.get("/resources", t).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let other = s.token("other", Role::Write).await;
    let (status, r) = s
        .post("/resources", &other, json!({"name": "x", "kind": "kv"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
}
