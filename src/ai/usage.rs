//! Metering and monthly budgets.
//!
//! A request adds its usage to an in-memory sum per (organisation, day,
//! model, token) under a short lock and goes on, waking nothing; one
//! background task takes the sums on each flush tick and upserts them in
//! one statement. Budgets are checked
//! against in-memory counters: month-to-date spend as last read from the
//! store plus what this process metered since. The same task re-reads
//! budgets and spend periodically (other replicas' usage, budget changes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{Datelike, NaiveDate, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func, OnConflict};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::wire::{ApiError, Usage};
use crate::auth::Role;
use crate::domain::{Ctx, audit};
use crate::error::Error;
use entity::{ai_usage, organizations};

/// Usage of one finished request.
#[derive(Debug)]
pub struct Record {
    pub org: Uuid,
    pub key: Uuid,
    /// The canonical model id.
    pub model: Arc<str>,
    pub usage: Usage,
    /// Micro-dollars.
    pub cost: i64,
}

/// Spend of one organisation this month, in micro-dollars.
#[derive(Debug)]
struct OrgSpend {
    /// -1: no budget.
    budget: AtomicI64,
    /// Month-to-date spend as the store had it at the last read or flush.
    stored: AtomicI64,
    /// Metered here, not yet in the store.
    pending: AtomicI64,
}

impl OrgSpend {
    fn spent(&self) -> i64 {
        self.stored.load(Ordering::Relaxed) + self.pending.load(Ordering::Relaxed)
    }
}

type Orgs = RwLock<HashMap<Uuid, Arc<OrgSpend>>>;

/// Records usage off the request path and enforces monthly budgets.
pub struct Meter {
    /// Usage metered since the writer last took it: summed in place, so a
    /// request neither waits nor wakes anything, and nothing is dropped.
    pending: Arc<Mutex<Batch>>,
    /// Asks the writer to write everything now (at shutdown).
    flush_now: mpsc::Sender<oneshot::Sender<()>>,
    orgs: Arc<Orgs>,
    db: DatabaseConnection,
}

/// Micro-dollars per cent.
const MICRO_PER_CENT: i64 = 10_000;

impl Meter {
    /// Starts the writer task.
    pub fn start(db: DatabaseConnection, flush_every: Duration, refresh_every: Duration) -> Meter {
        let (flush_now, rx) = mpsc::channel(8);
        let orgs: Arc<Orgs> = Arc::default();
        let pending: Arc<Mutex<Batch>> = Arc::default();
        tokio::spawn(writer(
            db.clone(),
            pending.clone(),
            rx,
            orgs.clone(),
            flush_every.max(Duration::from_millis(10)),
            refresh_every.max(Duration::from_millis(100)),
        ));
        Meter {
            pending,
            flush_now,
            orgs,
            db,
        }
    }

    /// The organisation's spend; `None` when it is not cached and the
    /// store cannot be read.
    async fn org(&self, org: Uuid) -> Option<Arc<OrgSpend>> {
        if let Some(o) = self.orgs.read().expect("lock").get(&org) {
            return Some(o.clone());
        }
        // First request of this organisation since start: one read, then
        // the writer task keeps it current.
        let (budget, stored) = match load(&self.db, &[org]).await {
            Ok(mut loaded) => loaded.remove(&org).unwrap_or((-1, 0)),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the AI budget; refusing the request");
                return None;
            }
        };
        let spend = Arc::new(OrgSpend {
            budget: AtomicI64::new(budget),
            stored: AtomicI64::new(stored),
            pending: AtomicI64::new(0),
        });
        Some(
            self.orgs
                .write()
                .expect("lock")
                .entry(org)
                .or_insert(spend)
                .clone(),
        )
    }

    /// Refuses with a 429 (that SDKs must not retry) once the organisation
    /// has spent its monthly budget, and with a 503 (that they may retry)
    /// when its spend is not known: nothing is spent unmetered.
    pub async fn check_budget(&self, org: Uuid) -> Result<(), ApiError> {
        let Some(spend) = self.org(org).await else {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "The organisation's AI budget cannot be checked right now. Please retry shortly.",
            );
            e.should_retry = Some(true);
            e.retry_after = Some(1);
            return Err(e);
        };
        let budget = spend.budget.load(Ordering::Relaxed);
        let spent = spend.spent();
        if budget >= 0 && spent >= budget {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                format!(
                    "Your organisation has used its monthly AI budget (${:.2} of ${:.2}). Raise the budget or wait for next month.",
                    spent as f64 / 1e6,
                    budget as f64 / 1e6
                ),
            )
            .code("insufficient_quota");
            e.should_retry = Some(false);
            return Err(e);
        }
        Ok(())
    }

    /// Sets a budget in this process at once (the store is written by the caller).
    pub fn set_budget(&self, org: Uuid, cents: Option<i64>) {
        if let Some(o) = self.orgs.read().expect("lock").get(&org) {
            o.budget.store(
                cents.map_or(-1, |c| c.saturating_mul(MICRO_PER_CENT)),
                Ordering::Relaxed,
            );
        }
    }

    /// Adds usage to what the writer stores next, and counts it against
    /// the budget now.
    pub fn record(&self, record: Record) {
        let org = self.orgs.read().expect("lock").get(&record.org).cloned();
        if let Some(o) = &org {
            o.pending.fetch_add(record.cost, Ordering::Relaxed);
        }
        let key = (
            record.org,
            Utc::now().date_naive(),
            record.model,
            record.key,
        );
        let mut pending = self.pending.lock().expect("lock");
        pending.entry(key).or_default().add(&Counts {
            requests: 1,
            prompt: record.usage.prompt_tokens as i64,
            completion: record.usage.completion_tokens as i64,
            cost: record.cost,
        });
    }

    /// Writes everything metered so far (at shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flush_now.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Budgets and month-to-date spend (micro-dollars) of some organisations.
async fn load(db: &DatabaseConnection, orgs: &[Uuid]) -> Result<HashMap<Uuid, (i64, i64)>, DbErr> {
    let budgets: Vec<(Uuid, Option<i64>)> = organizations::Entity::find()
        .select_only()
        .column(organizations::Column::Id)
        .column(organizations::Column::AiMonthlyBudgetCents)
        .filter(organizations::Column::Id.is_in(orgs.iter().copied()))
        .into_tuple()
        .all(db)
        .await?;
    let spent: HashMap<Uuid, i64> = ai_usage::Entity::find()
        .select_only()
        .column(ai_usage::Column::OrganizationId)
        .expr(Func::cast_as(
            Func::sum(Expr::col(ai_usage::Column::CostMicroUsd)),
            "BIGINT",
        ))
        .filter(ai_usage::Column::OrganizationId.is_in(orgs.iter().copied()))
        .filter(ai_usage::Column::Day.gte(first_of_month(Utc::now().date_naive())))
        .group_by(ai_usage::Column::OrganizationId)
        .into_tuple::<(Uuid, Option<i64>)>()
        .all(db)
        .await?
        .into_iter()
        .map(|(o, s)| (o, s.unwrap_or(0)))
        .collect();
    Ok(budgets
        .into_iter()
        .map(|(id, cents)| {
            let budget = cents.map_or(-1, |c| c.saturating_mul(MICRO_PER_CENT));
            (id, (budget, spent.get(&id).copied().unwrap_or(0)))
        })
        .collect())
}

/// The first day of the month `day` is in.
pub fn first_of_month(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a first day")
}

#[derive(Default, Clone, Copy)]
struct Counts {
    requests: i64,
    prompt: i64,
    completion: i64,
    cost: i64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.prompt += other.prompt;
        self.completion += other.completion;
        self.cost += other.cost;
    }
}

type Batch = HashMap<(Uuid, NaiveDate, Arc<str>, Uuid), Counts>;

async fn writer(
    db: DatabaseConnection,
    pending: Arc<Mutex<Batch>>,
    mut flush_now: mpsc::Receiver<oneshot::Sender<()>>,
    orgs: Arc<Orgs>,
    flush_every: Duration,
    refresh_every: Duration,
) {
    // What was taken from `pending` but not yet written (a failed write
    // is retried on the next tick).
    let mut batch = Batch::new();
    let take = |batch: &mut Batch| {
        let taken = std::mem::take(&mut *pending.lock().expect("lock"));
        for (key, counts) in taken {
            batch.entry(key).or_default().add(&counts);
        }
    };
    let mut flush_tick = tokio::time::interval(flush_every);
    let mut refresh_tick = tokio::time::interval(refresh_every);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            asked = flush_now.recv() => {
                take(&mut batch);
                flush(&db, &mut batch, &orgs).await;
                match asked {
                    Some(done) => { let _ = done.send(()); }
                    None => return,
                }
            }
            _ = flush_tick.tick() => {
                take(&mut batch);
                flush(&db, &mut batch, &orgs).await;
            }
            _ = refresh_tick.tick() => refresh(&db, &orgs).await,
        }
    }
}

/// Upserts the batch; on failure keeps it for the next try.
async fn flush(db: &DatabaseConnection, batch: &mut Batch, orgs: &Orgs) {
    if batch.is_empty() {
        return;
    }
    let now = crate::domain::now();
    let rows = batch
        .iter()
        .map(|((org, day, model, key), c)| ai_usage::ActiveModel {
            id: Set(Uuid::now_v7()),
            organization_id: Set(*org),
            api_key_id: Set(*key),
            model: Set(model.to_string()),
            day: Set(*day),
            requests: Set(c.requests),
            prompt_tokens: Set(c.prompt),
            completion_tokens: Set(c.completion),
            cost_micro_usd: Set(c.cost),
            updated_at: Set(now),
        });
    let add = |col: ai_usage::Column| {
        Expr::col((ai_usage::Entity, col)).add(Expr::cust(format!(
            "excluded.{}",
            sea_orm::IdenStatic::as_str(&col)
        )))
    };
    let on_conflict = OnConflict::columns([
        ai_usage::Column::OrganizationId,
        ai_usage::Column::Day,
        ai_usage::Column::Model,
        ai_usage::Column::ApiKeyId,
    ])
    .value(ai_usage::Column::Requests, add(ai_usage::Column::Requests))
    .value(
        ai_usage::Column::PromptTokens,
        add(ai_usage::Column::PromptTokens),
    )
    .value(
        ai_usage::Column::CompletionTokens,
        add(ai_usage::Column::CompletionTokens),
    )
    .value(
        ai_usage::Column::CostMicroUsd,
        add(ai_usage::Column::CostMicroUsd),
    )
    .update_column(ai_usage::Column::UpdatedAt)
    .to_owned();
    match ai_usage::Entity::insert_many(rows)
        .on_conflict(on_conflict)
        .exec_without_returning(db)
        .await
    {
        Ok(_) => {
            let orgs = orgs.read().expect("lock");
            for ((org, ..), c) in batch.drain() {
                if let Some(o) = orgs.get(&org) {
                    o.stored.fetch_add(c.cost, Ordering::Relaxed);
                    o.pending.fetch_sub(c.cost, Ordering::Relaxed);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = batch.len(), "writing AI usage failed; will retry")
        }
    }
}

/// Re-reads budgets and month-to-date spend of every organisation seen.
async fn refresh(db: &DatabaseConnection, orgs: &Orgs) {
    let ids: Vec<Uuid> = orgs.read().expect("lock").keys().copied().collect();
    for chunk in ids.chunks(500) {
        match load(db, chunk).await {
            Ok(loaded) => {
                let orgs = orgs.read().expect("lock");
                for id in chunk {
                    let (budget, stored) = loaded.get(id).copied().unwrap_or((-1, 0));
                    if let Some(o) = orgs.get(id) {
                        o.budget.store(budget, Ordering::Relaxed);
                        o.stored.store(stored, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading AI budgets failed"),
        }
    }
}

/// Stored usage rows of one organisation for days in `from..=to`, newest first.
pub async fn rows(
    db: &DatabaseConnection,
    org: Uuid,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<ai_usage::Model>, DbErr> {
    ai_usage::Entity::find()
        .filter(ai_usage::Column::OrganizationId.eq(org))
        .filter(ai_usage::Column::Day.gte(from))
        .filter(ai_usage::Column::Day.lte(to))
        .order_by_desc(ai_usage::Column::Day)
        .order_by_asc(ai_usage::Column::Model)
        .order_by_asc(ai_usage::Column::ApiKeyId)
        .all(db)
        .await
}

/// Usage of one organisation over a range of days, with its budget.
pub struct Report {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub rows: Vec<ai_usage::Model>,
    pub monthly_budget_cents: Option<i64>,
    /// Month-to-date spend in the store, in micro-dollars.
    pub month_spent: i64,
}

/// Longest range one report covers.
const MAX_REPORT_DAYS: i64 = 366;

/// The caller's organisation's usage for `from..=to` (default: this month).
pub async fn report(
    db: &DatabaseConnection,
    ctx: &Ctx,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> crate::Result<Report> {
    let today = Utc::now().date_naive();
    let to = to.unwrap_or(today);
    let from = from.unwrap_or_else(|| first_of_month(to));
    if from > to {
        return Err(Error::field("from", "must not be after 'to'"));
    }
    if (to - from).num_days() >= MAX_REPORT_DAYS {
        return Err(Error::field(
            "from",
            format!("a report covers at most {MAX_REPORT_DAYS} days"),
        ));
    }
    let org = ctx.org_id();
    let rows = rows(db, org, from, to).await?;
    let (_, month_spent) = load(db, &[org]).await?.remove(&org).unwrap_or((-1, 0));
    let monthly_budget_cents = crate::domain::organizations::get(db, org)
        .await?
        .ai_monthly_budget_cents;
    Ok(Report {
        from,
        to,
        rows,
        monthly_budget_cents,
        month_spent,
    })
}

/// Sets (or with `None` removes) the organisation's monthly budget; admins only.
pub async fn set_budget(
    db: &DatabaseConnection,
    meter: &Meter,
    ctx: &Ctx,
    cents: Option<i64>,
) -> crate::Result<()> {
    ctx.require(Role::Admin)?;
    if cents.is_some_and(|c| c < 0) {
        return Err(Error::field("monthlyBudgetCents", "cannot be negative"));
    }
    let org = ctx.org_id();
    let txn = db.begin().await?;
    organizations::Entity::update_many()
        .col_expr(
            organizations::Column::AiMonthlyBudgetCents,
            Expr::value(cents),
        )
        .col_expr(
            organizations::Column::UpdatedAt,
            Expr::value(crate::domain::now()),
        )
        .filter(organizations::Column::Id.eq(org))
        .exec(&txn)
        .await?;
    audit::record(
        &txn,
        ctx,
        "ai.budget.set",
        audit::Target::new("organization", org),
        Some(serde_json::json!({ "monthlyBudgetCents": cents })),
    )
    .await?;
    txn.commit().await?;
    meter.set_budget(org, cents);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When an organisation's spend cannot be read (here: a store without
    /// its tables) and none is cached, requests are refused, not let
    /// through unmetered.
    #[tokio::test]
    async fn the_budget_fails_closed() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let meter = Meter::start(db, Duration::from_secs(60), Duration::from_secs(60));
        let err = meter.check_budget(Uuid::now_v7()).await.unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.kind, "server_error");
        assert_eq!(err.should_retry, Some(true));
    }
}
