//! Log lines written straight from the line, for many followers: a `logs`
//! subscription the executor has validated, and the event stream of
//! `GET /projects/:id/logs`, write each line once per selection and send
//! the same bytes to every follower of that selection (a live line keeps
//! its writings, see [`crate::runtime::Renders`]), instead of resolving
//! and serialising the selection for each follower.
//!
//! It writes exactly what the executor writes for `LogEntry`; any other
//! selection (directives, unknown fields, arguments on fields) stays with
//! the executor.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_graphql::Variables;
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql_value::{ConstValue, Value as AstValue};
use bytes::Bytes;

use super::plan::{Out, compile, object, put, put_id, put_time, root_field};
use crate::domain::deployments::LogArgs;
use crate::runtime::LogLine;

/// The fields of `LogEntry`, in the order the event stream writes them.
const FIELDS: &[&str] = &[
    "cursor",
    "ts",
    "source",
    "stream",
    "level",
    "msg",
    "service",
    "replica",
    "deploymentId",
    "__typename",
];

/// How one selection of `LogEntry` writes a line.
#[derive(Debug)]
pub struct LogPlan {
    /// Tells selections apart in a line's kept writings.
    shape: u64,
    /// `{"data":{"<key>":` before the line in a subscription's answer;
    /// empty for the bare line.
    head: Vec<u8>,
    fields: Vec<Out>,
}

impl LogPlan {
    fn new(root_key: Option<&str>, fields: Vec<Out>) -> LogPlan {
        let mut head = Vec::new();
        if let Some(key) = root_key {
            head.extend_from_slice(b"{\"data\":{");
            put(&mut head, key);
            head.push(b':');
        }
        // A fixed hasher: the same selection has the same shape in every
        // document that asks for it.
        let mut h = std::hash::DefaultHasher::new();
        head.hash(&mut h);
        for f in &fields {
            (&f.key, &f.name).hash(&mut h);
        }
        LogPlan {
            shape: h.finish(),
            head,
            fields,
        }
    }

    /// The bare line with every field but `__typename`: the event
    /// stream's `data`.
    pub fn every_field() -> LogPlan {
        let fields = FIELDS[..FIELDS.len() - 1]
            .iter()
            .map(|name| {
                let mut prefix = serde_json::to_vec(name).expect("a name serialises");
                prefix.push(b':');
                Out {
                    key: name.to_string(),
                    prefix,
                    name: name.to_string(),
                    sub: Vec::new(),
                }
            })
            .collect();
        LogPlan::new(None, fields)
    }

    /// The line as this selection writes it, once per live line.
    pub fn render(&self, line: &LogLine) -> Bytes {
        line.rendered.get_or_write(self.shape, || self.write(line))
    }

    /// The line as a Server-Sent Event, once per live line: `id:` its
    /// cursor (when it has one), `event: lagged` for a lagged notice, and
    /// `data:` the line as this selection writes it (one line of JSON).
    pub fn event(&self, line: &LogLine) -> Bytes {
        // Another shape than the bare line's.
        let shape = self.shape ^ 0x5e5e_5e5e_5e5e_5e5e;
        line.rendered.get_or_write(shape, || {
            let data = self.write(line);
            let mut out = Vec::with_capacity(data.len() + 48);
            if line.cursor != 0 {
                out.extend_from_slice(format!("id: {}\n", line.cursor).as_bytes());
            }
            if line.source == LogLine::LAGGED {
                out.extend_from_slice(b"event: lagged\n");
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\n\n");
            out
        })
    }

    fn write(&self, l: &LogLine) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + 160 + l.msg.len() * 9 / 8);
        out.extend_from_slice(&self.head);
        object(&mut out, &self.fields, |out, f| match f.name.as_str() {
            "cursor" if l.cursor != 0 => put(out, &l.cursor.to_string()),
            "ts" => put_time(out, &l.ts),
            "source" => put(out, &l.source),
            "stream" => put(out, &l.stream),
            "level" => put(out, &l.level),
            "msg" => put(out, &l.msg),
            "service" => put(out, &l.service),
            "replica" => put(out, &l.replica),
            "deploymentId" if l.deployment_id.is_some() => {
                put_id(out, l.deployment_id.as_ref().expect("checked"))
            }
            "__typename" => put(out, "LogEntry"),
            _ => out.extend_from_slice(b"null"),
        });
        if !self.head.is_empty() {
            out.extend_from_slice(b"}}");
        }
        out
    }
}

/// A `logs` subscription: how its answers are written and its arguments.
pub struct LiveLogs {
    pub plan: Arc<LogPlan>,
    arguments: Vec<(String, AstValue)>,
}

/// The arguments of one `logs` subscription.
#[derive(Debug, Default)]
pub struct LogArguments {
    pub project_id: String,
    env_type: Option<String>,
    service: Option<String>,
    deployment_id: Option<String>,
    tail: Option<i32>,
    after: Option<u64>,
    filter: Option<String>,
}

impl LogArguments {
    pub fn args(&self) -> LogArgs<'_> {
        LogArgs {
            env_type: self.env_type.as_deref(),
            service: self.service.as_deref(),
            deployment: self.deployment_id.as_deref(),
            filter: self.filter.as_deref(),
            tail: self.tail,
            after: self.after,
        }
    }
}

impl LiveLogs {
    /// The plan of `doc`'s operation `name` (the only one it has), when it
    /// is a subscription to `logs` alone with a selection written here.
    pub fn compile(doc: &ExecutableDocument, name: Option<&str>) -> Option<LiveLogs> {
        let field = root_field(doc, name, OperationType::Subscription, "logs")?;
        let mut fields = Vec::new();
        compile(&field.selection_set.node, &doc.fragments, &mut fields)?;
        if fields
            .iter()
            .any(|f| !f.sub.is_empty() || !FIELDS.contains(&f.name.as_str()))
        {
            return None;
        }
        Some(LiveLogs {
            plan: Arc::new(LogPlan::new(
                Some(field.response_key().node.as_str()),
                fields,
            )),
            arguments: field
                .arguments
                .iter()
                .map(|(n, v)| (n.node.to_string(), v.node.clone()))
                .collect(),
        })
    }

    /// The arguments with the request's variables; `None` for anything the
    /// resolver would refuse (the executor then answers it).
    pub fn arguments(&self, variables: &Variables) -> Option<LogArguments> {
        let mut a = LogArguments::default();
        let mut project = None;
        for (name, value) in &self.arguments {
            let value = value
                .clone()
                .into_const_with(|name| variables.get(&name).cloned().ok_or(()))
                .ok()?;
            let text = || match &value {
                ConstValue::Null => Some(None),
                ConstValue::String(s) => Some(Some(s.clone())),
                _ => None,
            };
            match name.as_str() {
                "projectId" => project = text()?,
                "envType" => a.env_type = text()?,
                "service" => a.service = text()?,
                "filter" => a.filter = text()?,
                "after" => {
                    a.after = match text()? {
                        None => None,
                        Some(s) => Some(s.trim().parse().ok()?),
                    }
                }
                "deploymentId" => {
                    a.deployment_id = match &value {
                        ConstValue::Number(n) => Some(n.to_string()),
                        _ => text()?,
                    }
                }
                "tail" => {
                    a.tail = match &value {
                        ConstValue::Null => None,
                        ConstValue::Number(n) => Some(i32::try_from(n.as_i64()?).ok()?),
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        a.project_id = project?;
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> LogLine {
        LogLine {
            ts: "2026-03-09T11:00:00.123456Z".parse().unwrap(),
            source: "web.1".into(),
            level: "info".into(),
            msg: "a \"quoted\" line\twith ünïcode".into(),
            deployment_id: Some(uuid::Uuid::nil()),
            cursor: 42,
            stream: "stdout".into(),
            service: Some("web".into()),
            replica: None,
            ..LogLine::default()
        }
    }

    #[test]
    fn a_line_is_written_as_json_with_every_field() {
        let written = LogPlan::every_field().render(&line());
        let v: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cursor": "42", "ts": "2026-03-09T11:00:00.123Z", "source": "web.1",
                "stream": "stdout", "level": "info", "msg": "a \"quoted\" line\twith ünïcode",
                "service": "web", "replica": null,
                "deploymentId": "00000000-0000-0000-0000-000000000000",
            })
        );
    }

    #[test]
    fn a_shared_line_is_written_once_per_selection() {
        let mut l = line();
        l.rendered = crate::runtime::Renders::shared();
        let copy = l.clone();
        let plan = LogPlan::every_field();
        let a = plan.render(&l);
        let b = plan.render(&copy);
        // The same bytes, not a second writing.
        assert_eq!(a.as_ptr(), b.as_ptr());
        // A long line keeps no writing: what a live channel holds stays
        // near the size of its lines.
        let mut long = line();
        long.msg = "x".repeat(4096);
        long.rendered = crate::runtime::Renders::shared();
        let copy_of_long = long.clone();
        assert_ne!(
            plan.render(&long).as_ptr(),
            plan.render(&copy_of_long).as_ptr()
        );
        let doc = async_graphql::parser::parse_query(
            "subscription { lines: logs(projectId: \"p\") { msg __typename } }",
        )
        .unwrap();
        let live = LiveLogs::compile(&doc, None).unwrap();
        assert_eq!(
            std::str::from_utf8(&live.plan.render(&copy)).unwrap(),
            r#"{"data":{"lines":{"msg":"a \"quoted\" line\twith ünïcode","__typename":"LogEntry"}}}"#
        );
    }

    #[test]
    fn only_plain_selections_of_logs_are_written_here() {
        let plan =
            |q: &str| LiveLogs::compile(&async_graphql::parser::parse_query(q).unwrap(), None);
        assert!(plan("subscription { logs(projectId: \"p\") { msg ts } }").is_some());
        assert!(
            plan("subscription { logs(projectId: \"p\") { ...F } } fragment F on LogEntry { msg }")
                .is_some()
        );
        assert!(
            plan("subscription { logs(projectId: \"p\") { msg @include(if: true) } }").is_none()
        );
        assert!(plan("subscription { logs(projectId: \"p\") { nope } }").is_none());
        assert!(plan("subscription { projectStatus(projectId: \"p\") { status } }").is_none());
        assert!(plan("query { logs(projectId: \"p\") { msg } }").is_none());
        let live = plan(
            "subscription($t: Int) { logs(projectId: \"p\", tail: $t, after: \"7\") { msg } }",
        )
        .unwrap();
        let vars = Variables::from_json(serde_json::json!({ "t": 5 }));
        let a = live.arguments(&vars).unwrap();
        assert_eq!(
            (a.project_id.as_str(), a.tail, a.after),
            ("p", Some(5), Some(7))
        );
        let bad = Variables::from_json(serde_json::json!({ "t": "5" }));
        assert!(live.arguments(&bad).is_none());
    }
}
