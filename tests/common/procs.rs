//! What the host sees of tenant processes: found by a marker in their
//! command line, with their uid and environment, as `ps` would show them.

use std::path::Path;
use std::time::Duration;

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes whose command line contains `marker`.
pub fn with_marker(marker: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .filter(|&p| alive(p))
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

/// The real uid of `pid`.
pub fn uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The environment of `pid`, as `KEY=value` strings.
pub fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every live process run by root whose environment holds `needle`.
pub fn root_processes_carrying(needle: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| uid(p) == Some(0) && environ(p).iter().any(|e| e.contains(needle)))
        .collect()
}

/// Waits until processes with `marker` run (at least `n` of them); returns them.
pub async fn wait_for(marker: &str, n: usize) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = with_marker(marker);
        if found.len() >= n {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no process with {marker}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until none of `pids` runs; fails naming the survivors after a minute.
pub async fn wait_gone(pids: &[i32]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes outlived their end: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `path` exists (for release directories).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The process listening on TCP `port` of 127.0.0.1 (read from /proc).
pub fn listener_pid(port: u16) -> Option<i32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let wanted = format!("0100007F:{port:04X}");
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // local address, state 0A (LISTEN), inode
        (f.get(1) == Some(&wanted.as_str()) && f.get(3) == Some(&"0A")).then(|| f[9].to_string())
    })?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: i32 = p.file_name().to_str()?.parse().ok()?;
        std::fs::read_dir(p.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(&target)))
            .then_some(pid)
    })
}
