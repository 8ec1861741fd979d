//! Managed data services on this machine: one PostgreSQL cluster, MariaDB
//! server, Redis (Valkey) server or Typesense server per resource, each in a sandbox of its
//! own, as the resource's own unprivileged uid, with its data in
//! `<data_dir>/resources/<name>/` (bound at `/app` in the sandbox).
//!
//! An instance's directory holds `data/` (the server's data directory),
//! `server.log` (its output, size-bounded) and its configuration; a
//! PostgreSQL instance also has `archive/` (archived WAL) and
//! `backups/<name>/` (base backups, each beside `<name>.json`).
//!
//! Every server is supervised like a replica: a crash restarts it with
//! backoff and is counted. Everything it runs dies with this server (the
//! sandbox's die-with-parent), and [`LocalInstances::stop_all`] stops them
//! on a clean shutdown. Secrets never reach a command line or a log: they
//! travel in files of mode 0600 inside the instance's directory (removed
//! once used) or in the environment of the sandboxed process.

mod mysql;
mod postgres;
mod redis;
#[cfg(test)]
mod tests;
mod typesense;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::LocalConfig;
use super::cgroups::Limits;
use super::host;
use super::process::read_lines;
use super::sandbox::{APP_DIR, Sandboxed, Sandboxes, Spec};
use crate::error::{Error, Result};
use crate::runtime::instances::{
    Backup, Endpoint, InstanceLimits, InstanceSpec, InstanceState, InstanceStatus, Instances,
    MYSQL, POSTGRESQL, Progress, REDIS, Scalars, TYPESENSE, VALKEY,
};

/// How long a server gets to accept connections after a start.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long initialising a data directory (initdb, a copy) may take.
const INIT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// After SIGTERM, how long a server gets before SIGKILL: short enough that
/// every tenant process is gone within eight seconds of the server's own
/// SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the supervisor keeps checking a restarted server for
/// readiness before it leaves it to the next `ensure`.
const PROBE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Between two readiness checks.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// The log file is rotated (one older file kept) past this size.
const LOG_BYTES: u64 = 2 << 20;
/// The server's output, in the instance's directory.
const LOG_FILE: &str = "server.log";
/// Where a new data directory is made before it is renamed to `data`.
const DATA_TMP: &str = "data.init";
const DATA: &str = "data";
/// The `/etc/passwd` and `/etc/group` of the instance's sandbox.
const PASSWD: &str = "etc-passwd";
const GROUP: &str = "etc-group";
/// Sandboxes of data services get this much CPU.
const CPU_MILLIS: u64 = 1000;

/// The data services of the local runtime.
pub struct LocalInstances {
    data_dir: PathBuf,
    sandboxes: Arc<Sandboxes>,
    max_processes: u64,
    postgres_bin_dir: Option<PathBuf>,
    typesense_bin: Option<PathBuf>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Set by `stop_all`: nothing starts any more.
    stopping: AtomicBool,
    /// Woken (all waiters) whenever an instance's state changes.
    changed: Arc<tokio::sync::Notify>,
}

/// What this process knows of one instance.
struct Entry {
    /// Serialises `ensure`, `remove` and `backup` of the instance.
    lock: tokio::sync::Mutex<()>,
    /// Read by `status` without waiting on anything.
    status: watch::Sender<InstanceStatus>,
    /// The instances' shared wake-up for status watchers.
    changed: Arc<tokio::sync::Notify>,
    /// The running server's supervisor, if any.
    server: Mutex<Option<ServerHandle>>,
}

struct ServerHandle {
    /// `Some(grace)` asks the supervisor to stop the server.
    stop: watch::Sender<Option<Duration>>,
    task: tokio::task::JoinHandle<()>,
    /// The limits it was started with.
    limits: InstanceLimits,
}

fn missing() -> InstanceStatus {
    InstanceStatus {
        state: InstanceState::Missing,
        restarts: 0,
        message: None,
    }
}

impl Entry {
    fn new(changed: Arc<tokio::sync::Notify>) -> Entry {
        Entry {
            lock: tokio::sync::Mutex::new(()),
            status: watch::channel(missing()).0,
            changed,
            server: Mutex::new(None),
        }
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Option<ServerHandle>> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits of the server this process runs, if it runs one.
    fn running_limits(&self) -> Option<InstanceLimits> {
        self.server()
            .as_ref()
            .filter(|h| !h.task.is_finished())
            .map(|h| h.limits.clone())
    }

    /// Stops the server (if running) and waits until its processes are gone.
    async fn stop(&self, grace: Duration) {
        let handle = self.server().take();
        if let Some(h) = handle {
            let _ = h.stop.send(Some(grace));
            let _ = h.task.await;
        }
    }

    fn set(&self, f: impl FnOnce(&mut InstanceStatus)) {
        self.status.send_modify(f);
        self.changed.notify_waiters();
    }
}

/// The kind of server behind a provider name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    Mysql,
    Redis,
    Typesense,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL",
            Kind::Mysql => "MySQL",
            Kind::Redis => "Redis",
            Kind::Typesense => "Typesense",
        }
    }
}

/// The programs an instance runs, found on this machine.
#[derive(Debug, Clone)]
enum Programs {
    Postgres(postgres::Bins),
    Mysql(mysql::Bins),
    Redis { server: PathBuf },
    Typesense { server: PathBuf },
}

/// One instance as this runtime handles it: its spec, its directory and
/// how to run things in its sandbox. Cheap to clone; owned, so that its
/// supervisor can keep one.
#[derive(Clone)]
struct Ctx {
    spec: Arc<InstanceSpec>,
    kind: Kind,
    programs: Programs,
    /// The instance's directory on the host.
    dir: PathBuf,
    /// The same directory as its processes see it.
    root: PathBuf,
    /// The sandbox's uid, and the uid the host sees on its processes and
    /// files (the server's own in shared mode).
    uid: u32,
    owner: u32,
    port: u16,
    sandboxes: Arc<Sandboxes>,
    max_processes: u64,
}

/// Sends one progress step; a receiver that went away is fine.
fn say(progress: &Progress, msg: impl Into<String>) {
    let _ = progress.send(msg.into());
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("{}: {e}", path.display()))
}

/// Quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Makes `path` (if missing) with `mode`, owned by `owner` when given.
fn make_dir(path: &Path, mode: u32, owner: Option<u32>, group: Option<u32>) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::internal(format!(
                "{} is a symbolic link",
                path.display()
            )));
        }
        Ok(_) => {}
        Err(_) => std::fs::create_dir_all(path).map_err(|e| io_error(path, e))?,
    }
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::chown(path, owner, group.or(owner)).map_err(|e| io_error(path, e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(path, e))
}

/// Writes a file of mode 0600 owned by `owner`, atomically (a new file
/// renamed over the old one, so that a link planted in its place is
/// replaced, never followed).
fn write_private(path: &Path, contents: &[u8], owner: u32) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::os::unix::fs::fchown(&f, Some(owner), Some(owner))?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, e)
    })
}

/// Reads a small file without following a link at its place.
fn read_small(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut s = String::new();
    f.take(max).read_to_string(&mut s)?;
    Ok(s)
}

fn remove_path(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(path, e)),
        _ => Ok(()),
    }
}

/// The last `n` lines of the instance's log (for error messages: servers
/// write no passwords there).
fn log_tail(dir: &Path, n: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(LOG_FILE))?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(8192)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let text = read().unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The output of a sandboxed process: the server's log file, rotated
/// when it grows past [`LOG_BYTES`].
struct LogFile {
    path: PathBuf,
    owner: u32,
    file: Option<std::fs::File>,
    size: u64,
}

impl LogFile {
    fn new(path: PathBuf, owner: u32) -> LogFile {
        LogFile {
            path,
            owner,
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&self.path)?;
            std::os::unix::fs::fchown(&f, Some(self.owner), Some(self.owner))?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn line(&mut self, line: &str) {
        if self.size > LOG_BYTES {
            self.file = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        }
        if let Ok(f) = self.open()
            && f.write_all(format!("{line}\n").as_bytes()).is_ok()
        {
            self.size += line.len() as u64 + 1;
        }
    }
}

/// A simple SQL identifier (role, database, user name): letters, digits
/// and underscores, not starting with a digit.
fn check_identifier(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !value.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            field,
            "must be 1 to 63 letters, digits or underscores, not starting with a digit",
        ))
    }
}

/// Printable ASCII only: SCRAM verifiers computed here match the server's
/// own only where SASLprep leaves the password unchanged.
fn check_password(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 512 || !value.chars().all(|c| (' '..='~').contains(&c)) {
        Err(Error::field(
            field,
            "must be 1 to 512 printable ASCII characters",
        ))
    } else {
        Ok(())
    }
}

/// Checks what goes into paths, commands, configuration and SQL.
fn validate(spec: &InstanceSpec, kind: Kind) -> Result<()> {
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 63
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !spec.name.starts_with('-');
    if !name_ok {
        return Err(Error::field(
            "name",
            "must be a DNS label: lowercase letters, digits and '-'",
        ));
    }
    let c = &spec.credentials;
    check_identifier("admin_user", &c.admin_user)?;
    check_password("admin_password", c.admin_password.expose())?;
    check_password("app_password", c.app_password.expose())?;
    if matches!(kind, Kind::Postgres | Kind::Mysql) {
        check_identifier("app_user", &c.app_user)?;
        check_identifier("database", &c.database)?;
        if c.app_user == c.admin_user {
            return Err(Error::field("app_user", "must differ from the admin user"));
        }
    } else if kind == Kind::Redis && c.admin_user == "default" {
        return Err(Error::field(
            "admin_user",
            "'default' is Redis's application user",
        ));
    }
    if spec.limits.memory_mb < 32 {
        return Err(Error::field("memory_mb", "must be at least 32"));
    }
    if spec.limits.max_connections == 0 {
        return Err(Error::field("max_connections", "must be at least 1"));
    }
    Ok(())
}

/// Looks `name` up on `PATH` and in the usual system directories.
fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl LocalInstances {
    /// The data services of a local runtime with `config`, run in
    /// `sandboxes` (the runtime's own).
    pub fn new(config: &LocalConfig, sandboxes: Arc<Sandboxes>) -> LocalInstances {
        LocalInstances {
            data_dir: config.data_dir.clone(),
            max_processes: config.sandbox.max_processes,
            postgres_bin_dir: config.postgres_bin_dir.clone(),
            typesense_bin: config.typesense_bin.clone(),
            sandboxes,
            entries: Mutex::default(),
            stopping: AtomicBool::new(false),
            changed: Arc::default(),
        }
    }

    /// `<data_dir>/resources`: where every instance's directory lives.
    pub fn resources_dir(&self) -> PathBuf {
        self.data_dir.join("resources")
    }

    /// The directory of the instance named `name`.
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.resources_dir().join(name)
    }

    fn entry(&self, name: &str) -> Arc<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Entry::new(self.changed.clone())))
            .clone()
    }

    fn existing_entry(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn kind(provider: &str) -> Result<Kind> {
        match provider {
            POSTGRESQL => Ok(Kind::Postgres),
            MYSQL => Ok(Kind::Mysql),
            REDIS | VALKEY => Ok(Kind::Redis),
            TYPESENSE => Ok(Kind::Typesense),
            other => Err(Error::bad_request(format!(
                "the local runtime does not host '{other}' instances (it hosts {POSTGRESQL}, {MYSQL}, {REDIS}, {VALKEY} and {TYPESENSE})"
            ))),
        }
    }

    /// The programs `provider` needs, or what is missing.
    fn programs(&self, provider: &str) -> Result<Programs> {
        let kind = Self::kind(provider)?;
        if matches!(kind, Kind::Postgres | Kind::Mysql) && self.sandboxes.shared() {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                return Err(Error::Unprocessable(format!(
                    "{} refuses to run as root, and --insecure-shared-sandbox runs instances as this server's user (root): run the server as an unprivileged user, or without --insecure-shared-sandbox",
                    kind.label()
                )));
            }
        }
        match kind {
            Kind::Postgres => {
                postgres::Bins::find(self.postgres_bin_dir.as_deref()).map(Programs::Postgres)
            }
            Kind::Mysql => mysql::Bins::find().map(Programs::Mysql),
            Kind::Redis => {
                let name = if provider == VALKEY {
                    "valkey-server"
                } else {
                    "redis-server"
                };
                find_program(name)
                    .map(|server| Programs::Redis { server })
                    .ok_or_else(|| {
                        Error::Unprocessable(format!(
                            "{name} is not installed on this machine: install it (for example the '{}' package)",
                            if provider == VALKEY { "valkey" } else { "redis-server" }
                        ))
                    })
            }
            Kind::Typesense => match &self.typesense_bin {
                Some(path) if path.is_file() => Ok(Programs::Typesense {
                    server: path.clone(),
                }),
                Some(path) => Err(Error::Unprocessable(format!(
                    "typesense_bin is set to {}, which is not a file: point it at the typesense-server program",
                    path.display()
                ))),
                None => find_program("typesense-server")
                    .map(|server| Programs::Typesense { server })
                    .ok_or_else(|| {
                        Error::Unprocessable(
                            "typesense-server is not installed on this machine: install Typesense's server (typesense.org publishes it; it is not in Debian's archive) and put typesense-server on PATH, or set typesense_bin (SYLPHX_TYPESENSE_BIN) to it".into(),
                        )
                    }),
            },
        }
    }

    /// Checks `spec` and gathers what handling it needs.
    fn ctx(&self, spec: &InstanceSpec) -> Result<Ctx> {
        let kind = Self::kind(&spec.provider)?;
        validate(spec, kind)?;
        let programs = self.programs(&spec.provider)?;
        let port = spec
            .port
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::internal("a local instance needs its port"))?;
        let uid = match spec.uid {
            Some(uid) => uid,
            None if self.sandboxes.shared() => 0,
            None => return Err(Error::internal("a local instance needs its sandbox uid")),
        };
        let dir = self.instance_dir(&spec.name);
        let root = if self.sandboxes.shared() {
            dir.clone()
        } else {
            PathBuf::from(APP_DIR)
        };
        Ok(Ctx {
            spec: Arc::new(spec.clone()),
            kind,
            programs,
            root,
            owner: self.sandboxes.effective_uid(uid),
            uid,
            port,
            dir,
            sandboxes: self.sandboxes.clone(),
            max_processes: self.max_processes,
        })
    }

    /// `resources/`, traversable by the sandboxes' group only (like
    /// `releases/`), and the instance's own directory, owned by its uid.
    fn prepare_dirs(&self, ctx: &Ctx) -> Result<()> {
        let shared = self.sandboxes.shared();
        let group = (!shared).then(|| self.sandboxes.group());
        if !shared {
            make_dir(&self.data_dir, 0o710, None, group)?;
        }
        make_dir(
            &self.resources_dir(),
            if shared { 0o700 } else { 0o710 },
            None,
            group,
        )?;
        make_dir(&ctx.dir, 0o700, Some(ctx.owner), None)?;
        ctx.write_identity()?;
        if ctx.kind == Kind::Postgres {
            for sub in [postgres::ARCHIVE, postgres::BACKUPS] {
                make_dir(&ctx.dir.join(sub), 0o700, Some(ctx.owner), None)?;
            }
        }
        Ok(())
    }

    fn check_running(&self) -> Result<()> {
        if self.stopping.load(Ordering::SeqCst) {
            Err(Error::Unavailable("the server is stopping".into()))
        } else {
            Ok(())
        }
    }

    async fn ensure_locked(
        &self,
        ctx: &Ctx,
        entry: &Arc<Entry>,
        progress: &Progress,
    ) -> Result<()> {
        self.prepare_dirs(ctx)?;
        if !ctx.path(DATA).is_dir() {
            say(progress, "initialising the data directory");
            remove_path(&ctx.path(DATA_TMP))?;
            ctx.init(self, progress).await?;
            std::fs::rename(ctx.path(DATA_TMP), ctx.path(DATA))
                .map_err(|e| io_error(&ctx.path(DATA), e))?;
        }
        match entry.running_limits() {
            Some(limits) if limits == ctx.spec.limits => {}
            Some(_) => {
                say(progress, "restarting with the new limits");
                entry.stop(STOP_GRACE).await;
                self.start(ctx, entry)?;
            }
            None => {
                say(progress, "starting");
                self.start(ctx, entry)?;
            }
        }
        if self.stopping.load(Ordering::SeqCst) {
            // `stop_all` may have looked before this start stored its handle.
            entry.stop(STOP_GRACE).await;
            return self.check_running();
        }
        let wait = if ctx.kind == Kind::Postgres && ctx.path(DATA).join("recovery.signal").exists()
        {
            postgres::RECOVERY_TIMEOUT
        } else {
            START_TIMEOUT
        };
        wait_ready(ctx, entry, wait).await?;
        ctx.after_ready(self, progress).await
    }

    /// Writes the settings and starts the server under a supervisor.
    fn start(&self, ctx: &Ctx, entry: &Arc<Entry>) -> Result<()> {
        self.check_running()?;
        ctx.configure()?;
        let command = ctx.server_command();
        entry.set(|s| {
            s.state = InstanceState::Starting;
            s.message = None;
        });
        let (stop, stopping) = watch::channel(None);
        let task = tokio::spawn(supervise(ctx.clone(), command, entry.clone(), stopping));
        *entry.server() = Some(ServerHandle {
            stop,
            task,
            limits: ctx.spec.limits.clone(),
        });
        Ok(())
    }

    /// Stops the server (if this process runs it), kills what is left of
    /// its uid and deletes its directory.
    async fn remove_locked(&self, spec: &InstanceSpec, entry: &Entry) -> Result<()> {
        entry.stop(STOP_GRACE).await;
        if let Some(uid) = spec.uid.filter(|_| !self.sandboxes.shared()) {
            kill_uid(uid).await;
        }
        let dir = self.instance_dir(&spec.name);
        tokio::task::spawn_blocking(move || remove_path(&dir))
            .await
            .map_err(Error::internal)??;
        entry.set(|s| *s = missing());
        Ok(())
    }

    fn postgres_ctx(&self, spec: &InstanceSpec) -> Result<Ctx> {
        let ctx = self.ctx(spec)?;
        if ctx.kind != Kind::Postgres {
            return Err(Error::bad_request(
                "backups are available for PostgreSQL only",
            ));
        }
        Ok(ctx)
    }
}

/// SIGKILLs every process of `uid` and waits (briefly) until they are gone.
async fn kill_uid(uid: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let pids = host::processes_of(uid);
        if pids.is_empty() || tokio::time::Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process of the instance's own uid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the supervisor found the server ready, for at most `wait`.
async fn wait_ready(ctx: &Ctx, entry: &Entry, wait: Duration) -> Result<()> {
    let mut rx = entry.status.subscribe();
    let reached = tokio::time::timeout(
        wait,
        rx.wait_for(|s| matches!(s.state, InstanceState::Ready | InstanceState::Missing)),
    )
    .await;
    match reached {
        Ok(Ok(s)) if s.state == InstanceState::Ready => Ok(()),
        Ok(_) => Err(Error::Unavailable(format!(
            "{} was stopped while starting",
            ctx.spec.name
        ))),
        Err(_) => Err(Error::Unprocessable(format!(
            "the {} instance {} did not accept connections within {}s; the last lines of its log:\n{}",
            ctx.kind.label(),
            ctx.spec.name,
            wait.as_secs(),
            log_tail(&ctx.dir, 15)
        ))),
    }
}

/// Runs the server, restarting it with backoff when it dies, until asked
/// to stop; keeps the entry's status.
async fn supervise(
    ctx: Ctx,
    command: String,
    entry: Arc<Entry>,
    mut stopping: watch::Receiver<Option<Duration>>,
) {
    let mut backoff = Duration::from_secs(1);
    let log = Arc::new(Mutex::new(LogFile::new(ctx.path(LOG_FILE), ctx.owner)));
    loop {
        if stopping.borrow().is_some() {
            break;
        }
        let started = tokio::time::Instant::now();
        let mut sandbox = match ctx
            .spawn(&command, &BTreeMap::new(), Stdio::piped(), Stdio::piped())
            .await
        {
            Ok(s) => s,
            Err(e) => {
                crashed(&entry, format!("cannot start: {}", e.message()));
                if pause(&mut stopping, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        pump_to_log(&mut sandbox, &log);
        let probe = tokio::spawn(watch_ready(ctx.clone(), entry.clone()));
        tokio::select! {
            status = sandbox.wait() => {
                probe.abort();
                let why = if sandbox.out_of_memory() {
                    format!("killed: out of memory (limit {} MiB)", ctx.spec.limits.memory_mb)
                } else {
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                };
                sandbox.settle().await;
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                crashed(&entry, format!("the server exited ({why}); restarting in {}s", backoff.as_secs()));
                tracing::warn!(instance = %ctx.spec.name, reason = %why, "a data service exited; restarting it");
                if pause(&mut stopping, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = stopping.changed() => {
                probe.abort();
                let grace = stopping.borrow().unwrap_or(STOP_GRACE);
                sandbox.stop(grace).await;
                break;
            }
        }
    }
    entry.set(|s| {
        s.state = InstanceState::Missing;
        s.message = None;
    });
}

/// Sleeps `backoff`; true when asked to stop meanwhile.
async fn pause(stopping: &mut watch::Receiver<Option<Duration>>, backoff: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff) => stopping.borrow().is_some(),
        _ = stopping.changed() => true,
    }
}

fn crashed(entry: &Entry, message: String) {
    entry.set(|s| {
        s.state = InstanceState::Crashed;
        s.restarts += 1;
        s.message = Some(message);
    });
}

fn pump_to_log(sandbox: &mut Sandboxed, log: &Arc<Mutex<LogFile>>) {
    let readers: [Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>; 2] = [
        sandbox.child.stdout.take().map(|r| Box::pin(r) as _),
        sandbox.child.stderr.take().map(|r| Box::pin(r) as _),
    ];
    for reader in readers.into_iter().flatten() {
        let log = log.clone();
        tokio::spawn(read_lines(reader, move |line| {
            log.lock().unwrap_or_else(|e| e.into_inner()).line(&line);
        }));
    }
}

/// Checks the server's readiness until it answers (then marks it ready).
async fn watch_ready(ctx: Ctx, entry: Arc<Entry>) {
    let deadline = tokio::time::Instant::now() + PROBE_WINDOW;
    while tokio::time::Instant::now() < deadline {
        if ctx.listening() && ctx.probe().await.is_ok() {
            entry.set(|s| {
                s.state = InstanceState::Ready;
                s.message = None;
            });
            return;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

impl Ctx {
    /// A path in the instance's directory, on the host.
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The same path as the instance's processes see it.
    fn inside(&self, rel: &str) -> String {
        self.root.join(rel).to_string_lossy().into_owned()
    }

    fn limits(&self) -> Limits {
        Limits {
            memory_bytes: Some(u64::from(self.spec.limits.memory_mb) << 20),
            cpu_millis: Some(CPU_MILLIS),
            max_processes: Some(self.max_processes),
        }
    }

    /// Whether the socket answering `127.0.0.1:port` is this instance's
    /// (not another tenant's that took the port first).
    fn listening(&self) -> bool {
        host::loopback_listener_uid(self.port) == Some(self.owner)
    }

    /// Writes a private file (mode 0600, owned by the instance's uid).
    fn write(&self, rel: &str, contents: &[u8]) -> Result<()> {
        write_private(&self.path(rel), contents, self.owner)
    }

    async fn spawn(
        &self,
        command: &str,
        env: &BTreeMap<String, String>,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Sandboxed> {
        let (passwd, group) = (self.path(PASSWD), self.path(GROUP));
        let mut files = vec![
            (passwd.as_path(), "/etc/passwd"),
            (group.as_path(), "/etc/group"),
        ];
        if let Programs::Typesense { server } = &self.programs {
            files.push((server.as_path(), typesense::PROGRAM));
        }
        self.sandboxes
            .spawn_with_files(
                &Spec {
                    uid: self.uid,
                    dir: &self.dir,
                    command,
                    env,
                    limits: self.limits(),
                    mounts: &[],
                },
                &files,
                stdout,
                stderr,
            )
            .await
    }

    /// The host's `/etc/passwd` and `/etc/group` with the instance's uid
    /// added (named after the instance), shown in its sandbox: PostgreSQL
    /// refuses to run as a uid without a name.
    fn write_identity(&self) -> Result<()> {
        let name = &self.spec.name;
        let host = |file: &str| {
            let mut text = std::fs::read_to_string(file).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text
        };
        let passwd = format!(
            "{}{name}:x:{uid}:{uid}:{name}:{APP_DIR}:/usr/sbin/nologin\n",
            host("/etc/passwd"),
            uid = self.uid
        );
        let group = format!("{}{name}:x:{}:\n", host("/etc/group"), self.uid);
        self.write(PASSWD, passwd.as_bytes())?;
        self.write(GROUP, group.as_bytes())
    }

    /// Runs a one-shot `command` in the instance's sandbox and waits for
    /// it (at most `timeout`); the error says `what` failed, with the last
    /// lines of its output.
    async fn run(
        &self,
        what: &str,
        command: &str,
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String> {
        let mut sandbox = self
            .spawn(command, env, Stdio::piped(), Stdio::piped())
            .await?;
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let readers: [Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>; 2] = [
            sandbox.child.stdout.take().map(|r| Box::pin(r) as _),
            sandbox.child.stderr.take().map(|r| Box::pin(r) as _),
        ];
        let pumps: Vec<_> = readers
            .into_iter()
            .flatten()
            .map(|reader| {
                let output = output.clone();
                tokio::spawn(read_lines(reader, move |line| {
                    let mut lines = output.lock().unwrap_or_else(|e| e.into_inner());
                    if lines.len() == 40 {
                        lines.remove(0);
                    }
                    lines.push(line);
                }))
            })
            .collect();
        let outcome = tokio::time::timeout(timeout, sandbox.wait()).await;
        if outcome.is_err() {
            sandbox.stop(Duration::from_secs(1)).await;
        } else {
            sandbox.settle().await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::future::join_all(pumps),
        )
        .await;
        let text = output.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
        match outcome {
            Ok(Ok(status)) if status.success() => Ok(text),
            Ok(Ok(status)) => Err(Error::Unprocessable(format!(
                "{what} failed ({status}): {}",
                last_lines(&text, 10)
            ))),
            Ok(Err(e)) => Err(Error::internal(format!("{what}: {e}"))),
            Err(_) => Err(Error::Unprocessable(format!(
                "{what} did not finish within {}s: {}",
                timeout.as_secs(),
                last_lines(&text, 10)
            ))),
        }
    }

    /// Makes the data directory in [`DATA_TMP`], per the spec's origin.
    async fn init(&self, rt: &LocalInstances, progress: &Progress) -> Result<()> {
        match self.kind {
            Kind::Postgres => postgres::init(self, rt, progress).await,
            Kind::Mysql => mysql::init(self).await,
            Kind::Redis => redis::init(self),
            Kind::Typesense => typesense::init(self),
        }
    }

    /// Writes the settings the server starts with.
    fn configure(&self) -> Result<()> {
        match self.kind {
            Kind::Postgres => postgres::configure(self),
            Kind::Mysql => mysql::configure(self),
            Kind::Redis => redis::configure(self),
            Kind::Typesense => typesense::configure(self),
        }
    }

    fn server_command(&self) -> String {
        match &self.programs {
            Programs::Postgres(bins) => postgres::command(self, bins),
            Programs::Mysql(bins) => mysql::command(self, bins),
            Programs::Redis { server } => redis::command(self, server),
            Programs::Typesense { server } => typesense::command(
                self,
                if self.sandboxes.shared() {
                    server
                } else {
                    Path::new(typesense::PROGRAM)
                },
            ),
        }
    }

    /// A real protocol check with the spec's credentials.
    async fn probe(&self) -> Result<()> {
        match self.kind {
            Kind::Postgres => postgres::probe(self).await,
            Kind::Mysql => mysql::probe(self).await,
            Kind::Redis => redis::probe(self).await,
            Kind::Typesense => typesense::probe(self).await,
        }
    }

    /// What follows a start: users, databases, the first backup.
    async fn after_ready(&self, rt: &LocalInstances, progress: &Progress) -> Result<()> {
        match self.kind {
            Kind::Postgres => postgres::after_ready(self, rt, progress).await,
            Kind::Mysql => mysql::after_ready(self),
            Kind::Redis | Kind::Typesense => Ok(()),
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[async_trait]
impl Instances for LocalInstances {
    fn changed(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changed.clone())
    }

    async fn supports(&self, provider: &str) -> Result<()> {
        self.programs(provider).map(drop)
    }

    async fn ensure(&self, spec: &InstanceSpec, progress: &Progress) -> Result<Endpoint> {
        let ctx = self.ctx(spec)?;
        self.check_running()?;
        self.sandboxes.check().await?;
        let entry = self.entry(&spec.name);
        let _serial = entry.lock.lock().await;
        self.check_running()?;
        self.ensure_locked(&ctx, &entry, progress).await?;
        Ok(Endpoint {
            host: "127.0.0.1".into(),
            port: ctx.port,
        })
    }

    async fn status(&self, spec: &InstanceSpec) -> Result<InstanceStatus> {
        Ok(self
            .existing_entry(&spec.name)
            .map(|e| e.status.borrow().clone())
            .unwrap_or_else(missing))
    }

    async fn remove(&self, spec: &InstanceSpec) -> Result<()> {
        let kind = Self::kind(&spec.provider)?;
        validate(spec, kind)?;
        let entry = self.entry(&spec.name);
        let _serial = entry.lock.lock().await;
        self.remove_locked(spec, &entry).await
    }

    async fn scalars(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Scalars> {
        let ctx = self.ctx(spec)?;
        let read = async {
            match ctx.kind {
                Kind::Postgres => postgres::scalars(&ctx).await,
                Kind::Redis => redis::scalars(&ctx).await,
                Kind::Mysql | Kind::Typesense => Err(Error::Unavailable(format!(
                    "metrics are not collected for {}",
                    ctx.kind.label()
                ))),
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "{} did not answer within {} ms",
                spec.name,
                timeout.as_millis()
            ))),
        }
    }

    async fn backups(&self, spec: &InstanceSpec) -> Result<Vec<Backup>> {
        let ctx = self.postgres_ctx(spec)?;
        Ok(postgres::list_backups(&ctx)
            .into_iter()
            .map(|r| r.to_backup())
            .collect())
    }

    async fn backup(&self, spec: &InstanceSpec) -> Result<Backup> {
        let ctx = self.postgres_ctx(spec)?;
        self.check_running()?;
        let entry = self.entry(&spec.name);
        let _serial = entry.lock.lock().await;
        if entry.running_limits().is_none() {
            return Err(Error::Unavailable(format!(
                "{} is not running here: ensure it first",
                spec.name
            )));
        }
        postgres::backup_now(&ctx).await.map(|r| r.to_backup())
    }

    async fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        futures_util::future::join_all(entries.iter().map(|e| e.stop(STOP_GRACE))).await;
    }
}
