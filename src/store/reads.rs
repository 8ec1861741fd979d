//! The list pages' reads on PostgreSQL, through connections of their own.
//!
//! The general pool checks every connection it gets back with a round trip
//! to the store (a `Sync` and its answer) before another request may use
//! it: for a read of one statement that is a second wake-up of the
//! PostgreSQL backend and twice the time a connection is held. A read here
//! runs its one statement and hands the connection back the moment its
//! rows are in; a read that did not finish (its request went away, the
//! connection broke) closes the connection instead, so none comes back
//! with a statement still under way. A connection idle for a second is
//! checked before use, as the general pool's are; one idle for ten minutes
//! is closed.
//!
//! The connections are split among the HTTP threads: each thread reads
//! through its own share (its own permits, its own idle connections, opened
//! on its own runtime), so a read's turn, its connection and its answer
//! never wait on another thread's event loop. A read from any other
//! thread takes the shares in turn.
//!
//! Every read is counted with the store's statements. On SQLite (one
//! connection, no such check) the reads go through the general pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};
use sea_orm::{
    ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult,
    RuntimeErr, Statement,
};
use tokio::sync::Semaphore;

use super::StatementCounter;

/// How long a read waits for its turn, and then for a connection, before
/// the store counts as unavailable (as the general pool's acquire timeout).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection idle this long is checked before its next read.
const CHECK_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// A connection idle this long is closed.
const CLOSE_IF_IDLE_FOR: Duration = Duration::from_secs(600);

/// Reads of one statement; everything else goes to the general pool.
#[derive(Clone)]
pub struct Reads {
    db: DatabaseConnection,
    pg: Option<Arc<PgReads>>,
    counter: StatementCounter,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("own_connections", &self.pg.is_some())
            .finish()
    }
}

struct PgReads {
    options: Arc<PgConnectOptions>,
    /// One per HTTP thread (fewer if there are fewer connections).
    shares: Vec<Share>,
    /// Which HTTP thread the calling thread is, if it is one.
    thread: fn() -> Option<usize>,
    /// The next share for a read from a thread without one.
    turn: AtomicUsize,
}

/// Some of the connections, for the reads of one thread.
struct Share {
    /// One permit per read under way, so at most as many connections.
    permits: Semaphore,
    /// The most recently used last.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: PgConnection,
    since: Instant,
}

impl Reads {
    /// Reads through `db`'s store with up to `connections` connections of
    /// their own on PostgreSQL, split among `threads` HTTP threads;
    /// `thread` tells which of them the calling thread is.
    pub fn new(
        db: &DatabaseConnection,
        connections: u32,
        (threads, thread): (usize, fn() -> Option<usize>),
        counter: StatementCounter,
    ) -> Reads {
        let pg = (db.get_database_backend() == DbBackend::Postgres).then(|| {
            let connections = connections.max(1) as usize;
            let n = threads.clamp(1, connections);
            Arc::new(PgReads {
                options: db.get_postgres_connection_pool().connect_options(),
                shares: (0..n)
                    .map(|i| Share {
                        permits: Semaphore::new(connections / n + usize::from(i < connections % n)),
                        idle: Mutex::default(),
                    })
                    .collect(),
                thread,
                turn: AtomicUsize::new(0),
            })
        });
        Reads {
            db: db.clone(),
            pg,
            counter,
        }
    }

    async fn rows(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let Some(pg) = &self.pg else {
            return self.db.query_all_raw(stmt).await;
        };
        self.counter.count();
        let share = pg.share();
        let _permit = within(share.permits.acquire())
            .await?
            .expect("the semaphore is never closed");
        // Dropped before the rows are in (the request went away), the
        // lease closes its connection.
        let mut lease = within(share.take(&pg.options)).await??;
        let conn = lease.conn.as_mut().expect("just taken");
        let values = stmt.values.unwrap_or(sea_orm::Values(Vec::new()));
        let query = sqlx::query_with(
            sqlx::AssertSqlSafe(stmt.sql),
            sea_query_sqlx::SqlxValues(values),
        );
        match query.fetch_all(conn).await {
            Ok(rows) => {
                lease.give_back();
                Ok(rows.into_iter().map(QueryResult::from).collect())
            }
            // The store refused the statement: the connection is fine.
            Err(e @ sqlx::Error::Database(_)) => {
                lease.give_back();
                Err(query_err(e))
            }
            Err(e) => Err(query_err(e)),
        }
    }
}

/// A connection taken for one read: unless given back, it is closed.
struct Lease<'a> {
    share: &'a Share,
    conn: Option<PgConnection>,
}

impl Lease<'_> {
    fn give_back(mut self) {
        if let Some(conn) = self.conn.take() {
            let now = Instant::now();
            let mut idle = self.share.idle.lock().unwrap_or_else(|e| e.into_inner());
            // The least recently used first: close those idle too long.
            idle.retain(|i| now.duration_since(i.since) < CLOSE_IF_IDLE_FOR);
            idle.push(Idle { conn, since: now });
        }
    }
}

/// `step`, unless it takes longer than [`ACQUIRE_TIMEOUT`].
async fn within<T>(step: impl std::future::Future<Output = T>) -> Result<T, DbErr> {
    tokio::time::timeout(ACQUIRE_TIMEOUT, step)
        .await
        .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e.into()))
}

impl PgReads {
    /// The calling HTTP thread's share; shares in turn for other threads.
    fn share(&self) -> &Share {
        let i = (self.thread)().unwrap_or_else(|| self.turn.fetch_add(1, Ordering::Relaxed));
        &self.shares[i % self.shares.len()]
    }
}

impl Share {
    /// A connection for a read that holds a permit: the most recently used
    /// idle one (checked if it waited a second), else a new one.
    async fn take(&self, options: &PgConnectOptions) -> Result<Lease<'_>, DbErr> {
        loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(Idle { mut conn, since }) = next else {
                break;
            };
            let since = since.elapsed();
            if since < CHECK_IF_IDLE_FOR || (since < CLOSE_IF_IDLE_FOR && conn.ping().await.is_ok())
            {
                return Ok(Lease {
                    share: self,
                    conn: Some(conn),
                });
            }
        }
        let conn = options
            .connect()
            .await
            .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e.into())))?;
        Ok(Lease {
            share: self,
            conn: Some(conn),
        })
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Reads {
    fn get_database_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.db.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.db.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.rows(stmt).await?.into_iter().next())
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.rows(stmt).await
    }
}
