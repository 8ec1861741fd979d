//! Managed data services as a runtime hosts them: one instance per
//! resource (a PostgreSQL cluster, a MariaDB server, a Redis server). The
//! domain decides names, credentials, ports and limits and records them;
//! a runtime makes the instance exist, keeps it running, reads its figures
//! and removes it. Every call is idempotent: a job that is retried after a
//! crash calls it again with the same spec.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::secrets::SecretString;

/// Providers the runtimes know.
pub const POSTGRESQL: &str = "postgresql";
pub const MYSQL: &str = "mysql";
pub const REDIS: &str = "redis";
pub const VALKEY: &str = "valkey";
pub const TYPESENSE: &str = "typesense";

/// Sizes of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceLimits {
    /// Memory of the whole instance (cgroup limit on the local runtime,
    /// the container's limit on Kubernetes).
    pub memory_mb: u32,
    /// Connections the server accepts (PostgreSQL, MySQL) or clients
    /// (Redis `maxclients`).
    pub max_connections: u32,
    /// Disk (the volume on Kubernetes; recorded on the local runtime).
    pub storage_gb: u32,
    /// Redis `maxmemory` (the data set), below `memory_mb`.
    pub max_memory_mb: Option<u32>,
}

/// Who may connect. `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The superuser (PostgreSQL, MySQL root), held by the control plane only.
    pub admin_user: String,
    pub admin_password: SecretString,
    /// The application's user (not a superuser; owns `database`). Redis
    /// has one password only: `app_password`.
    pub app_user: String,
    pub app_password: SecretString,
    /// The application's database (empty for Redis).
    pub database: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("admin_user", &self.admin_user)
            .field("app_user", &self.app_user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// What a new instance starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nothing: an empty database.
    Empty,
    /// An online, consistent copy of another instance's data (a branch).
    Copy { source: Box<InstanceSpec> },
    /// Another instance's data as it was at `target_time` (point-in-time
    /// restore from its backups and archived WAL).
    Restore {
        source: Box<InstanceSpec>,
        target_time: chrono::DateTime<chrono::Utc>,
    },
}

/// Everything a runtime needs to run one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub resource_id: Uuid,
    pub organization_id: Uuid,
    /// [`POSTGRESQL`], [`MYSQL`], [`REDIS`] or [`VALKEY`].
    pub provider: String,
    /// A DNS-1123 label of at most 40 characters, unique per resource
    /// (`pg-<12 hex>`): Kubernetes object names, local directory names.
    pub name: String,
    /// The instance's own unprivileged uid (local runtime).
    pub uid: Option<u32>,
    /// The port it listens on (local runtime; 127.0.0.1).
    pub port: Option<u16>,
    pub limits: InstanceLimits,
    pub credentials: Credentials,
    pub origin: Origin,
    /// How many days of base backups and WAL are kept (PostgreSQL).
    pub backup_retention_days: u32,
}

/// Where clients reach an instance from inside the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Live state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Being created or started; not accepting connections yet.
    Starting,
    Ready,
    /// Its process died and is being restarted.
    Crashed,
    /// Not running on this runtime (never started here, or removed).
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub state: InstanceState,
    /// Crash restarts since the control plane started it.
    pub restarts: u32,
    /// What a user should know (why it crashed).
    pub message: Option<String>,
}

/// The figures read from a live instance at request time. Fields that do
/// not apply to the provider are `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scalars {
    // PostgreSQL
    pub database_size: Option<i64>,
    pub cache_hit_ratio: Option<f64>,
    pub active_connections: Option<i64>,
    /// Committed + rolled back transactions since the server started
    /// (the sampler turns it into a rate).
    pub transactions: Option<i64>,
    // Redis
    pub memory_used_bytes: Option<i64>,
    pub memory_used_percent: Option<f64>,
    pub hit_ratio: Option<f64>,
    pub connected_clients: Option<i64>,
    /// Commands processed since the server started (the sampler turns it
    /// into a rate).
    pub commands: Option<i64>,
}

/// One base backup of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub name: String,
    /// `running`, `completed` or `failed`.
    pub status: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `basebackup` (local), `plugin` (CloudNativePG with barman-cloud).
    pub method: String,
}

/// Receives provisioning progress, one human-readable step per message.
pub type Progress = tokio::sync::mpsc::UnboundedSender<String>;

/// Data services of a runtime.
#[async_trait]
pub trait Instances: Send + Sync + 'static {
    /// Whether this runtime can host `provider` here (its server binary is
    /// installed, its operator is configured); the error says what is
    /// missing, in words for the resource's `message`.
    async fn supports(&self, provider: &str) -> Result<()>;

    /// Creates the instance if it does not exist (from `spec.origin`),
    /// starts it if it is not running, applies changed limits (restarting
    /// it when they need a restart), and returns once it accepts
    /// connections with the credentials of `spec`. For PostgreSQL the
    /// first base backup has completed before it returns. Idempotent.
    async fn ensure(&self, spec: &InstanceSpec, progress: &Progress) -> Result<Endpoint>;

    /// Live state, without waiting on the instance.
    async fn status(&self, spec: &InstanceSpec) -> Result<InstanceStatus>;

    /// Woken (all waiters) whenever an instance's state may have changed,
    /// where the runtime can tell; `None` where it cannot (watchers poll).
    fn changed(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Stops the instance and removes its data, backups and archive, and
    /// frees what it held (ports). Idempotent: a missing instance is fine.
    async fn remove(&self, spec: &InstanceSpec) -> Result<()>;

    /// Reads the scalars from the live instance; gives up after `timeout`.
    async fn scalars(&self, spec: &InstanceSpec, timeout: std::time::Duration) -> Result<Scalars>;

    /// Base backups of a PostgreSQL instance, oldest first.
    async fn backups(&self, spec: &InstanceSpec) -> Result<Vec<Backup>>;

    /// Takes a base backup now (the schedule calls it too).
    async fn backup(&self, spec: &InstanceSpec) -> Result<Backup>;

    /// Whether the runtime takes scheduled backups itself (a CloudNativePG
    /// `ScheduledBackup`); otherwise the control plane's schedule calls
    /// [`Instances::backup`].
    fn schedules_backups(&self) -> bool {
        false
    }

    /// Stops every instance this server runs (data kept), for a server
    /// that is exiting; `ensure` starts them again after its restart.
    async fn stop_all(&self) {}
}
