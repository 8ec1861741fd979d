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

/// What a document costs against the rate limits (its costliest
/// operation's field selections, minus the free root fields), and why it
/// may not run, if it may not.
pub fn measure(doc: &ExecutableDocument) -> (u64, Option<ServerError>) {
    let mut memo = HashMap::new();
    let mut cost = 0usize;
    for (_, op) in doc.operations.iter() {
        let set = &op.node.selection_set.node;
        let fields = tally(set, doc, &mut memo, 0, true);
        let free: usize = set
            .items
            .iter()
            .filter_map(|sel| match &sel.node {
                Selection::Field(f) if FREE_ROOT_FIELDS.contains(&f.node.name.node.as_str()) => {
                    Some(1usize.saturating_add(tally(
                        &f.node.selection_set.node,
                        doc,
                        &mut memo,
                        1,
                        true,
                    )))
                }
                _ => None,
            })
            .fold(0usize, usize::saturating_add);
        cost = cost.max(fields.saturating_sub(free));
    }
    (u64::try_from(cost).unwrap_or(u64::MAX), check(doc).err())
}

/// Refuses a document one of whose operations exceeds a limit.
pub fn check(doc: &ExecutableDocument) -> Result<(), ServerError> {
    let mut memo = HashMap::new();
    let mut root_memo = HashMap::new();
    for (_, op) in doc.operations.iter() {
        let set = &op.node.selection_set.node;
        let fields = tally(set, doc, &mut memo, 0, true);
        if fields > MAX_FIELDS {
            return Err(refusal(format!(
                "the operation selects {} fields; at most {MAX_FIELDS} are allowed \
                 (fields are counted with fragments expanded, each alias apart)",
                shown(fields)
            )));
        }
        let roots = tally(set, doc, &mut root_memo, 0, false);
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

/// Fields selected by `set`, fragments expanded: all of them when `deep`,
/// else those at the level of `set` itself. Memoised per fragment, so
/// fragments that spread each other many times cost nothing to count.
fn tally(
    set: &SelectionSet,
    doc: &ExecutableDocument,
    memo: &mut HashMap<Name, usize>,
    depth: usize,
    deep: bool,
) -> usize {
    if depth > MAX_NESTING {
        return usize::MAX;
    }
    let mut n = 0usize;
    for sel in &set.items {
        let more = match &sel.node {
            Selection::Field(f) if deep => 1usize.saturating_add(tally(
                &f.node.selection_set.node,
                doc,
                memo,
                depth + 1,
                deep,
            )),
            Selection::Field(_) => 1,
            Selection::InlineFragment(i) => {
                tally(&i.node.selection_set.node, doc, memo, depth + 1, deep)
            }
            Selection::FragmentSpread(s) => {
                let name = &s.node.fragment_name.node;
                match memo.get(name) {
                    Some(c) => *c,
                    None => {
                        let c = doc.fragments.get(name).map_or(0, |f| {
                            tally(&f.node.selection_set.node, doc, memo, depth + 1, deep)
                        });
                        memo.insert(name.clone(), c);
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
        assert_eq!(cost("{ viewer { role } }"), 2);
        assert_eq!(cost("{ rateLimit { limit remaining } }"), 0);
        assert_eq!(cost("{ rateLimit { cost } viewer { role } }"), 2);
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
