//! Metrics of resources: the scalars are read from the live instance at
//! request time (bounded by a short timeout); the rates (transactions or
//! commands per second) come from one sampler that reads every ready
//! instance every [`EVERY`] and keeps the last day in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::{READY, find, hosts_instance};
use crate::domain::Ctx;
use crate::domain::deployments::Deployer;
use crate::error::Result;
use crate::runtime::instances::Scalars;
use entity::resources;

/// How often the sampler reads each instance.
pub const EVERY: Duration = Duration::from_secs(15);
/// Samples kept per resource: one day.
const KEPT: usize = 24 * 60 * 60 / 15;

/// The counters sampled, per resource: (unix seconds, counter).
#[derive(Default)]
pub struct Samples {
    series: Mutex<HashMap<Uuid, VecDeque<(i64, i64)>>>,
}

impl Samples {
    fn push(&self, id: Uuid, t: i64, counter: i64) {
        let mut all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.entry(id).or_default();
        if s.len() == KEPT {
            s.pop_front();
        }
        s.push_back((t, counter));
    }

    /// Forgets every resource but `live`.
    fn retain(&self, live: &std::collections::HashSet<Uuid>) {
        let mut all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|id, _| live.contains(id));
    }

    /// Rates between consecutive samples, per second (a counter that went
    /// back, after a restart of the instance, starts afresh).
    pub fn rates(&self, id: Uuid) -> Vec<(i64, f64)> {
        let all = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = all.get(&id) else {
            return Vec::new();
        };
        s.iter()
            .zip(s.iter().skip(1))
            .filter(|((t0, c0), (t1, c1))| t1 > t0 && c1 >= c0)
            .map(|((t0, c0), (t1, c1))| (*t1, (c1 - c0) as f64 / (t1 - t0) as f64))
            .collect()
    }
}

/// What `GET /resources/:id/metrics` answers.
#[derive(Debug, Clone)]
pub struct MetricsView {
    pub kind: String,
    /// Why there are no figures (`available: false`).
    pub unavailable: Option<String>,
    pub scalars: Scalars,
    /// Transactions (database) or commands (kv) per second.
    pub series: Vec<(i64, f64)>,
}

/// The counter the sampler turns into a rate.
fn counter(s: &Scalars) -> Option<i64> {
    s.transactions.or(s.commands)
}

impl Deployer {
    /// Live metrics of one resource.
    pub async fn resource_metrics(&self, ctx: &Ctx, id: &str) -> Result<MetricsView> {
        let row = find(&self.db, ctx, id).await?;
        let unavailable = |why: String| MetricsView {
            kind: row.kind.clone(),
            unavailable: Some(why),
            scalars: Scalars::default(),
            series: Vec::new(),
        };
        if row.status != READY {
            return Ok(unavailable(format!("the resource is {}", row.status)));
        }
        match self.resource_scalars(&row).await {
            Ok(scalars) => Ok(MetricsView {
                kind: row.kind.clone(),
                unavailable: None,
                scalars,
                series: self.samples.rates(row.id),
            }),
            Err(e) => Ok(unavailable(e.message().to_string())),
        }
    }

    /// Reads every ready database and KV store once, each bounded by the
    /// live timeout and all at once, so one slow instance delays no other.
    pub async fn sample_resources(&self) -> Result<()> {
        if self.runtime.instances().is_none() {
            return Ok(());
        }
        let rows = resources::Entity::find()
            .filter(resources::Column::Status.eq(READY))
            .all(&self.db)
            .await?;
        let live: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
        self.samples.retain(&live);
        let reads = rows
            .into_iter()
            .filter(hosts_instance)
            .map(|row| async move {
                let read = self.resource_scalars(&row).await;
                (row.id, read)
            });
        for (id, read) in futures_util::future::join_all(reads).await {
            if let Some(c) = read.ok().as_ref().and_then(counter) {
                self.samples.push(id, chrono::Utc::now().timestamp(), c);
            }
        }
        Ok(())
    }

    /// The sampler and the backup schedule, for the life of the server.
    pub fn spawn_resource_upkeep(&self, backups_every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.sample_resources().await {
                    tracing::debug!(error = e.message(), "sampling resources failed");
                }
                if let Err(e) = me.take_due_backups(backups_every).await {
                    tracing::warn!(error = e.message(), "scheduled backups failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_skip_counter_resets_and_stay_bounded() {
        let s = Samples::default();
        let id = Uuid::nil();
        s.push(id, 0, 100);
        s.push(id, 15, 250);
        s.push(id, 30, 10);
        s.push(id, 45, 40);
        assert_eq!(s.rates(id), vec![(15, 10.0), (45, 2.0)]);
        for i in 0..(KEPT as i64 + 10) {
            s.push(id, 100 + i, i);
        }
        assert_eq!(s.rates(id).len(), KEPT - 1);
    }
}
