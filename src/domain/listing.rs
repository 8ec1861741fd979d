//! Lists of projects with their environments and services, reading only
//! the columns the caller will use, in one statement whatever the number of
//! projects: the nested lists come back as JSON arrays built by the store
//! (`ARRAY` on PostgreSQL, `json_group_array` on SQLite), one correlated
//! subquery per kind of child, ordered by id like the projects.
//!
//! Rows come back as whole models; a column that was not read holds its
//! type's default, so callers name every column they read.

use sea_orm::{
    ColumnTrait, ColumnType, ConnectionTrait, DbBackend, DbErr, IdenStatic, Iterable, QueryResult,
    Statement,
};
use serde_json::Value as Json;
use uuid::Uuid;

use super::Ctx;
use crate::error::Result;
use entity::{environments, projects, services};

/// A model that can be read from a row holding only some of its columns.
pub trait Partial: Sized {
    type Column: ColumnTrait;
    /// Reads the row whose columns are `columns`, in that order.
    fn decode(row: &QueryResult, columns: &[Self::Column]) -> std::result::Result<Self, DbErr>;
    /// Reads a JSON array holding `columns`, in that order.
    fn from_json(row: Json, columns: &[Self::Column]) -> std::result::Result<Self, DbErr>;
}

fn json_error(e: serde_json::Error) -> DbErr {
    DbErr::Json(e.to_string())
}

/// Cell `i` of `row`. A PostgreSQL row is read through its driver at
/// once: the general path builds (and drops) an error text for every
/// NULL, which for lists of thousands of rows was a good part of the cost.
fn cell<T>(row: &QueryResult, i: usize) -> std::result::Result<T, DbErr>
where
    T: sea_orm::TryGetable
        + for<'r> sea_orm::sqlx::Decode<'r, sea_orm::sqlx::Postgres>
        + sea_orm::sqlx::Type<sea_orm::sqlx::Postgres>,
{
    use sea_orm::sqlx::Row;
    match row.try_as_pg_row() {
        Some(pg) => pg
            .try_get::<T, usize>(i)
            .map_err(|e| DbErr::Type(format!("column {i}: {e}"))),
        None => row.try_get_by_index(i),
    }
}

macro_rules! partial {
    ($model:path, $column:ident { $($field:ident: $variant:ident),* $(,)? }) => {
        impl Partial for $model {
            type Column = $column;
            fn decode(row: &QueryResult, columns: &[$column]) -> std::result::Result<Self, DbErr> {
                Ok(Self {
                    $($field: match columns.iter().position(|c| matches!(c, $column::$variant)) {
                        Some(i) => cell(row, i)?,
                        None => Default::default(),
                    },)*
                })
            }
            fn from_json(row: Json, columns: &[$column]) -> std::result::Result<Self, DbErr> {
                let Json::Array(mut values) = row else {
                    return Err(DbErr::Json("a nested row is not an array".into()));
                };
                Ok(Self {
                    $($field: match columns.iter().position(|c| matches!(c, $column::$variant)) {
                        Some(i) => serde_json::from_value(
                            values.get_mut(i).map(Json::take).unwrap_or_default(),
                        ).map_err(json_error)?,
                        None => Default::default(),
                    },)*
                })
            }
        }
    };
}

use environments::Column as EnvironmentColumn;
use projects::Column as ProjectColumn;
use services::Column as ServiceColumn;

partial!(
    projects::Model,
    ProjectColumn {
        id: Id,
        organization_id: OrganizationId,
        slug: Slug,
        name: Name,
        description: Description,
        is_active: IsActive,
        git_repository: GitRepository,
        git_branch: GitBranch,
        build_pack: BuildPack,
        docker_image: DockerImage,
        port: Port,
        domain: Domain,
        created_at: CreatedAt,
        updated_at: UpdatedAt,
    }
);
partial!(
    environments::Model,
    EnvironmentColumn {
        id: Id,
        project_id: ProjectId,
        name: Name,
        domain: Domain,
        replicas: Replicas,
        provisioned_at: ProvisionedAt,
        created_at: CreatedAt,
        updated_at: UpdatedAt,
    }
);
partial!(
    services::Model,
    ServiceColumn {
        id: Id,
        project_id: ProjectId,
        name: Name,
        port: Port,
        dockerfile_path: DockerfilePath,
        replicas: Replicas,
        resources: Resources,
        status: Status,
        latest_image: LatestImage,
        created_at: CreatedAt,
        updated_at: UpdatedAt,
    }
);

/// Columns to read; `None` reads all of them.
pub type Columns<C> = Option<Vec<C>>;

/// Adds each column of `more` to `into` unless it is there.
pub fn add_columns<C: IdenStatic>(into: &mut Vec<C>, more: impl IntoIterator<Item = C>) {
    for c in more {
        if !into.iter().any(|i| i.as_str() == c.as_str()) {
            into.push(c);
        }
    }
}

/// `always` and then `columns`, each once.
fn with<C: ColumnTrait + IdenStatic>(columns: &Columns<C>, always: &[C]) -> Columns<C> {
    columns.as_ref().map(|cols| {
        let mut out: Vec<C> = always.to_vec();
        add_columns(&mut out, cols.iter().copied());
        out
    })
}

/// The nested lists to read with a page: each kind's columns, when selected.
#[derive(Debug, Default)]
pub struct Children {
    pub environments: Option<Columns<EnvironmentColumn>>,
    pub services: Option<Columns<ServiceColumn>>,
}

/// A project with the nested lists that were asked for.
pub struct ProjectRow {
    pub project: projects::Model,
    pub environments: Option<Vec<environments::Model>>,
    pub services: Option<Vec<services::Model>>,
}

/// A statement's values, with placeholders in the backend's style.
struct Sql {
    backend: DbBackend,
    values: Vec<sea_orm::Value>,
}

impl Sql {
    fn bind(&mut self, v: impl Into<sea_orm::Value>) -> String {
        self.values.push(v.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".into(),
        }
    }
}

/// Every column of `E` when `columns` is `None`; else those, with `always` first.
fn resolved<C: ColumnTrait + IdenStatic + Iterable>(columns: &Columns<C>, always: &[C]) -> Vec<C> {
    with(columns, always).unwrap_or_else(|| C::iter().collect())
}

/// `c."col"` as a JSON value of the backend: SQLite keeps UUIDs as blobs
/// and JSON documents as text, so they are turned into JSON first.
fn json_column<C: ColumnTrait>(backend: DbBackend, column: &C) -> String {
    let name = format!("c.\"{}\"", column.as_str());
    match (backend, column.def().get_column_type()) {
        (DbBackend::Sqlite, ColumnType::Uuid) => format!("lower(hex({name}))"),
        (DbBackend::Sqlite, ColumnType::Json | ColumnType::JsonBinary) => format!("json({name})"),
        _ => name,
    }
}

/// The correlated subquery that reads one kind of child of `p` as a JSON
/// array of arrays (one per row, cells in the order of `columns`), ordered
/// by id. On PostgreSQL an `ARRAY(…)` of an ordered subquery, which keeps
/// the order the `(project_id, id)` index gives (an ordered `json_agg`
/// sorts every project's rows again); on SQLite an ordered
/// `json_group_array`.
fn per_project<C: ColumnTrait>(backend: DbBackend, table: &str, columns: &[C]) -> String {
    let cells = columns
        .iter()
        .map(|c| json_column(backend, c))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = format!("FROM \"{table}\" c WHERE c.\"project_id\" = p.\"id\"");
    match backend {
        DbBackend::Postgres => format!(
            "array_to_json(ARRAY(SELECT json_build_array({cells}) {rows} ORDER BY c.\"id\"))::text"
        ),
        _ => format!("(SELECT json_group_array(json_array({cells}) ORDER BY c.\"id\") {rows})"),
    }
}

/// Reads one nested list from its JSON text.
fn children<M: Partial>(text: &str, columns: &[M::Column]) -> Result<Vec<M>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Json> = serde_json::from_str(text).map_err(json_error)?;
    Ok(rows
        .into_iter()
        .map(|r| M::from_json(r, columns))
        .collect::<std::result::Result<_, _>>()?)
}

/// The caller's projects by id ascending (after `after`, at most `limit`),
/// each with the nested lists `children` asks for: one statement, scoped
/// to the caller's organisation. Without a limit, every project: see
/// [`whole`].
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    after: Option<Uuid>,
    limit: Option<u64>,
    columns: &Columns<ProjectColumn>,
    wanted: &Children,
) -> Result<Vec<ProjectRow>> {
    let backend = conn.get_database_backend();
    // The id keys the nested lists and the cursor.
    let columns = resolved(columns, &[ProjectColumn::Id]);
    let Some(limit) = limit else {
        // Plain rows, grouped here by their project id.
        let env_columns = wanted
            .environments
            .as_ref()
            .map(|c| resolved(c, &[EnvironmentColumn::Id, EnvironmentColumn::ProjectId]));
        let svc_columns = wanted
            .services
            .as_ref()
            .map(|c| resolved(c, &[ServiceColumn::Id, ServiceColumn::ProjectId]));
        return whole(conn, ctx, &columns, env_columns, svc_columns).await;
    };
    // Nested rows arrive under their project: only what was asked for.
    let env_columns = wanted.environments.as_ref().map(|c| resolved(c, &[]));
    let svc_columns = wanted.services.as_ref().map(|c| resolved(c, &[]));
    let mut select: Vec<String> = columns
        .iter()
        .map(|c| format!("p.\"{}\"", c.as_str()))
        .collect();
    if let Some(cols) = &env_columns {
        select.push(per_project(backend, "environments", cols));
    }
    if let Some(cols) = &svc_columns {
        select.push(per_project(backend, "services", cols));
    }
    let mut sql = Sql {
        backend,
        values: Vec::new(),
    };
    let org = sql.bind(ctx.org_id());
    let mut text = format!(
        "SELECT {} FROM \"projects\" p WHERE p.\"organization_id\" = {org}",
        select.join(", ")
    );
    if let Some(a) = after {
        text += &format!(" AND p.\"id\" > {}", sql.bind(a));
    }
    // A number of our own, written out so the plan knows it.
    text += &format!(" ORDER BY p.\"id\" ASC LIMIT {limit}");
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(backend, text, sql.values))
        .await?;
    rows.iter()
        .map(|row| {
            // The nested lists follow the project's columns.
            let mut next = columns.len();
            let mut nested_at = |present: bool| -> Result<Option<String>> {
                if !present {
                    return Ok(None);
                }
                let text: Option<String> = row.try_get_by_index(next)?;
                next += 1;
                Ok(Some(text.unwrap_or_default()))
            };
            let envs = nested_at(env_columns.is_some())?;
            let svcs = nested_at(svc_columns.is_some())?;
            Ok(ProjectRow {
                project: projects::Model::decode(row, &columns)?,
                environments: match (&env_columns, envs) {
                    (Some(cols), Some(text)) => Some(children(&text, cols)?),
                    _ => None,
                },
                services: match (&svc_columns, svcs) {
                    (Some(cols), Some(text)) => Some(children(&text, cols)?),
                    _ => None,
                },
            })
        })
        .collect()
}

/// Rows of `query` holding `columns`, in order.
async fn rows_of<C: ConnectionTrait, M: Partial>(
    conn: &C,
    text: String,
    values: Vec<sea_orm::Value>,
    columns: &[M::Column],
) -> Result<Vec<M>> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(backend, text, values))
        .await?;
    Ok(rows
        .iter()
        .map(|r| M::decode(r, columns))
        .collect::<std::result::Result<_, _>>()?)
}

/// `SELECT <columns> FROM <table> c WHERE <where>` with the organisation
/// bound once, `ORDER BY c.id` if `ordered`.
fn select_sql<C: ColumnTrait>(
    backend: DbBackend,
    ctx: &Ctx,
    table: &str,
    columns: &[C],
    ordered: bool,
    filter: impl Fn(&str) -> String,
) -> (String, Vec<sea_orm::Value>) {
    let mut sql = Sql {
        backend,
        values: Vec::new(),
    };
    let org = sql.bind(ctx.org_id());
    let cols = columns
        .iter()
        .map(|c| format!("c.\"{}\"", c.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!("SELECT {cols} FROM \"{table}\" c WHERE {}", filter(&org));
    if ordered {
        text += " ORDER BY c.\"id\" ASC";
    }
    (text, sql.values)
}

/// Every project of the organisation with its nested lists: plain rows,
/// one statement per kind, side by side (for thousands of rows the store
/// spends less on them than on building JSON). The store orders the
/// projects; each project's children are put in order here, which costs
/// less than the store sorting all of them by id.
async fn whole<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    columns: &[ProjectColumn],
    env_columns: Option<Vec<EnvironmentColumn>>,
    svc_columns: Option<Vec<ServiceColumn>>,
) -> Result<Vec<ProjectRow>> {
    let backend = conn.get_database_backend();
    let of_org = |org: &str| {
        format!(
            "c.\"project_id\" IN (SELECT q.\"id\" FROM \"projects\" q WHERE q.\"organization_id\" = {org})"
        )
    };
    let (text, values) = select_sql(backend, ctx, "projects", columns, true, |org| {
        format!("c.\"organization_id\" = {org}")
    });
    let projects = rows_of::<_, projects::Model>(conn, text, values, columns);
    let envs = async {
        match &env_columns {
            Some(cols) => {
                let (text, values) = select_sql(backend, ctx, "environments", cols, false, of_org);
                rows_of::<_, environments::Model>(conn, text, values, cols)
                    .await
                    .map(Some)
            }
            None => Ok(None),
        }
    };
    let svcs = async {
        match &svc_columns {
            Some(cols) => {
                let (text, values) = select_sql(backend, ctx, "services", cols, false, of_org);
                rows_of::<_, services::Model>(conn, text, values, cols)
                    .await
                    .map(Some)
            }
            None => Ok(None),
        }
    };
    let (projects, envs, svcs) = tokio::try_join!(projects, envs, svcs)?;
    let mut envs = envs.map(|rows| by_project(rows, |r| r.project_id, |r| r.id));
    let mut svcs = svcs.map(|rows| by_project(rows, |r| r.project_id, |r| r.id));
    Ok(projects
        .into_iter()
        .map(|project| ProjectRow {
            environments: envs
                .as_mut()
                .map(|m| m.remove(&project.id).unwrap_or_default()),
            services: svcs
                .as_mut()
                .map(|m| m.remove(&project.id).unwrap_or_default()),
            project,
        })
        .collect())
}

/// Rows grouped by their project, each group in id order.
fn by_project<V>(
    rows: Vec<V>,
    project: impl Fn(&V) -> Uuid,
    id: impl Fn(&V) -> Uuid,
) -> std::collections::HashMap<Uuid, Vec<V>> {
    let mut groups = group(rows, project);
    for rows in groups.values_mut() {
        rows.sort_unstable_by_key(&id);
    }
    groups
}

/// Groups rows by a key, keeping their order.
pub fn group<K: std::hash::Hash + Eq, V>(
    rows: Vec<V>,
    key: impl Fn(&V) -> K,
) -> std::collections::HashMap<K, Vec<V>> {
    let mut map: std::collections::HashMap<K, Vec<V>> = std::collections::HashMap::new();
    for row in rows {
        map.entry(key(&row)).or_default().push(row);
    }
    map
}
