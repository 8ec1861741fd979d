//! The state store: SQLite in the data dir by default, PostgreSQL when the
//! URL says so. Migrations run before anything else touches it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::error::{Error, Result};

mod reads;
pub use reads::Reads;

/// Counts SQL statements sent to the store; tests use it to prove that a
/// nested query costs a constant number of statements.
#[derive(Debug, Default, Clone)]
pub struct StatementCounter(Arc<AtomicU64>);

impl StatementCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one statement.
    fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The longest a statement may run on PostgreSQL (migrations included).
pub const STATEMENT_TIMEOUT: &str = "15s";

/// The channel on which servers sharing a PostgreSQL store tell each other
/// that deployments moved on (status and event watchers look again).
pub const CHANGES_CHANNEL: &str = "sylphx_changes";

pub fn is_postgres(db: &DatabaseConnection) -> bool {
    db.get_database_backend() == sea_orm::DbBackend::Postgres
}

/// Tells every server on the PostgreSQL store that something changed.
pub async fn announce(db: &DatabaseConnection) {
    use sea_orm::ConnectionTrait;
    if let Err(e) = db
        .execute_unprepared(&format!("NOTIFY {CHANGES_CHANNEL}"))
        .await
    {
        tracing::debug!(error = %e, "could not announce a change");
    }
}

/// Wakes `changes` each time a server on the PostgreSQL store announces a
/// change (and after the listening connection was lost and restored, since
/// announcements may have been missed meanwhile). `None` on SQLite, which
/// one process serves.
pub fn spawn_listener(
    db: &DatabaseConnection,
    changes: std::sync::Arc<tokio::sync::Notify>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !is_postgres(db) {
        return None;
    }
    let pool = db.get_postgres_connection_pool().clone();
    Some(tokio::spawn(async move {
        loop {
            let listener = async {
                let mut l = sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await?;
                l.listen(CHANGES_CHANNEL).await?;
                Ok::<_, sea_orm::sqlx::Error>(l)
            };
            let mut listener = match listener.await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for changes; trying again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            changes.notify_waiters();
            // `Ok(None)`: the connection was lost and is back.
            while listener.try_recv().await.is_ok() {
                changes.notify_waiters();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }))
}

/// Opens the store and brings its schema up to date.
/// Connections of a PostgreSQL store's pool when `db_max_connections` is
/// not set.
pub const DEFAULT_POOL: u32 = 20;
/// Connections of the list pages' reads per HTTP thread when
/// `db_read_connections` is not set: one statement in the store while the
/// thread writes the answer of another. A list statement costs the store
/// a fraction of a millisecond of CPU: more of them at once only wait
/// inside it, one backend behind another, and lengthen the slowest
/// answers.
pub const READS_PER_HTTP_THREAD: u32 = 2;

pub async fn connect(url: &str, pool: u32) -> Result<(DatabaseConnection, StatementCounter)> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.sqlx_logging(false)
        // While the store is unreachable a request fails fast (503) rather
        // than queueing for a connection that will not come.
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3));
    if url.starts_with("sqlite:") {
        // SQLite has one writer; a deferred transaction that reads and then
        // writes fails at once (SQLITE_BUSY) when another connection wrote in
        // between. One pooled connection serialises all statements instead,
        // which the embedded single-machine default can afford.
        opts.max_connections(1)
            .min_connections(1)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
            });
    } else {
        // A connection busy a moment ago is not pinged again before each
        // statement (a round trip per statement under load); one idle for a
        // second is, so a restarted server's dead connections are replaced.
        opts.max_connections(pool.max(1))
            .test_before_acquire_if_idle_for(Duration::from_secs(1))
            // Every statement is a short indexed lookup whose plan does not
            // depend on its values: plan each prepared statement once per
            // connection instead of at every execution.
            // No statement runs longer than STATEMENT_TIMEOUT, set once per
            // connection at start-up (no statement of its own).
            .map_sqlx_postgres_opts(|o| {
                o.options([
                    ("plan_cache_mode", "force_generic_plan"),
                    ("statement_timeout", STATEMENT_TIMEOUT),
                ])
            });
    }
    let mut db = Database::connect(opts)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot open the state store: {e}")))?;
    let counter = StatementCounter::default();
    let c = counter.clone();
    db.set_metric_callback(move |_| c.count());
    Migrator::up(&db, None)
        .await
        .map_err(|e| Error::internal(format!("migration failed: {e}")))?;
    if let Some(path) = sqlite_path(url) {
        // The store holds hashed tokens and sealed secrets: its owner only.
        // (SQLite gives its -wal and -shm files the database file's mode.)
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
    }
    Ok((db, counter))
}

/// The database file of a `sqlite://` URL.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}

/// Whether a `postgres://` URL connects without a password (none in the
/// URL, none in `PGPASSWORD`).
pub fn postgres_without_password(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let in_url = authority
        .rsplit_once('@')
        .and_then(|(user, _)| user.split_once(':'))
        .is_some_and(|(_, pw)| !pw.is_empty())
        || url.contains("password=");
    !in_url && std::env::var_os("PGPASSWORD").is_none_or(|p| p.is_empty())
}

/// Runs pending migrations only (the `migrate` subcommand).
pub async fn migrate(url: &str) -> Result<()> {
    connect(url, DEFAULT_POOL).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/x/sylphx.db?mode=rwc"),
            Some("/var/lib/x/sylphx.db".into())
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert!(postgres_without_password(
            "postgres://postgres@127.0.0.1:5432/test"
        ));
        assert!(!postgres_without_password("postgres://app:s3cret@db/x"));
        assert!(!postgres_without_password(
            "postgres://app@db/x?password=s3cret"
        ));
        assert!(!postgres_without_password("sqlite://x.db"));
    }
}
