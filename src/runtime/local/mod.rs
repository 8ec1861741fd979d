//! The `local` runtime: runs apps for real on this machine. Each deploy
//! clones the repository at a commit into a release directory (kept for
//! rollback), runs the Procfile's `release:` command, starts the new
//! replicas, waits for them to accept connections, switches the router and
//! only then stops the old ones.

mod process;
mod router;
pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use super::{
    BuildOutput, BuildRequest, EnvVars, EnvironmentRef, EnvironmentStatus, LogLine, LogQuery,
    LogSink, Release, Runner, Runtime, ServiceSpec, ServiceStatus,
};
use crate::error::{Error, Result};
use crate::streams::LogStore;
use process::{Replica, ReplicaSpec, ReplicaState, port_open};
use source::Procfile;

/// Settings of the local runtime.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where release directories live.
    pub releases_dir: PathBuf,
    /// How long new replicas get to accept connections.
    pub ready_timeout: Duration,
}

struct RunningService {
    spec: ServiceSpec,
    replicas: Vec<Replica>,
}

struct RunningEnv {
    env: EnvironmentRef,
    deployment_id: Option<Uuid>,
    services: Vec<RunningService>,
}

/// State shared with the router.
#[derive(Default)]
pub(crate) struct Shared {
    envs: Mutex<HashMap<Uuid, RunningEnv>>,
}

/// The hostnames an environment answers to: its domain, and
/// `<slug>.localhost` (production) or `<env>.<slug>.localhost`.
fn hostnames(env: &EnvironmentRef) -> Vec<String> {
    let mut out: Vec<String> = env.domain.iter().cloned().collect();
    if env.environment_name == crate::domain::environments::PRODUCTION {
        out.push(format!("{}.localhost", env.project_slug));
    } else {
        out.push(format!(
            "{}.{}.localhost",
            env.environment_name, env.project_slug
        ));
    }
    out
}

/// The service the router sends HTTP to: `web`, else the first with a port.
fn web_service(services: &[RunningService]) -> Option<&RunningService> {
    services
        .iter()
        .find(|s| s.spec.name == "web" && s.spec.port.is_some())
        .or_else(|| services.iter().find(|s| s.spec.port.is_some()))
}

impl Shared {
    fn pick(&self, host: &str, n: usize) -> Option<(u16, Arc<ReplicaState>)> {
        let envs = self.envs.lock().expect("local runtime");
        let env = envs
            .values()
            .find(|e| hostnames(&e.env).iter().any(|h| h == host))?;
        let ready: Vec<&Replica> = web_service(&env.services)?
            .replicas
            .iter()
            .filter(|r| r.state.ready.load(Ordering::SeqCst))
            .collect();
        let r = ready.get(n % ready.len().max(1))?;
        Some((r.spec.port?, r.state.clone()))
    }

    fn knows(&self, host: &str) -> bool {
        let envs = self.envs.lock().expect("local runtime");
        envs.values()
            .any(|e| hostnames(&e.env).iter().any(|h| h == host))
    }
}

/// The local runtime.
pub struct LocalRuntime {
    config: LocalConfig,
    shared: Arc<Shared>,
    logs: LogStore,
    /// Serialises rollouts per environment.
    rollouts: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::internal(format!("no free port: {e}")))
}

fn release_id(deployment_id: Uuid, commit: &str) -> String {
    format!("local:{deployment_id}@{}", &commit[..commit.len().min(12)])
}

impl LocalRuntime {
    pub fn new(config: LocalConfig, logs: LogStore) -> Self {
        LocalRuntime {
            config,
            shared: Arc::default(),
            logs,
            rollouts: Mutex::default(),
        }
    }

    /// Serves the app router on `addr` until the process ends.
    pub async fn serve_router(&self, addr: SocketAddr) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::internal(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(Error::internal)?;
        let state = router::RouterState {
            shared: self.shared.clone(),
            client: reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .map_err(Error::internal)?,
            next: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .fallback(router::proxy)
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(local)
    }

    fn release_dir(&self, image: &str) -> Result<PathBuf> {
        let id = image
            .strip_prefix("local:")
            .and_then(|rest| rest.split('@').next())
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| {
                Error::Unprocessable(format!(
                    "'{image}' is a container image: the local runtime runs git sources only (use --runtime kubernetes for dockerImage projects)"
                ))
            })?;
        Ok(self.config.releases_dir.join(id.to_string()))
    }

    fn lock_env(&self, env: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.rollouts
            .lock()
            .expect("rollouts")
            .entry(env)
            .or_default()
            .clone()
    }

    fn say(&self, sink: &LogSink, env: &EnvironmentRef, deployment: Uuid, msg: String) {
        let _ = sink.send(LogLine {
            ts: chrono::Utc::now(),
            source: "deploy".into(),
            level: "info".into(),
            msg,
            deployment_id: Some(deployment),
        });
        let _ = env;
    }

    async fn run_release_command(
        &self,
        dir: &std::path::Path,
        command: &str,
        env: &BTreeMap<String, String>,
        sink: &LogSink,
        release: &Release,
    ) -> Result<()> {
        let out = process::app_command(command, dir, env)
            .output()
            .await
            .map_err(|e| Error::internal(format!("cannot run the release command: {e}")))?;
        for (level, bytes) in [("info", &out.stdout), ("error", &out.stderr)] {
            for line in String::from_utf8_lossy(bytes).lines() {
                let _ = sink.send(LogLine {
                    ts: chrono::Utc::now(),
                    source: "release".into(),
                    level: level.into(),
                    msg: line.to_string(),
                    deployment_id: Some(release.deployment_id),
                });
            }
        }
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Unprocessable(format!(
                "the release command failed ({})",
                out.status
            )))
        }
    }
}

async fn stop_all(services: Vec<RunningService>) {
    let stops = services
        .into_iter()
        .flat_map(|s| s.replicas)
        .map(Replica::stop);
    futures_util::future::join_all(stops).await;
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    async fn provision(&self, env: &EnvironmentRef, _vars: &EnvVars) -> Result<()> {
        let mut envs = self.shared.envs.lock().expect("local runtime");
        let entry = envs
            .entry(env.environment_id)
            .or_insert_with(|| RunningEnv {
                env: env.clone(),
                deployment_id: None,
                services: Vec::new(),
            });
        entry.env = env.clone();
        Ok(())
    }

    async fn build(&self, req: &BuildRequest, logs: LogSink) -> Result<BuildOutput> {
        let repo = source::local_repository(&req.git_repository)?;
        let dir = self.config.releases_dir.join(req.deployment_id.to_string());
        let say = |msg: String| {
            let _ = logs.send(LogLine {
                ts: chrono::Utc::now(),
                source: "build".into(),
                level: "info".into(),
                msg,
                deployment_id: Some(req.deployment_id),
            });
        };
        say(format!(
            "cloning {} ({})",
            req.git_repository, req.git_branch
        ));
        let commit =
            source::checkout(&repo, &req.git_branch, req.git_commit.as_deref(), &dir).await?;
        say(format!("checked out {commit}"));
        let procfile = Procfile::read(&dir).await?;
        let declared = procfile
            .processes
            .iter()
            .map(|p| ServiceSpec {
                service_id: Uuid::nil(),
                name: p.name.clone(),
                port: (p.name == "web").then_some(0),
                replicas: 1,
                resources: None,
                command: Some(p.command.clone()),
            })
            .collect();
        say(format!(
            "release {} ready",
            release_id(req.deployment_id, &commit)
        ));
        Ok(BuildOutput {
            image: release_id(req.deployment_id, &commit),
            commit,
            declared_services: declared,
        })
    }

    async fn deploy(&self, release: &Release, logs: LogSink) -> Result<()> {
        let dir = self.release_dir(&release.image)?;
        let procfile = Procfile::read(&dir).await?;
        let lock = self.lock_env(release.env.environment_id);
        let _guard = lock.lock().await;
        let vars: BTreeMap<String, String> = release
            .env_vars
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        if let Some(cmd) = &procfile.release {
            self.say(
                &logs,
                &release.env,
                release.deployment_id,
                "running the release command".into(),
            );
            self.run_release_command(&dir, cmd, &vars, &logs, release)
                .await?;
        }
        // Start the new replicas beside the old ones.
        let mut started = Vec::new();
        for svc in &release.services {
            let Some(command) = svc
                .command
                .clone()
                .or_else(|| procfile.command(&svc.name).map(str::to_string))
            else {
                continue; // Not a process type of this release.
            };
            let mut replicas = Vec::new();
            for i in 0..svc.replicas {
                let port = match svc.port {
                    Some(_) => Some(free_port()?),
                    None => None,
                };
                replicas.push(Replica::start(
                    ReplicaSpec {
                        name: format!("{}.{}", svc.name, i + 1),
                        command: command.clone(),
                        dir: dir.clone(),
                        env: vars.clone(),
                        port,
                        environment_id: release.env.environment_id,
                        deployment_id: release.deployment_id,
                    },
                    self.logs.clone(),
                ));
            }
            started.push(RunningService {
                spec: svc.clone(),
                replicas,
            });
        }
        if started.is_empty() {
            return Err(Error::Unprocessable(
                "the release has no process to run".into(),
            ));
        }
        self.say(
            &logs,
            &release.env,
            release.deployment_id,
            "waiting for the new replicas to become ready".into(),
        );
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        let all_ready = |services: &[RunningService]| {
            services
                .iter()
                .flat_map(|s| &s.replicas)
                .all(|r| r.state.ready.load(Ordering::SeqCst))
        };
        while !all_ready(&started) {
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = started
                    .iter()
                    .flat_map(|s| &s.replicas)
                    .filter(|r| !r.state.ready.load(Ordering::SeqCst))
                    .map(|r| r.spec.name.clone())
                    .collect();
                stop_all(started).await;
                return Err(Error::Unprocessable(format!(
                    "{} did not become ready within {:?}; the previous release keeps serving",
                    names.join(", "),
                    self.config.ready_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Switch the router, then retire the old release.
        let old = {
            let mut envs = self.shared.envs.lock().expect("local runtime");
            let entry = envs
                .entry(release.env.environment_id)
                .or_insert_with(|| RunningEnv {
                    env: release.env.clone(),
                    deployment_id: None,
                    services: Vec::new(),
                });
            entry.env = release.env.clone();
            entry.deployment_id = Some(release.deployment_id);
            std::mem::replace(&mut entry.services, started)
        };
        self.say(
            &logs,
            &release.env,
            release.deployment_id,
            "switched traffic to the new release".into(),
        );
        stop_all(old).await;
        Ok(())
    }

    async fn scale(&self, env: &EnvironmentRef, service: &str, replicas: u32) -> Result<()> {
        let (to_stop, to_start) = {
            let mut envs = self.shared.envs.lock().expect("local runtime");
            let running = envs
                .get_mut(&env.environment_id)
                .and_then(|e| e.services.iter_mut().find(|s| s.spec.name == service))
                .ok_or_else(|| Error::not_found("running service", service))?;
            running.spec.replicas = replicas;
            let have = running.replicas.len() as u32;
            if replicas < have {
                (running.replicas.split_off(replicas as usize), Vec::new())
            } else {
                let template = running.replicas.first().map(|r| r.spec.clone());
                let mut new = Vec::new();
                if let Some(t) = template {
                    for i in have..replicas {
                        let mut spec = t.clone();
                        spec.name = format!("{service}.{}", i + 1);
                        spec.port = match t.port {
                            Some(_) => Some(free_port()?),
                            None => None,
                        };
                        new.push(Replica::start(spec, self.logs.clone()));
                    }
                }
                running.replicas.extend(new);
                (Vec::new(), Vec::<Replica>::new())
            }
        };
        drop(to_start);
        futures_util::future::join_all(to_stop.into_iter().map(Replica::stop)).await;
        Ok(())
    }

    async fn status(&self, env: &EnvironmentRef) -> Result<EnvironmentStatus> {
        let envs = self.shared.envs.lock().expect("local runtime");
        let Some(running) = envs
            .get(&env.environment_id)
            .filter(|e| e.deployment_id.is_some())
        else {
            return Ok(EnvironmentStatus {
                status: "not_deployed".into(),
                services: Vec::new(),
            });
        };
        let services: Vec<ServiceStatus> = running
            .services
            .iter()
            .map(|s| {
                let ready = s
                    .replicas
                    .iter()
                    .filter(|r| r.state.ready.load(Ordering::SeqCst))
                    .count() as u32;
                let crashed = s
                    .replicas
                    .iter()
                    .any(|r| r.state.crashed.load(Ordering::SeqCst));
                ServiceStatus {
                    name: s.spec.name.clone(),
                    ready,
                    desired: s.spec.replicas,
                    state: if crashed {
                        "crashed"
                    } else if ready == s.spec.replicas {
                        "running"
                    } else {
                        "starting"
                    }
                    .into(),
                    restarts: s
                        .replicas
                        .iter()
                        .map(|r| r.state.restarts.load(Ordering::SeqCst))
                        .sum(),
                }
            })
            .collect();
        let all_ready = services.iter().all(|s| s.ready >= s.desired);
        let status = if services.iter().all(|s| s.desired == 0) {
            "stopped"
        } else if all_ready {
            "running"
        } else {
            "degraded"
        };
        Ok(EnvironmentStatus {
            status: status.into(),
            services,
        })
    }

    async fn logs(&self, env: &EnvironmentRef, query: &LogQuery) -> Result<Vec<LogLine>> {
        Ok(self
            .logs
            .tail(env.environment_id, query.tail, query.deployment_id))
    }

    async fn follow_logs(
        &self,
        env: &EnvironmentRef,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>> {
        let deployment = query.deployment_id;
        let live = BroadcastStream::new(self.logs.subscribe(env.environment_id)).filter_map(
            move |l| async move {
                l.ok()
                    .filter(|l| deployment.is_none() || l.deployment_id == deployment)
            },
        );
        Ok(live.boxed())
    }

    async fn delete(&self, env: &EnvironmentRef) -> Result<()> {
        let removed = self
            .shared
            .envs
            .lock()
            .expect("local runtime")
            .remove(&env.environment_id);
        if let Some(running) = removed {
            stop_all(running.services).await;
        }
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }

    async fn runners(&self) -> Result<Vec<Runner>> {
        Ok(Vec::new())
    }
}

/// Whether a TCP port accepts connections (used by tests and readiness).
pub async fn is_listening(port: u16) -> bool {
    port_open(port).await
}
