//! A small real app in a temporary git repository, for deploy tests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::TestServer;

/// Serves `$GREETING` over HTTP on `$PORT`, after printing one line.
pub const APP: &str = r#"
import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("GREETING", "unset").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("listening on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

pub fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A repository with the app and `procfile`, committed on `main`.
pub fn repo(procfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    std::fs::write(dir.path().join("Procfile"), procfile).unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "app"]);
    dir
}

/// Deploys `project`'s production environment with the admin token and
/// waits for the deployment to end; the deployment.
pub async fn deploy(s: &TestServer, project: &str) -> Value {
    let (status, body) = s
        .post(
            &format!("/projects/{project}/deploy"),
            &s.admin_token,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "triggered");
    assert_eq!(body["environment"], "production");
    let id = body["deploymentId"].as_str().unwrap();
    finished(&s.url("/api/v1"), &s.admin_token, project, id).await
}

/// Polls `GET <api>/projects/<project>/deployments` until deployment `id` is
/// `success` or `failed`, and returns it.
pub async fn finished(api: &str, token: &str, project: &str, id: &str) -> Value {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, list) = TestServer::send(
            client
                .get(format!("{api}/projects/{project}/deployments"))
                .bearer_auth(token),
        )
        .await;
        if let Some(d) = list.as_array().unwrap().iter().find(|d| d["id"] == id)
            && matches!(d["status"].as_str(), Some("success" | "failed"))
        {
            return d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never finished: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to the test's gate (`$GATE_PORT` on loopback, which sandboxes
/// share) and waits for it to open: a release command the test holds
/// mid-deploy. Its arguments only mark its command line.
pub const GATE: &str = r#"
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(os.environ["GATE_PORT"])))
print("at the gate", flush=True)
sys.exit(0 if s.recv(1) == b"g" else 1)
"#;

/// A gate on loopback: counts the release commands that reached it and
/// lets them all through once opened.
pub struct Gate {
    pub port: u16,
    arrivals: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reached: std::sync::Arc<tokio::sync::Notify>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    pub async fn start() -> Gate {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let arrivals = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reached = std::sync::Arc::new(tokio::sync::Notify::new());
        let (open, opened) = tokio::sync::watch::channel(false);
        {
            let (arrivals, reached) = (arrivals.clone(), reached.clone());
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    arrivals.fetch_add(1, Ordering::SeqCst);
                    reached.notify_waiters();
                    let mut opened = opened.clone();
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        if opened.wait_for(|o| *o).await.is_ok() {
                            let _ = conn.write_all(b"g").await;
                        }
                    });
                }
            });
        }
        Gate {
            port,
            arrivals,
            reached,
            open,
        }
    }

    /// How many release commands reached the gate so far.
    pub fn arrivals(&self) -> usize {
        self.arrivals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` release commands in all have reached the gate.
    pub async fn wait_arrivals(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let reached = self.reached.notified();
            if self.arrivals() >= n {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, reached).await.is_ok(),
                "only {} release commands reached the gate, not {n}",
                self.arrivals()
            );
        }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

/// A repository holding `files` besides the app, with `procfile`.
pub fn repo_with(procfile: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = repo(procfile);
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "files"]);
    dir
}
