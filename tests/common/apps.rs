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
