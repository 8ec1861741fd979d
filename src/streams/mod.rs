//! Log and event hub: bounded history per environment, fan-out to followers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use uuid::Uuid;

use crate::runtime::LogLine;

/// Lines kept per environment.
const HISTORY: usize = 10_000;

struct Channel {
    history: VecDeque<LogLine>,
    live: broadcast::Sender<LogLine>,
}

/// Captured output of every environment: bounded, newest kept.
#[derive(Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<HashMap<Uuid, Channel>>>,
}

impl LogStore {
    /// Appends a line to an environment's history and sends it to followers.
    pub fn push(&self, environment_id: Uuid, line: LogLine) {
        let mut map = self.inner.lock().expect("log store");
        let ch = map.entry(environment_id).or_insert_with(|| Channel {
            history: VecDeque::new(),
            live: broadcast::channel(1024).0,
        });
        if ch.history.len() == HISTORY {
            ch.history.pop_front();
        }
        ch.history.push_back(line.clone());
        let _ = ch.live.send(line);
    }

    /// The last `tail` lines, optionally of one deployment.
    pub fn tail(
        &self,
        environment_id: Uuid,
        tail: usize,
        deployment: Option<Uuid>,
    ) -> Vec<LogLine> {
        let map = self.inner.lock().expect("log store");
        let Some(ch) = map.get(&environment_id) else {
            return Vec::new();
        };
        let mut out: Vec<LogLine> = ch
            .history
            .iter()
            .rev()
            .filter(|l| deployment.is_none() || l.deployment_id == deployment)
            .take(tail)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Forgets an environment's history (it was deleted).
    pub fn remove(&self, environment_id: Uuid) {
        self.inner
            .lock()
            .expect("log store")
            .remove(&environment_id);
    }

    /// New lines of an environment as they arrive.
    pub fn subscribe(&self, environment_id: Uuid) -> broadcast::Receiver<LogLine> {
        let mut map = self.inner.lock().expect("log store");
        map.entry(environment_id)
            .or_insert_with(|| Channel {
                history: VecDeque::new(),
                live: broadcast::channel(1024).0,
            })
            .live
            .subscribe()
    }
}
