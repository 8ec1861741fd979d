//! Layered settings: defaults, then the config file, then `SYLPHX_*`
//! environment variables and command-line flags (clap merges those two).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secrets::SecretString;
pub use crate::settings::{
    PortRange, SandboxIds, TcpProxyConfig, read_or_create_secret_file, write_private_file,
};

/// Where the state lives and how to reach it; shared by every subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// Directory for the embedded database, keys and the admin token.
    #[arg(long, env = "SYLPHX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://…` or `postgres://…`; defaults to a SQLite file in the data dir.
    #[arg(long, env = "SYLPHX_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "SYLPHX_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Where apps run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Everything on this machine (the embedded default).
    #[default]
    Local,
    /// A Kubernetes cluster (production).
    Kubernetes,
}

/// Flags of `sylphx serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address of the API server.
    #[arg(long, env = "SYLPHX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where apps run.
    #[arg(long, env = "SYLPHX_RUNTIME", value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// Address of the local runtime's app router (routes by Host).
    #[arg(long, env = "SYLPHX_APPS_LISTEN")]
    pub apps_listen: Option<SocketAddr>,
    /// Address of the S3-compatible blob endpoint.
    #[arg(long, env = "SYLPHX_S3_LISTEN")]
    pub s3_listen: Option<SocketAddr>,
    /// Run tenant code as this server's own user, without namespaces: no
    /// isolation between projects (single-user machines only).
    #[arg(long, env = "SYLPHX_INSECURE_SHARED_SANDBOX")]
    pub insecure_shared_sandbox: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The config file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    db_max_connections: Option<u64>,
    db_read_connections: Option<u64>,
    session_secret_file: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    max_request_bytes: Option<usize>,
    max_websocket_message_bytes: Option<usize>,
    runtime: Option<RuntimeKind>,
    apps_listen: Option<SocketAddr>,
    ready_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    job_lease_secs: Option<u64>,
    job_workers: Option<u64>,
    http_threads: Option<u64>,
    max_connections: Option<u64>,
    allowed_origins: Option<Vec<String>>,
    rate_limits: Option<RateLimitsFile>,
    max_connections_per_ip: Option<u64>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    github_webhook_secret_file: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    insecure_shared_sandbox: Option<bool>,
    sandbox_ids: Option<String>,
    sandbox_max_processes: Option<u64>,
    local_git_roots: Option<Vec<PathBuf>>,
    log_history_lines: Option<u64>,
    log_history_bytes: Option<u64>,
    log_history_org_bytes: Option<u64>,
    resource_ports: Option<String>,
    max_resources_per_organization: Option<u64>,
    tcp_proxy_ports: Option<String>,
    tcp_proxy_address: Option<std::net::IpAddr>,
    max_tcp_proxies_per_organization: Option<u64>,
    max_volume_size_gb: Option<u64>,
    max_volume_gb_per_organization: Option<u64>,
    public_host: Option<String>,
    postgres_bin_dir: Option<PathBuf>,
    s3_listen: Option<SocketAddr>,
    s3_public_url: Option<String>,
    s3_bucket: Option<String>,
    max_storages_per_organization: Option<u64>,
    blob_provider: Option<String>,
    b2_api_url: Option<String>,
    b2_key_id: Option<String>,
    b2_application_key_file: Option<PathBuf>,
    b2_bucket: Option<String>,
    b2_public_url: Option<String>,
    typesense_bin: Option<PathBuf>,
    ai: Option<crate::ai::config::AiConfig>,
}

/// `rate_limits = false`, or a `[rate_limits]` table of points per minute.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RateLimitsFile {
    Switch(bool),
    Limits(crate::ratelimit::RateLimitConfig),
}

/// The rate limits: `SYLPHX_RATE_LIMITS=off` (or `on`) wins over the file.
fn rate_limits(file: &FileConfig) -> Result<Option<crate::ratelimit::RateLimitConfig>> {
    let from_file = match &file.rate_limits {
        None | Some(RateLimitsFile::Switch(true)) => Some(Default::default()),
        Some(RateLimitsFile::Switch(false)) => None,
        Some(RateLimitsFile::Limits(l)) => Some(l.clone()),
    };
    match std::env::var("SYLPHX_RATE_LIMITS").ok().as_deref() {
        None | Some("") => Ok(from_file),
        Some("off" | "false" | "0") => Ok(None),
        Some("on" | "true" | "1") => Ok(from_file.or_else(|| Some(Default::default()))),
        Some(other) => Err(Error::bad_request(format!(
            "SYLPHX_RATE_LIMITS must be 'on' or 'off', not '{other}'"
        ))),
    }
}

/// The resolved configuration of one process.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    /// Connections of the PostgreSQL store's pool (`db_max_connections`).
    pub db_max_connections: u32,
    /// Connections of the list pages' reads (`db_read_connections`), split
    /// among the HTTP threads.
    pub db_read_connections: u32,
    /// HS256 secret for `slx_session` cookies; generated into the data dir when absent.
    pub session_secret: Option<SecretString>,
    /// Master key for encryption at rest; generated into the data dir when absent.
    pub master_key: Option<SecretString>,
    /// Older master keys still accepted for decryption (rotation).
    pub previous_master_keys: Vec<SecretString>,
    pub max_request_bytes: usize,
    /// The largest websocket message once `connection_init` is accepted
    /// (64 KiB before).
    pub max_websocket_message_bytes: usize,
    pub runtime: RuntimeKind,
    /// The local runtime's app router.
    pub apps_listen: SocketAddr,
    /// How long an ordinary request may take before it is answered 503.
    pub request_timeout: std::time::Duration,
    /// How long new replicas get to become ready.
    pub ready_timeout: std::time::Duration,
    /// How long a job claim lasts without renewal (crash recovery delay).
    pub job_lease: std::time::Duration,
    /// Jobs (deploys, teardowns) one process runs at once: one tenant's
    /// slow deploy does not hold up everyone else's.
    pub job_workers: usize,
    /// Threads serving HTTP connections, each with its own single-threaded
    /// event loop (a connection and its upstream calls stay on one thread).
    pub http_threads: usize,
    /// Limits and timeouts of the API's connections.
    pub connections: crate::listen::ConnectionLimits,
    /// API rate limits in points per minute; `None`: off.
    pub rate_limits: Option<crate::ratelimit::RateLimitConfig>,
    /// Origins (`scheme://host[:port]`) whose pages may write with the
    /// session cookie; empty: only the server's own origin.
    pub allowed_origins: Vec<String>,
    /// HMAC secret of GitHub push webhooks; the webhook is refused without one.
    pub github_webhook_secret: Option<SecretString>,
    /// Kubeconfig of the Kubernetes runtime; the ambient one (`KUBECONFIG`,
    /// `~/.kube/config`, in-cluster service account) when absent.
    pub kubeconfig: Option<PathBuf>,
    /// The AI gateway's `[ai]` section (no providers when absent).
    pub ai: crate::ai::config::AiConfig,
    /// The config file this came from, never shown to tenant code.
    pub config_file: Option<PathBuf>,
    /// Tenant code runs as the server's user, without namespaces.
    pub insecure_shared_sandbox: bool,
    /// Ids of sandboxes.
    pub sandbox_ids: SandboxIds,
    /// Processes (threads included) one project may have at once.
    pub sandbox_max_processes: u64,
    /// Where a local `gitRepository` may point.
    pub local_git_roots: Vec<PathBuf>,
    /// The bubblewrap binary (`SYLPHX_BWRAP`); found on `PATH` when absent.
    pub bwrap: Option<PathBuf>,
    /// How much log history is kept on disk.
    pub log_history: crate::streams::HistoryLimits,
    /// Ports of managed data services (local runtime).
    pub resource_ports: PortRange,
    /// Resources one organisation may have at once (each runs a server).
    pub max_resources_per_organization: u64,
    /// Public TCP proxies: their ports, address and quota.
    pub tcp_proxy: TcpProxyConfig,
    /// Limits on persistent volumes (`max_volume_size_gb`,
    /// `max_volume_gb_per_organization`).
    pub volumes: crate::domain::volumes::VolumeSettings,
    /// The host name clients outside the machine use for managed data
    /// services (`publicHost`, `publicConnectionString`).
    pub public_host: String,
    /// Where PostgreSQL's server programs are (`initdb`, `postgres`,
    /// `pg_basebackup`); the newest `/usr/lib/postgresql/*/bin` when absent.
    pub postgres_bin_dir: Option<PathBuf>,
    /// The S3-compatible blob endpoint (`s3_*` keys).
    pub blob: crate::blob::BlobConfig,
    /// The `typesense-server` program search resources run; looked up on
    /// `PATH` when absent.
    pub typesense_bin: Option<PathBuf>,
}

/// A count from variable `var`, else the file's `key`, else `default`;
/// 0 is refused.
fn at_least_one(key: &str, var: &str, from_file: Option<u64>, default: u64) -> Result<u64> {
    match env_u64(var)?.or(from_file) {
        Some(0) => Err(Error::bad_request(format!(
            "{key} ({var}) must be at least 1"
        ))),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A number of store connections, as [`at_least_one`] reads it (more than
/// `u32::MAX` is as many as that).
fn store_connections(key: &str, var: &str, from_file: Option<u64>, default: u32) -> Result<u32> {
    let n = at_least_one(key, var, from_file, u64::from(default))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The log history bounds: each from its variable, else the file, else
/// the default; all must be at least 1.
fn log_history(file: &FileConfig) -> Result<crate::streams::HistoryLimits> {
    let d = crate::streams::HistoryLimits::default();
    let get = at_least_one;
    Ok(crate::streams::HistoryLimits {
        lines: usize::try_from(get(
            "log_history_lines",
            "SYLPHX_LOG_HISTORY_LINES",
            file.log_history_lines,
            d.lines as u64,
        )?)
        .unwrap_or(usize::MAX),
        bytes: get(
            "log_history_bytes",
            "SYLPHX_LOG_HISTORY_BYTES",
            file.log_history_bytes,
            d.bytes,
        )?,
        org_bytes: get(
            "log_history_org_bytes",
            "SYLPHX_LOG_HISTORY_ORG_BYTES",
            file.log_history_org_bytes,
            d.org_bytes,
        )?,
    })
}

/// The connection limits: each from its variable, else the file, else the
/// default; all must be at least 1.
fn connection_limits(file: &FileConfig) -> Result<crate::listen::ConnectionLimits> {
    let d = crate::listen::ConnectionLimits::default();
    let get = at_least_one;
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let secs = std::time::Duration::from_secs;
    Ok(crate::listen::ConnectionLimits {
        max_connections: count(get(
            "max_connections",
            "SYLPHX_MAX_CONNECTIONS",
            file.max_connections,
            d.max_connections as u64,
        )?),
        max_per_ip: count(get(
            "max_connections_per_ip",
            "SYLPHX_MAX_CONNECTIONS_PER_IP",
            file.max_connections_per_ip,
            d.max_per_ip as u64,
        )?),
        header_timeout: secs(get(
            "header_timeout_secs",
            "SYLPHX_HEADER_TIMEOUT_SECS",
            file.header_timeout_secs,
            d.header_timeout.as_secs(),
        )?),
        body_timeout: secs(get(
            "body_timeout_secs",
            "SYLPHX_BODY_TIMEOUT_SECS",
            file.body_timeout_secs,
            d.body_timeout.as_secs(),
        )?),
        idle_timeout: secs(get(
            "idle_timeout_secs",
            "SYLPHX_IDLE_TIMEOUT_SECS",
            file.idle_timeout_secs,
            d.idle_timeout.as_secs(),
        )?),
    })
}

/// `SYLPHX_ALLOWED_ORIGINS` (comma-separated) or the file's list, each an
/// origin as browsers send it: `scheme://host[:port]`, nothing after.
fn allowed_origins(file: &FileConfig) -> Result<Vec<String>> {
    let list: Vec<String> = match std::env::var("SYLPHX_ALLOWED_ORIGINS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => file.allowed_origins.clone().unwrap_or_default(),
    };
    list.into_iter()
        .map(|o| {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            let ok = o.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if ok {
                Ok(o)
            } else {
                Err(Error::field(
                    "allowed_origins",
                    format!("'{o}' is not an origin like https://dashboard.example.com"),
                ))
            }
        })
        .collect()
}

/// Reads a secret from `NAME` or from the file named by `NAME_FILE`; a
/// variable that is set holds a secret (an empty one refuses start-up).
fn env_secret(name: &str) -> Result<Option<SecretString>> {
    if let Some(v) = std::env::var_os(name) {
        let v = v
            .into_string()
            .map_err(|_| Error::bad_request(format!("{name} is not UTF-8")))?;
        if v.trim().is_empty() {
            return Err(Error::bad_request(format!(
                "{name} is set but empty; set a secret or unset it"
            )));
        }
        return Ok(Some(SecretString::new(v)));
    }
    if let Some(path) = std::env::var_os(format!("{name}_FILE")) {
        return read_secret_file(Path::new(&path)).map(Some);
    }
    Ok(None)
}

fn env_u64(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|_| Error::bad_request(format!("{name} must be a whole number"))),
        _ => Ok(None),
    }
}

/// A secret read from a file, surrounding white space removed; an empty
/// one refuses start-up.
fn read_secret_file(path: &Path) -> Result<SecretString> {
    let text = fs::read_to_string(path)
        .map_err(|e| Error::bad_request(format!("cannot read {}: {e}", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::bad_request(format!(
            "{} is empty; a secret file must hold the secret",
            path.display()
        )));
    }
    Ok(SecretString::new(text.to_string()))
}

/// The blob endpoint's settings: each from its variable (or flag), else
/// the file, else the default.
fn blob_config(args: &ServeArgs, file: &FileConfig) -> Result<crate::blob::BlobConfig> {
    let text = |var: &str, from_file: &Option<String>| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| from_file.clone())
    };
    let upstream = match text("SYLPHX_BLOB_PROVIDER", &file.blob_provider).as_deref() {
        None | Some("s3") => None,
        Some("b2") => {
            let required = |var: &str, key: &str, from_file: &Option<String>| {
                text(var, from_file).ok_or_else(|| {
                    Error::bad_request(format!("blob_provider b2 needs {key} ({var})"))
                })
            };
            let application_key = match env_secret("SYLPHX_B2_APPLICATION_KEY")? {
                Some(s) => s,
                None => file
                    .b2_application_key_file
                    .as_deref()
                    .map(read_secret_file)
                    .transpose()?
                    .ok_or_else(|| {
                        Error::bad_request(
                            "blob_provider b2 needs its key: SYLPHX_B2_APPLICATION_KEY (or _FILE) or b2_application_key_file",
                        )
                    })?,
            };
            Some(crate::blob::b2::B2Settings {
                api_url: text("SYLPHX_B2_API_URL", &file.b2_api_url)
                    .unwrap_or_else(|| crate::blob::b2::DEFAULT_API_URL.into()),
                key_id: required("SYLPHX_B2_KEY_ID", "b2_key_id", &file.b2_key_id)?,
                application_key,
                bucket: required("SYLPHX_B2_BUCKET", "b2_bucket", &file.b2_bucket)?,
                public_url: text("SYLPHX_B2_PUBLIC_URL", &file.b2_public_url),
            })
        }
        Some(other) => {
            return Err(Error::bad_request(format!(
                "blob_provider must be s3 (this server's own endpoint) or b2, not '{other}'"
            )));
        }
    };
    crate::blob::BlobConfig::new(
        upstream,
        args.s3_listen.or(file.s3_listen),
        text("SYLPHX_S3_PUBLIC_URL", &file.s3_public_url),
        text("SYLPHX_S3_BUCKET", &file.s3_bucket),
        at_least_one(
            "max_storages_per_organization",
            "SYLPHX_MAX_STORAGES_PER_ORGANIZATION",
            file.max_storages_per_organization,
            10,
        )?,
    )
}

impl Config {
    /// Resolves the configuration for `serve` (or any command via `ServeArgs::default()`).
    pub fn load(args: &ServeArgs) -> Result<Self> {
        let file: FileConfig = match &args.store.config {
            Some(path) => {
                let text = fs::read_to_string(path).map_err(|e| {
                    Error::bad_request(format!("cannot read config {}: {e}", path.display()))
                })?;
                toml::from_str(&text)
                    .map_err(|e| Error::bad_request(format!("config {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let connections = connection_limits(&file)?;
        let log_history = log_history(&file)?;
        let allowed_origins = allowed_origins(&file)?;
        let rate_limits = rate_limits(&file)?;
        let blob = blob_config(args, &file)?;
        let data_dir = args
            .store
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let database_url = args
            .store
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| {
                format!("sqlite://{}?mode=rwc", data_dir.join("sylphx.db").display())
            });
        let session_secret = match env_secret("SYLPHX_SESSION_SECRET")? {
            Some(s) => Some(s),
            None => file
                .session_secret_file
                .as_deref()
                .map(read_secret_file)
                .transpose()?,
        };
        let master_key = match env_secret("SYLPHX_MASTER_KEY")? {
            Some(s) => Some(s),
            None => file
                .master_key_file
                .as_deref()
                .map(read_secret_file)
                .transpose()?,
        };
        let github_webhook_secret = match env_secret("SYLPHX_GITHUB_WEBHOOK_SECRET")? {
            Some(s) => Some(s),
            None => file
                .github_webhook_secret_file
                .as_deref()
                .map(read_secret_file)
                .transpose()?,
        };
        let previous_master_keys = std::env::var("SYLPHX_PREVIOUS_MASTER_KEYS")
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| SecretString::new(s.trim()))
                    .collect()
            })
            .unwrap_or_default();
        let http_threads = match env_u64("SYLPHX_HTTP_THREADS")?.or(file.http_threads) {
            Some(0) => {
                return Err(Error::bad_request(
                    "http_threads (SYLPHX_HTTP_THREADS) must be at least 1",
                ));
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(1024),
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir,
            database_url,
            db_max_connections: store_connections(
                "db_max_connections",
                "SYLPHX_DB_MAX_CONNECTIONS",
                file.db_max_connections,
                crate::store::DEFAULT_POOL,
            )?,
            db_read_connections: store_connections(
                "db_read_connections",
                "SYLPHX_DB_READ_CONNECTIONS",
                file.db_read_connections,
                crate::store::READS_PER_HTTP_THREAD
                    .saturating_mul(u32::try_from(http_threads).unwrap_or(u32::MAX)),
            )?,
            session_secret,
            master_key,
            previous_master_keys,
            max_request_bytes: file.max_request_bytes.unwrap_or(2 * 1024 * 1024),
            max_websocket_message_bytes: file
                .max_websocket_message_bytes
                .unwrap_or(1024 * 1024)
                .max(crate::settings::INIT_MESSAGE_BYTES),
            runtime: args.runtime.or(file.runtime).unwrap_or_default(),
            apps_listen: args
                .apps_listen
                .or(file.apps_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8090))),
            request_timeout: std::time::Duration::from_secs(
                env_u64("SYLPHX_REQUEST_TIMEOUT_SECS")?
                    .or(file.request_timeout_secs)
                    .unwrap_or(30)
                    .max(1),
            ),
            ready_timeout: std::time::Duration::from_secs(
                env_u64("SYLPHX_READY_TIMEOUT_SECS")?
                    .or(file.ready_timeout_secs)
                    .unwrap_or(60),
            ),
            job_lease: std::time::Duration::from_secs(
                env_u64("SYLPHX_JOB_LEASE_SECS")?
                    .or(file.job_lease_secs)
                    .unwrap_or(30)
                    .max(1),
            ),
            job_workers: match env_u64("SYLPHX_JOB_WORKERS")?.or(file.job_workers) {
                Some(0) => {
                    return Err(Error::bad_request(
                        "job_workers (SYLPHX_JOB_WORKERS) must be at least 1",
                    ));
                }
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(64),
                None => 4,
            },
            http_threads,
            connections,
            allowed_origins,
            rate_limits,
            github_webhook_secret,
            kubeconfig: std::env::var_os("SYLPHX_KUBECONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or(file.kubeconfig),
            ai: file.ai.unwrap_or_default(),
            config_file: args.store.config.clone(),
            insecure_shared_sandbox: args.insecure_shared_sandbox
                || file.insecure_shared_sandbox.unwrap_or(false),
            sandbox_ids: SandboxIds::parse(
                &std::env::var("SYLPHX_SANDBOX_IDS")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .or(file.sandbox_ids)
                    .unwrap_or_else(|| SandboxIds::DEFAULT.into()),
            )?,
            sandbox_max_processes: match env_u64("SYLPHX_SANDBOX_MAX_PROCESSES")?
                .or(file.sandbox_max_processes)
            {
                Some(n) if n < 16 => {
                    return Err(Error::bad_request(
                        "sandbox_max_processes must be at least 16",
                    ));
                }
                Some(n) => n,
                None => 1024,
            },
            bwrap: std::env::var_os("SYLPHX_BWRAP")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            local_git_roots: match std::env::var_os("SYLPHX_LOCAL_GIT_ROOTS") {
                Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
                _ => file
                    .local_git_roots
                    .unwrap_or_else(|| vec![std::env::temp_dir(), "/home".into(), "/srv".into()]),
            },
            log_history,
            resource_ports: PortRange::parse(
                &std::env::var("SYLPHX_RESOURCE_PORTS")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .or(file.resource_ports)
                    .unwrap_or_else(|| PortRange::DEFAULT.into()),
            )?,
            max_resources_per_organization: at_least_one(
                "max_resources_per_organization",
                "SYLPHX_MAX_RESOURCES_PER_ORGANIZATION",
                file.max_resources_per_organization,
                10,
            )?,
            tcp_proxy: TcpProxyConfig {
                ports: PortRange::parse_setting(
                    "tcp_proxy_ports",
                    &std::env::var("SYLPHX_TCP_PROXY_PORTS")
                        .ok()
                        .filter(|v| !v.is_empty())
                        .or(file.tcp_proxy_ports)
                        .unwrap_or_else(|| TcpProxyConfig::DEFAULT_PORTS.into()),
                )?,
                address: match std::env::var("SYLPHX_TCP_PROXY_ADDRESS")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                {
                    Some(a) => a.trim().parse().map_err(|_| {
                        Error::bad_request(format!(
                            "tcp_proxy_address (SYLPHX_TCP_PROXY_ADDRESS) must be an IP address, not '{a}'"
                        ))
                    })?,
                    None => file
                        .tcp_proxy_address
                        .unwrap_or(TcpProxyConfig::default().address),
                },
                max_per_organization: at_least_one(
                    "max_tcp_proxies_per_organization",
                    "SYLPHX_MAX_TCP_PROXIES_PER_ORGANIZATION",
                    file.max_tcp_proxies_per_organization,
                    TcpProxyConfig::default().max_per_organization,
                )?,
            },
            volumes: crate::domain::volumes::VolumeSettings {
                max_size_gb: u32::try_from(at_least_one(
                    "max_volume_size_gb",
                    "SYLPHX_MAX_VOLUME_SIZE_GB",
                    file.max_volume_size_gb,
                    100,
                )?)
                .ok()
                .filter(|n| *n <= crate::domain::volumes::MAX_SIZE_GB)
                .ok_or_else(|| {
                    Error::bad_request(format!(
                        "max_volume_size_gb must be at most {}",
                        crate::domain::volumes::MAX_SIZE_GB
                    ))
                })?,
                organization_budget_gb: at_least_one(
                    "max_volume_gb_per_organization",
                    "SYLPHX_MAX_VOLUME_GB_PER_ORGANIZATION",
                    file.max_volume_gb_per_organization,
                    100,
                )?,
            },
            public_host: std::env::var("SYLPHX_PUBLIC_HOST")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .or(file.public_host)
                .unwrap_or_else(|| "127.0.0.1".into()),
            postgres_bin_dir: std::env::var_os("SYLPHX_POSTGRES_BIN_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or(file.postgres_bin_dir),
            blob,
            typesense_bin: std::env::var_os("SYLPHX_TYPESENSE_BIN")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or(file.typesense_bin),
        }
        .checked()
    }

    fn checked(self) -> Result<Self> {
        if let Some(r) = self.local_git_roots.iter().find(|r| !r.is_absolute()) {
            return Err(Error::bad_request(format!(
                "local_git_roots must be absolute paths, not '{}'",
                r.display()
            )));
        }
        Ok(self)
    }

    /// Creates the data dir (mode 0700) if needed.
    pub fn ensure_data_dir(&self) -> Result<()> {
        fs::create_dir_all(&self.data_dir).map_err(|e| {
            Error::internal(format!("cannot create {}: {e}", self.data_dir.display()))
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }
}
