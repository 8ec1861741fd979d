//! The durable reconciler: every runtime action is a job row written in the
//! same transaction as the change that caused it. Workers claim jobs
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises on its one
//! connection), hold a lease they keep renewing, retry failures with
//! exponential backoff and jitter, and give up after a bounded number of
//! attempts. A job whose worker died is claimed again when its lease runs out,
//! so unfinished work resumes after a crash; handlers make each step
//! idempotent so a resumed job finishes exactly once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection,
    EntityTrait, QueryFilter, Set, Statement, sea_query::Expr,
};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::{new_id, now};
use crate::error::{Error, Result};
use entity::jobs;

/// A job to record.
pub struct NewJob {
    pub kind: &'static str,
    pub payload: Value,
    pub organization_id: Option<Uuid>,
    pub deployment_id: Option<Uuid>,
}

/// How many times a job runs before it is given up.
pub const MAX_ATTEMPTS: i32 = 5;

/// Records a job; call it inside the transaction that makes the change.
pub async fn enqueue<C: ConnectionTrait>(conn: &C, job: NewJob) -> Result<Uuid> {
    let now = now();
    let id = new_id();
    jobs::ActiveModel {
        id: Set(id),
        kind: Set(job.kind.to_string()),
        payload: Set(job.payload),
        status: Set("queued".into()),
        attempts: Set(0),
        max_attempts: Set(MAX_ATTEMPTS),
        run_at: Set(now),
        locked_by: Set(None),
        locked_until: Set(None),
        last_error: Set(None),
        organization_id: Set(job.organization_id),
        deployment_id: Set(job.deployment_id),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await?;
    Ok(id)
}

/// Runs jobs of the kinds it knows.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Does the work. Errors other than bad input are retried.
    async fn run(&self, job: &jobs::Model) -> Result<()>;
    /// Called once when a job is given up, with the last error as users may
    /// read it (an internal error's detail stays in the job row and the log).
    async fn gave_up(&self, job: &jobs::Model, error: &str);
}

/// Timing of the queue.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// First retry delay; doubles with each attempt.
    pub backoff: Duration,
    /// Idle poll interval (new jobs also wake the workers at once).
    pub poll: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease: Duration::from_secs(30),
            backoff: Duration::from_secs(2),
            poll: Duration::from_secs(1),
        }
    }
}

/// The job queue of one process.
#[derive(Clone)]
pub struct Queue {
    db: DatabaseConnection,
    worker_id: String,
    config: QueueConfig,
    wake: Arc<Notify>,
}

impl Queue {
    pub fn new(db: DatabaseConnection, config: QueueConfig) -> Self {
        Queue {
            db,
            worker_id: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Wakes a worker after a job was committed.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Claims the next due job, or one whose lease expired.
    pub async fn claim(&self) -> Result<Option<jobs::Model>> {
        let now = now();
        let until = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DatabaseBackend::Postgres => {
                "UPDATE jobs SET status = 'running', locked_by = $1, locked_until = $2, \
                 attempts = attempts + 1, updated_at = $3 \
                 WHERE id = (SELECT id FROM jobs \
                   WHERE (status = 'queued' AND run_at <= $3) OR (status = 'running' AND locked_until < $3) \
                   ORDER BY run_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING *"
            }
            _ => {
                "UPDATE jobs SET status = 'running', locked_by = $1, locked_until = $2, \
                 attempts = attempts + 1, updated_at = $3 \
                 WHERE id = (SELECT id FROM jobs \
                   WHERE (status = 'queued' AND run_at <= $3) OR (status = 'running' AND locked_until < $3) \
                   ORDER BY run_at LIMIT 1) \
                 RETURNING *"
            }
        };
        let stmt = Statement::from_sql_and_values(
            backend,
            sql,
            [self.worker_id.clone().into(), until.into(), now.into()],
        );
        Ok(jobs::Entity::find()
            .from_raw_sql(stmt)
            .one(&self.db)
            .await?)
    }

    /// Extends the lease of a running job; `false` if another worker took it.
    async fn renew(&self, id: Uuid) -> Result<bool> {
        let until = now() + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let res = jobs::Entity::update_many()
            .col_expr(jobs::Column::LockedUntil, Expr::value(until))
            .filter(jobs::Column::Id.eq(id))
            .filter(jobs::Column::LockedBy.eq(self.worker_id.clone()))
            .filter(jobs::Column::Status.eq("running"))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Ends a job; `locked_by` stays as the worker that ran it to the end.
    async fn finish(&self, job: &jobs::Model, status: &str, error: Option<String>) -> Result<()> {
        jobs::Entity::update_many()
            .col_expr(jobs::Column::Status, Expr::value(status))
            .col_expr(jobs::Column::LastError, Expr::value(error))
            .col_expr(
                jobs::Column::LockedUntil,
                Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
            )
            .col_expr(jobs::Column::UpdatedAt, Expr::value(now()))
            .filter(jobs::Column::Id.eq(job.id))
            .filter(jobs::Column::LockedBy.eq(self.worker_id.clone()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    fn retry_delay(&self, attempts: i32) -> Duration {
        let exp = self.config.backoff * 2u32.saturating_pow((attempts - 1).max(0) as u32);
        let capped = exp.min(Duration::from_secs(300));
        let jitter = rand::rng().random_range(0.75..1.25);
        capped.mul_f64(jitter)
    }

    async fn reschedule(&self, job: &jobs::Model, error: &str) -> Result<()> {
        let delay = self.retry_delay(job.attempts);
        let run_at = now() + chrono::Duration::from_std(delay).unwrap_or_default();
        jobs::Entity::update_many()
            .col_expr(jobs::Column::Status, Expr::value("queued"))
            .col_expr(jobs::Column::RunAt, Expr::value(run_at))
            .col_expr(jobs::Column::LastError, Expr::value(error))
            .col_expr(jobs::Column::LockedBy, Expr::value(Option::<String>::None))
            .col_expr(jobs::Column::UpdatedAt, Expr::value(now()))
            .filter(jobs::Column::Id.eq(job.id))
            .filter(jobs::Column::LockedBy.eq(self.worker_id.clone()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Runs one claimed job to its end, renewing the lease meanwhile.
    async fn execute(&self, handler: &dyn Handler, job: jobs::Model) -> Result<()> {
        let renewer = {
            let queue = self.clone();
            let id = job.id;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(queue.config.lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if !matches!(queue.renew(id).await, Ok(true)) {
                        break;
                    }
                }
            })
        };
        let outcome = handler.run(&job).await;
        renewer.abort();
        match outcome {
            Ok(()) => self.finish(&job, "done", None).await,
            Err(err) => {
                // The job row keeps the detail for operators; what the
                // handler records for users (a deployment's `error`) never
                // carries an internal one (paths, SQL).
                let message = err.message().to_string();
                let public = match &err {
                    Error::Internal(_) => {
                        "an internal error stopped it (the server log has the detail)".to_string()
                    }
                    other => other.message().to_string(),
                };
                let permanent = matches!(
                    err,
                    Error::BadRequest { .. } | Error::Unprocessable(_) | Error::NotFound(_)
                );
                if permanent || job.attempts >= job.max_attempts {
                    tracing::warn!(job.id = %job.id, kind = job.kind, error = %message, "job given up");
                    handler.gave_up(&job, &public).await;
                    self.finish(&job, "failed", Some(message)).await
                } else {
                    tracing::info!(job.id = %job.id, kind = job.kind, attempt = job.attempts, error = %message, "job will be retried");
                    self.reschedule(&job, &message).await
                }
            }
        }
    }

    /// Starts the worker loop.
    pub fn spawn_worker(&self, handler: Arc<dyn Handler>) -> tokio::task::JoinHandle<()> {
        let queue = self.clone();
        tokio::spawn(async move {
            loop {
                match queue.claim().await {
                    Ok(Some(job)) => {
                        let id = job.id;
                        if let Err(e) = queue.execute(handler.as_ref(), job).await {
                            tracing::error!(job.id = %id, error = e.message(), "job bookkeeping failed");
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = e.message(), "claiming jobs failed"),
                }
                tokio::select! {
                    _ = queue.wake.notified() => {}
                    _ = tokio::time::sleep(queue.config.poll) => {}
                }
            }
        })
    }
}
