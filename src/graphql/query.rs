//! Query root.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Object, OutputType, Result};
use uuid::Uuid;

use super::types::*;
use super::{db, domain_ctx, keyring};
use crate::domain::{self, parse_id};
use crate::error::Error;

/// Largest page a connection returns.
pub const MAX_PAGE: i32 = 100;
/// Page size when `first` is not given.
pub const DEFAULT_PAGE: i32 = 20;

/// Set on a request by the REST layer for a bare-array endpoint: its
/// connection returns every row at once (the page size is ignored).
pub struct Unpaged;

/// Validates `first`/`after` and returns the row limit (`None`: every row,
/// for an [`Unpaged`] request) and the cursor.
fn page_args(
    ctx: &Context<'_>,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<(Option<u64>, Option<Uuid>), Error> {
    let first = first.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&first) {
        return Err(Error::field(
            "first",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    let after = after.map(|a| parse_id("after", a)).transpose()?;
    if ctx.data_opt::<Unpaged>().is_some() {
        return Ok((None, after));
    }
    Ok((Some(first as u64), after))
}

/// One more than the limit, to learn whether a next page exists.
fn fetch_limit(limit: Option<u64>) -> Option<u64> {
    limit.map(|l| l + 1)
}

/// Builds a connection from `limit + 1` fetched rows; ids are the cursors.
fn connection<M, T: OutputType>(
    mut rows: Vec<M>,
    limit: Option<u64>,
    after: Option<Uuid>,
    id: impl Fn(&M) -> Uuid,
    wrap: impl Fn(M) -> T,
) -> Connection<String, T> {
    let has_next = limit.is_some_and(|l| rows.len() as u64 > l);
    if let Some(l) = limit {
        rows.truncate(l as usize);
    }
    let mut conn = Connection::new(after.is_some(), has_next);
    conn.edges.extend(
        rows.into_iter()
            .map(|r| Edge::new(id(&r).to_string(), wrap(r))),
    );
    conn
}

#[derive(Default)]
pub struct QueryRoot;

/// Where the caller stands against the API's rate limits.
#[derive(async_graphql::SimpleObject)]
pub struct RateLimit {
    /// Points per minute: the tighter of the caller's and its
    /// organisation's limits.
    pub limit: u64,
    /// Points left in this minute, after this request.
    pub remaining: u64,
    /// Whole seconds until the minute resets.
    pub reset_seconds: u64,
    /// What this request cost (asking for `rateLimit` alone costs nothing).
    pub cost: u64,
}

#[Object]
impl QueryRoot {
    /// Where the caller stands against the rate limits, free of charge;
    /// null when the server runs without them (or over the websocket).
    async fn rate_limit(&self, ctx: &Context<'_>) -> Option<RateLimit> {
        ctx.data_opt::<crate::ratelimit::Standing>()
            .map(|s| RateLimit {
                limit: s.limit,
                remaining: s.remaining,
                reset_seconds: s.reset_seconds,
                cost: s.cost,
            })
    }

    /// The caller's identity and organisation.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        let c = domain_ctx(ctx)?;
        Ok(Viewer {
            actor_type: c.principal.actor.kind().to_string(),
            actor_id: c.principal.actor.id(),
            role: c.principal.role,
            org_id: c.org_id(),
        })
    }

    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        let c = domain_ctx(ctx)?;
        Ok(Organization(
            domain::organizations::get(db(ctx), c.org_id()).await?,
        ))
    }

    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, ApiKey>> {
        let (limit, after) = page_args(ctx, first, after.as_deref())?;
        let rows =
            domain::api_keys::page(db(ctx), domain_ctx(ctx)?, after, fetch_limit(limit)).await?;
        Ok(connection(rows, limit, after, |r| r.id, ApiKey))
    }

    /// The organisation's projects, oldest first.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn projects(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Project>> {
        let (limit, after) = page_args(ctx, first, after.as_deref())?;
        let rows = super::plan::projects(ctx, after, fetch_limit(limit)).await?;
        Ok(connection(rows, limit, after, |p| p.0.id, |p| p))
    }

    /// A project by UUID or slug.
    async fn project(&self, ctx: &Context<'_>, id: String) -> Result<Project> {
        Ok(Project::of(
            domain::projects::resolve(db(ctx), domain_ctx(ctx)?, &id).await?,
        ))
    }

    async fn environments(
        &self,
        ctx: &Context<'_>,
        project_id: String,
    ) -> Result<Vec<Environment>> {
        let p = domain::projects::resolve(db(ctx), domain_ctx(ctx)?, &project_id).await?;
        let rows = domain::environments::list(db(ctx), p.id).await?;
        Ok(rows.into_iter().map(Environment).collect())
    }

    async fn environment(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        id: ID,
    ) -> Result<Environment> {
        let p = domain::projects::resolve(db(ctx), domain_ctx(ctx)?, &project_id).await?;
        Ok(Environment(
            domain::environments::get(db(ctx), p.id, &id).await?,
        ))
    }

    async fn services(&self, ctx: &Context<'_>, project_id: String) -> Result<Vec<Service>> {
        let p = domain::projects::resolve(db(ctx), domain_ctx(ctx)?, &project_id).await?;
        let rows = domain::services::list(db(ctx), p.id).await?;
        Ok(rows.into_iter().map(Service).collect())
    }

    /// A service by name.
    async fn service(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        name: String,
    ) -> Result<Service> {
        let p = domain::projects::resolve(db(ctx), domain_ctx(ctx)?, &project_id).await?;
        Ok(Service(domain::services::get(db(ctx), p.id, &name).await?))
    }

    /// Env vars of one environment: by `envId`, or by name with `envType` (production by default).
    async fn env_vars(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: Option<String>,
        env_id: Option<ID>,
    ) -> Result<Vec<EnvVar>> {
        let vars = domain::env_vars::list(
            db(ctx),
            keyring(ctx),
            domain_ctx(ctx)?,
            &project_id,
            env_type.as_deref(),
            env_id.as_ref().map(|i| i.as_str()),
        )
        .await?;
        Ok(vars.into_iter().map(EnvVar).collect())
    }

    async fn config_entries(
        &self,
        ctx: &Context<'_>,
        project_id: String,
    ) -> Result<Vec<ConfigEntry>> {
        let rows = domain::config_entries::list(db(ctx), domain_ctx(ctx)?, &project_id).await?;
        Ok(rows.into_iter().map(ConfigEntry).collect())
    }

    async fn config_entry(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        key: String,
    ) -> Result<ConfigEntry> {
        Ok(ConfigEntry(
            domain::config_entries::get(db(ctx), domain_ctx(ctx)?, &project_id, &key).await?,
        ))
    }

    /// The audit log, newest first, optionally for one project.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        project_id: Option<String>,
    ) -> Result<Connection<String, AuditEvent>> {
        let c = domain_ctx(ctx)?;
        let (limit, after) = page_args(ctx, first, after.as_deref())?;
        let project = match project_id {
            // Events outlive their project, so a deleted project's UUID still filters.
            Some(p) => Some(match Uuid::parse_str(&p) {
                Ok(id) => id,
                Err(_) => domain::projects::resolve(db(ctx), c, &p).await?.id,
            }),
            None => None,
        };
        let rows = domain::audit::page(db(ctx), c, project, after, fetch_limit(limit)).await?;
        Ok(connection(rows, limit, after, |r| r.id, AuditEvent))
    }
}
