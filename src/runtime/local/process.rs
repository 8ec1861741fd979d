//! One replica: a supervised sandbox. Its output goes to the log store; a
//! crash restarts it with backoff; it is ready when its port accepts
//! connections on a socket that the sandbox's own user owns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::cgroups::Limits;
use super::host;
use super::sandbox::{Sandboxes, Spec};
use crate::runtime::{LogLine, STREAM_STDERR, STREAM_STDOUT, STREAM_SYSTEM};
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
    /// The project's sandbox uid.
    pub uid: u32,
    pub limits: Limits,
    /// Persistent volumes: (volume, host directory, path inside).
    pub volumes: Vec<(Uuid, PathBuf, String)>,
}

impl ReplicaSpec {
    /// The service the replica belongs to (`web` of `web.1`).
    pub fn service(&self) -> &str {
        self.name.split('.').next().unwrap_or(&self.name)
    }

    /// A line this replica wrote, or one about it.
    fn line(&self, stream: &str, level: &str, msg: String) -> LogLine {
        LogLine {
            ts: chrono::Utc::now(),
            source: self.name.clone(),
            level: level.into(),
            msg,
            deployment_id: Some(self.deployment_id),
            stream: stream.into(),
            service: Some(self.service().to_string()),
            replica: Some(self.name.clone()),
            cursor: 0,
            step: None,
            rendered: Default::default(),
        }
    }
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

/// What every replica shares: where output goes, how sandboxes are made,
/// whom to tell when readiness changes.
#[derive(Clone)]
pub struct Supervision {
    pub logs: LogStore,
    pub sandboxes: Arc<Sandboxes>,
    /// Woken whenever a replica becomes ready or stops being ready.
    pub changed: Arc<Notify>,
}

/// A running replica; stopping it ends its supervisor.
pub struct Replica {
    pub spec: ReplicaSpec,
    pub state: Arc<ReplicaState>,
    /// `Some(grace)` asks the supervisor to stop the sandbox.
    stop: watch::Sender<Option<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

/// Longest log line kept; longer output is split.
const MAX_LINE: usize = 8 * 1024;

/// Reads `reader` to its end, calling `line` for each line (without its
/// newline, at most [`MAX_LINE`] bytes, invalid UTF-8 replaced).
pub async fn read_lines(mut reader: impl AsyncRead + Unpin, mut line: impl FnMut(String)) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                line(String::from_utf8_lossy(&pending).into_owned());
                pending.clear();
            } else {
                pending.push(b);
                if pending.len() == MAX_LINE {
                    line(String::from_utf8_lossy(&pending).into_owned());
                    pending.clear();
                }
            }
        }
    }
    if !pending.is_empty() {
        line(String::from_utf8_lossy(&pending).into_owned());
    }
}

fn pump(
    reader: impl AsyncRead + Unpin + Send + 'static,
    spec: &ReplicaSpec,
    stream: &'static str,
    logs: LogStore,
) {
    let level = if stream == STREAM_STDERR {
        "error"
    } else {
        "info"
    };
    let spec = spec.clone();
    tokio::spawn(read_lines(reader, move |msg| {
        logs.push(spec.environment_id, spec.line(stream, level, msg))
    }));
}

/// Whether something accepts connections on the port.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Ready: the port accepts connections, and the socket answering
/// `127.0.0.1:port` belongs to the sandbox's user, not to another
/// tenant's process that took the port first.
async fn listening_as(port: u16, uid: u32) -> bool {
    port_open(port).await && host::loopback_listener_uid(port) == Some(uid)
}

impl Replica {
    /// Starts the replica and its supervisor.
    pub fn start(spec: ReplicaSpec, sup: Supervision) -> Replica {
        let state = Arc::new(ReplicaState::default());
        let (stop, stopping) = watch::channel(None);
        let task = tokio::spawn(supervise(spec.clone(), state.clone(), sup, stopping));
        Replica {
            spec,
            state,
            stop,
            task,
        }
    }

    /// Stops the replica once the router has no request in flight to it
    /// (waiting at most `drain`), giving its processes `grace` to exit
    /// after SIGTERM.
    pub async fn stop(self, drain: Duration, grace: Duration) {
        self.state.ready.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + drain;
        while self.state.in_flight.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(Some(grace));
        let _ = self.task.await;
    }
}

fn set_ready(state: &ReplicaState, sup: &Supervision, ready: bool) {
    state.ready.store(ready, Ordering::SeqCst);
    sup.changed.notify_waiters();
}

async fn supervise(
    spec: ReplicaSpec,
    state: Arc<ReplicaState>,
    sup: Supervision,
    mut stopping: watch::Receiver<Option<Duration>>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut env = spec.env.clone();
    if let Some(port) = spec.port {
        env.insert("PORT".into(), port.to_string());
    }
    let owner = sup.sandboxes.effective_uid(spec.uid);
    let mounts: Vec<(PathBuf, String)> = spec
        .volumes
        .iter()
        .map(|(_, host, inside)| (host.clone(), inside.clone()))
        .collect();
    loop {
        if stopping.borrow().is_some() {
            return;
        }
        let started = sup
            .sandboxes
            .spawn(
                &Spec {
                    uid: spec.uid,
                    dir: &spec.dir,
                    command: &spec.command,
                    env: &env,
                    limits: spec.limits,
                    mounts: &mounts,
                },
                Stdio::piped(),
                Stdio::piped(),
            )
            .await;
        let mut sandbox = match started {
            Ok(s) => s,
            Err(e) => {
                push_event(
                    &sup.logs,
                    &spec,
                    format!("cannot start: {}; retrying in {backoff:?}", e.message()),
                );
                state.crashed.store(true, Ordering::SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if let Some(out) = sandbox.child.stdout.take() {
            pump(out, &spec, STREAM_STDOUT, sup.logs.clone());
        }
        if let Some(err) = sandbox.child.stderr.take() {
            pump(err, &spec, STREAM_STDERR, sup.logs.clone());
        }
        let ready_watch = {
            let (port, state, sup) = (spec.port, state.clone(), sup.clone());
            tokio::spawn(async move {
                if let Some(port) = port {
                    while !listening_as(port, owner).await {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                state.crashed.store(false, Ordering::SeqCst);
                set_ready(&state, &sup, true);
            })
        };
        tokio::select! {
            status = sandbox.wait() => {
                ready_watch.abort();
                set_ready(&state, &sup, false);
                state.crashed.store(true, Ordering::SeqCst);
                state.restarts.fetch_add(1, Ordering::SeqCst);
                let why = if sandbox.out_of_memory() {
                    format!("killed: out of memory (limit {} MiB)", spec.limits.memory_bytes.unwrap_or(0) >> 20)
                } else {
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                };
                sandbox.settle().await;
                push_event(&sup.logs, &spec, format!("process exited ({why}); restarting in {backoff:?}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopping.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = stopping.changed() => {
                ready_watch.abort();
                set_ready(&state, &sup, false);
                let grace = stopping.borrow().unwrap_or_default();
                sandbox.stop(grace).await;
                return;
            }
        }
    }
}

fn push_event(logs: &LogStore, spec: &ReplicaSpec, msg: String) {
    logs.push(spec.environment_id, spec.line(STREAM_SYSTEM, "error", msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 5));
        let mut got = Vec::new();
        read_lines(&input[..], |l| got.push(l)).await;
        assert_eq!(got.len(), 4);
        assert_eq!((got[0].as_str(), got[1].as_str()), ("one", "two"));
        assert_eq!((got[2].len(), got[3].len()), (MAX_LINE, 5));
    }
}
