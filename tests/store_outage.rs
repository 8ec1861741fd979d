//! Store outages: a PostgreSQL store stopped and started again under write
//! load. While it is down every request fails within 5 s with 503, a JSON
//! error and Retry-After, and health says the database is down; once it is
//! back, writes succeed again without a restart and every write answered
//! 201 is there.
//!
//! The test runs its own PostgreSQL cluster (with synchronous_commit on),
//! since it stops and starts it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, TestServer};
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The system user the cluster runs as: PostgreSQL refuses to run as root.
const PG_USER: &str = "postgres";
/// How long a request may take while the store is down (the requirement),
/// plus a margin for the test's own scheduling.
const OUTAGE_ANSWER_LIMIT: Duration = Duration::from_millis(5_500);
/// Writers sending at once.
const WRITERS: usize = 8;

/// A private PostgreSQL cluster in a temporary directory; stopped and
/// removed on drop, whatever the test did.
struct Cluster {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
}

impl Cluster {
    /// Creates the cluster and starts it on a free local port.
    async fn start() -> Cluster {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let owned = std::process::Command::new("chown")
            .arg(format!("{PG_USER}:"))
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(
            owned.success(),
            "cannot hand the cluster's directory to {PG_USER}"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let cluster = Cluster { bin, dir, port };
        cluster
            .pg(
                "initdb",
                &["-D", &cluster.data(), "-U", "postgres", "--auth=trust"],
            )
            .await;
        cluster.resume().await;
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the cluster's programs as [`PG_USER`]; panics when it fails.
    async fn pg(&self, program: &str, args: &[&str]) {
        let out = tokio::process::Command::new("runuser")
            .args(["-u", PG_USER, "--"])
            .arg(self.bin.join(program))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("runuser");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections.
    async fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        // With a log file the server does not hold pg_ctl's output open.
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
        .await;
    }

    /// Stops the server the way an operator does: sessions are ended,
    /// then it shuts down.
    async fn stop(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Not running (already stopped) is fine; the directory goes with `dir`.
        let _ = std::process::Command::new("runuser")
            .args(["-u", PG_USER, "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The `bin` directory of the newest PostgreSQL installed.
fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v)
        .expect("a PostgreSQL version with initdb");
    newest.1
}

/// One answer a writer got.
struct Answer {
    slug: String,
    /// None when no answer came (transport error or the client's timeout).
    status: Option<StatusCode>,
    /// Whether the body is a JSON object with an `error` field.
    json_error: bool,
    retry_after: Option<String>,
    took: Duration,
    body: String,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status.map_or("no answer".into(), |s| s.to_string());
        write!(
            f,
            "{}: {status} after {:?}, Retry-After {:?}: {}",
            self.slug, self.took, self.retry_after, self.body
        )
    }
}

/// What the writers have seen so far, for the test to wait on.
#[derive(Default)]
struct Progress {
    created: AtomicUsize,
    unavailable: AtomicUsize,
    stop: AtomicBool,
}

/// Creates projects `w{writer}-{n}` one after another until told to stop.
/// Odd writers send an `Idempotency-Key`, so that layer meets the outage too.
async fn writer(
    client: Client,
    url: String,
    token: String,
    writer: usize,
    progress: Arc<Progress>,
) -> Vec<Answer> {
    let mut answers = Vec::new();
    for n in 0.. {
        if progress.stop.load(Ordering::SeqCst) {
            break;
        }
        let slug = format!("w{writer}-{n}");
        let mut req = client
            .post(&url)
            .bearer_auth(&token)
            .timeout(Duration::from_secs(30))
            .json(&json!({ "name": slug, "slug": slug }));
        if writer % 2 == 1 {
            req = req.header("idempotency-key", format!("key-{slug}"));
        }
        let started = Instant::now();
        let answer = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp.text().await.unwrap_or_default();
                let json_error = serde_json::from_str::<Value>(&body)
                    .is_ok_and(|v| v.get("error").is_some_and(Value::is_string));
                Answer {
                    slug,
                    status: Some(status),
                    json_error,
                    retry_after,
                    took: started.elapsed(),
                    body,
                }
            }
            Err(e) => Answer {
                slug,
                status: None,
                json_error: false,
                retry_after: None,
                took: started.elapsed(),
                body: e.to_string(),
            },
        };
        match answer.status {
            Some(StatusCode::CREATED) => progress.created.fetch_add(1, Ordering::SeqCst),
            Some(StatusCode::SERVICE_UNAVAILABLE) => {
                progress.unavailable.fetch_add(1, Ordering::SeqCst)
            }
            _ => 0,
        };
        answers.push(answer);
    }
    answers
}

/// Waits until `count` reaches `at_least`; panics after a minute.
async fn wait_for(what: &str, count: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {at_least} after a minute",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health(s: &TestServer) -> (StatusCode, Value) {
    TestServer::send(s.client().get(s.url("/api/v1/health/status"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_postgres_restart() {
    // Dropped in reverse order: the server (and its database) before the cluster.
    let cluster = Cluster::start().await;
    let s = TestServer::start(Backend::Postgres(cluster.admin_url())).await;

    let progress = Arc::new(Progress::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                s.client().clone(),
                s.url("/api/v1/projects"),
                s.admin_token.clone(),
                w,
                progress.clone(),
            ))
        })
        .collect();

    wait_for("201s before the outage", &progress.created, 40).await;
    // A subscriber connected before the outage, and a token not used yet
    // (so no server has it in its verified-token cache).
    let mut connected = common::ws::with_token(&s, &s.admin_token).await;
    let fresh = s.token("fresh", sylphx::auth::Role::Read).await;
    cluster.stop().await;
    let unavailable_before = progress.unavailable.load(Ordering::SeqCst);
    wait_for(
        "503s during the outage",
        &progress.unavailable,
        unavailable_before + 2 * WRITERS,
    )
    .await;
    let (status, body) = health(&s).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["services"]["database"], "down", "{body}");
    // A websocket whose token cannot be checked now is told to try again
    // later (1013), not that its token is bad (4401).
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws::request(&s, &[]))
        .await
        .unwrap();
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {fresh}") } });
    futures_util::SinkExt::send(&mut socket, init.to_string().into())
        .await
        .unwrap();
    let (code, texts) = common::ws::until_closed(&mut socket).await;
    assert_eq!(code, Some(1013), "{texts:?}");

    cluster.resume().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = health(&s).await;
        if status == StatusCode::OK {
            assert_eq!(body["services"]["database"], "ok", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health never came back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection made before the outage outlived it: its credentials
    // were not refused because the store could not be asked.
    let ping = json!({ "type": "ping" }).to_string();
    futures_util::SinkExt::send(&mut connected, ping.into())
        .await
        .unwrap();
    let pong = common::ws::next_text(&mut connected).await;
    assert_eq!(pong, Some(json!({ "type": "pong" })));
    let created_before = progress.created.load(Ordering::SeqCst);
    wait_for(
        "201s after the outage",
        &progress.created,
        created_before + 5 * WRITERS,
    )
    .await;
    progress.stop.store(true, Ordering::SeqCst);
    let mut per_writer = Vec::new();
    for w in writers {
        per_writer.push(w.await.expect("writer"));
    }
    let answers: Vec<&Answer> = per_writer.iter().flatten().collect();

    let count = |want: StatusCode| answers.iter().filter(|a| a.status == Some(want)).count();
    let slowest_503 = answers
        .iter()
        .filter(|a| a.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .map(|a| a.took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} answers: {} created, {} unavailable; the slowest 503 took {slowest_503:?}",
        answers.len(),
        count(StatusCode::CREATED),
        count(StatusCode::SERVICE_UNAVAILABLE),
    );

    for a in &answers {
        match a.status {
            Some(StatusCode::CREATED) => {}
            Some(StatusCode::SERVICE_UNAVAILABLE) => {
                assert!(a.json_error, "a 503 without a JSON error: {a}");
                assert!(a.retry_after.is_some(), "a 503 without Retry-After: {a}");
                assert!(a.took <= OUTAGE_ANSWER_LIMIT, "a 503 took too long: {a}");
            }
            _ => panic!("neither 201 nor 503: {a}"),
        }
    }
    // Every writer is writing again: its last answer is a 201.
    for (w, answers) in per_writer.iter().enumerate() {
        let last = answers.last().expect("a writer that sent nothing");
        assert_eq!(last.status, Some(StatusCode::CREATED), "writer {w}: {last}");
    }

    // No acknowledged write was lost.
    let (status, listed) = s.get("/projects", &s.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let stored: BTreeSet<&str> = listed
        .as_array()
        .expect("a list of projects")
        .iter()
        .filter_map(|p| p["slug"].as_str())
        .collect();
    let acknowledged: BTreeSet<&str> = answers
        .iter()
        .filter(|a| a.status == Some(StatusCode::CREATED))
        .map(|a| a.slug.as_str())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
}
