//! The `sylphx` binary as an operator runs it: `serve` in a child process
//! that can be killed with SIGKILL and started again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_sylphx");

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sylphx <args>` with `envs` (and no ambient `SYLPHX_DATABASE_URL`).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SYLPHX_DATABASE_URL")
        .envs(envs.iter().copied())
        .output()
        .expect("run sylphx")
}

/// `sylphx token create --org <org>`: a new admin token.
pub fn create_token(org: &str, envs: &[(&str, &str)]) -> String {
    let out = run(&["token", "create", "--org", org], envs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A running `sylphx serve`, killed (SIGKILL) when dropped.
pub struct ServeProcess {
    child: Child,
    /// `http://127.0.0.1:<port>/api/v1`
    pub base: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ServeProcess {
    /// Starts `sylphx serve --listen 127.0.0.1:<port> <extra>` with `envs`,
    /// output kept in files under `logs`, and waits until it answers.
    pub async fn start(
        port: u16,
        extra: &[&str],
        envs: &[(&str, &str)],
        logs: &Path,
    ) -> ServeProcess {
        let n = std::fs::read_dir(logs).map(|d| d.count()).unwrap_or(0);
        let stdout = logs.join(format!("serve-{port}-{n}.out"));
        let stderr = logs.join(format!("serve-{port}-{n}.err"));
        super::ensure_bubblewrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env_remove("SYLPHX_DATABASE_URL");
        if !envs.iter().any(|(k, _)| *k == "SYLPHX_SANDBOX_IDS") {
            cmd.env("SYLPHX_SANDBOX_IDS", super::sandbox_ids());
        }
        if !envs.iter().any(|(k, _)| *k == "SYLPHX_RESOURCE_PORTS") {
            cmd.env("SYLPHX_RESOURCE_PORTS", super::resource_ports());
        }
        if !envs.iter().any(|(k, _)| *k == "SYLPHX_S3_LISTEN") {
            cmd.env("SYLPHX_S3_LISTEN", "127.0.0.1:0");
        }
        let child = cmd
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn sylphx serve");
        let mut server = ServeProcess {
            child,
            base: format!("http://127.0.0.1:{port}/api/v1"),
            stdout,
            stderr,
        };
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client
                .get(format!("{}/health/status", server.base))
                .send()
                .await
                && r.status().is_success()
            {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("serve exited with {status}: {}", server.stderr());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve did not answer: {}",
                server.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, as a service manager stops it; waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: signals our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        self.child.wait().unwrap()
    }

    /// SIGKILL: no shutdown hook runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET <base><path>` with `token`: status and JSON (or text) body.
pub async fn get(base: &str, path: &str, token: &str) -> (reqwest::StatusCode, serde_json::Value) {
    super::TestServer::send(
        reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(token),
    )
    .await
}

/// `POST <base><path>` with `token` and a JSON body.
pub async fn post(
    base: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    super::TestServer::send(
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body),
    )
    .await
}

/// Where `serve` processes under test keep their state: SQLite in their
/// data directory, or a fresh PostgreSQL database of the test server.
pub struct ServeStore {
    postgres: Option<(String, String)>,
}

impl ServeStore {
    /// `None` when PostgreSQL is asked for and there is no test server
    /// (`SYLPHX_TEST_DATABASE_URL`): the run is skipped, saying so.
    pub async fn new(postgres: bool) -> Option<ServeStore> {
        if !postgres {
            return Some(ServeStore { postgres: None });
        }
        match super::fresh_postgres().await {
            Some(pg) => Some(ServeStore { postgres: Some(pg) }),
            None => {
                eprintln!("PostgreSQL run skipped: SYLPHX_TEST_DATABASE_URL is not set");
                None
            }
        }
    }

    /// The variable that points `serve` at the store, if it needs one.
    pub fn env(&self) -> Option<(&'static str, &str)> {
        self.postgres
            .as_ref()
            .map(|(url, _)| ("SYLPHX_DATABASE_URL", url.as_str()))
    }

    /// Drops the PostgreSQL database, if there is one.
    pub async fn drop_database(self) {
        if let Some((_, name)) = self.postgres {
            super::drop_postgres(&name).await;
        }
    }
}
