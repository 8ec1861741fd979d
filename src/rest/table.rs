//! The declarative route table (`schema/routes.toml`): each row maps one
//! /api/v1 endpoint onto a named GraphQL operation. Rows are parsed and
//! checked against the schema once, at start-up.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use serde::Deserialize;

use super::model::{SchemaModel, TypeRef};

/// The table as committed.
pub const SOURCE: &str = include_str!("../../schema/routes.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    fragments: BTreeMap<String, String>,
    routes: Vec<RouteSpec>,
}

/// One row, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The endpoint's number in the contract.
    pub n: u32,
    pub methods: Vec<String>,
    /// Path under /api/v1 with `:param` segments.
    pub path: String,
    pub tag: String,
    pub summary: String,
    /// The GraphQL operation; its root field is aliased `result`.
    pub operation: String,
    /// The variable that receives the whole JSON body; without it, body keys
    /// map to variables of the same name.
    pub body: Option<String>,
    /// Success status.
    pub status: u16,
    /// The result is a connection: follow its pages and return all nodes.
    #[serde(default)]
    pub paginate: bool,
    /// `log-lines`: answer `text/plain`, one `<ts> [<source>] <msg>` line per item.
    pub render: Option<String>,
    /// Leave out the result's top-level fields that are `null` (a shape
    /// that adapts, such as metrics by kind).
    #[serde(default)]
    pub omit_null: bool,
    /// A boolean field of the result that says whether the call created
    /// something: `status` when true, 200 when false; the field itself is
    /// left out of the answer.
    pub created_flag: Option<String>,
}

/// A variable of an operation and where it comes from.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub ty: TypeRef,
    pub has_default: bool,
    pub source: VarSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarSource {
    Path,
    Query,
    /// The whole body.
    Body,
    /// One key of the body (or of the query string).
    BodyField,
}

/// A compiled row.
#[derive(Debug, Clone)]
pub struct Route {
    pub spec: RouteSpec,
    /// The operation text with the fragments it uses.
    pub text: String,
    pub document: ExecutableDocument,
    pub is_mutation: bool,
    /// The GraphQL root field behind `result`.
    pub root_field: String,
    pub variables: Vec<Variable>,
    /// The path in axum's `{param}` syntax.
    pub axum_path: String,
}

impl Route {
    pub fn path_params(&self) -> impl Iterator<Item = &Variable> {
        self.variables
            .iter()
            .filter(|v| v.source == VarSource::Path)
    }

    pub fn has_body(&self, method: &str) -> bool {
        matches!(method, "POST" | "PUT" | "PATCH")
    }
}

/// Every compiled row.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub routes: Vec<Route>,
}

fn spread_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("...") {
        rest = &rest[i + 3..];
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && name != "on" {
            out.push(name);
        }
    }
    out
}

/// Appends the fragments `op` uses, transitively.
fn with_fragments(op: &str, fragments: &BTreeMap<String, String>) -> Result<String, String> {
    let mut needed = BTreeSet::new();
    let mut queue = spread_names(op);
    while let Some(name) = queue.pop() {
        if needed.insert(name.clone()) {
            let body = fragments
                .get(&name)
                .ok_or_else(|| format!("unknown fragment {name}"))?;
            queue.extend(spread_names(body));
        }
    }
    let mut text = op.trim().to_string();
    for name in needed {
        text.push('\n');
        text.push_str(fragments[&name].trim());
    }
    Ok(text)
}

fn check_selection(
    model: &SchemaModel,
    doc: &ExecutableDocument,
    type_name: &str,
    set: &SelectionSet,
) -> Result<(), String> {
    let ty = model
        .get(type_name)
        .ok_or_else(|| format!("unknown type {type_name}"))?;
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => {
                let name = f.node.name.node.as_str();
                if name == "__typename" {
                    continue;
                }
                let field = ty
                    .field(name)
                    .ok_or_else(|| format!("{type_name} has no field {name}"))?;
                for (arg, _) in &f.node.arguments {
                    if !field.args.iter().any(|a| a.name == arg.node.as_str()) {
                        return Err(format!("{type_name}.{name} has no argument {}", arg.node));
                    }
                }
                for a in &field.args {
                    let given = f
                        .node
                        .arguments
                        .iter()
                        .any(|(n, _)| n.node.as_str() == a.name);
                    if a.ty.is_non_null() && !a.has_default && !given {
                        return Err(format!("{type_name}.{name} needs argument {}", a.name));
                    }
                }
                let inner = field.ty.name();
                let is_leaf = matches!(
                    model.get(inner).map(|t| t.kind.as_str()),
                    Some("SCALAR" | "ENUM")
                );
                let sub = &f.node.selection_set.node;
                match (is_leaf, sub.items.is_empty()) {
                    (true, false) => return Err(format!("{type_name}.{name} is a leaf")),
                    (false, true) => return Err(format!("{type_name}.{name} needs a selection")),
                    (false, false) => check_selection(model, doc, inner, sub)?,
                    (true, true) => {}
                }
            }
            Selection::FragmentSpread(s) => {
                let name = s.node.fragment_name.node.as_str();
                let frag = doc
                    .fragments
                    .get(name)
                    .ok_or_else(|| format!("unknown fragment {name}"))?;
                let on = frag.node.type_condition.node.on.node.as_str();
                if on != type_name {
                    return Err(format!("fragment {name} is on {on}, used on {type_name}"));
                }
                check_selection(model, doc, on, &frag.node.selection_set.node)?;
            }
            Selection::InlineFragment(_) => return Err("inline fragments are not used".into()),
        }
    }
    Ok(())
}

fn compile(
    spec: RouteSpec,
    fragments: &BTreeMap<String, String>,
    model: &SchemaModel,
) -> Result<Route, String> {
    let text = with_fragments(&spec.operation, fragments)?;
    let document = async_graphql::parser::parse_query(&text).map_err(|e| e.to_string())?;
    let op = match &document.operations {
        DocumentOperations::Single(op) => op.node.clone(),
        DocumentOperations::Multiple(_) => return Err("one anonymous operation per row".into()),
    };
    let is_mutation = match op.ty {
        OperationType::Query => false,
        OperationType::Mutation => true,
        OperationType::Subscription => return Err("subscriptions are not REST rows".into()),
    };
    let root_type = if is_mutation {
        &model.mutation_type
    } else {
        &model.query_type
    };
    let root_field = match op.selection_set.node.items.as_slice() {
        [item] => match &item.node {
            Selection::Field(f)
                if f.node.alias.as_ref().map(|a| a.node.as_str()) == Some("result") =>
            {
                f.node.name.node.to_string()
            }
            _ => return Err("the root field must be aliased `result`".into()),
        },
        _ => return Err("exactly one root field per row".into()),
    };
    check_selection(model, &document, root_type, &op.selection_set.node)?;

    let path_params: Vec<&str> = spec
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix(':'))
        .collect();
    let mut variables = Vec::new();
    for def in &op.variable_definitions {
        let name = def.node.name.node.to_string();
        let ty = TypeRef::from_parsed(&def.node.var_type.node);
        match model.get(ty.name()).map(|t| t.kind.as_str()) {
            Some("SCALAR" | "ENUM" | "INPUT_OBJECT") => {}
            _ => return Err(format!("${name}: {} is not an input type", ty.name())),
        }
        let source = if path_params.contains(&name.as_str()) {
            VarSource::Path
        } else if spec.body.as_deref() == Some(name.as_str()) {
            VarSource::Body
        } else if spec.methods.iter().all(|m| m == "GET" || m == "DELETE") || spec.body.is_some() {
            VarSource::Query
        } else {
            VarSource::BodyField
        };
        variables.push(Variable {
            name,
            has_default: def.node.default_value.is_some(),
            ty,
            source,
        });
    }
    for p in &path_params {
        if !variables.iter().any(|v| v.name == *p) {
            return Err(format!("path parameter :{p} has no variable"));
        }
    }
    if let Some(b) = &spec.body
        && !variables.iter().any(|v| &v.name == b)
    {
        return Err(format!("body variable ${b} is not declared"));
    }
    if let Some(r) = &spec.render
        && r != "log-lines"
    {
        return Err(format!("unknown render {r}"));
    }
    if spec.paginate {
        for v in ["first", "after"] {
            if !variables.iter().any(|x| x.name == v) {
                return Err(format!("a paginated row needs ${v}"));
            }
        }
    }
    for m in &spec.methods {
        if !matches!(m.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
            return Err(format!("unknown method {m}"));
        }
        if is_mutation == (m == "GET") {
            return Err(format!(
                "{m} does not fit a {}",
                if is_mutation { "mutation" } else { "query" }
            ));
        }
    }
    let axum_path = spec
        .path
        .split('/')
        .map(|s| match s.strip_prefix(':') {
            Some(p) => format!("{{{p}}}"),
            None => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/");
    Ok(Route {
        spec,
        text,
        document,
        is_mutation,
        root_field,
        variables,
        axum_path,
    })
}

impl RouteTable {
    /// Parses and checks the table against the schema.
    pub fn load(source: &str, model: &SchemaModel) -> Result<RouteTable, String> {
        let spec: TableSpec = toml::from_str(source).map_err(|e| format!("routes.toml: {e}"))?;
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for row in spec.routes {
            let n = row.n;
            for m in &row.methods {
                if !seen.insert((m.clone(), row.path.clone())) {
                    return Err(format!("route {n}: {m} {} appears twice", row.path));
                }
            }
            routes
                .push(compile(row, &spec.fragments, model).map_err(|e| format!("route {n}: {e}"))?);
        }
        Ok(RouteTable { routes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_found() {
        assert_eq!(
            spread_names("{ ...A x { ...B_c } ... on X { y } }"),
            vec!["A", "B_c"]
        );
    }
}
