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

/// Opens the store and brings its schema up to date.
pub async fn connect(url: &str) -> Result<(DatabaseConnection, StatementCounter)> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30));
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
        opts.max_connections(20);
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
    Ok((db, counter))
}

/// Runs pending migrations only (the `migrate` subcommand).
pub async fn migrate(url: &str) -> Result<()> {
    connect(url).await.map(|_| ())
}
