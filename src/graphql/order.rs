//! Response fields in the order of the selection set.
//!
//! The executor collects an object's fields as they finish, so a field
//! that waits on the store lands after the ones that do not. GraphQL's
//! serialization rules ask for the order of the selection (fields in
//! fragments taking the place of the spread); this pass restores it.
//! The schema has no interfaces or unions, so every fragment applies to
//! the object it is spread on.

use std::collections::HashSet;

use async_graphql::Name;
use async_graphql::Value as ConstValue;
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Selection, SelectionSet,
};

/// Puts every object of `data` in the order `document`'s operation
/// `operation` selects its fields.
pub fn reorder(data: &mut ConstValue, document: &ExecutableDocument, operation: Option<&str>) {
    let op = match (&document.operations, operation) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(name) {
            Some(op) => op,
            None => return,
        },
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().expect("one operation")
        }
        _ => return,
    };
    let doc = Order { document };
    doc.value(data, &[&op.node.selection_set.node]);
}

struct Order<'a> {
    document: &'a ExecutableDocument,
}

/// One response key and the selection sets of the fields it merges.
type Plan<'a> = Vec<(&'a str, Vec<&'a SelectionSet>)>;

impl<'a> Order<'a> {
    fn value(&self, value: &mut ConstValue, sets: &[&'a SelectionSet]) {
        match value {
            ConstValue::Object(map) => {
                let plan = self.plan(sets);
                self.object(map, &plan);
            }
            ConstValue::List(items) => {
                // One plan for every item of the list.
                let mut plan = None;
                for item in items {
                    match item {
                        ConstValue::Object(map) => {
                            let plan = plan.get_or_insert_with(|| self.plan(sets));
                            self.object(map, plan);
                        }
                        other => self.value(other, sets),
                    }
                }
            }
            _ => {}
        }
    }

    fn object(&self, map: &mut IndexMap<Name, ConstValue>, plan: &Plan<'a>) {
        let in_order = map.keys().map(|k| k.as_str()).eq(plan
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| map.contains_key(*k)));
        if !in_order {
            let mut old = std::mem::take(map);
            map.reserve(old.len());
            for (key, _) in plan {
                if let Some((k, v)) = old.swap_remove_entry(*key) {
                    map.insert(k, v);
                }
            }
            // Keys the plan does not know keep their place at the end.
            map.extend(old);
        }
        for (key, sets) in plan {
            if sets.is_empty() {
                continue;
            }
            if let Some(v) = map.get_mut(*key) {
                self.value(v, sets);
            }
        }
    }

    /// The response keys of `sets` in order, with each key's sub-selections.
    fn plan(&self, sets: &[&'a SelectionSet]) -> Plan<'a> {
        let mut plan: Plan<'a> = Vec::new();
        let mut seen = HashSet::new();
        for set in sets {
            self.collect(set, &mut plan, &mut seen);
        }
        plan
    }

    fn collect(&self, set: &'a SelectionSet, plan: &mut Plan<'a>, seen: &mut HashSet<&'a str>) {
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    let key = f.node.response_key().node.as_str();
                    let sub = &f.node.selection_set.node;
                    let has_sub = !sub.items.is_empty();
                    match plan.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, subs)) if has_sub => subs.push(sub),
                        Some(_) => {}
                        None => plan.push((key, if has_sub { vec![sub] } else { vec![] })),
                    }
                }
                Selection::InlineFragment(f) => {
                    self.collect(&f.node.selection_set.node, plan, seen);
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    // A fragment is spread once per object (and never in a cycle).
                    if !seen.insert(name) {
                        continue;
                    }
                    if let Some(f) = self.document.fragments.get(&s.node.fragment_name.node) {
                        self.collect(&f.node.selection_set.node, plan, seen);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &ConstValue) -> Vec<String> {
        match v {
            ConstValue::Object(m) => m.keys().map(|k| k.to_string()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn objects_follow_the_selection_through_fragments_and_lists() {
        let doc = async_graphql::parser::parse_query(
            "query Q { p { c ...F b { y x } } } fragment F on P { a b { z } }",
        )
        .unwrap();
        let mut data = ConstValue::from_json(serde_json::json!({
            "p": [
                {"a": 1, "b": {"x": 1, "z": 2, "y": 3}, "c": 3},
                {"b": {"z": 2, "y": 3, "x": 1}, "c": 3, "a": 1},
            ]
        }))
        .unwrap();
        reorder(&mut data, &doc, Some("Q"));
        let ConstValue::Object(root) = &data else {
            panic!()
        };
        let ConstValue::List(items) = &root["p"] else {
            panic!()
        };
        for item in items {
            assert_eq!(keys(item), ["c", "a", "b"]);
            let ConstValue::Object(m) = item else {
                panic!()
            };
            assert_eq!(keys(&m["b"]), ["z", "y", "x"]);
        }
    }
}
