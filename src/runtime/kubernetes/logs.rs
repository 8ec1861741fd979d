//! Pod log lines as platform log lines. Logs are requested with
//! `timestamps=true`, so every line starts with the kubelet's RFC 3339 time;
//! that time is what merges lines from many pods into one order.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use uuid::Uuid;

use super::names;
use crate::runtime::LogLine;

/// One line as the kubelet sends it: `<RFC 3339 time> <message>`. A line
/// without a readable time keeps all its text and gets the current time.
pub fn parse_line(raw: &str, source: &str, deployment_id: Option<Uuid>) -> LogLine {
    let mut line = parse_pod_line(raw, source, None, deployment_id);
    if source == "build" {
        line.stream = crate::runtime::STREAM_BUILD.into();
        line.replica = None;
    }
    line
}

/// A line of pod `source` of `service`.
pub fn parse_pod_line(
    raw: &str,
    source: &str,
    service: Option<&str>,
    deployment_id: Option<Uuid>,
) -> LogLine {
    let raw = raw.trim_end_matches(['\r', '\n']);
    let (stamp, msg) = raw.split_once(' ').unwrap_or((raw, ""));
    let (ts, msg) = match DateTime::parse_from_rfc3339(stamp) {
        Ok(ts) => (ts.with_timezone(&Utc), msg),
        Err(_) => (Utc::now(), raw),
    };
    LogLine {
        ts,
        source: source.to_string(),
        // The API merges stdout and stderr.
        level: "info".into(),
        msg: msg.to_string(),
        deployment_id,
        cursor: 0,
        stream: crate::runtime::STREAM_STDOUT.into(),
        service: service.map(str::to_string),
        replica: Some(source.to_string()),
        step: None,
        rendered: Default::default(),
    }
}

/// The release a pod runs, from its pod-template label.
pub fn pod_deployment(pod: &Pod) -> Option<Uuid> {
    pod.metadata
        .labels
        .as_ref()?
        .get(names::DEPLOYMENT_ID)?
        .parse()
        .ok()
}

/// The service a pod runs, from its name label.
pub fn pod_service(pod: &Pod) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(names::NAME).cloned()
}

/// Lines of several pods in time order, keeping the last `n`.
pub fn last_lines(mut lines: Vec<LogLine>, n: usize) -> Vec<LogLine> {
    // Stable, so lines with one timestamp keep each pod's own order.
    lines.sort_by_key(|l| l.ts);
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_lines() {
        let l = parse_line(
            "2025-03-01T10:00:00.123456789Z listening on :3000\n",
            "web-1",
            None,
        );
        assert_eq!(l.msg, "listening on :3000");
        assert_eq!(l.ts.to_rfc3339(), "2025-03-01T10:00:00.123456789+00:00");
        assert_eq!(l.source, "web-1");
        let empty = parse_line("2025-03-01T10:00:00Z ", "web-1", None);
        assert_eq!(empty.msg, "");
        let bare = parse_line("no time here", "web-1", None);
        assert_eq!(bare.msg, "no time here");
    }

    #[test]
    fn merge_keeps_the_latest() {
        let a = parse_line("2025-03-01T10:00:02Z a2", "a", None);
        let b = parse_line("2025-03-01T10:00:01Z b1", "b", None);
        let c = parse_line("2025-03-01T10:00:03Z a3", "a", None);
        let got: Vec<_> = last_lines(vec![a, c, b], 2)
            .into_iter()
            .map(|l| l.msg)
            .collect();
        assert_eq!(got, ["a2", "a3"]);
    }
}
