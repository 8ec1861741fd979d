//! The runtime driver trait. Domain code and the reconciler know only this
//! trait; `local` runs everything on one machine, `kubernetes` applies real
//! cluster objects.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::services::Resources;
use crate::error::Result;
use crate::secrets::SecretString;

pub mod git;
pub mod instances;
pub mod kubernetes;
pub mod local;

/// Which project environment an action is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRef {
    pub project_id: Uuid,
    pub project_slug: String,
    pub environment_id: Uuid,
    pub environment_name: String,
    /// Public hostname routed to the environment's web service.
    pub domain: Option<String>,
}

/// One service of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub service_id: Uuid,
    /// DNS-1123 label (`web`, `worker`, …).
    pub name: String,
    /// Listening port; `None` for background workers.
    pub port: Option<u16>,
    pub replicas: u32,
    pub resources: Option<Resources>,
    /// Command to run (the local runtime's Procfile entry); images use their entrypoint.
    pub command: Option<String>,
    /// Persistent volumes mounted into every replica (read from the store
    /// each time a release is applied, so rollbacks and restores keep them).
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
}

/// A persistent volume as a replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub volume_id: Uuid,
    /// DNS-1123 label, unique in its project.
    pub name: String,
    /// Absolute path inside the replica.
    pub mount_path: String,
    pub size_gb: u32,
}

/// A volume and where it belongs, for the runtime calls about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRef {
    pub env: EnvironmentRef,
    /// The service that mounts it (`None` once that service is deleted).
    pub service: Option<String>,
    pub mount: VolumeMount,
}

/// What a runtime knows of a volume now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeState {
    /// Mounted by a running release of its service (or, on Kubernetes,
    /// its claim is bound).
    pub bound: bool,
    /// Bytes in use, where the runtime can measure them.
    pub used_bytes: Option<u64>,
    /// Anything the user should know (the size is not enforced here, …).
    pub message: Option<String>,
}

/// Env var values handed to a runtime. `Debug` never shows the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvVars(pub BTreeMap<String, SecretString>);

impl fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub deployment_id: Uuid,
    pub env: EnvironmentRef,
    /// `owner/repo`, a git URL, a local path or `file://` URL.
    pub git_repository: String,
    pub git_branch: String,
    /// A specific commit; the branch head when `None`.
    pub git_commit: Option<String>,
    pub dockerfile_path: String,
    pub build_pack: Option<String>,
    /// The project's sandbox uid (the local runtime builds and runs as it).
    pub sandbox_uid: Option<u32>,
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOutput {
    /// Image reference (registry/name@digest or :sha), or the local release id.
    pub image: String,
    /// The full commit that was built.
    pub commit: String,
    /// Services the source declares (e.g. Procfile process types); empty if it declares none.
    pub declared_services: Vec<ServiceSpec>,
}

/// A complete, self-contained release: applying it twice gives the same
/// result, and rolling back re-applies an older one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub deployment_id: Uuid,
    pub env: EnvironmentRef,
    pub image: String,
    pub env_vars: EnvVars,
    pub services: Vec<ServiceSpec>,
    /// The project's sandbox uid (the local runtime runs as it).
    pub sandbox_uid: Option<u32>,
    /// Bringing back a release that ran before a restart: its processes
    /// start again, its release command does not run again.
    pub restore: bool,
}

/// Live state of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub ready: u32,
    pub desired: u32,
    /// `running`, `deploying`, `crashed`, `stopped`, `failed`.
    pub state: String,
    pub restarts: u32,
}

/// Live state of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    /// `running`, `deploying`, `degraded`, `stopped`, `not_deployed`.
    pub status: String,
    pub services: Vec<ServiceStatus>,
}

impl EnvironmentStatus {
    pub fn ready(&self) -> u32 {
        self.services.iter().map(|s| s.ready).sum()
    }
    pub fn desired(&self) -> u32 {
        self.services.iter().map(|s| s.desired).sum()
    }
}

/// One captured log line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub ts: chrono::DateTime<chrono::Utc>,
    /// Replica or pod name, or `build`, `release`, `deploy`.
    pub source: String,
    /// `info` (stdout), `error` (stderr, failures) or `warning`.
    pub level: String,
    pub msg: String,
    pub deployment_id: Option<Uuid>,
    /// Where the line stands in its environment's history: grows by one
    /// per line kept (0: a runtime that numbers no lines).
    #[serde(default)]
    pub cursor: u64,
    /// `stdout`, `stderr`, `build`, `release` or `system`.
    #[serde(default)]
    pub stream: String,
    /// The service whose process wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The replica (process or pod) that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The deployment step this line starts (`cloning`, `building`,
    /// `releasing`, `starting`, `health-checking`, `switching`,
    /// `stopping-old`): recorded as a deployment event too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The line as followers' selections write it, shared by every copy
    /// of one live line (never stored).
    #[serde(skip)]
    pub rendered: Renders,
}

/// How many selections of one live line are kept written (a websocket
/// selection and the event stream's, typically).
const RENDERS_KEPT: usize = 2;
/// The longest writing kept: a live channel holds its last lines, and
/// what they keep must stay near their own size.
const RENDER_KEPT_BYTES: usize = 2 * 1024;

/// The writings of one live line, shared by the copies its followers
/// receive: each selection of its fields is written once, however many
/// follow it (a line without a share is written for each).
#[derive(Clone, Default)]
pub struct Renders(Option<Arc<std::sync::Mutex<Writings>>>);

/// A line's writings, by selection.
type Writings = Vec<(u64, bytes::Bytes)>;

impl Renders {
    /// A share for a line about to be sent to its followers.
    pub fn shared() -> Renders {
        Renders(Some(Arc::default()))
    }

    /// The line as selection `shape` writes it: `write` runs once per
    /// shape for a shared line (for its first few shapes, and when short).
    pub fn get_or_write(&self, shape: u64, write: impl FnOnce() -> Vec<u8>) -> bytes::Bytes {
        let Some(kept) = &self.0 else {
            return write().into();
        };
        let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, b)) = kept.iter().find(|(s, _)| *s == shape) {
            return b.clone();
        }
        let b = bytes::Bytes::from(write());
        if kept.len() < RENDERS_KEPT && b.len() <= RENDER_KEPT_BYTES {
            kept.push((shape, b.clone()));
        }
        b
    }
}

/// Writings are a copy of the line: they never make two lines differ.
impl PartialEq for Renders {
    fn eq(&self, _: &Renders) -> bool {
        true
    }
}

impl Eq for Renders {}

impl fmt::Debug for Renders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Renders")
    }
}

impl LogLine {
    /// Source of the notice a slow follower gets for lines it skipped.
    pub const LAGGED: &'static str = "lagged";

    /// The notice that `n` lines were skipped for a slow follower.
    pub fn lagged(n: u64) -> LogLine {
        LogLine {
            ts: chrono::Utc::now(),
            source: Self::LAGGED.into(),
            level: "warning".into(),
            msg: format!("lagged: {n} lines skipped"),
            stream: STREAM_SYSTEM.into(),
            ..LogLine::default()
        }
    }

    /// A line the platform writes about a deployment: `source` `build`,
    /// `release` (the release command's output), or `deploy`/the replica
    /// for rollout progress.
    pub fn platform(source: &str, level: &str, msg: String, deployment: Option<Uuid>) -> LogLine {
        let stream = match source {
            "build" => STREAM_BUILD,
            "release" => STREAM_RELEASE,
            _ => STREAM_SYSTEM,
        };
        LogLine {
            ts: chrono::Utc::now(),
            source: source.into(),
            level: level.into(),
            msg,
            deployment_id: deployment,
            stream: stream.into(),
            ..LogLine::default()
        }
    }
}

impl LogLine {
    /// A progress line that starts deployment step `step`.
    pub fn step(source: &str, step: &str, msg: String, deployment: Uuid) -> LogLine {
        LogLine {
            step: Some(step.into()),
            ..LogLine::platform(source, "info", msg, Some(deployment))
        }
    }
}

/// Deployment steps a runtime reports (see `LogLine::step`).
pub mod step {
    pub const CLONING: &str = "cloning";
    pub const BUILDING: &str = "building";
    pub const RELEASING: &str = "releasing";
    pub const STARTING: &str = "starting";
    pub const HEALTH_CHECKING: &str = "health-checking";
    pub const SWITCHING: &str = "switching";
    pub const STOPPING_OLD: &str = "stopping-old";
}

pub const STREAM_STDOUT: &str = "stdout";
pub const STREAM_STDERR: &str = "stderr";
pub const STREAM_BUILD: &str = "build";
pub const STREAM_RELEASE: &str = "release";
pub const STREAM_SYSTEM: &str = "system";

/// Which lines a reader wants: `filter` is a substring of the message, or
/// `level:<level>`; `service` one service's lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub deployment_id: Option<Uuid>,
    pub service: Option<String>,
    pub level: Option<String>,
    pub text: Option<String>,
}

impl LogFilter {
    /// Reads a `filter` argument: `level:<level>`, else a substring.
    pub fn parse_text(&mut self, filter: Option<&str>) {
        if let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) {
            match f.strip_prefix("level:") {
                Some(level) => self.level = Some(level.trim().to_ascii_lowercase()),
                None => self.text = Some(f.to_string()),
            }
        }
    }

    /// Whether `line` is wanted. A lagged notice always is.
    pub fn keeps(&self, line: &LogLine) -> bool {
        if line.source == LogLine::LAGGED && line.cursor == 0 {
            return true;
        }
        self.deployment_id
            .is_none_or(|d| line.deployment_id == Some(d))
            && self
                .service
                .as_ref()
                .is_none_or(|s| line.service.as_ref() == Some(s))
            && self.level.as_ref().is_none_or(|l| &line.level == l)
            && self
                .text
                .as_ref()
                .is_none_or(|t| line.msg.contains(t.as_str()))
    }
}

/// The lines of a log channel that `filter` keeps, as a follower reads
/// them: one that falls behind by more than the channel holds skips to the
/// live edge and is told how many lines it missed (lines kept in history
/// stay readable with `after`).
pub fn follow_channel(
    rx: tokio::sync::broadcast::Receiver<LogLine>,
    filter: LogFilter,
) -> BoxStream<'static, LogLine> {
    use futures_util::StreamExt;
    use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
    BroadcastStream::new(rx)
        .filter_map(move |l| {
            std::future::ready(match l {
                Ok(l) => Some(l).filter(|l| filter.keeps(l)),
                Err(BroadcastStreamRecvError::Lagged(n)) => Some(LogLine::lagged(n)),
            })
        })
        .boxed()
}

/// Which logs to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub tail: usize,
    /// Which lines (deployment, service, level, text).
    pub filter: LogFilter,
    /// Every kept line after this cursor instead of the last `tail`.
    pub after: Option<u64>,
}

/// A CI runner of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub name: String,
    /// `idle`, `busy` or `offline`.
    pub status: String,
    pub labels: Vec<String>,
}

/// What a deleted project or environment leaves for the runtime to remove:
/// recorded with the deletion, carried out by a durable job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Teardown {
    pub project_id: Uuid,
    pub environments: Vec<EnvironmentRef>,
    /// Releases (by deployment) to remove.
    pub deployments: Vec<Uuid>,
    /// The whole project goes: all its releases, and its sandbox user.
    pub whole_project: bool,
    pub sandbox_uid: Option<u32>,
    /// Volumes whose data goes (their rows went with the deletion).
    #[serde(default)]
    pub volumes: Vec<VolumeRef>,
}

/// A public TCP entry to one service of an environment: connections to
/// `external_port` reach the service's ready replicas on `target_port`,
/// from the allowlist's blocks only (from anywhere when it is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProxySpec {
    pub env: EnvironmentRef,
    pub service_id: Uuid,
    /// DNS-1123 label of the service.
    pub service_name: String,
    pub external_port: u16,
    pub target_port: u16,
    /// Normalised CIDR blocks allowed to connect.
    pub allowlist: Vec<ipnet::IpNet>,
}

/// The answer of a runtime that has no TCP proxies.
fn no_tcp_proxies(kind: &str) -> crate::error::Error {
    crate::error::Error::Unprocessable(format!(
        "the {kind} runtime of this server cannot expose TCP proxies"
    ))
}

/// Every environment the store holds, and whether it has a release to
/// serve (a successful deployment), as read at `read_at`.
#[derive(Debug, Clone)]
pub struct LiveEnvironments {
    pub environments: Vec<(EnvironmentRef, bool)>,
    pub read_at: std::time::Instant,
}

/// Receives build and rollout output as it happens.
pub type LogSink = tokio::sync::mpsc::UnboundedSender<LogLine>;

/// A place that runs apps.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `local` or `kubernetes`.
    fn kind(&self) -> &'static str;

    /// For start-up wiring that only one driver needs (the local app router).
    fn as_any(&self) -> &dyn std::any::Any;

    /// Creates or updates an environment's infrastructure (namespace,
    /// secrets, HTTP route). Idempotent.
    async fn provision(&self, env: &EnvironmentRef, vars: &EnvVars) -> Result<()>;

    /// Builds the source at a commit into an image or release.
    async fn build(&self, req: &BuildRequest, logs: LogSink) -> Result<BuildOutput>;

    /// Rolls out a release with zero downtime and waits until it is ready;
    /// an error leaves the previous release serving. Rollback is `deploy`
    /// of an older release.
    async fn deploy(&self, release: &Release, logs: LogSink) -> Result<()>;

    /// Changes the replica count of one running service.
    async fn scale(&self, env: &EnvironmentRef, service: &str, replicas: u32) -> Result<()>;

    /// Live status.
    async fn status(&self, env: &EnvironmentRef) -> Result<EnvironmentStatus>;

    /// Woken (all waiters) whenever a status may have changed, where the
    /// runtime can tell; `None` where it cannot (watchers poll).
    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// The last `query.tail` lines.
    async fn logs(&self, env: &EnvironmentRef, query: &LogQuery) -> Result<Vec<LogLine>>;

    /// New lines as they are written, until the stream is dropped.
    async fn follow_logs(
        &self,
        env: &EnvironmentRef,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>>;

    /// Removes everything the environment runs.
    async fn delete(&self, env: &EnvironmentRef) -> Result<()>;

    /// Removes what a deleted project or environment left: what runs,
    /// routes, releases, logs. Idempotent.
    async fn teardown(&self, t: &Teardown) -> Result<()> {
        for v in &t.volumes {
            self.delete_volume(v).await?;
        }
        for env in &t.environments {
            self.delete(env).await?;
        }
        Ok(())
    }

    /// Brings the runtime's routing table in line with the store: hostnames
    /// follow domain changes, and environments the store no longer has (and
    /// that were known before `live.read_at`) are stopped and forgotten.
    async fn refresh_routes(&self, _live: &LiveEnvironments) -> Result<()> {
        Ok(())
    }

    /// Opens a service's public TCP entry, or brings it in line with
    /// `spec` (ports, allowlist). Idempotent; an error leaves the entry as
    /// it was. A port something else holds is a `Conflict`.
    async fn apply_tcp_proxy(&self, _spec: &TcpProxySpec) -> Result<()> {
        Err(no_tcp_proxies(self.kind()))
    }

    /// Closes a service's public TCP entry (connections through it end).
    /// Idempotent.
    async fn remove_tcp_proxy(&self, _spec: &TcpProxySpec) -> Result<()> {
        Err(no_tcp_proxies(self.kind()))
    }

    /// Stops what runs on this machine, for a server that is exiting.
    async fn shutdown(&self) {}

    /// Whether the runtime's control plane answers.
    async fn health(&self) -> Result<()>;

    /// The CI runner pool (empty where there is none).
    async fn runners(&self) -> Result<Vec<Runner>>;

    /// Makes a new volume's storage (idempotent); the next deploy of its
    /// service mounts it.
    async fn create_volume(&self, _volume: &VolumeRef) -> Result<()> {
        Ok(())
    }

    /// What the runtime knows of a volume now.
    async fn volume_state(&self, _volume: &VolumeRef) -> Result<VolumeState> {
        Ok(VolumeState::default())
    }

    /// Removes a volume and its data for good; replicas that mount it go
    /// on without it. Idempotent.
    async fn delete_volume(&self, _volume: &VolumeRef) -> Result<()> {
        Ok(())
    }

    /// The managed data services it hosts; `None` where it hosts none.
    fn instances(&self) -> Option<&dyn instances::Instances> {
        None
    }
}

/// Connects the Kubernetes driver from the ambient kubeconfig or in-cluster
/// service account. `SYLPHX_K8S_GATEWAY` (name, or `namespace/name`),
/// `SYLPHX_K8S_REGISTRY` and `SYLPHX_K8S_KANIKO_IMAGE` override the defaults.
/// The data service settings come from `KubernetesConfig::read_data_env`.
pub async fn connect_kubernetes(
    kubeconfig: Option<&std::path::Path>,
) -> Result<std::sync::Arc<dyn Runtime>> {
    let mut k8s = kubernetes::KubernetesConfig::default();
    if let Ok(gw) = std::env::var("SYLPHX_K8S_GATEWAY") {
        match gw.split_once('/') {
            Some((ns, name)) => {
                k8s.gateway_namespace = ns.to_string();
                k8s.gateway_name = name.to_string();
            }
            None => k8s.gateway_name = gw,
        }
    }
    if let Ok(r) = std::env::var("SYLPHX_K8S_REGISTRY") {
        k8s.registry = r;
    }
    if let Ok(i) = std::env::var("SYLPHX_K8S_KANIKO_IMAGE") {
        k8s.kaniko_image = i;
    }
    k8s.read_data_env();
    Ok(std::sync::Arc::new(
        kubernetes::KubernetesRuntime::connect(k8s, kubeconfig).await?,
    ))
}
