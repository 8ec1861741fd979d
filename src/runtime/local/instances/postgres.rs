//! PostgreSQL instances: `initdb` (or a copy of another instance, or a
//! point-in-time restore of one), a server listening on loopback TCP only
//! with SCRAM passwords, WAL archived into the instance's `archive/`, and
//! base backups in its `backups/`.
//!
//! Passwords are set with SCRAM verifiers computed here, so that the
//! plain password never reaches the server's statement text (nor its log);
//! `initdb` reads the first one from a file of mode 0600 that is removed
//! at once, and the programs that connect (`pg_basebackup`) get theirs in
//! `PGPASSWORD`, in their own environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sea_orm::sqlx::{self, ConnectOptions, Connection, postgres::PgConnectOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Ctx, DATA, DATA_TMP, LocalInstances, io_error, make_dir, read_small, remove_path, say,
    sh_quote, write_private,
};
use crate::error::{Error, Result};
use crate::runtime::instances::{Backup, InstanceSpec, Origin, POSTGRESQL, Progress, Scalars};

/// Archived WAL, in the instance's directory.
pub const ARCHIVE: &str = "archive";
/// Base backups, in the instance's directory.
pub const BACKUPS: &str = "backups";
/// A restore replays WAL until its target: it may take this long.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The source's archived WAL, copied for a restore (removed after it).
const RESTORE_WAL: &str = "restore-wal";
/// initdb's password file (removed once read).
const PWFILE: &str = ".pwfile";
/// The settings this runtime writes, included by `postgresql.conf`.
const CONF: &str = "sylphx.conf";
/// A restore's recovery settings (while `recovery.signal` exists).
const RECOVERY_CONF: &str = "sylphx-recovery.conf";
const BACKUP_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restore waits for the source to archive its current WAL.
const ARCHIVE_WAIT: Duration = Duration::from_secs(120);

/// PostgreSQL's server programs.
#[derive(Debug, Clone)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    /// The programs in `configured` (`postgres_bin_dir`), else in the
    /// newest `/usr/lib/postgresql/<version>/bin`.
    pub fn find(configured: Option<&Path>) -> Result<Bins> {
        let dir = match configured {
            Some(d) => d.to_path_buf(),
            None => newest_installed().ok_or_else(|| {
                Error::Unprocessable(
                    "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/<version>/bin): install PostgreSQL's server package, or set postgres_bin_dir to the directory holding initdb, postgres and pg_basebackup".into(),
                )
            })?,
        };
        let missing: Vec<&str> = ["initdb", "postgres", "pg_basebackup"]
            .into_iter()
            .filter(|p| !dir.join(p).is_file())
            .collect();
        if missing.is_empty() {
            Ok(Bins { dir })
        } else {
            Err(Error::Unprocessable(format!(
                "{} has no {}: install PostgreSQL's server package, or set postgres_bin_dir to the directory holding initdb, postgres and pg_basebackup",
                dir.display(),
                missing.join(", ")
            )))
        }
    }

    fn program(&self, name: &str) -> String {
        sh_quote(&self.dir.join(name).to_string_lossy())
    }
}

/// `/usr/lib/postgresql/<version>/bin` of the highest version.
fn newest_installed() -> Option<PathBuf> {
    let version =
        |name: &str| -> Vec<u32> { name.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        .max_by_key(|n| version(n))
        .map(|n| Path::new("/usr/lib/postgresql").join(n).join("bin"))
        .filter(|d| d.is_dir())
}

fn bins(ctx: &Ctx) -> Result<&Bins> {
    match &ctx.programs {
        super::Programs::Postgres(b) => Ok(b),
        _ => Err(Error::internal("not a PostgreSQL instance")),
    }
}

fn env_with_password(password: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("PGPASSWORD".to_string(), password.to_string())])
}

// ---- initialisation ----------------------------------------------------

/// Makes the data directory in `data.init`, per the spec's origin.
pub async fn init(ctx: &Ctx, rt: &LocalInstances, progress: &Progress) -> Result<()> {
    match &ctx.spec.origin {
        Origin::Empty => initdb(ctx).await,
        Origin::Copy { source } => {
            say(progress, format!("copying the data of {}", source.name));
            copy_from(ctx, rt, source).await
        }
        Origin::Restore {
            source,
            target_time,
        } => restore_from(ctx, rt, source, *target_time, progress).await,
    }
}

async fn initdb(ctx: &Ctx) -> Result<()> {
    let creds = &ctx.spec.credentials;
    ctx.write(PWFILE, creds.admin_password.expose().as_bytes())?;
    let command = format!(
        "exec {} -D {} --username={} --pwfile={} --auth-local=scram-sha-256 --auth-host=scram-sha-256 --encoding=UTF8 --no-locale",
        bins(ctx)?.program("initdb"),
        sh_quote(&ctx.inside(DATA_TMP)),
        creds.admin_user,
        sh_quote(&ctx.inside(PWFILE)),
    );
    let result = ctx
        .run("initdb", &command, &BTreeMap::new(), super::INIT_TIMEOUT)
        .await;
    remove_path(&ctx.path(PWFILE))?;
    result.map(drop)
}

/// The source of a copy or a restore: a PostgreSQL instance of this runtime.
fn source_ctx(rt: &LocalInstances, source: &InstanceSpec) -> Result<Ctx> {
    if source.provider != POSTGRESQL {
        return Err(Error::bad_request(
            "copies and restores are available between PostgreSQL instances only",
        ));
    }
    rt.ctx(source)
}

/// An online, consistent copy of the running source (`pg_basebackup`
/// with the WAL streamed alongside), made as the new instance's uid.
async fn copy_from(ctx: &Ctx, rt: &LocalInstances, source: &InstanceSpec) -> Result<()> {
    let src = source_ctx(rt, source)?;
    let command = format!(
        "exec {} -h 127.0.0.1 -p {} -U {} -D {} -Fp -X stream --checkpoint=fast --no-password",
        bins(ctx)?.program("pg_basebackup"),
        src.port,
        source.credentials.admin_user,
        sh_quote(&ctx.inside(DATA_TMP)),
    );
    let env = env_with_password(source.credentials.admin_password.expose());
    ctx.run(
        &format!("copying {}", source.name),
        &command,
        &env,
        super::INIT_TIMEOUT,
    )
    .await
    .map(drop)
}

/// A point-in-time restore: the newest base backup of the source that
/// completed before `target`, and the source's archived WAL to replay up
/// to `target` (inclusive: every transaction committed at or before it is
/// kept), then promotion.
async fn restore_from(
    ctx: &Ctx,
    rt: &LocalInstances,
    source: &InstanceSpec,
    target: DateTime<Utc>,
    progress: &Progress,
) -> Result<()> {
    let src = source_ctx(rt, source)?;
    if target > Utc::now() {
        return Err(Error::bad_request(
            "the restore's target time is in the future",
        ));
    }
    say(
        progress,
        format!("archiving the current WAL of {}", source.name),
    );
    push_wal(&src).await?;
    let backup = list_backups_in(&src.path(BACKUPS))
        .into_iter()
        .rfind(|b| b.status == COMPLETED && b.completed_at.is_some_and(|c| c <= target))
        .ok_or_else(|| {
            Error::bad_request(format!(
                "{} has no base backup completed before {}: choose a later time",
                source.name,
                target.to_rfc3339()
            ))
        })?;
    say(
        progress,
        format!("restoring the base backup {}", backup.name),
    );
    let (from, to) = (src.path(BACKUPS).join(&backup.name), ctx.path(DATA_TMP));
    let (archive, wal) = (src.path(ARCHIVE), ctx.path(RESTORE_WAL));
    let owner = ctx.owner;
    tokio::task::spawn_blocking(move || -> Result<()> {
        copy_tree(&from, &to, owner).map_err(|e| io_error(&from, e))?;
        remove_path(&wal)?;
        copy_tree(&archive, &wal, owner).map_err(|e| io_error(&archive, e))
    })
    .await
    .map_err(Error::internal)??;
    make_dir(&ctx.path(DATA_TMP), 0o700, Some(owner), None)?;
    let recovery = format!(
        "# A point-in-time restore (removed once it is promoted).\nrestore_command = {}\nrecovery_target_time = '{}'\nrecovery_target_inclusive = on\nrecovery_target_action = 'promote'\n",
        conf_string(&format!("cp {}/%f %p", sh_quote(&ctx.inside(RESTORE_WAL)))),
        target.format("%Y-%m-%d %H:%M:%S%.6f+00"),
    );
    let data = ctx.path(DATA_TMP);
    write_private(&data.join(RECOVERY_CONF), recovery.as_bytes(), owner)?;
    write_private(&data.join("recovery.signal"), b"", owner)
}

/// Makes the source write a commit record now and archive the WAL segment
/// holding it, so that a target time before now is reachable.
async fn push_wal(src: &Ctx) -> Result<()> {
    let c = &src.spec.credentials;
    let mut conn = connect(
        src.port,
        &c.admin_user,
        c.admin_password.expose(),
        "postgres",
    )
    .await
    .map_err(|e| Error::Unavailable(format!("cannot reach {}: {e}", src.spec.name)))?;
    let segment: String = async {
        sqlx::query("SELECT txid_current()")
            .execute(&mut conn)
            .await?;
        sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
            .fetch_one(&mut conn)
            .await
    }
    .await
    .map_err(|e| Error::Unavailable(format!("cannot switch the WAL of {}: {e}", src.spec.name)))?;
    let _ = conn.close().await;
    let archived = src.path(ARCHIVE).join(&segment);
    let deadline = tokio::time::Instant::now() + ARCHIVE_WAIT;
    while !archived.exists() {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "{} did not archive its WAL segment {segment} within {}s",
                src.spec.name,
                ARCHIVE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Copies `from` to `to` (made), owned by `owner`, never following a link.
fn copy_tree(from: &Path, to: &Path, owner: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::create_dir_all(to)?;
        std::os::unix::fs::lchown(to, Some(owner), Some(owner))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".tmp") {
                continue; // A segment being archived.
            }
            copy_tree(&entry.path(), &to.join(name), owner)?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
        std::os::unix::fs::lchown(to, Some(owner), Some(owner))?;
    } else if ft.is_file() {
        let mut src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(from)?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(to)?;
        std::io::copy(&mut src, &mut dst)?;
        std::os::unix::fs::fchown(&dst, Some(owner), Some(owner))?;
    }
    Ok(())
}

// ---- settings ----------------------------------------------------------

/// A string in `postgresql.conf`.
fn conf_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The settings of the instance (no secrets), sized for a small machine.
fn settings(ctx: &Ctx) -> String {
    let limits = &ctx.spec.limits;
    let shared_buffers = (limits.memory_mb / 4).clamp(16, 128);
    let archive = sh_quote(&ctx.inside(ARCHIVE));
    // Atomic (copy, then rename) and idempotent: a segment archived before
    // a crash, whose status was not recorded, is accepted if identical.
    let archive_command = format!(
        "if test -f {archive}/%f; then cmp -s %p {archive}/%f; else cp %p {archive}/%f.tmp && mv {archive}/%f.tmp {archive}/%f; fi"
    );
    let reserved = limits.max_connections.saturating_sub(1).min(3);
    format!(
        "# Written by the control plane at every start; edits are lost.
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
max_connections = {max_connections}
superuser_reserved_connections = {reserved}
shared_buffers = {shared_buffers}MB
work_mem = 4MB
maintenance_work_mem = 32MB
max_wal_size = 256MB
min_wal_size = 64MB
dynamic_shared_memory_type = mmap
huge_pages = off
password_encryption = 'scram-sha-256'
wal_level = replica
max_wal_senders = 4
archive_mode = on
archive_command = {archive_command}
archive_timeout = 60
logging_collector = off
log_destination = 'stderr'
# A failed statement may hold a password verifier: never logged.
log_min_error_statement = panic
",
        port = ctx.port,
        max_connections = limits.max_connections,
        archive_command = conf_string(&archive_command),
    )
}

fn hba(ctx: &Ctx) -> String {
    format!(
        "# Written by the control plane: password (SCRAM) logins over loopback TCP only.
host all all 127.0.0.1/32 scram-sha-256
host replication {admin} 127.0.0.1/32 scram-sha-256
",
        admin = ctx.spec.credentials.admin_user
    )
}

/// Writes the settings and access rules into the data directory, and
/// makes `postgresql.conf` include them.
pub fn configure(ctx: &Ctx) -> Result<()> {
    let data = ctx.path(DATA);
    write_private(&data.join(CONF), settings(ctx).as_bytes(), ctx.owner)?;
    write_private(&data.join("pg_hba.conf"), hba(ctx).as_bytes(), ctx.owner)?;
    let main = data.join("postgresql.conf");
    let mut text = read_small(&main, 1 << 20).map_err(|e| io_error(&main, e))?;
    let mut changed = false;
    for file in [CONF, RECOVERY_CONF] {
        let line = format!("include_if_exists = '{file}'");
        if !text.lines().any(|l| l.trim() == line) {
            text.push_str(&format!("\n{line}\n"));
            changed = true;
        }
    }
    if changed {
        write_private(&main, text.as_bytes(), ctx.owner)?;
    }
    if !data.join("recovery.signal").exists() {
        remove_path(&data.join(RECOVERY_CONF))?;
    }
    Ok(())
}

/// The server under a shell that turns the stop signal (SIGTERM, which
/// PostgreSQL takes as a smart shutdown that waits for clients) into a
/// fast shutdown (SIGINT), and exits with the server's status.
pub fn command(ctx: &Ctx, bins: &Bins) -> String {
    format!(
        "trap 'kill -INT \"$pid\" 2>/dev/null' TERM INT; {} -D {} & pid=$!; wait \"$pid\"; status=$?; while kill -0 \"$pid\" 2>/dev/null; do wait \"$pid\"; status=$?; done; exit \"$status\"",
        bins.program("postgres"),
        sh_quote(&ctx.inside(DATA))
    )
}

// ---- connections -------------------------------------------------------

/// One connection over loopback TCP, statements not logged (they may
/// hold password verifiers).
pub(super) async fn connect(
    port: u16,
    user: &str,
    password: &str,
    database: &str,
) -> std::result::Result<sqlx::PgConnection, String> {
    let options = PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .password(password)
        .database(database)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
        .application_name("sylphx")
        .disable_statement_logging();
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// The admin's connection: with the spec's password, else (a copy or a
/// restore whose passwords are not reset yet) with the source's.
async fn admin(ctx: &Ctx) -> Result<sqlx::PgConnection> {
    let c = &ctx.spec.credentials;
    let first = connect(
        ctx.port,
        &c.admin_user,
        c.admin_password.expose(),
        "postgres",
    )
    .await;
    let err = match first {
        Ok(conn) => return Ok(conn),
        Err(e) => e,
    };
    if let Origin::Copy { source } | Origin::Restore { source, .. } = &ctx.spec.origin {
        let s = &source.credentials;
        if let Ok(conn) = connect(
            ctx.port,
            &s.admin_user,
            s.admin_password.expose(),
            "postgres",
        )
        .await
        {
            return Ok(conn);
        }
    }
    Err(Error::Unavailable(format!(
        "cannot connect to {}: {err}",
        ctx.spec.name
    )))
}

pub async fn probe(ctx: &Ctx) -> Result<()> {
    let mut conn = admin(ctx).await?;
    let r = sqlx::query("SELECT 1").execute(&mut conn).await;
    let _ = conn.close().await;
    r.map(drop)
        .map_err(|e| Error::Unavailable(format!("{}: {e}", ctx.spec.name)))
}

fn sql_error(ctx: &Ctx, what: &str) -> impl Fn(sqlx::Error) -> Error {
    let name = ctx.spec.name.clone();
    let what = what.to_string();
    move |e| Error::Unprocessable(format!("{name}: {what}: {e}"))
}

// ---- after a start -----------------------------------------------------

/// Finishes a restore (waits for promotion), sets the spec's passwords,
/// makes the application's role and database, and takes the first base
/// backup if there is none. Every step is idempotent.
pub async fn after_ready(ctx: &Ctx, _rt: &LocalInstances, progress: &Progress) -> Result<()> {
    let mut conn = admin(ctx).await?;
    let result = async {
        wait_promoted(ctx, &mut conn, progress).await?;
        set_roles(ctx, &mut conn).await
    }
    .await;
    let _ = conn.close().await;
    result?;
    remove_path(&ctx.path(RESTORE_WAL))?;
    remove_path(&ctx.path(DATA).join(RECOVERY_CONF))?;
    let completed = list_backups(ctx).iter().any(|b| b.status == COMPLETED);
    if !completed {
        say(progress, "taking the first base backup");
        backup_now(ctx).await?;
    }
    Ok(())
}

async fn wait_promoted(
    ctx: &Ctx,
    conn: &mut sqlx::PgConnection,
    progress: &Progress,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + RECOVERY_TIMEOUT;
    let mut told = false;
    loop {
        let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_error(ctx, "reading its recovery state"))?;
        if !recovering {
            return Ok(());
        }
        if !told {
            say(progress, "replaying the archived WAL");
            told = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unprocessable(format!(
                "{} was still replaying WAL after {}s; the last lines of its log:\n{}",
                ctx.spec.name,
                RECOVERY_TIMEOUT.as_secs(),
                super::log_tail(&ctx.dir, 15)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn set_roles(ctx: &Ctx, conn: &mut sqlx::PgConnection) -> Result<()> {
    let c = &ctx.spec.credentials;
    let (admin, app, db) = (&c.admin_user, &c.app_user, &c.database);
    let statements = [
        format!(
            "ALTER ROLE \"{admin}\" WITH PASSWORD '{}'",
            scram_verifier(c.admin_password.expose())
        ),
        format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{app}') THEN CREATE ROLE \"{app}\"; END IF; END$$"
        ),
        format!(
            "ALTER ROLE \"{app}\" WITH LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION PASSWORD '{}'",
            scram_verifier(c.app_password.expose())
        ),
    ];
    for s in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.as_str()))
            .execute(&mut *conn)
            .await
            .map_err(sql_error(ctx, "setting its roles"))?;
    }
    let exists: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(db)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_error(ctx, "reading its databases"))?;
    let statement = if exists == 0 {
        format!("CREATE DATABASE \"{db}\" OWNER \"{app}\"")
    } else {
        format!("ALTER DATABASE \"{db}\" OWNER TO \"{app}\"")
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(sql_error(ctx, "making its database"))?;
    Ok(())
}

/// A SCRAM-SHA-256 verifier of `password` (as PostgreSQL stores it), so
/// that the password itself is never sent in a statement.
fn scram_verifier(password: &str) -> String {
    type HmacSha256 = Hmac<Sha256>;
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
        mac.update(data);
        mac.finalize().into_bytes().into()
    };
    const ITERATIONS: u32 = 4096;
    let salt: [u8; 16] = rand::random();
    // PBKDF2-HMAC-SHA-256, one block.
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password.as_bytes(), &block);
    let mut salted = u;
    for _ in 1..ITERATIONS {
        u = hmac(password.as_bytes(), &u);
        salted.iter_mut().zip(u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

// ---- figures -----------------------------------------------------------

pub async fn scalars(ctx: &Ctx) -> Result<Scalars> {
    let c = &ctx.spec.credentials;
    let mut conn = connect(
        ctx.port,
        &c.admin_user,
        c.admin_password.expose(),
        "postgres",
    )
    .await
    .map_err(|e| Error::Unavailable(format!("cannot connect to {}: {e}", ctx.spec.name)))?;
    let row: std::result::Result<(i64, f64, f64, i64, i64), _> = sqlx::query_as(
        "SELECT pg_database_size($1)::int8,
                COALESCE((SELECT sum(blks_hit) FROM pg_stat_database), 0)::float8,
                COALESCE((SELECT sum(blks_read) FROM pg_stat_database), 0)::float8,
                (SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid())::int8,
                COALESCE((SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database), 0)::int8",
    )
    .bind(&c.database)
    .fetch_one(&mut conn)
    .await;
    let _ = conn.close().await;
    let (size, hit, read, active, transactions) =
        row.map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", ctx.spec.name)))?;
    Ok(Scalars {
        database_size: Some(size),
        cache_hit_ratio: Some(if hit + read > 0.0 {
            hit / (hit + read)
        } else {
            1.0
        }),
        active_connections: Some(active),
        transactions: Some(transactions),
        ..Scalars::default()
    })
}

// ---- base backups ------------------------------------------------------

const RUNNING: &str = "running";
const COMPLETED: &str = "completed";
const FAILED: &str = "failed";

/// What `backups/<name>.json` records of one base backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    pub name: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The first WAL segment the backup needs.
    pub start_wal: Option<String>,
}

impl BackupRecord {
    pub fn to_backup(&self) -> Backup {
        Backup {
            name: self.name.clone(),
            status: self.status.clone(),
            started_at: self.started_at,
            completed_at: self.completed_at,
            method: "basebackup".into(),
        }
    }
}

/// The records in `dir`, oldest first.
fn list_backups_in(dir: &Path) -> Vec<BackupRecord> {
    let mut out: Vec<BackupRecord> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| read_small(&e.path(), 64 << 10).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect();
    out.sort_by(|a: &BackupRecord, b| (a.started_at, &a.name).cmp(&(b.started_at, &b.name)));
    out
}

pub fn list_backups(ctx: &Ctx) -> Vec<BackupRecord> {
    list_backups_in(&ctx.path(BACKUPS))
}

fn save(ctx: &Ctx, record: &BackupRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(Error::internal)?;
    write_private(
        &ctx.path(BACKUPS).join(format!("{}.json", record.name)),
        &json,
        ctx.owner,
    )
}

/// `<instance>-backup-<YYYYMMDDHHMMSS>`, with `-<n>` if that is taken.
fn new_name(ctx: &Ctx, now: DateTime<Utc>) -> String {
    let base = format!("{}-backup-{}", ctx.spec.name, now.format("%Y%m%d%H%M%S"));
    let taken = |n: &str| ctx.path(BACKUPS).join(format!("{n}.json")).exists();
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or(base)
}

/// Marks backups left `running` by an earlier process as failed (callers
/// hold the instance's lock, so none is running now).
fn fail_stale(ctx: &Ctx) -> Result<()> {
    for mut r in list_backups(ctx)
        .into_iter()
        .filter(|r| r.status == RUNNING)
    {
        remove_path(&ctx.path(BACKUPS).join(format!("{}.partial", r.name)))?;
        r.status = FAILED.into();
        save(ctx, &r)?;
    }
    Ok(())
}

/// Takes a base backup now (`pg_basebackup`, its WAL coming from the
/// archive), then prunes what the retention no longer keeps.
pub async fn backup_now(ctx: &Ctx) -> Result<BackupRecord> {
    fail_stale(ctx)?;
    let now = Utc::now();
    let mut record = BackupRecord {
        name: new_name(ctx, now),
        status: RUNNING.into(),
        started_at: now,
        completed_at: None,
        start_wal: None,
    };
    save(ctx, &record)?;
    let partial = format!("{BACKUPS}/{}.partial", record.name);
    let c = &ctx.spec.credentials;
    let command = format!(
        "exec {} -h 127.0.0.1 -p {} -U {} -D {} -Fp -X none --checkpoint=fast --no-password",
        bins(ctx)?.program("pg_basebackup"),
        ctx.port,
        c.admin_user,
        sh_quote(&ctx.inside(&partial)),
    );
    let env = env_with_password(c.admin_password.expose());
    let taken = ctx
        .run("the base backup", &command, &env, BACKUP_TIMEOUT)
        .await
        .and_then(|_| {
            let label = read_small(&ctx.path(&partial).join("backup_label"), 64 << 10)
                .map_err(|e| io_error(&ctx.path(&partial), e))?;
            std::fs::rename(ctx.path(&partial), ctx.path(BACKUPS).join(&record.name))
                .map_err(|e| io_error(&ctx.path(&partial), e))?;
            Ok(start_wal(&label))
        });
    match taken {
        Ok(wal) => {
            record.status = COMPLETED.into();
            record.completed_at = Some(Utc::now());
            record.start_wal = wal;
            save(ctx, &record)?;
            if let Err(e) = prune(ctx).await {
                tracing::warn!(instance = %ctx.spec.name, error = e.message(), "pruning old backups failed");
            }
            Ok(record)
        }
        Err(e) => {
            remove_path(&ctx.path(&partial))?;
            record.status = FAILED.into();
            save(ctx, &record)?;
            Err(e)
        }
    }
}

/// The WAL file named by `START WAL LOCATION: 0/2000028 (file 0000…02)`.
fn start_wal(label: &str) -> Option<String> {
    let line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.trim_end_matches(')').trim();
    (file.len() == 24 && file.chars().all(|c| c.is_ascii_hexdigit())).then(|| file.to_string())
}

/// Removes backups older than the retention (always keeping the newest
/// completed one) and archived WAL older than the oldest kept backup.
async fn prune(ctx: &Ctx) -> Result<()> {
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(ctx.spec.backup_retention_days));
    let records = list_backups(ctx);
    let newest = records
        .iter()
        .rev()
        .find(|r| r.status == COMPLETED)
        .map(|r| r.name.clone());
    for r in &records {
        if Some(&r.name) != newest.as_ref() && r.started_at < cutoff && r.status != RUNNING {
            remove_path(&ctx.path(BACKUPS).join(&r.name))?;
            remove_path(&ctx.path(BACKUPS).join(format!("{}.json", r.name)))?;
        }
    }
    let oldest = list_backups(ctx)
        .into_iter()
        .find(|r| r.status == COMPLETED)
        .and_then(|r| r.start_wal);
    let cleanup = bins(ctx)?.dir.join("pg_archivecleanup");
    if let Some(wal) = oldest.filter(|_| cleanup.is_file()) {
        let command = format!(
            "exec {} {} {wal}",
            sh_quote(&cleanup.to_string_lossy()),
            sh_quote(&ctx.inside(ARCHIVE))
        );
        ctx.run(
            "pg_archivecleanup",
            &command,
            &BTreeMap::new(),
            Duration::from_secs(300),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_start_wal_is_read_from_a_backup_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n";
        assert_eq!(
            start_wal(label).as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(start_wal("garbage"), None);
    }

    #[test]
    fn a_verifier_has_postgres_form() {
        let v = scram_verifier("secret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("secret"));
    }
}
