//! The `sylphx` binary: token creation, first-start bootstrap, migrate.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::binary::{self, ServeProcess, free_port};

fn sylphx(args: &[&str], data_dir: &Path) -> std::process::Output {
    binary::run(args, &[("SYLPHX_DATA_DIR", data_dir.to_str().unwrap())])
}

fn is_token(s: &str) -> bool {
    s.len() == 72 && s.starts_with("slx_cli_") && s[8..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Starts `sylphx serve` on `data_dir` and waits until it answers.
async fn serve(data_dir: &Path) -> (ServeProcess, String) {
    let apps = format!("127.0.0.1:{}", free_port());
    let server = ServeProcess::start(
        free_port(),
        &["--apps-listen", &apps],
        &[("SYLPHX_DATA_DIR", data_dir.to_str().unwrap())],
        data_dir,
    )
    .await;
    let base = server.base.clone();
    (server, base)
}

async fn projects(base: &str, token: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}/projects"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or_default())
}

#[test]
fn token_create_prints_only_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let first = sylphx(&["token", "create", "--org", "acme"], dir.path());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8(first.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    assert!(is_token(stdout.trim()), "{stdout}");
    let second = sylphx(
        &[
            "token", "create", "--org", "acme", "--role", "read", "--name", "ro",
        ],
        dir.path(),
    );
    assert!(second.status.success());
    assert_ne!(String::from_utf8(second.stdout).unwrap(), stdout);

    let bad = sylphx(&["token", "create", "--org", "Bad Org"], dir.path());
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("org"));
    let bad_role = sylphx(
        &["token", "create", "--org", "acme", "--role", "root"],
        dir.path(),
    );
    assert!(!bad_role.status.success());
}

#[test]
fn migrate_creates_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = sylphx(&["migrate"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("sylphx.db").exists());
}

#[tokio::test]
async fn first_serve_bootstraps_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base) = serve(dir.path()).await;
    let stdout = server.stdout();
    let token_file = dir.path().join("admin-token");
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&dir.path().join("master.key")), 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(is_token(&token));
    assert!(
        stdout.lines().any(|l| l == token),
        "serve prints the token once: {stdout}"
    );
    let (status, body) = projects(&base, &token).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(body, serde_json::json!([]));
    drop(server);

    // A token made offline for another organisation works after a restart,
    // and a restart creates no new admin token.
    let out = sylphx(&["token", "create", "--org", "acme"], dir.path());
    let acme = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (server, base) = serve(dir.path()).await;
    let stdout = server.stdout();
    assert!(!stdout.contains("slx_cli_"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    assert_eq!(projects(&base, &token).await.0, reqwest::StatusCode::OK);
    let (status, body) = projects(&base, &acme).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(body, serde_json::json!([]));
}

/// `SYLPHX_RATE_LIMITS=off` serves without rate limits: no headers, and
/// `/rate-limit` says so; by default every answer carries them.
#[tokio::test]
async fn rate_limits_can_be_turned_off() {
    for (setting, on) in [("off", false), ("", true)] {
        let dir = tempfile::tempdir().unwrap();
        let apps = format!("127.0.0.1:{}", free_port());
        let server = ServeProcess::start(
            free_port(),
            &["--apps-listen", &apps],
            &[
                ("SYLPHX_DATA_DIR", dir.path().to_str().unwrap()),
                ("SYLPHX_RATE_LIMITS", setting),
            ],
            dir.path(),
        )
        .await;
        let token = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
        let client = reqwest::Client::new();
        let r = client
            .get(format!("{}/projects", server.base))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK);
        assert_eq!(
            r.headers().contains_key("x-ratelimit-limit"),
            on,
            "{setting:?}"
        );
        let r: serde_json::Value = client
            .get(format!("{}/rate-limit", server.base))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["enabled"], on, "{r}");
    }
}

/// The list reads' connections: two per HTTP thread unless set.
#[test]
fn read_connections_default_to_two_per_http_thread() {
    let dir = tempfile::tempdir().unwrap();
    let load = |toml: &str| {
        let path = dir.path().join("sylphx.toml");
        std::fs::write(&path, toml).unwrap();
        sylphx::config::Config::load(&sylphx::config::ServeArgs {
            store: sylphx::config::StoreArgs {
                data_dir: Some(dir.path().join("data")),
                config: Some(path),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap()
    };
    let three = load("http_threads = 3\n");
    assert_eq!((three.http_threads, three.db_read_connections), (3, 6));
    let set = load("http_threads = 3\ndb_read_connections = 5\n");
    assert_eq!(set.db_read_connections, 5);
}

#[test]
fn serve_refuses_an_empty_store_pool() {
    for (var, key) in [
        ("SYLPHX_DB_MAX_CONNECTIONS", "db_max_connections"),
        ("SYLPHX_DB_READ_CONNECTIONS", "db_read_connections"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = binary::run(
            &["serve", "--listen", "127.0.0.1:0"],
            &[
                ("SYLPHX_DATA_DIR", dir.path().to_str().unwrap()),
                (var, "0"),
            ],
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{key} ({var}) must be at least 1")),
            "{stderr}"
        );
    }
}

#[test]
fn serve_refuses_zero_http_threads() {
    let dir = tempfile::tempdir().unwrap();
    let out = binary::run(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("SYLPHX_DATA_DIR", dir.path().to_str().unwrap()),
            ("SYLPHX_HTTP_THREADS", "0"),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("http_threads (SYLPHX_HTTP_THREADS) must be at least 1"),
        "{stderr}"
    );
}
