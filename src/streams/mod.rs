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
    /// The cursor of the newest line.
    last: u64,
}

impl Channel {
    fn new() -> Channel {
        Channel {
            history: VecDeque::new(),
            live: broadcast::channel(1024).0,
            last: 0,
        }
    }
}

/// Captured output of every environment: bounded, newest kept.
#[derive(Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<HashMap<Uuid, Channel>>>,
}

impl LogStore {
    /// Appends a line to an environment's history and sends it to followers.
    /// The line gets the environment's next cursor.
    pub fn push(&self, environment_id: Uuid, mut line: LogLine) {
        let mut map = self.inner.lock().expect("log store");
        let ch = map.entry(environment_id).or_insert_with(Channel::new);
        if ch.history.len() == HISTORY {
            ch.history.pop_front();
        }
        ch.last += 1;
        line.cursor = ch.last;
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
            .or_insert_with(Channel::new)
            .live
            .subscribe()
    }

    /// Every kept line after `cursor`, optionally of one deployment.
    pub fn after(
        &self,
        environment_id: Uuid,
        cursor: u64,
        deployment: Option<Uuid>,
    ) -> Vec<LogLine> {
        let map = self.inner.lock().expect("log store");
        let Some(ch) = map.get(&environment_id) else {
            return Vec::new();
        };
        ch.history
            .iter()
            .filter(|l| l.cursor > cursor)
            .filter(|l| deployment.is_none() || l.deployment_id == deployment)
            .cloned()
            .collect()
    }
}
