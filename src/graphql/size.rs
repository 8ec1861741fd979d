//! How big an operation is, counted before anything runs: its field
//! selections once fragments are expanded (aliases count, since each alias
//! runs its resolver again), and its root fields. A document over either
//! limit is refused with an error naming the limit.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, ServerError};
use async_graphql_value::Name;

/// Field selections one operation may make, fragments expanded.
pub const MAX_FIELDS: usize = 1000;
/// Root fields one operation may select.
pub const MAX_ROOT_FIELDS: usize = 50;

/// Root fields that cost nothing: asking where one stands.
const FREE_ROOT_FIELDS: &[&str] = &["rateLimit"];

/// Points a field costs beyond its own one when its resolver reads the
/// store: every root field, and the nested lists read with a statement of
/// their own.
const STORE_POINTS: usize = 9;
/// Nested fields that read the store.
const STORE_FIELDS: &[&str] = &["environments", "services", "envVars", "config", "overrides"];
/// Points beyond its own one of a root field that asks the runtime (the
/// running processes, or the Kubernetes API).
const RUNTIME_POINTS: usize = 49;
const RUNTIME_FIELDS: &[&str] = &["projectStatus", "projectLogs"];

/// What a document costs against the rate limits (its costliest
/// operation: a point per field selection, fragments expanded and each
/// alias apart, plus [`STORE_POINTS`] per field that reads the store and
/// [`RUNTIME_POINTS`] per one that asks the runtime; the free root fields
/// cost nothing), and why it may not run, if it may not.
pub fn measure(doc: &ExecutableDocument) -> (u64, Option<ServerError>) {
    let mut memo = HashMap::new();
    let mut cost = 0usize;
    for (_, op) in doc.operations.iter() {
        let set = &op.node.selection_set.node;
        cost = cost.max(count(Count::Points, set, doc, &mut memo, 0, true));
    }
    (u64::try_from(cost).unwrap_or(u64::MAX), check(doc).err())
}

/// Refuses a document one of whose operations exceeds a limit.
pub fn check(doc: &ExecutableDocument) -> Result<(), ServerError> {
    let mut memo = HashMap::new();
    let mut root_memo = HashMap::new();
    for (_, op) in doc.operations.iter() {
        let set = &op.node.selection_set.node;
        let fields = count(Count::Fields, set, doc, &mut memo, 0, true);
        if fields > MAX_FIELDS {
            return Err(refusal(format!(
                "the operation selects {} fields; at most {MAX_FIELDS} are allowed \
                 (fields are counted with fragments expanded, each alias apart)",
                shown(fields)
            )));
        }
        let roots = count(Count::RootFields, set, doc, &mut root_memo, 0, true);
        if roots > MAX_ROOT_FIELDS {
            return Err(refusal(format!(
                "the operation selects {} root fields; at most {MAX_ROOT_FIELDS} are allowed",
                shown(roots)
            )));
        }
    }
    Ok(())
}

/// A count as a client may read it: exact below the saturation point.
fn shown(n: usize) -> String {
    if n == usize::MAX {
        "too many".into()
    } else {
        n.to_string()
    }
}

fn refusal(message: String) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", "QUERY_TOO_LARGE");
    err.extensions = Some(ext);
    err
}

/// Deeper than any accepted query; guards against fragment cycles, which
/// validation refuses anyway.
const MAX_NESTING: usize = 64;

/// What [`count`] counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Every field selection, fragments expanded.
    Fields,
    /// The root field selections.
    RootFields,
    /// Points against the rate limits (see [`measure`]).
    Points,
}

impl Count {
    /// What the field `name` adds by itself; `None` skips it and what it
    /// selects.
    fn own(self, name: &str, root: bool) -> Option<usize> {
        if self != Count::Points {
            return Some(1);
        }
        Some(match name {
            _ if root && FREE_ROOT_FIELDS.contains(&name) => return None,
            "__typename" => 1,
            _ if root && RUNTIME_FIELDS.contains(&name) => 1 + RUNTIME_POINTS,
            _ if root || STORE_FIELDS.contains(&name) => 1 + STORE_POINTS,
            _ => 1,
        })
    }
}

/// What `set` adds up to under `what`; `root` when its fields are root
/// fields. Memoised per fragment and level, so fragments that spread each
/// other many times cost nothing to count.
fn count(
    what: Count,
    set: &SelectionSet,
    doc: &ExecutableDocument,
    memo: &mut HashMap<(Name, bool), usize>,
    depth: usize,
    root: bool,
) -> usize {
    if depth > MAX_NESTING {
        return usize::MAX;
    }
    let mut n = 0usize;
    for sel in &set.items {
        let more = match &sel.node {
            Selection::Field(f) => match what.own(f.node.name.node.as_str(), root) {
                None => 0,
                Some(own) if what == Count::RootFields => own,
                Some(own) => own.saturating_add(count(
                    what,
                    &f.node.selection_set.node,
                    doc,
                    memo,
                    depth + 1,
                    false,
                )),
            },
            Selection::InlineFragment(i) => {
                count(what, &i.node.selection_set.node, doc, memo, depth + 1, root)
            }
            Selection::FragmentSpread(s) => {
                let key = (s.node.fragment_name.node.clone(), root);
                match memo.get(&key) {
                    Some(c) => *c,
                    None => {
                        let c = doc.fragments.get(&key.0).map_or(0, |f| {
                            count(what, &f.node.selection_set.node, doc, memo, depth + 1, root)
                        });
                        memo.insert(key, c);
                        c
                    }
                }
            }
        };
        n = n.saturating_add(more);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(q: &str) -> Result<(), String> {
        check(&async_graphql::parser::parse_query(q).unwrap()).map_err(|e| e.message)
    }

    #[test]
    fn counts_aliases_and_expanded_fragments() {
        assert!(checked("{ viewer { role } projects { nodes { id } } }").is_ok());
        let aliases: String = (0..51)
            .map(|i| format!("a{i}: viewer {{ role }} "))
            .collect();
        let err = checked(&format!("{{ {aliases} }}")).unwrap_err();
        assert_eq!(
            err,
            "the operation selects 51 root fields; at most 50 are allowed"
        );
        // Few root fields, each spreading a fragment of 30 fields.
        let frag: String = (0..30).map(|i| format!("f{i}: role ")).collect();
        let roots: String = (0..40)
            .map(|i| format!("v{i}: viewer {{ ...F }} "))
            .collect();
        let err = checked(&format!("{{ {roots} }} fragment F on Viewer {{ {frag} }}")).unwrap_err();
        assert!(err.contains("selects 1240 fields; at most 1000"), "{err}");
    }

    #[test]
    fn asking_for_the_rate_limit_is_free() {
        let cost = |q: &str| measure(&async_graphql::parser::parse_query(q).unwrap()).0;
        assert_eq!(cost("{ viewer { role } }"), 11);
        assert_eq!(cost("{ rateLimit { limit remaining } }"), 0);
        assert_eq!(cost("{ rateLimit { cost } viewer { role } }"), 11);
    }

    #[test]
    fn fields_that_reach_the_store_or_the_runtime_cost_more() {
        let cost = |q: &str| measure(&async_graphql::parser::parse_query(q).unwrap()).0;
        // A root field (10), a nested list read by its own statement (10),
        // plain fields (1 each).
        assert_eq!(
            cost("{ projects { nodes { id environments { name } } } }"),
            10 + 1 + 1 + 10 + 1
        );
        assert_eq!(cost("{ projectStatus(projectId: \"p\") { status } }"), 51);
        // Fragments weigh as their fields would, at the level they are spread.
        assert_eq!(
            cost("{ ...Q } fragment Q on Query { viewer { role } a: viewer { role } }"),
            22
        );
        assert_eq!(cost("mutation { deleteProject(id: \"p\") { id } }"), 11);
    }

    #[test]
    fn fragment_bombs_saturate_without_blowing_up() {
        // Each level doubles the fields: 2^40 once expanded.
        let mut q = String::from("{ viewer { ...L0 } } fragment L40 on Viewer { role }");
        for i in 0..40 {
            q.push_str(&format!(
                " fragment L{i} on Viewer {{ a: viewer {{ ...L{n} }} b: viewer {{ ...L{n} }} }}",
                n = i + 1
            ));
        }
        let err = checked(&q).unwrap_err();
        assert!(err.contains("at most 1000"), "{err}");
    }
}
