//! The state store: SQLite in the data dir by default, PostgreSQL when the
//! URL says so. Migrations run before anything else touches it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::error::{Error, Result};

/// Counts SQL statements sent to the store; tests use it to prove that a
/// nested query costs a constant number of statements.
#[derive(Debug, Default, Clone)]
pub struct StatementCounter(Arc<AtomicU64>);

impl StatementCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The longest a statement may run on PostgreSQL (migrations included).
pub const STATEMENT_TIMEOUT: &str = "15s";

/// Opens the store and brings its schema up to date.
pub async fn connect(url: &str) -> Result<(DatabaseConnection, StatementCounter)> {
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
        opts.max_connections(20)
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
    let c = counter.0.clone();
    db.set_metric_callback(move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    });
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
    connect(url).await.map(|_| ())
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
