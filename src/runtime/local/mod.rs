//! The `local` runtime: runs apps for real on this machine, each project in
//! sandboxes of its own (see [`sandbox`]). Each deploy clones the
//! repository at a commit into a release directory (kept for rollback),
//! runs the Procfile's `release:` command, starts the new replicas, waits
//! for them to accept connections, switches the router and only then stops
//! the old ones.

mod cgroups;
mod host;
pub mod instances;
mod process;
mod router;
pub mod sandbox;
pub mod source;
mod tcp_proxy;
mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    BuildOutput, BuildRequest, EnvVars, EnvironmentRef, EnvironmentStatus, LiveEnvironments,
    LogLine, LogQuery, LogSink, Release, Runner, Runtime, ServiceSpec, ServiceStatus, TcpProxySpec,
    Teardown, VolumeRef, VolumeState, step,
};
use crate::domain::services::Resources;
use crate::error::{Error, Result};
use crate::streams::LogStore;
use cgroups::Limits;
use process::{Replica, ReplicaSpec, ReplicaState, Supervision, port_open, read_lines};
use sandbox::{SandboxSettings, Sandboxes, Spec};
use source::{Procfile, SourceRoots};

/// Settings of the local runtime.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The data directory; releases live in `<data>/releases/<project>/<deployment>`.
    pub data_dir: PathBuf,
    /// How long new replicas get to accept connections.
    pub ready_timeout: Duration,
    pub sandbox: SandboxSettings,
    /// Where `gitRepository` paths may point (`local_git_roots`).
    pub git_roots: Vec<PathBuf>,
    /// PostgreSQL's server programs (`postgres_bin_dir`); found when `None`.
    pub postgres_bin_dir: Option<PathBuf>,
    /// `typesense-server` (`typesense_bin`); found on `PATH` when `None`.
    pub typesense_bin: Option<PathBuf>,
    /// Where TCP proxies listen (`tcp_proxy_address`).
    pub tcp_proxy_address: std::net::IpAddr,
}

/// Replicas that declare no `resources` get these.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
pub const DEFAULT_CPU_MILLIS: u64 = 1000;

/// How long a `release:` command may run.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A replica being retired after a switch gets this long for the router's
/// requests in flight to it, then this long after SIGTERM.
const RETIRE_DRAIN: Duration = Duration::from_secs(30);
const RETIRE_GRACE: Duration = Duration::from_secs(10);

/// On shutdown: the same, shorter, so that every tenant process is gone
/// within eight seconds of SIGTERM.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

struct RunningService {
    spec: ServiceSpec,
    replicas: Vec<Replica>,
}

struct RunningEnv {
    env: EnvironmentRef,
    deployment_id: Option<Uuid>,
    services: Vec<RunningService>,
    /// When the runtime learnt of it (a refresh only forgets what it knew
    /// before reading the store).
    known_since: Instant,
}

impl RunningEnv {
    fn new(env: EnvironmentRef) -> RunningEnv {
        RunningEnv {
            env,
            deployment_id: None,
            services: Vec::new(),
            known_since: Instant::now(),
        }
    }
}

/// State shared with the router.
#[derive(Default)]
pub(crate) struct Shared {
    envs: Mutex<HashMap<Uuid, RunningEnv>>,
    /// Woken when a replica's readiness or the table changes.
    changed: Arc<Notify>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RunningEnv>> {
        self.envs.lock().expect("local runtime")
    }

    fn pick(&self, host: &str, n: usize) -> Option<(u16, Arc<ReplicaState>)> {
        let envs = self.lock();
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

    /// The port of a ready replica of a service (the `n`th, round robin).
    fn pick_replica(&self, environment_id: Uuid, service_id: Uuid, n: usize) -> Option<u16> {
        let envs = self.lock();
        let ready: Vec<u16> = envs
            .get(&environment_id)?
            .services
            .iter()
            .find(|s| s.spec.service_id == service_id)?
            .replicas
            .iter()
            .filter(|r| r.state.ready.load(Ordering::SeqCst))
            .filter_map(|r| r.spec.port)
            .collect();
        ready.get(n % ready.len().max(1)).copied()
    }

    fn knows(&self, host: &str) -> bool {
        self.lock()
            .values()
            .any(|e| hostnames(&e.env).iter().any(|h| h == host))
    }

    fn entry<'a>(
        envs: &'a mut HashMap<Uuid, RunningEnv>,
        env: &EnvironmentRef,
    ) -> &'a mut RunningEnv {
        let entry = envs
            .entry(env.environment_id)
            .or_insert_with(|| RunningEnv::new(env.clone()));
        entry.env = env.clone();
        entry
    }
}

/// The local runtime.
pub struct LocalRuntime {
    config: LocalConfig,
    shared: Arc<Shared>,
    logs: LogStore,
    sandboxes: Arc<Sandboxes>,
    sources: SourceRoots,
    /// Serialises rollouts per environment.
    rollouts: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Environments deleted while this process ran: a deploy that was
    /// already under way for one of them must not bring it back.
    deleted: Mutex<HashSet<Uuid>>,
    /// Set once the server is stopping: nothing new starts.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The managed data services it hosts.
    instances: instances::LocalInstances,
    /// Public TCP proxies of services.
    tcp_proxies: tcp_proxy::TcpProxies,
    /// Persistent volumes.
    volumes: Arc<volumes::Volumes>,
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

/// The deployment a `local:<deployment>@<commit>` image names.
pub fn release_deployment(image: &str) -> Option<Uuid> {
    image
        .strip_prefix("local:")
        .and_then(|rest| rest.split('@').next())
        .and_then(|id| Uuid::parse_str(id).ok())
}

fn limits(resources: Option<&Resources>, max_processes: u64) -> Limits {
    Limits {
        memory_bytes: Some(
            resources
                .and_then(Resources::memory_bytes)
                .unwrap_or(DEFAULT_MEMORY_BYTES),
        ),
        cpu_millis: Some(
            resources
                .and_then(Resources::cpu_millis)
                .unwrap_or(DEFAULT_CPU_MILLIS),
        ),
        max_processes: Some(max_processes),
    }
}

fn set_mode(path: &Path, mode: u32, group: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| Error::internal(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(path).map_err(fail)?;
    if let Some(g) = group {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(fail)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)
}

impl LocalRuntime {
    pub fn new(config: LocalConfig, logs: LogStore) -> Self {
        let sources = SourceRoots {
            roots: config.git_roots.clone(),
            forbidden: config.data_dir.clone(),
        };
        let sandboxes = Arc::new(Sandboxes::new(config.sandbox.clone()));
        let shared: Arc<Shared> = Arc::default();
        LocalRuntime {
            instances: instances::LocalInstances::new(&config, sandboxes.clone()),
            tcp_proxies: tcp_proxy::TcpProxies::new(config.tcp_proxy_address, shared.clone()),
            volumes: Arc::new(volumes::Volumes::new(
                &config.data_dir,
                !config.sandbox.insecure_shared,
                config.sandbox.ids.group,
            )),
            sandboxes,
            sources,
            config,
            shared,
            logs,
            rollouts: Mutex::default(),
            deleted: Mutex::default(),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// Checks that sandboxes can be made (logging why not) and prepares
    /// the data directory: the sandboxes' group may traverse it and
    /// `releases/` (and read nothing), each project's releases are its own.
    pub async fn start(&self) -> Result<()> {
        if let Err(e) = self.sandboxes.check().await {
            tracing::error!(
                reason = e.message(),
                "the local runtime cannot run tenant code"
            );
        } else if self.sandboxes.shared() {
            tracing::warn!(
                "--insecure-shared-sandbox: tenant code runs as this server's own user, without isolation between projects"
            );
        }
        if !self.volumes.enforced() {
            tracing::warn!(
                "volume sizes are not enforced: this server cannot mount filesystem images (it needs root, mkfs.ext4, loop devices and real sandboxes); volumes are plain directories whose usage is measured"
            );
        }
        self.prepare_dirs()
    }

    fn prepare_dirs(&self) -> Result<()> {
        if self.sandboxes.shared() {
            return set_mode(&self.releases_dir(), 0o700, None);
        }
        let group = Some(self.sandboxes.group());
        set_mode(&self.config.data_dir, 0o710, group)?;
        set_mode(&self.releases_dir(), 0o710, group)
    }

    fn releases_dir(&self) -> PathBuf {
        self.config.data_dir.join("releases")
    }

    fn project_dir(&self, project: Uuid) -> PathBuf {
        self.releases_dir().join(project.to_string())
    }

    /// The project's release directory, owned by the user its code runs
    /// as and closed to others.
    fn prepare_project_dir(&self, project: Uuid, uid: u32) -> Result<PathBuf> {
        let dir = self.project_dir(project);
        self.prepare_dirs()?;
        set_mode(&dir, 0o700, None)?;
        let owner = self.sandboxes.effective_uid(uid);
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner))
            .map_err(|e| Error::internal(format!("{}: {e}", dir.display())))?;
        Ok(dir)
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
            hold: self.config.ready_timeout.min(Duration::from_secs(30)),
        };
        let app = axum::Router::new()
            .fallback(router::proxy)
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(local)
    }

    /// The release a deploy of `release` runs: only a release of the same
    /// project (a `local:` image naming another project's deployment is
    /// not found here).
    fn release_dir(&self, release: &Release, uid: u32) -> Result<PathBuf> {
        let id = release_deployment(&release.image).ok_or_else(|| {
            Error::Unprocessable(format!(
                "'{}' is a container image: the local runtime runs git sources only (use --runtime kubernetes for dockerImage projects)",
                release.image
            ))
        })?;
        let dir = self
            .project_dir(release.env.project_id)
            .join(id.to_string());
        if !dir.is_dir() {
            // Releases of earlier versions lived in `releases/<deployment>`;
            // the store has already checked that this one is the project's.
            let legacy = self.releases_dir().join(id.to_string());
            if legacy.is_dir() {
                self.prepare_project_dir(release.env.project_id, uid)?;
                std::fs::rename(&legacy, &dir)
                    .and_then(|()| source::chown_tree(&dir, self.sandboxes.effective_uid(uid)))
                    .map_err(|e| Error::internal(format!("moving {}: {e}", legacy.display())))?;
            }
        }
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(Error::Unprocessable(format!(
                "release {} of this project is not on this machine",
                release.image
            )))
        }
    }

    fn lock_env(&self, env: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.rollouts
            .lock()
            .expect("rollouts")
            .entry(env)
            .or_default()
            .clone()
    }

    fn supervision(&self) -> Supervision {
        Supervision {
            logs: self.logs.clone(),
            sandboxes: self.sandboxes.clone(),
            changed: self.shared.changed.clone(),
        }
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn say(sink: &LogSink, deployment: Uuid, source: &str, level: &str, msg: String) {
        let _ = sink.send(LogLine::platform(source, level, msg, Some(deployment)));
    }

    /// Starts deployment step `step` with a progress line.
    fn step(sink: &LogSink, deployment: Uuid, source: &str, step: &str, msg: String) {
        let _ = sink.send(LogLine::step(source, step, msg, deployment));
    }

    /// Runs the `release:` command in the project's sandbox, its output
    /// going to the deployment's log as it comes.
    async fn run_release_command(
        &self,
        dir: &Path,
        command: &str,
        env: &BTreeMap<String, String>,
        sink: &LogSink,
        release: &Release,
        uid: u32,
    ) -> Result<()> {
        let mut sandbox = self
            .sandboxes
            .spawn(
                &Spec {
                    uid,
                    dir,
                    command,
                    env,
                    limits: limits(None, self.config.sandbox.max_processes),
                    mounts: &[],
                },
                Stdio::piped(),
                Stdio::piped(),
            )
            .await?;
        let deployment = release.deployment_id;
        let pumps: Vec<_> = [
            sandbox
                .child
                .stdout
                .take()
                .map(|r| (Box::pin(r) as _, "info")),
            sandbox
                .child
                .stderr
                .take()
                .map(|r| (Box::pin(r) as _, "error")),
        ]
        .into_iter()
        .flatten()
        .map(
            |(reader, level): (std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>, _)| {
                let sink = sink.clone();
                tokio::spawn(read_lines(reader, move |line| {
                    Self::say(&sink, deployment, "release", level, line)
                }))
            },
        )
        .collect();
        let mut stopping = self.stopping.subscribe();
        let outcome = tokio::select! {
            status = tokio::time::timeout(RELEASE_TIMEOUT, sandbox.wait()) => status,
            () = async { drop(stopping.wait_for(|s| *s).await) } => {
                sandbox.stop(SHUTDOWN_GRACE).await;
                return Err(Error::Unavailable("the server is stopping".into()));
            }
        };
        let status = match outcome {
            Ok(status) => status.map_err(|e| Error::internal(format!("release command: {e}")))?,
            Err(_) => {
                sandbox.stop(Duration::from_secs(1)).await;
                return Err(Error::Unprocessable(format!(
                    "the release command did not finish within {} minutes",
                    RELEASE_TIMEOUT.as_secs() / 60
                )));
            }
        };
        let oom = sandbox.out_of_memory();
        sandbox.settle().await;
        futures_util::future::join_all(pumps).await;
        if status.success() {
            Ok(())
        } else if oom {
            Err(Error::Unprocessable(
                "the release command ran out of memory".into(),
            ))
        } else {
            Err(Error::Unprocessable(format!(
                "the release command failed ({status})"
            )))
        }
    }

    fn start_replica(&self, spec: ReplicaSpec) -> Replica {
        Replica::start(spec, self.supervision())
    }

    /// Makes and mounts the volumes of `svc` (those deleted meanwhile are
    /// left out): what its replicas bind, by volume.
    async fn attach_volumes(
        &self,
        svc: &ServiceSpec,
        uid: u32,
    ) -> Result<Vec<(Uuid, PathBuf, String)>> {
        if svc.volumes.is_empty() {
            return Ok(Vec::new());
        }
        if self.sandboxes.shared() {
            return Err(Error::Unprocessable(format!(
                "service {} has volumes, which need real sandboxes: start the server without --insecure-shared-sandbox",
                svc.name
            )));
        }
        let owner = self.sandboxes.effective_uid(uid);
        let mut out = Vec::new();
        for v in &svc.volumes {
            let (volumes, mount) = (self.volumes.clone(), v.clone());
            let attached = tokio::task::spawn_blocking(move || volumes.attach(&mount, owner))
                .await
                .map_err(Error::internal)?;
            match attached {
                Ok(host) => out.push((v.volume_id, host, v.mount_path.clone())),
                Err(Error::NotFound(_)) => {}
                Err(e) => {
                    tracing::error!(volume.id = %v.volume_id, error = e.message(), "cannot attach a volume");
                    return Err(Error::Unprocessable(format!(
                        "volume {} could not be mounted",
                        v.name
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Replicas that mount volume `id` in `env` start again without it;
    /// the old ones, returned, are to be stopped.
    fn restart_without(&self, env: Uuid, id: Uuid) -> Result<Vec<Replica>> {
        let mut envs = self.shared.lock();
        let Some(running) = envs.get_mut(&env) else {
            return Ok(Vec::new());
        };
        let mut old = Vec::new();
        for svc in &mut running.services {
            if !svc.spec.volumes.iter().any(|v| v.volume_id == id) {
                continue;
            }
            svc.spec.volumes.retain(|v| v.volume_id != id);
            for r in std::mem::take(&mut svc.replicas) {
                let mut spec = r.spec.clone();
                spec.volumes.retain(|(v, _, _)| *v != id);
                if spec.port.is_some() {
                    spec.port = Some(free_port()?);
                }
                svc.replicas.push(self.start_replica(spec));
                old.push(r);
            }
        }
        Ok(old)
    }
}

async fn stop_all(services: Vec<RunningService>, drain: Duration, grace: Duration) {
    let stops = services
        .into_iter()
        .flat_map(|s| s.replicas)
        .map(|r| r.stop(drain, grace));
    futures_util::future::join_all(stops).await;
}

fn all_ready(services: &[RunningService]) -> bool {
    services
        .iter()
        .flat_map(|s| &s.replicas)
        .all(|r| r.state.ready.load(Ordering::SeqCst))
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
        Shared::entry(&mut self.shared.lock(), env);
        Ok(())
    }

    async fn build(&self, req: &BuildRequest, logs: LogSink) -> Result<BuildOutput> {
        self.sandboxes.check().await?;
        let uid = req
            .sandbox_uid
            .ok_or_else(|| Error::internal("a local build needs the project's sandbox uid"))?;
        let repo = self.sources.repository(&req.git_repository)?;
        let project_dir = self.prepare_project_dir(req.env.project_id, uid)?;
        let dir = project_dir.join(req.deployment_id.to_string());
        let say = |msg: String| Self::say(&logs, req.deployment_id, "build", "info", msg);
        Self::step(
            &logs,
            req.deployment_id,
            "build",
            step::CLONING,
            format!("cloning {} ({})", req.git_repository, req.git_branch),
        );
        let commit =
            source::checkout(&repo, &req.git_branch, req.git_commit.as_deref(), &dir).await?;
        let owned = dir.clone();
        let owner = self.sandboxes.effective_uid(uid);
        tokio::task::spawn_blocking(move || source::chown_tree(&owned, owner))
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::internal(format!("cannot hand the release over: {e}")))?;
        Self::step(
            &logs,
            req.deployment_id,
            "build",
            step::BUILDING,
            format!("checked out {commit}"),
        );
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
                volumes: Vec::new(),
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
        self.sandboxes.check().await?;
        let uid = release
            .sandbox_uid
            .ok_or_else(|| Error::internal("a local deploy needs the project's sandbox uid"))?;
        let dir = self.release_dir(release, uid)?;
        let procfile = Procfile::read(&dir).await?;
        let lock = self.lock_env(release.env.environment_id);
        let _guard = lock.lock().await;
        let deployment = release.deployment_id;
        let vars: BTreeMap<String, String> = release
            .env_vars
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect();
        if let Some(cmd) = procfile.release.as_ref().filter(|_| !release.restore) {
            Self::step(
                &logs,
                deployment,
                "deploy",
                step::RELEASING,
                "running the release command".into(),
            );
            self.run_release_command(&dir, cmd, &vars, &logs, release, uid)
                .await?;
        }
        if self.is_stopping() {
            return Err(Error::Unavailable("the server is stopping".into()));
        }
        // Start the new replicas beside the old ones.
        Self::step(
            &logs,
            deployment,
            "deploy",
            step::STARTING,
            "starting the new replicas".into(),
        );
        let mut started = Vec::new();
        for svc in &release.services {
            let Some(command) = svc
                .command
                .clone()
                .or_else(|| procfile.command(&svc.name).map(str::to_string))
            else {
                continue; // Not a process type of this release.
            };
            let mounts = self.attach_volumes(svc, uid).await?;
            let mut replicas = Vec::new();
            for i in 0..svc.replicas {
                let port = match svc.port {
                    Some(_) => Some(free_port()?),
                    None => None,
                };
                replicas.push(self.start_replica(ReplicaSpec {
                    name: format!("{}.{}", svc.name, i + 1),
                    command: command.clone(),
                    dir: dir.clone(),
                    env: vars.clone(),
                    port,
                    environment_id: release.env.environment_id,
                    deployment_id: deployment,
                    uid,
                    limits: limits(svc.resources.as_ref(), self.config.sandbox.max_processes),
                    volumes: mounts.clone(),
                }));
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
        Self::step(
            &logs,
            deployment,
            "deploy",
            step::HEALTH_CHECKING,
            "waiting for the new replicas to become ready".into(),
        );
        let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
        while !all_ready(&started) {
            let changed = self.shared.changed.notified();
            if all_ready(&started) {
                break;
            }
            if tokio::time::Instant::now() >= deadline || self.is_stopping() {
                let names: Vec<String> = started
                    .iter()
                    .flat_map(|s| &s.replicas)
                    .filter(|r| !r.state.ready.load(Ordering::SeqCst))
                    .map(|r| r.spec.name.clone())
                    .collect();
                stop_all(started, Duration::ZERO, Duration::from_secs(1)).await;
                return Err(Error::Unprocessable(format!(
                    "{} did not become ready within {:?}; the previous release keeps serving",
                    names.join(", "),
                    self.config.ready_timeout
                )));
            }
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
        // Switch the router, then retire the old release — unless the
        // environment was deleted meanwhile.
        let switched = {
            let mut envs = self.shared.lock();
            let gone = self
                .deleted
                .lock()
                .expect("deleted")
                .contains(&release.env.environment_id);
            if gone || self.is_stopping() {
                Err(started)
            } else {
                let entry = Shared::entry(&mut envs, &release.env);
                entry.deployment_id = Some(deployment);
                Ok(std::mem::replace(&mut entry.services, started))
            }
        };
        let old = match switched {
            Ok(old) => old,
            Err(started) => {
                stop_all(started, Duration::ZERO, Duration::from_secs(1)).await;
                return Err(Error::NotFound(
                    "the environment was deleted during the deploy".into(),
                ));
            }
        };
        self.shared.changed.notify_waiters();
        Self::step(
            &logs,
            deployment,
            "deploy",
            step::SWITCHING,
            "switched traffic to the new release".into(),
        );
        if !old.is_empty() {
            Self::step(
                &logs,
                deployment,
                "deploy",
                step::STOPPING_OLD,
                "stopping the previous release".into(),
            );
        }
        stop_all(old, RETIRE_DRAIN, RETIRE_GRACE).await;
        Ok(())
    }

    async fn scale(&self, env: &EnvironmentRef, service: &str, replicas: u32) -> Result<()> {
        let to_stop = {
            let mut envs = self.shared.lock();
            let running = envs
                .get_mut(&env.environment_id)
                .and_then(|e| e.services.iter_mut().find(|s| s.spec.name == service))
                .ok_or_else(|| Error::not_found("running service", service))?;
            running.spec.replicas = replicas;
            let have = running.replicas.len() as u32;
            if replicas < have {
                running.replicas.split_off(replicas as usize)
            } else {
                let template = running.replicas.first().map(|r| r.spec.clone());
                if let Some(t) = template {
                    for i in have..replicas {
                        let mut spec = t.clone();
                        spec.name = format!("{service}.{}", i + 1);
                        spec.port = match t.port {
                            Some(_) => Some(free_port()?),
                            None => None,
                        };
                        running.replicas.push(self.start_replica(spec));
                    }
                }
                Vec::new()
            }
        };
        futures_util::future::join_all(
            to_stop
                .into_iter()
                .map(|r| r.stop(RETIRE_DRAIN, RETIRE_GRACE)),
        )
        .await;
        Ok(())
    }

    fn changes(&self) -> Option<Arc<Notify>> {
        Some(self.shared.changed.clone())
    }

    async fn status(&self, env: &EnvironmentRef) -> Result<EnvironmentStatus> {
        let envs = self.shared.lock();
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
        let keep = |l: &LogLine| query.filter.keeps(l);
        Ok(match query.after {
            Some(after) => self.logs.after(env.environment_id, after, keep),
            None => self.logs.tail(env.environment_id, query.tail, keep),
        })
    }

    async fn follow_logs(
        &self,
        env: &EnvironmentRef,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>> {
        Ok(super::follow_channel(
            self.logs.subscribe(env.environment_id),
            query.filter.clone(),
        ))
    }

    async fn delete(&self, env: &EnvironmentRef) -> Result<()> {
        self.deleted
            .lock()
            .expect("deleted")
            .insert(env.environment_id);
        let removed = self.shared.lock().remove(&env.environment_id);
        self.shared.changed.notify_waiters();
        let gone = env.environment_id;
        self.tcp_proxies.remove_where(None, |e| e != gone).await;
        if let Some(running) = removed {
            stop_all(running.services, Duration::ZERO, SHUTDOWN_GRACE).await;
        }
        self.logs.remove(env.environment_id);
        Ok(())
    }

    async fn teardown(&self, t: &Teardown) -> Result<()> {
        for env in &t.environments {
            self.delete(env).await?;
        }
        for v in &t.volumes {
            self.delete_volume(v).await?;
        }
        if let Some(uid) = t
            .sandbox_uid
            .filter(|_| t.whole_project && !self.sandboxes.shared())
        {
            // Anything of the project's user still alive (a release command
            // of a deploy that raced the delete) goes too.
            for pid in host::processes_of(uid) {
                // SAFETY: kill(2) on a process of the deleted project's user.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let remove = |dir: PathBuf| match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::internal(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
            _ => Ok(()),
        };
        let project = self.project_dir(t.project_id);
        if t.whole_project {
            remove(project)?;
        } else {
            for d in &t.deployments {
                remove(project.join(d.to_string()))?;
            }
        }
        for d in &t.deployments {
            remove(self.releases_dir().join(d.to_string()))?;
        }
        Ok(())
    }

    async fn refresh_routes(&self, live: &LiveEnvironments) -> Result<()> {
        let stale: Vec<RunningEnv> = {
            let mut envs = self.shared.lock();
            let alive: HashSet<Uuid> = live
                .environments
                .iter()
                .map(|(e, _)| e.environment_id)
                .collect();
            let gone: Vec<Uuid> = envs
                .iter()
                .filter(|(id, e)| !alive.contains(id) && e.known_since < live.read_at)
                .map(|(id, _)| *id)
                .collect();
            for (env, serving) in &live.environments {
                match envs.get_mut(&env.environment_id) {
                    Some(entry) => entry.env = env.clone(),
                    // Known to the store with a release to serve: routed
                    // (requests wait for its replicas) until it is restored.
                    None if *serving => {
                        envs.insert(env.environment_id, RunningEnv::new(env.clone()));
                    }
                    None => {}
                }
            }
            gone.iter().filter_map(|id| envs.remove(id)).collect()
        };
        self.shared.changed.notify_waiters();
        let alive: HashSet<Uuid> = live
            .environments
            .iter()
            .map(|(e, _)| e.environment_id)
            .collect();
        self.tcp_proxies
            .remove_where(Some(live.read_at), |e| alive.contains(&e))
            .await;
        for env in stale {
            tracing::info!(environment.id = %env.env.environment_id, "stopping an environment the store no longer has");
            self.logs.remove(env.env.environment_id);
            stop_all(env.services, Duration::ZERO, SHUTDOWN_GRACE).await;
        }
        Ok(())
    }

    async fn shutdown(&self) {
        self.stopping.send_replace(true);
        let all: Vec<RunningService> = self
            .shared
            .lock()
            .values_mut()
            .flat_map(|e| std::mem::take(&mut e.services))
            .collect();
        self.shared.changed.notify_waiters();
        self.tcp_proxies.remove_where(None, |_| false).await;
        tokio::join!(
            stop_all(all, SHUTDOWN_DRAIN, SHUTDOWN_GRACE),
            crate::runtime::instances::Instances::stop_all(&self.instances),
        );
        let volumes = self.volumes.clone();
        let _ = tokio::task::spawn_blocking(move || volumes.detach_all()).await;
    }

    async fn create_volume(&self, v: &VolumeRef) -> Result<()> {
        let (volumes, mount) = (self.volumes.clone(), v.mount.clone());
        tokio::task::spawn_blocking(move || volumes.create(&mount))
            .await
            .map_err(Error::internal)?
    }

    async fn volume_state(&self, v: &VolumeRef) -> Result<VolumeState> {
        let bound = self
            .shared
            .lock()
            .get(&v.env.environment_id)
            .filter(|e| e.deployment_id.is_some())
            .is_some_and(|e| {
                e.services.iter().any(|s| {
                    !s.replicas.is_empty()
                        && s.spec
                            .volumes
                            .iter()
                            .any(|m| m.volume_id == v.mount.volume_id)
                })
            });
        let (volumes, id) = (self.volumes.clone(), v.mount.volume_id);
        let state = tokio::task::spawn_blocking(move || volumes.state(id))
            .await
            .map_err(Error::internal)?;
        Ok(VolumeState { bound, ..state })
    }

    async fn delete_volume(&self, v: &VolumeRef) -> Result<()> {
        let id = v.mount.volume_id;
        self.volumes.forget(id);
        {
            // After any rollout under way, which may still name it.
            let lock = self.lock_env(v.env.environment_id);
            let _guard = lock.lock().await;
            let old = self.restart_without(v.env.environment_id, id)?;
            self.shared.changed.notify_waiters();
            futures_util::future::join_all(
                old.into_iter()
                    .map(|r| r.stop(SHUTDOWN_DRAIN, SHUTDOWN_GRACE)),
            )
            .await;
        }
        let volumes = self.volumes.clone();
        tokio::task::spawn_blocking(move || volumes.remove(id))
            .await
            .map_err(Error::internal)?
    }

    async fn apply_tcp_proxy(&self, spec: &TcpProxySpec) -> Result<()> {
        if self.is_stopping() {
            return Err(Error::Unavailable("the server is stopping".into()));
        }
        self.tcp_proxies.apply(spec).await
    }

    async fn remove_tcp_proxy(&self, spec: &TcpProxySpec) -> Result<()> {
        self.tcp_proxies.remove(spec.service_id).await;
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }

    async fn runners(&self) -> Result<Vec<Runner>> {
        Ok(Vec::new())
    }

    fn instances(&self) -> Option<&dyn crate::runtime::instances::Instances> {
        Some(&self.instances)
    }
}

/// Whether a TCP port accepts connections (used by tests and readiness).
pub async fn is_listening(port: u16) -> bool {
    port_open(port).await
}
