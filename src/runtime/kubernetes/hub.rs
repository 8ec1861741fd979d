//! One reader per pod log, however many follow an environment.
//!
//! The first follower of an environment starts its hub: it lists the
//! environment's service pods, follows each one's log, and watches the
//! pods, so that a replica created later (a scale-up, a new release, a
//! restarted container) is followed too. Lines go to every follower
//! through one bounded channel; a follower that falls behind skips ahead
//! (see `LogLine::lagged`). The hub stops with its last follower.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams, WatchEvent, WatchParams};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::logs::{parse_pod_line, pod_deployment, pod_service};
use super::names;
use crate::runtime::LogLine;

/// Lines a follower may fall behind before it skips to the live edge.
const BUFFER: usize = 1024;

/// Pause before listing the pods again after a watch ended or failed.
const RELIST_PAUSE: Duration = Duration::from_secs(2);

/// The running hubs, by environment.
#[derive(Clone, Default)]
pub struct Hubs {
    running: Arc<Mutex<HashMap<Uuid, broadcast::Sender<LogLine>>>>,
}

impl Hubs {
    /// New lines of the environment whose pods `pods` reaches, starting its
    /// hub if none runs.
    pub fn subscribe(&self, environment_id: Uuid, pods: Api<Pod>) -> broadcast::Receiver<LogLine> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = running.get(&environment_id) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(BUFFER);
        running.insert(environment_id, tx.clone());
        let hub = Hub {
            pods,
            tx,
            followed: HashSet::new(),
        };
        tokio::spawn(hub.run(self.clone(), environment_id));
        rx
    }

    /// Whether the hub of `environment_id` should stop: nobody follows.
    /// Decided under the lock `subscribe` takes, so that a follower that
    /// comes meanwhile finds either a running hub or none.
    fn retire(&self, environment_id: Uuid, tx: &broadcast::Sender<LogLine>) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if tx.receiver_count() > 0 {
            return false;
        }
        if running
            .get(&environment_id)
            .is_some_and(|t| t.same_channel(tx))
        {
            running.remove(&environment_id);
        }
        true
    }
}

struct Hub {
    pods: Api<Pod>,
    tx: broadcast::Sender<LogLine>,
    /// Container runs already followed (`pod/restarts`).
    followed: HashSet<String>,
}

impl Hub {
    async fn run(mut self, hubs: Hubs, environment_id: Uuid) {
        let mut first = true;
        loop {
            let tx = self.tx.clone();
            tokio::select! {
                () = tx.closed() => {}
                () = self.list_and_watch(first) => {
                    first = false;
                    // The watch ended (its timeout, a lost connection, a
                    // too old version): list again after a pause.
                    tokio::select! {
                        () = tx.closed() => {}
                        () = tokio::time::sleep(RELIST_PAUSE) => continue,
                    }
                }
            }
            if hubs.retire(environment_id, &self.tx) {
                return;
            }
        }
    }

    async fn list_and_watch(&mut self, first: bool) {
        let selector = names::SERVICE_ID;
        let list = match self
            .pods
            .list(&ListParams::default().labels(selector))
            .await
        {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %e, "listing pods to follow");
                return;
            }
        };
        for pod in &list.items {
            // Pods running when the first follower came: their earlier
            // lines are the past a follower reads itself.
            self.follow(pod, first.then_some(0)).await;
        }
        let version = list.metadata.resource_version.unwrap_or_default();
        let events = match self
            .pods
            .watch(&WatchParams::default().labels(selector), &version)
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(error = %e, "watching pods to follow");
                return;
            }
        };
        let mut events = std::pin::pin!(events);
        while let Ok(Some(event)) = events.try_next().await {
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    self.follow(&pod, None).await;
                }
                WatchEvent::Deleted(pod) => {
                    let name = pod.name_any();
                    self.followed
                        .retain(|k| k.split_once('/').is_none_or(|(p, _)| p != name));
                }
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(_) => return,
            }
        }
    }

    /// Follows the pod's current container run, once: all its lines, or
    /// only those after the last `tail`.
    async fn follow(&mut self, pod: &Pod, tail: Option<i64>) {
        let name = pod.name_any();
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
        let key = format!("{name}/{restarts}");
        if self.followed.contains(&key) {
            return;
        }
        // Known states only: a container still waiting has no log yet.
        let started = statuses.iter().any(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        });
        if !statuses.is_empty() && !started {
            return;
        }
        let params = LogParams {
            follow: true,
            tail_lines: tail,
            timestamps: true,
            ..LogParams::default()
        };
        let reader = match self.pods.log_stream(&name, &params).await {
            Ok(r) => r,
            // Not started after all, or gone.
            Err(_) => return,
        };
        self.followed.insert(key);
        let (deployment, service) = (pod_deployment(pod), pod_service(pod));
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut lines = reader.lines();
            loop {
                let line = tokio::select! {
                    () = tx.closed() => return,
                    line = lines.next() => line,
                };
                let Some(Ok(raw)) = line else { return };
                let mut line = parse_pod_line(&raw, &name, service.as_deref(), deployment);
                line.rendered = crate::runtime::Renders::shared();
                let _ = tx.send(line);
            }
        });
    }
}
