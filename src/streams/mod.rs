//! Log hub: bounded history per environment, kept on disk, and fan-out to
//! followers.
//!
//! Every line gets its environment's next cursor. The newest lines of each
//! environment (at most `lines`, at most `bytes`, and at most `org_bytes`
//! for all environments of one organisation) are held in memory and
//! appended to `<data dir>/logs/<environment>.jsonl`, so `tail`, `after`
//! and the lines of processes that have exited survive a restart, cursors
//! going on from where they stopped. A file is rewritten with just the
//! kept lines once it holds twice the budget, and when the server starts.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::runtime::LogLine;

/// How much log history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Lines per environment.
    pub lines: usize,
    /// Bytes (as stored) per environment.
    pub bytes: u64,
    /// Bytes of all environments of one organisation.
    pub org_bytes: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            lines: 10_000,
            bytes: 4 << 20,
            org_bytes: 64 << 20,
        }
    }
}

/// Lines a follower may fall behind before it skips to the live edge.
const LIVE_BUFFER: usize = 1024;

/// What a line counts against the budgets: its stored size, or a little
/// more, known without serializing it (pushing a line stays cheap; files
/// are written in batches).
fn weight(l: &LogLine) -> u64 {
    // Field names, punctuation, time stamp, ids and numbers.
    const FIXED: usize = 240;
    let text = json_len(&l.msg)
        + json_len(&l.source)
        + json_len(&l.level)
        + json_len(&l.stream)
        + l.service.as_deref().map_or(0, json_len)
        + l.replica.as_deref().map_or(0, json_len)
        + l.step.as_deref().map_or(0, json_len);
    (text + FIXED) as u64
}

/// The length of `s` as a JSON string's contents.
fn json_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum()
}

/// Whether a file holds more than twice what it should: time to rewrite
/// it with just the kept lines. (After a rewrite it holds less than that,
/// since a line's weight is at least its stored size.)
fn oversized(ch: &Channel) -> bool {
    ch.file_bytes > 2 * ch.bytes + 256
}

/// The first line of a history file.
#[derive(Serialize, Deserialize)]
struct Header {
    /// The cursor of the newest line ever written.
    last: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org: Option<Uuid>,
}

struct Channel {
    /// Kept lines with their stored size.
    history: VecDeque<(LogLine, u64)>,
    bytes: u64,
    live: broadcast::Sender<LogLine>,
    /// The cursor of the newest line.
    last: u64,
    org: Option<Uuid>,
    file: Option<BufWriter<File>>,
    /// Bytes in the file (header included).
    file_bytes: u64,
    /// Lines not written to the file yet.
    pending: Vec<LogLine>,
    /// The file must be written anew with every kept line (it is missing,
    /// holds too much, lost lines, or its header changed).
    rewrite_due: bool,
    /// A writer has a batch out (see `Batch`).
    writing: bool,
}

impl Channel {
    fn new() -> Channel {
        Channel {
            history: VecDeque::new(),
            bytes: 0,
            live: broadcast::channel(LIVE_BUFFER).0,
            last: 0,
            org: None,
            file: None,
            file_bytes: 0,
            pending: Vec::new(),
            rewrite_due: true,
            writing: false,
        }
    }

    /// Drops the oldest lines until the history fits an environment's
    /// budget (the newest line stays, however large); the bytes freed.
    fn keep_within(&mut self, limits: &HistoryLimits) -> u64 {
        let mut freed = 0;
        while self.history.len() > limits.lines
            || (self.bytes > limits.bytes && self.history.len() > 1)
        {
            freed += self.pop_front();
        }
        freed
    }

    fn pop_front(&mut self) -> u64 {
        let n = self.history.pop_front().map_or(0, |(_, n)| n);
        self.bytes -= n;
        n
    }
}

impl Batch {
    /// Appends the lines, or writes the file anew (a temporary file renamed
    /// over it); the open file and the bytes it holds.
    fn write(self) -> std::io::Result<(BufWriter<File>, u64)> {
        let Batch {
            path,
            lines,
            file,
            header,
        } = self;
        let mut buf = Vec::new();
        let (mut out, mut bytes, tmp) = match file {
            Some(f) => {
                let bytes = f.get_ref().metadata()?.len();
                (f, bytes, None)
            }
            None => {
                let tmp = path.with_extension("jsonl.tmp");
                let mut out = BufWriter::new(File::create(&tmp)?);
                serde_json::to_writer(&mut buf, &header)?;
                buf.push(b'\n');
                out.write_all(&buf)?;
                (out, buf.len() as u64, Some(tmp))
            }
        };
        for line in &lines {
            buf.clear();
            serde_json::to_writer(&mut buf, line)?;
            buf.push(b'\n');
            out.write_all(&buf)?;
            bytes += buf.len() as u64;
        }
        out.flush()?;
        if let Some(tmp) = tmp {
            out.get_ref().sync_all()?;
            fs::rename(&tmp, &path)?;
        }
        Ok((out, bytes))
    }
}

/// Lines on their way to a file, written outside the store's lock.
struct Batch {
    path: PathBuf,
    lines: Vec<LogLine>,
    /// Append to this file, or (`None`) write the file anew.
    file: Option<BufWriter<File>>,
    header: Header,
}

struct Inner {
    channels: HashMap<Uuid, Channel>,
    /// Kept bytes per organisation.
    orgs: HashMap<Uuid, u64>,
    /// Where history files go; memory only when `None`.
    dir: Option<PathBuf>,
    limits: HistoryLimits,
    /// A write failed (disk full, …): said once.
    warned: bool,
    /// After a failed write, files are not tried again before this.
    retry_at: Option<std::time::Instant>,
}

/// Captured output of every environment: bounded, newest kept.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

impl Default for LogStore {
    /// Memory only, default limits.
    fn default() -> Self {
        LogStore::with(None, HistoryLimits::default())
    }
}

impl LogStore {
    fn with(dir: Option<PathBuf>, limits: HistoryLimits) -> LogStore {
        LogStore {
            inner: Arc::new(Mutex::new(Inner {
                channels: HashMap::new(),
                orgs: HashMap::new(),
                dir,
                limits,
                warned: false,
                retry_at: None,
            })),
        }
    }

    /// History kept under `dir`: what an earlier run left there is read
    /// back (and each file written anew with just what is kept, at the
    /// first flush).
    pub fn open(dir: &Path, limits: HistoryLimits) -> std::io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let store = LogStore::with(Some(dir.to_path_buf()), limits);
        {
            let mut inner = store.lock();
            for entry in fs::read_dir(dir)? {
                let path = entry?.path();
                let Some(env) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".jsonl"))
                    .and_then(|n| n.parse::<Uuid>().ok())
                else {
                    continue;
                };
                let ch = read_history(&path, &limits)?;
                if let Some(org) = ch.org {
                    *inner.orgs.entry(org).or_default() += ch.bytes;
                }
                // Written anew at the first flush (a line cut short by a
                // crash goes).
                inner.channels.insert(env, ch);
            }
            let orgs: Vec<Uuid> = inner.orgs.keys().copied().collect();
            for org in orgs {
                inner.trim_org(org, None);
            }
        }
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an environment's history against its organisation's budget.
    pub fn assign(&self, environment_id: Uuid, org: Uuid) {
        let mut inner = self.lock();
        let ch = inner
            .channels
            .entry(environment_id)
            .or_insert_with(Channel::new);
        if ch.org == Some(org) {
            return;
        }
        let (old, bytes) = (ch.org.replace(org), ch.bytes);
        if let Some(old) = old {
            inner
                .orgs
                .entry(old)
                .and_modify(|b| *b = b.saturating_sub(bytes));
        }
        *inner.orgs.entry(org).or_default() += bytes;
        if let Some(ch) = inner.channels.get_mut(&environment_id) {
            ch.rewrite_due = true; // The header names the organisation.
        }
        inner.trim_org(org, Some(environment_id));
    }

    /// Appends a line to an environment's history and sends it to followers.
    /// The line gets the environment's next cursor.
    pub fn push(&self, environment_id: Uuid, mut line: LogLine) {
        let mut inner = self.lock();
        let limits = inner.limits;
        let persist = inner.dir.is_some();
        let ch = inner
            .channels
            .entry(environment_id)
            .or_insert_with(Channel::new);
        ch.last += 1;
        line.cursor = ch.last;
        let size = weight(&line);
        ch.history.push_back((line.clone(), size));
        ch.bytes += size;
        let freed = ch.keep_within(&limits);
        let org = ch.org;
        if persist && !ch.rewrite_due {
            ch.pending.push(line.clone());
            // Lines already dropped need not be written: write the file
            // anew with the kept ones instead.
            if ch.pending.len() > ch.history.len() {
                ch.pending.clear();
                ch.rewrite_due = true;
            }
        }
        // Followers share one writing of the line per selection.
        line.rendered = crate::runtime::Renders::shared();
        let _ = ch.live.send(line);
        if let Some(org) = org {
            let total = inner.orgs.entry(org).or_default();
            *total = (*total + size).saturating_sub(freed);
            inner.trim_org(org, Some(environment_id));
        }
    }

    /// The last `tail` lines, those of one deployment or matching `keep`.
    pub fn tail(
        &self,
        environment_id: Uuid,
        tail: usize,
        keep: impl Fn(&LogLine) -> bool,
    ) -> Vec<LogLine> {
        let inner = self.lock();
        let Some(ch) = inner.channels.get(&environment_id) else {
            return Vec::new();
        };
        let mut out: Vec<LogLine> = ch
            .history
            .iter()
            .rev()
            .map(|(l, _)| l)
            .filter(|l| keep(l))
            .take(tail)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Every kept line after `cursor` that `keep` keeps.
    pub fn after(
        &self,
        environment_id: Uuid,
        cursor: u64,
        keep: impl Fn(&LogLine) -> bool,
    ) -> Vec<LogLine> {
        let inner = self.lock();
        let Some(ch) = inner.channels.get(&environment_id) else {
            return Vec::new();
        };
        let start = ch.history.partition_point(|(l, _)| l.cursor <= cursor);
        ch.history
            .range(start..)
            .map(|(l, _)| l)
            .filter(|l| keep(l))
            .cloned()
            .collect()
    }

    /// Forgets an environment's history, on disk too (it was deleted).
    pub fn remove(&self, environment_id: Uuid) {
        let mut inner = self.lock();
        if let Some(ch) = inner.channels.remove(&environment_id)
            && let Some(org) = ch.org
        {
            inner
                .orgs
                .entry(org)
                .and_modify(|b| *b = b.saturating_sub(ch.bytes));
        }
        if let Some(path) = inner.path(environment_id) {
            let _ = fs::remove_file(path);
        }
    }

    /// New lines of an environment as they arrive.
    pub fn subscribe(&self, environment_id: Uuid) -> broadcast::Receiver<LogLine> {
        let mut inner = self.lock();
        inner
            .channels
            .entry(environment_id)
            .or_insert_with(Channel::new)
            .live
            .subscribe()
    }

    /// Writes the lines not written yet to the files.
    pub fn flush(&self) {
        let waiting: Vec<Uuid> = self
            .lock()
            .channels
            .iter()
            .filter(|(_, c)| !c.pending.is_empty() || (c.rewrite_due && !c.history.is_empty()))
            .map(|(id, _)| *id)
            .collect();
        for env in waiting {
            self.write(env);
        }
    }

    /// Writes an environment's pending lines to its file, or the file anew:
    /// serialized and written outside the lock, so that lines keep coming
    /// meanwhile (they wait for the next write).
    fn write(&self, environment_id: Uuid) {
        let Some(batch) = self.lock().take_batch(environment_id) else {
            return;
        };
        let written = batch.write();
        self.lock().finish_batch(environment_id, written);
    }

    /// Flushes the files every `every` until the store is dropped.
    pub fn spawn_flusher(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                LogStore { inner }.flush();
            }
        })
    }
}

impl Inner {
    /// What a writer is to write for an environment; `None` when there is
    /// nothing, or another writer is at it.
    fn take_batch(&mut self, environment_id: Uuid) -> Option<Batch> {
        let path = self.path(environment_id)?;
        let waiting = self.retry_at.is_some_and(|t| std::time::Instant::now() < t);
        let ch = self.channels.get_mut(&environment_id)?;
        if ch.writing {
            return None;
        }
        if waiting {
            // The lines stay in memory; the next rewrite has them all.
            ch.pending.clear();
            ch.rewrite_due = true;
            return None;
        }
        let header = Header {
            last: ch.last,
            org: ch.org,
        };
        let (lines, file) = if ch.rewrite_due || ch.file.is_none() {
            ch.pending.clear();
            ch.rewrite_due = false;
            ch.file = None;
            (ch.history.iter().map(|(l, _)| l.clone()).collect(), None)
        } else if ch.pending.is_empty() {
            return None;
        } else {
            (std::mem::take(&mut ch.pending), ch.file.take())
        };
        ch.writing = true;
        Some(Batch {
            path,
            lines,
            file,
            header,
        })
    }

    /// Takes a writer's file back. A failed write is tried again, as a
    /// rewrite, after a pause.
    fn finish_batch(
        &mut self,
        environment_id: Uuid,
        written: std::io::Result<(BufWriter<File>, u64)>,
    ) {
        let Some(ch) = self.channels.get_mut(&environment_id) else {
            // Removed meanwhile: so is what the writer wrote.
            if let Some(path) = self.path(environment_id) {
                let _ = fs::remove_file(path);
            }
            return;
        };
        ch.writing = false;
        match written {
            Ok((file, bytes)) => {
                ch.file = Some(file);
                ch.file_bytes = bytes;
                ch.rewrite_due |= oversized(ch);
            }
            Err(_) => {
                ch.rewrite_due = true;
                ch.pending.clear();
                self.retry_at =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(10));
                self.warn("cannot write log history");
            }
        }
    }

    fn path(&self, environment_id: Uuid) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{environment_id}.jsonl")))
    }

    fn warn(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!("{what}: lines are kept in memory only until it works again");
        }
    }

    /// Drops the oldest lines of the organisation's environments until
    /// they fit its budget: first those of `noisy` (the one that wrote),
    /// then of whichever keeps the most.
    fn trim_org(&mut self, org: Uuid, noisy: Option<Uuid>) {
        let budget = self.limits.org_bytes;
        let mut total = self.orgs.get(&org).copied().unwrap_or(0);
        if total <= budget {
            return;
        }
        let mut touched = Vec::new();
        while total > budget {
            let victim = noisy
                .filter(|n| self.channels.get(n).is_some_and(|c| c.history.len() > 1))
                .or_else(|| {
                    self.channels
                        .iter()
                        .filter(|(_, c)| c.org == Some(org) && !c.history.is_empty())
                        .max_by_key(|(_, c)| c.bytes)
                        .map(|(id, _)| *id)
                });
            let Some(ch) = victim.and_then(|v| self.channels.get_mut(&v)) else {
                break;
            };
            total -= ch.pop_front();
            if let Some(v) = victim.filter(|v| !touched.contains(v)) {
                touched.push(v);
            }
        }
        self.orgs.insert(org, total);
        for env in touched {
            if let Some(ch) = self.channels.get_mut(&env) {
                ch.rewrite_due |= oversized(ch);
            }
        }
    }
}

/// An environment's history as a file holds it: the header, then lines;
/// an unreadable line (one cut short by a crash) is skipped.
fn read_history(path: &Path, limits: &HistoryLimits) -> std::io::Result<Channel> {
    let mut ch = Channel::new();
    let mut lines = BufReader::new(File::open(path)?).lines();
    if let Some(Ok(first)) = lines.next()
        && let Ok(h) = serde_json::from_str::<Header>(&first)
    {
        ch.last = h.last;
        ch.org = h.org;
    }
    for raw in lines {
        let Ok(raw) = raw else { break };
        let Ok(line) = serde_json::from_str::<LogLine>(&raw) else {
            continue;
        };
        if line.cursor <= ch.history.back().map_or(0, |(l, _)| l.cursor) {
            continue;
        }
        ch.last = ch.last.max(line.cursor);
        let size = weight(&line);
        ch.history.push_back((line, size));
        ch.bytes += size;
        ch.keep_within(limits);
    }
    Ok(ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(msg: &str) -> LogLine {
        LogLine {
            ts: chrono::Utc::now(),
            source: "web-1".into(),
            level: "info".into(),
            msg: msg.into(),
            ..LogLine::default()
        }
    }

    fn msgs(lines: &[LogLine]) -> Vec<String> {
        lines.iter().map(|l| l.msg.clone()).collect()
    }

    #[test]
    fn history_and_cursors_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let env = Uuid::new_v4();
        let limits = HistoryLimits {
            lines: 3,
            ..HistoryLimits::default()
        };
        let store = LogStore::open(dir.path(), limits).unwrap();
        for m in ["a", "b", "c", "d"] {
            store.push(env, line(m));
        }
        let before = store.tail(env, 10, |_| true);
        assert_eq!(msgs(&before), ["b", "c", "d"]);
        store.flush();
        drop(store);

        let store = LogStore::open(dir.path(), limits).unwrap();
        assert_eq!(
            store.tail(env, 10, |_| true),
            before,
            "same lines, same fields"
        );
        store.push(env, line("e"));
        let after = store.after(env, 3, |_| true);
        assert_eq!(msgs(&after), ["d", "e"]);
        assert_eq!(after[1].cursor, 5, "cursors go on");

        store.remove(env);
        assert!(store.tail(env, 10, |_| true).is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let env = Uuid::new_v4();
        let store = LogStore::open(dir.path(), HistoryLimits::default()).unwrap();
        store.push(env, line("whole"));
        store.flush();
        drop(store);
        let path = dir.path().join(format!("{env}.jsonl"));
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "{{\"ts\":\"2026-").unwrap();
        drop(f);
        let store = LogStore::open(dir.path(), HistoryLimits::default()).unwrap();
        store.push(env, line("next"));
        store.flush();
        drop(store);
        let store = LogStore::open(dir.path(), HistoryLimits::default()).unwrap();
        assert_eq!(msgs(&store.tail(env, 10, |_| true)), ["whole", "next"]);
    }

    #[test]
    fn an_organisation_is_bounded_and_its_noisy_environment_pays() {
        let dir = tempfile::tempdir().unwrap();
        let (quiet, noisy, org) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let limits = HistoryLimits {
            lines: 1000,
            bytes: 1 << 20,
            org_bytes: 10 * weight(&line("0123456789")),
        };
        let store = LogStore::open(dir.path(), limits).unwrap();
        store.assign(quiet, org);
        store.assign(noisy, org);
        for _ in 0..3 {
            store.push(quiet, line("0123456789"));
        }
        for _ in 0..100 {
            store.push(noisy, line("0123456789"));
        }
        assert_eq!(store.tail(quiet, 100, |_| true).len(), 3);
        assert_eq!(store.tail(noisy, 100, |_| true).len(), 7);
        store.flush();
        let on_disk: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 2 * limits.org_bytes + 200, "{on_disk}");
    }
}
