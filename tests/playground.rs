//! The GraphiQL playground works without internet: its page loads only
//! files the server serves itself, and it renders in a browser that can
//! reach nothing but the server.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

const FOREVER: &str = "public, max-age=31536000, immutable";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_loads_only_files_the_server_serves() {
    let s = TestServer::start(Backend::Sqlite).await;
    let resp = s.client().get(s.url("/playground")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let policy = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let directive = |name: &str| {
        policy
            .split(';')
            .map(str::trim)
            .find(|d| d.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {policy}"))
            .to_string()
    };
    assert_eq!(directive("script-src"), "script-src 'self'");
    assert_eq!(directive("default-src"), "default-src 'none'");
    assert!(directive("connect-src").contains("'self'"), "{policy}");
    let html = resp.text().await.unwrap();
    for outside in ["http://", "https://", "crossorigin"] {
        assert!(!html.contains(outside), "the page has {outside}: {html}");
    }

    let tags = tags(&html);
    let scripts = tags.iter().filter(|(name, _)| name == "script").count();
    let referenced: Vec<&str> = tags.iter().filter_map(|(_, r)| r.as_deref()).collect();
    assert_eq!(
        scripts,
        tags.iter()
            .filter(|(name, r)| name == "script" && r.is_some())
            .count(),
        "an inline script, which the policy would block: {html}"
    );
    // React, ReactDOM, GraphiQL and the page's own script; GraphiQL's styles.
    assert!(scripts >= 4, "{html}");
    assert!(referenced.iter().any(|r| r.ends_with(".css")), "{html}");

    let listed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("playground/assets/README.md"),
    )
    .unwrap();
    for path in referenced {
        let name = path
            .strip_prefix("/playground/assets/")
            .unwrap_or_else(|| panic!("{path} is not one of the server's assets"));
        let resp = s.client().get(s.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let content_type = if name.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "text/javascript; charset=utf-8"
        };
        assert_eq!(resp.headers()["content-type"], content_type, "{path}");
        let cache = resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .to_string();
        let body = resp.bytes().await.unwrap();
        if name == "playground.js" {
            // Ours, under one name across releases: revalidated.
            assert_eq!(cache, "no-cache");
            assert!(String::from_utf8_lossy(&body).contains("/graphql/ws"));
        } else {
            assert_eq!(cache, FOREVER, "{path}");
            // Byte for byte the file the README traces to its package.
            let row = listed
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .unwrap_or_else(|| panic!("{name} is not listed in playground/assets/README.md"));
            assert!(
                row.contains(&hex::encode(Sha256::digest(&body))),
                "{name} served is not the file listed: {row}"
            );
        }
    }

    let resp = s
        .client()
        .get(s.url("/playground/assets/graphiql-9.9.9.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    assert_eq!(body["details"], Value::Null, "{body}");
}

/// Each `<script>` and `<link>` tag of `html`: its name and its `src` or
/// `href`, if any.
fn tags(html: &str) -> Vec<(String, Option<String>)> {
    html.split('<')
        .skip(1)
        .filter_map(|tag| {
            let tag = tag.split('>').next().unwrap_or_default();
            let mut parts = tag.split_whitespace();
            let name = parts.next()?.to_ascii_lowercase();
            if name != "script" && name != "link" {
                return None;
            }
            let reference = parts.find_map(|attr| {
                let (key, value) = attr.split_once('=')?;
                matches!(key, "src" | "href")
                    .then(|| value.trim_matches(|c| c == '"' || c == '\'').to_string())
            });
            Some((name, reference))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_renders_in_a_browser_without_internet() {
    let s = TestServer::start(Backend::Sqlite).await;
    let url = s.url("/playground");
    // What the page shows until GraphiQL replaces it.
    let html = s
        .client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Loading GraphiQL"), "{html}");
    let (dom, log) = tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(
        !dom.contains("Loading GraphiQL"),
        "GraphiQL did not start:\n{dom}\n{log}"
    );
    assert!(
        dom.contains(r#"class="graphiql-container""#),
        "{dom}\n{log}"
    );
    // The query editor, holding the page's default query.
    assert!(dom.contains("graphiql-query-editor"), "{dom}");
    assert!(dom.contains("CodeMirror"), "{dom}");
    assert!(dom.contains("viewer"), "{dom}");
    assert!(
        !log.contains("Content Security Policy"),
        "the page's policy blocked something:\n{log}"
    );
}

/// Headless Chromium, killed with every process it started when dropped,
/// whether the test passed or not.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser leads a process group of its own (see `dump_dom`).
        let group = -(self.0.id() as i32);
        // SAFETY: kill(2) takes no pointers.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The DOM of `url` once its scripts have run, as headless Chromium prints
/// it, with the browser's log; no host but 127.0.0.1 resolves.
fn dump_dom(url: &str) -> (String, String) {
    static CHROMIUM: std::sync::Once = std::sync::Once::new();
    CHROMIUM.call_once(|| common::ensure_command("chromium", "chromium"));
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("chromium.log");
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(url)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("chromium starts");
    let mut browser = Browser(child);
    let mut stdout = browser.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = stdout.read_to_string(&mut dom);
        let _ = tx.send(dom);
    });
    let dom = rx.recv_timeout(Duration::from_secs(60));
    drop(browser);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let dom = dom.unwrap_or_else(|_| panic!("chromium printed no DOM within 60 s:\n{log}"));
    (dom, log)
}
