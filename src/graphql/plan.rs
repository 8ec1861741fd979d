//! Look-ahead for list queries: which columns a selection reads and which
//! nested lists it asks for, so a page of projects with its environments
//! and services costs one statement.

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, FragmentDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Context, Lookahead, Name, Positioned, SelectionField};
use uuid::Uuid;

use super::domain_ctx;
use super::types::{Prefetched, Project};
use crate::domain::Ctx;
use crate::domain::listing::{self, Children, Columns, add_columns};
use crate::error::Result;
use crate::store::Reads;
use entity::{environments, projects, services};

/// The columns behind each field of a type; `None` for a field this table
/// does not know, which then reads every column.
fn columns<C: Copy>(
    fields: &[SelectionField<'_>],
    column_of: impl Fn(&str) -> Option<Option<C>>,
) -> Columns<C> {
    let mut out = Vec::new();
    for f in fields.iter().flat_map(|f| f.selection_set()) {
        match column_of(f.name()) {
            Some(Some(c)) => out.push(c),
            Some(None) => {}
            None => return None,
        }
    }
    Some(out)
}

fn project_column(field: &str) -> Option<Option<projects::Column>> {
    use projects::Column as C;
    Some(Some(match field {
        "id" => C::Id,
        "slug" => C::Slug,
        "name" => C::Name,
        "description" => C::Description,
        "isActive" => C::IsActive,
        "gitRepository" => C::GitRepository,
        "gitBranch" => C::GitBranch,
        "buildPack" => C::BuildPack,
        "dockerImage" => C::DockerImage,
        "port" => C::Port,
        "domain" => C::Domain,
        "createdAt" => C::CreatedAt,
        "updatedAt" => C::UpdatedAt,
        // Read through the project's id.
        "environments" | "services" | "envVars" | "config" | "__typename" => return Some(None),
        _ => return None,
    }))
}

fn environment_column(field: &str) -> Option<Option<environments::Column>> {
    use environments::Column as C;
    Some(Some(match field {
        "id" => C::Id,
        "projectId" => C::ProjectId,
        "name" => C::Name,
        "domain" => C::Domain,
        "replicas" => C::Replicas,
        "provisionedAt" => C::ProvisionedAt,
        "createdAt" => C::CreatedAt,
        "updatedAt" => C::UpdatedAt,
        "__typename" => return Some(None),
        _ => return None,
    }))
}

fn service_column(field: &str) -> Option<Option<services::Column>> {
    use services::Column as C;
    Some(Some(match field {
        "id" => C::Id,
        "projectId" => C::ProjectId,
        "name" => C::Name,
        "port" => C::Port,
        "dockerfilePath" => C::DockerfilePath,
        "replicas" => C::Replicas,
        "resources" => C::Resources,
        "status" => C::Status,
        "latestImage" => C::LatestImage,
        "createdAt" => C::CreatedAt,
        "updatedAt" => C::UpdatedAt,
        // Read through the service's id.
        "overrides" => C::Id,
        "__typename" => return Some(None),
        _ => return None,
    }))
}

/// The selections of a connection's nodes (`nodes` and `edges { node }`).
fn nodes<'a>(look: &Lookahead<'a>) -> Vec<SelectionField<'a>> {
    let mut out = look.field("nodes").selection_fields();
    out.extend(look.field("edges").field("node").selection_fields());
    out
}

/// The sub-selections named `name` of `fields`.
fn children<'a>(fields: &[SelectionField<'a>], name: &str) -> Vec<SelectionField<'a>> {
    fields
        .iter()
        .flat_map(|f| f.selection_set())
        .filter(|f| f.name() == name)
        .collect()
}

/// The projects of the caller's organisation for the `projects` field whose
/// context is `ctx`, with the nested environments and services the
/// selection asks for, in one statement scoped to the organisation.
/// `limit` `None` reads them all.
pub async fn projects(
    ctx: &Context<'_>,
    after: Option<Uuid>,
    limit: Option<u64>,
) -> Result<Vec<Project>> {
    let look = ctx.look_ahead();
    let nodes = nodes(&look);
    let wanted = |name: &str| Some(children(&nodes, name)).filter(|f| !f.is_empty());
    let nested = Children {
        environments: wanted("environments").map(|f| columns(&f, environment_column)),
        services: wanted("services").map(|f| columns(&f, service_column)),
    };
    let rows = listing::page(
        ctx.data_unchecked::<Reads>(),
        domain_ctx(ctx)?,
        after,
        limit,
        &columns(&nodes, project_column),
        &nested,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            Project(
                r.project,
                Prefetched {
                    environments: r.environments,
                    services: r.services,
                },
            )
        })
        .collect())
}

/// One response key of a compiled selection and the field behind it.
#[derive(Debug)]
pub(super) struct Out {
    pub(super) key: String,
    /// `"key":`, written once.
    pub(super) prefix: Vec<u8>,
    pub(super) name: String,
    pub(super) sub: Vec<Out>,
}

/// Flattens a selection set (fragments in place of their spreads) into
/// response keys; `None` for what only the executor handles: directives,
/// arguments, a response key given twice.
pub(super) fn compile(set: &SelectionSet, fragments: &Fragments, out: &mut Vec<Out>) -> Option<()> {
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => {
                let f = &f.node;
                if !f.directives.is_empty() || !f.arguments.is_empty() {
                    return None;
                }
                let key = f.response_key().node.to_string();
                if out.iter().any(|o| o.key == key) {
                    return None;
                }
                let mut sub = Vec::new();
                compile(&f.selection_set.node, fragments, &mut sub)?;
                let mut prefix = serde_json::to_vec(&key).ok()?;
                prefix.push(b':');
                out.push(Out {
                    key,
                    prefix,
                    name: f.name.node.to_string(),
                    sub,
                });
            }
            Selection::FragmentSpread(s) => {
                if !s.node.directives.is_empty() {
                    return None;
                }
                let f = fragments.get(&s.node.fragment_name.node)?;
                compile(&f.node.selection_set.node, fragments, out)?;
            }
            Selection::InlineFragment(f) => {
                if !f.node.directives.is_empty() {
                    return None;
                }
                compile(&f.node.selection_set.node, fragments, out)?;
            }
        }
    }
    Some(())
}

pub type Fragments = std::collections::HashMap<Name, Positioned<FragmentDefinition>>;

/// Columns of `fields`, each known to `column_of` and without a
/// sub-selection unless `nested` allows it.
fn known<C: Copy>(
    fields: &[Out],
    column_of: impl Fn(&str) -> Option<Option<C>>,
    nested: &[&str],
) -> Option<Vec<C>> {
    let mut out = Vec::new();
    for f in fields {
        if f.sub.is_empty() == nested.contains(&f.name.as_str()) {
            return None;
        }
        if let Some(c) = column_of(&f.name)? {
            out.push(c);
        }
    }
    Some(out)
}

/// Checks that `fields` are among `names`, a sub-selection exactly where
/// `objects` says.
fn only(fields: &[Out], names: &[&str], objects: &[&str]) -> Option<()> {
    fields
        .iter()
        .all(|f| {
            names.contains(&f.name.as_str())
                && f.sub.is_empty() != objects.contains(&f.name.as_str())
        })
        .then_some(())
}

/// The only field of `document`'s query operation `name` (the document's
/// only operation), when it is `projects` and no directive applies.
pub fn projects_field<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Field> {
    root_field(document, name, OperationType::Query, "projects")
}

/// The only field of `document`'s operation `name` (the document's only
/// operation), when the operation is a `ty` and the field is `field`, and
/// no directive applies.
pub(super) fn root_field<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
    ty: OperationType,
    field: &str,
) -> Option<&'a Field> {
    let op = match (&document.operations, name) {
        (DocumentOperations::Single(op), None) => op,
        (DocumentOperations::Multiple(ops), _) if ops.len() == 1 => {
            let (n, op) = ops.iter().next()?;
            if name.is_some_and(|name| name != n.as_str()) {
                return None;
            }
            op
        }
        _ => return None,
    };
    let op = &op.node;
    if op.ty != ty || !op.directives.is_empty() {
        return None;
    }
    let [item] = &op.selection_set.node.items[..] else {
        return None;
    };
    let Selection::Field(found) = &item.node else {
        return None;
    };
    let found = &found.node;
    (found.name.node == field && found.directives.is_empty()).then_some(found)
}

/// A `projects` connection's selection compiled once, for writing it as
/// JSON straight from the store's rows, without one resolver call per
/// field: the REST list of a big organisation, and `projects` queries the
/// executor has validated. It writes exactly the fields the resolvers of
/// `ProjectConnection`, [`Project`], `Environment` and `Service` serve, the
/// same way; any other selection is the executor's.
#[derive(Debug)]
pub struct ListPlan {
    connection: Vec<Out>,
    columns: Vec<projects::Column>,
    environments: Option<Vec<environments::Column>>,
    services: Option<Vec<services::Column>>,
}

impl ListPlan {
    /// The plan for a `projects` field's selection set.
    pub fn connection(set: &SelectionSet, fragments: &Fragments) -> Option<ListPlan> {
        let mut connection = Vec::new();
        compile(set, fragments, &mut connection)?;
        only(
            &connection,
            &["nodes", "edges", "pageInfo", "__typename"],
            &["nodes", "edges", "pageInfo"],
        )?;
        let mut projects: Vec<&[Out]> = Vec::new();
        for f in &connection {
            match f.name.as_str() {
                "nodes" => projects.push(&f.sub),
                "edges" => {
                    only(&f.sub, &["cursor", "node", "__typename"], &["node"])?;
                    projects.extend(
                        f.sub
                            .iter()
                            .filter(|g| g.name == "node")
                            .map(|g| &g.sub[..]),
                    );
                }
                "pageInfo" => only(
                    &f.sub,
                    &[
                        "hasNextPage",
                        "hasPreviousPage",
                        "startCursor",
                        "endCursor",
                        "__typename",
                    ],
                    &[],
                )?,
                _ => {}
            }
        }
        let mut plan = ListPlan {
            connection: Vec::new(),
            columns: Vec::new(),
            environments: None,
            services: None,
        };
        for fields in projects {
            // Nested lists other than these two, and objects, are the executor's.
            add_columns(
                &mut plan.columns,
                known(fields, project_column, &["environments", "services"])?,
            );
            for f in fields {
                match f.name.as_str() {
                    "environments" => add_columns(
                        plan.environments.get_or_insert_default(),
                        known(&f.sub, environment_column, &[])?,
                    ),
                    "services" => add_columns(
                        plan.services.get_or_insert_default(),
                        known(&f.sub, service_column, &[])?,
                    ),
                    _ => {}
                }
            }
        }
        plan.connection = connection;
        Some(plan)
    }

    /// The plan for the REST operation `{ result: projects(…) { nodes { … } } }`
    /// of `document` (its arguments are ignored: every project is read).
    pub fn compile(document: &ExecutableDocument) -> Option<ListPlan> {
        let root = projects_field(document, None)?;
        let plan = Self::connection(&root.selection_set.node, &document.fragments)?;
        plan.connection
            .iter()
            .any(|f| f.name == "nodes")
            .then_some(plan)
    }

    async fn rows(
        &self,
        db: &Reads,
        ctx: &Ctx,
        after: Option<Uuid>,
        limit: Option<u64>,
    ) -> Result<Vec<listing::ProjectRow>> {
        listing::page(
            db,
            ctx,
            after,
            limit,
            &Some(self.columns.clone()),
            &Children {
                environments: self.environments.clone().map(Some),
                services: self.services.clone().map(Some),
            },
        )
        .await
    }

    /// Every project of the caller's organisation, as the JSON array of
    /// the `nodes` selection.
    pub async fn write_all(&self, db: &Reads, ctx: &Ctx) -> Result<Vec<u8>> {
        let rows = self.rows(db, ctx, None, None).await?;
        let nodes = self.connection.iter().find(|f| f.name == "nodes");
        let fields = nodes.map(|f| &f.sub[..]).unwrap_or_default();
        let mut out = Vec::with_capacity(rows.len() * 1024);
        list(&mut out, &rows, |out, row| write_project(out, row, fields));
        Ok(out)
    }

    /// One page (`first` after `after`) as the JSON of the connection.
    pub async fn write_page(
        &self,
        db: &Reads,
        ctx: &Ctx,
        first: u64,
        after: Option<Uuid>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let mut rows = self.rows(db, ctx, after, Some(first + 1)).await?;
        let has_next = rows.len() as u64 > first;
        rows.truncate(first as usize);
        let cursor = |row: Option<&listing::ProjectRow>| row.map(|r| r.project.id.to_string());
        object(out, &self.connection, |out, f| match f.name.as_str() {
            "nodes" => list(out, &rows, |out, row| write_project(out, row, &f.sub)),
            "edges" => list(out, &rows, |out, row| {
                object(out, &f.sub, |out, g| match g.name.as_str() {
                    "cursor" => put_id(out, &row.project.id),
                    "node" => write_project(out, row, &g.sub),
                    _ => put(out, "ProjectEdge"),
                })
            }),
            "pageInfo" => object(out, &f.sub, |out, g| match g.name.as_str() {
                "hasNextPage" => put(out, &has_next),
                "hasPreviousPage" => put(out, &after.is_some()),
                "startCursor" => put(out, &cursor(rows.first())),
                "endCursor" => put(out, &cursor(rows.last())),
                _ => put(out, "PageInfo"),
            }),
            _ => put(out, "ProjectConnection"),
        });
        Ok(())
    }
}

/// Writes one JSON value (strings escaped as JSON requires).
pub(super) fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("a value of ours serialises");
}

/// `"2026-03-09T11:00:00.123Z"`, as the `DateTime` scalar writes it.
pub(super) fn put_time(out: &mut Vec<u8>, t: &chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, Timelike};
    // The fields of the UTC time, read without converting for each.
    let t = t.naive_utc();
    let year = t.year();
    if !(0..=9999).contains(&year) || t.nanosecond() >= 1_000_000_000 {
        // Years of other widths and leap seconds: chrono's own writing.
        return put(
            out,
            &t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
    }
    let two = |out: &mut Vec<u8>, n: u32| {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8])
    };
    out.push(b'"');
    two(out, year as u32 / 100);
    two(out, year as u32 % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    let ms = t.nanosecond() / 1_000_000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100 % 10) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
        b'"',
    ]);
}

/// A UUID as a JSON string, without an allocation.
pub(super) fn put_id(out: &mut Vec<u8>, id: &Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

/// Writes `{"key": value, …}` in the order of `fields`.
pub(super) fn object(out: &mut Vec<u8>, fields: &[Out], mut value: impl FnMut(&mut Vec<u8>, &Out)) {
    out.push(b'{');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&f.prefix);
        value(out, f);
    }
    out.push(b'}');
}

fn list<T>(out: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(out, t);
    }
    out.push(b']');
}

fn write_project(out: &mut Vec<u8>, row: &listing::ProjectRow, fields: &[Out]) {
    let p = &row.project;
    object(out, fields, |out, f| match f.name.as_str() {
        "id" => put_id(out, &p.id),
        "slug" => put(out, &p.slug),
        "name" => put(out, &p.name),
        "description" => put(out, &p.description),
        "isActive" => put(out, &p.is_active),
        "gitRepository" => put(out, &p.git_repository),
        "gitBranch" => put(out, &p.git_branch),
        "buildPack" => put(out, &p.build_pack),
        "dockerImage" => put(out, &p.docker_image),
        "port" => put(out, &p.port),
        "domain" => put(out, &p.domain),
        "createdAt" => put_time(out, &p.created_at),
        "updatedAt" => put_time(out, &p.updated_at),
        "environments" => list(
            out,
            row.environments.as_deref().unwrap_or_default(),
            |out, e| write_environment(out, e, &f.sub),
        ),
        "services" => list(
            out,
            row.services.as_deref().unwrap_or_default(),
            |out, s| write_service(out, s, &f.sub),
        ),
        "__typename" => put(out, "Project"),
        other => unreachable!("compiled plans hold known fields, not {other}"),
    });
}

fn write_environment(out: &mut Vec<u8>, e: &environments::Model, fields: &[Out]) {
    object(out, fields, |out, f| match f.name.as_str() {
        "id" => put_id(out, &e.id),
        "projectId" => put_id(out, &e.project_id),
        "name" => put(out, &e.name),
        "domain" => put(out, &e.domain),
        "replicas" => put(out, &e.replicas),
        "provisionedAt" => match &e.provisioned_at {
            Some(t) => put_time(out, t),
            None => put(out, &()),
        },
        "createdAt" => put_time(out, &e.created_at),
        "updatedAt" => put_time(out, &e.updated_at),
        "__typename" => put(out, "Environment"),
        other => unreachable!("compiled plans hold known fields, not {other}"),
    });
}

fn write_service(out: &mut Vec<u8>, s: &services::Model, fields: &[Out]) {
    object(out, fields, |out, f| match f.name.as_str() {
        "id" => put_id(out, &s.id),
        "projectId" => put_id(out, &s.project_id),
        "name" => put(out, &s.name),
        "port" => put(out, &s.port),
        "dockerfilePath" => put(out, &s.dockerfile_path),
        "replicas" => put(out, &s.replicas),
        "status" => put(out, &s.status),
        "latestImage" => put(out, &s.latest_image),
        "createdAt" => put_time(out, &s.created_at),
        "updatedAt" => put_time(out, &s.updated_at),
        "__typename" => put(out, "Service"),
        other => unreachable!("compiled plans hold known fields, not {other}"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn times_and_ids_are_written_as_the_scalars_write_them() {
        let times = [
            Utc.with_ymd_and_hms(2026, 3, 9, 11, 0, 0).unwrap(),
            Utc.timestamp_millis_opt(1_790_000_123_456).unwrap(),
            Utc.timestamp_nanos(1_790_000_123_456_789_123),
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
        ];
        for t in times {
            let mut out = Vec::new();
            put_time(&mut out, &t);
            let expected =
                serde_json::to_vec(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        let id = Uuid::new_v4();
        let mut out = Vec::new();
        put_id(&mut out, &id);
        assert_eq!(out, serde_json::to_vec(&id.to_string()).unwrap());
    }
}
