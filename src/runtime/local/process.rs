//! One replica: a supervised child process. Its output goes to the log
//! store; a crash restarts it with backoff; readiness is its port accepting
//! connections.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use uuid::Uuid;

use crate::runtime::LogLine;
use crate::streams::LogStore;

/// What a replica runs.
#[derive(Clone)]
pub struct ReplicaSpec {
    pub name: String,
    pub command: String,
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
    pub port: Option<u16>,
    pub environment_id: Uuid,
    pub deployment_id: Uuid,
}

impl std::fmt::Debug for ReplicaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSpec")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Live state shared with status and the router.
#[derive(Debug, Default)]
pub struct ReplicaState {
    pub ready: AtomicBool,
    pub restarts: AtomicU32,
    pub crashed: AtomicBool,
    /// Requests the router has in flight to this replica.
    pub in_flight: AtomicUsize,
}

/// A running replica; stopping it ends its supervisor.
pub struct Replica {
    pub spec: ReplicaSpec,
    pub state: Arc<ReplicaState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// `sh -c command` in `dir` with only PATH, HOME and `env`, in its own
/// process group, killed when dropped and when this process dies (so no
/// app or release command outlives a crashed control plane).
pub(super) fn app_command(
    command: &str,
    dir: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it makes the child die with us
    // rather than outlive a crashed control plane holding its port.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

fn spawn_child(spec: &ReplicaSpec) -> std::io::Result<Child> {
    let mut cmd = app_command(&spec.command, &spec.dir, &spec.env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(port) = spec.port {
        cmd.env("PORT", port.to_string());
    }
    cmd.spawn()
}

fn pump(
    reader: impl AsyncRead + Unpin + Send + 'static,
    spec: &ReplicaSpec,
    level: &'static str,
    logs: LogStore,
) {
    let (env, deployment, source) = (spec.environment_id, spec.deployment_id, spec.name.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(msg)) = lines.next_line().await {
            logs.push(
                env,
                LogLine {
                    ts: chrono::Utc::now(),
                    source: source.clone(),
                    level: level.into(),
                    msg,
                    deployment_id: Some(deployment),
                },
            );
        }
    });
}

/// Sends SIGTERM to the process group, then SIGKILL after a grace period.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child's process group.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
}

/// Whether something accepts connections on the port.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

impl Replica {
    /// Starts the replica and its supervisor.
    pub fn start(spec: ReplicaSpec, logs: LogStore) -> Replica {
        let state = Arc::new(ReplicaState::default());
        let (stop, mut stopped) = watch::channel(false);
        let task = {
            let (spec, state) = (spec.clone(), state.clone());
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(500);
                loop {
                    let mut child = match spawn_child(&spec) {
                        Ok(c) => c,
                        Err(e) => {
                            push_event(&logs, &spec, format!("cannot start: {e}"));
                            state.crashed.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    if let Some(out) = child.stdout.take() {
                        pump(out, &spec, "info", logs.clone());
                    }
                    if let Some(err) = child.stderr.take() {
                        pump(err, &spec, "error", logs.clone());
                    }
                    let ready_watch = {
                        let (spec, state) = (spec.clone(), state.clone());
                        tokio::spawn(async move {
                            match spec.port {
                                Some(port) => loop {
                                    if port_open(port).await {
                                        state.ready.store(true, Ordering::SeqCst);
                                        state.crashed.store(false, Ordering::SeqCst);
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                },
                                None => state.ready.store(true, Ordering::SeqCst),
                            }
                        })
                    };
                    tokio::select! {
                        status = child.wait() => {
                            ready_watch.abort();
                            state.ready.store(false, Ordering::SeqCst);
                            state.crashed.store(true, Ordering::SeqCst);
                            state.restarts.fetch_add(1, Ordering::SeqCst);
                            let code = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                            push_event(&logs, &spec, format!("process exited ({code}); restarting in {backoff:?}"));
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = stopped.changed() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                        _ = stopped.changed() => {
                            ready_watch.abort();
                            state.ready.store(false, Ordering::SeqCst);
                            terminate(&mut child).await;
                            return;
                        }
                    }
                }
            })
        };
        Replica {
            spec,
            state,
            stop,
            task,
        }
    }

    /// Stops the replica once the router has no request in flight to it.
    pub async fn stop(self) {
        self.state.ready.store(false, Ordering::SeqCst);
        for _ in 0..300 {
            if self.state.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn push_event(logs: &LogStore, spec: &ReplicaSpec, msg: String) {
    logs.push(
        spec.environment_id,
        LogLine {
            ts: chrono::Utc::now(),
            source: spec.name.clone(),
            level: "error".into(),
            msg,
            deployment_id: Some(spec.deployment_id),
        },
    );
}
