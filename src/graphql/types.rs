//! GraphQL object types: thin views over the store's rows.

use async_graphql::{
    ComplexObject, Context, ID, Object, Result, Scalar, ScalarType, SimpleObject, Value,
};
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use super::loaders::Loaders;
use super::{db, domain_ctx, keyring};
use crate::auth::Role;
use crate::domain::{self, env_vars::VisibleVar, services::Resources};
use entity::{
    api_keys, audit_events, config_entries, environments, organizations, projects,
    service_environment_overrides, services,
};

/// An instant in UTC, written as RFC 3339 with a `Z` suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

#[Scalar(name = "DateTime")]
impl ScalarType for Timestamp {
    fn parse(value: Value) -> async_graphql::InputValueResult<Self> {
        match &value {
            Value::String(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| Timestamp(t.with_timezone(&Utc)))
                .map_err(|_| {
                    async_graphql::InputValueError::custom("expected an RFC 3339 date-time")
                }),
            _ => Err(async_graphql::InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

fn loaders<'a>(ctx: &Context<'a>) -> &'a Loaders {
    ctx.data_unchecked::<Loaders>()
}

fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp(t)
}

/// The caller's organisation.
pub struct Organization(pub organizations::Model);

#[Object]
impl Organization {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn created_at(&self) -> Timestamp {
        ts(self.0.created_at)
    }
}

/// An API key's metadata; the token itself is never shown again.
pub struct ApiKey(pub api_keys::Model);

#[Object]
impl ApiKey {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn role(&self) -> Option<Role> {
        Role::parse(&self.0.role)
    }
    /// The first characters of the token, to recognise it.
    async fn token_prefix(&self) -> &str {
        &self.0.token_prefix
    }
    async fn expires_at(&self) -> Option<Timestamp> {
        self.0.expires_at.map(ts)
    }
    async fn revoked_at(&self) -> Option<Timestamp> {
        self.0.revoked_at.map(ts)
    }
    async fn last_used_at(&self) -> Option<Timestamp> {
        self.0.last_used_at.map(ts)
    }
    async fn created_by(&self) -> Option<&str> {
        self.0.created_by.as_deref()
    }
    async fn created_at(&self) -> Timestamp {
        ts(self.0.created_at)
    }
}

/// A new API key and its plaintext token, shown only in this response.
#[derive(SimpleObject)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    pub token: String,
}

/// A project, with the nested lists its page already read (if any).
pub struct Project(pub projects::Model, pub Prefetched);

/// Nested lists read together with a page of projects.
#[derive(Default)]
pub struct Prefetched {
    pub environments: Option<Vec<environments::Model>>,
    pub services: Option<Vec<services::Model>>,
}

impl Project {
    pub fn of(row: projects::Model) -> Project {
        Project(row, Prefetched::default())
    }
}

#[Object]
impl Project {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn is_active(&self) -> bool {
        self.0.is_active
    }
    async fn git_repository(&self) -> Option<&str> {
        self.0.git_repository.as_deref()
    }
    async fn git_branch(&self) -> Option<&str> {
        self.0.git_branch.as_deref()
    }
    async fn build_pack(&self) -> Option<&str> {
        self.0.build_pack.as_deref()
    }
    async fn docker_image(&self) -> Option<&str> {
        self.0.docker_image.as_deref()
    }
    async fn port(&self) -> Option<i32> {
        self.0.port
    }
    async fn domain(&self) -> Option<&str> {
        self.0.domain.as_deref()
    }
    async fn created_at(&self) -> Timestamp {
        ts(self.0.created_at)
    }
    async fn updated_at(&self) -> Timestamp {
        ts(self.0.updated_at)
    }
    #[graphql(complexity = "10 * child_complexity")]
    async fn environments(&self, ctx: &Context<'_>) -> Result<Vec<Environment>> {
        let rows = match &self.1.environments {
            Some(rows) => rows.clone(),
            None => loaders(ctx).environments.load(self.0.id).await?,
        };
        Ok(rows.into_iter().map(Environment).collect())
    }
    #[graphql(complexity = "10 * child_complexity")]
    async fn services(&self, ctx: &Context<'_>) -> Result<Vec<Service>> {
        let rows = match &self.1.services {
            Some(rows) => rows.clone(),
            None => loaders(ctx).services.load(self.0.id).await?,
        };
        Ok(rows.into_iter().map(Service).collect())
    }
    /// Env vars of one environment (production by default); secret values masked.
    #[graphql(complexity = "10 * child_complexity")]
    async fn env_vars(
        &self,
        ctx: &Context<'_>,
        env_type: Option<String>,
        env_id: Option<ID>,
    ) -> Result<Vec<EnvVar>> {
        let vars = domain::env_vars::list(
            db(ctx),
            keyring(ctx),
            domain_ctx(ctx)?,
            &self.0.id.to_string(),
            env_type.as_deref(),
            env_id.as_ref().map(|i| i.as_str()),
        )
        .await?;
        Ok(vars.into_iter().map(EnvVar).collect())
    }
    #[graphql(complexity = "10 * child_complexity")]
    async fn config(&self, ctx: &Context<'_>) -> Result<Vec<ConfigEntry>> {
        let rows =
            domain::config_entries::list(db(ctx), domain_ctx(ctx)?, &self.0.id.to_string()).await?;
        Ok(rows.into_iter().map(ConfigEntry).collect())
    }
}

pub struct Environment(pub environments::Model);

#[Object]
impl Environment {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn project_id(&self) -> ID {
        ID(self.0.project_id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn domain(&self) -> Option<&str> {
        self.0.domain.as_deref()
    }
    async fn replicas(&self) -> i32 {
        self.0.replicas
    }
    async fn provisioned_at(&self) -> Option<Timestamp> {
        self.0.provisioned_at.map(ts)
    }
    async fn created_at(&self) -> Timestamp {
        ts(self.0.created_at)
    }
    async fn updated_at(&self) -> Timestamp {
        ts(self.0.updated_at)
    }
}

pub struct Service(pub services::Model);

#[Object]
impl Service {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn project_id(&self) -> ID {
        ID(self.0.project_id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// `null` for background workers.
    async fn port(&self) -> Option<i32> {
        self.0.port
    }
    async fn dockerfile_path(&self) -> &str {
        &self.0.dockerfile_path
    }
    async fn replicas(&self) -> i32 {
        self.0.replicas
    }
    async fn resources(&self) -> Option<Resources> {
        Resources::from_json(&self.0.resources)
    }
    async fn status(&self) -> &str {
        &self.0.status
    }
    async fn latest_image(&self) -> Option<&str> {
        self.0.latest_image.as_deref()
    }
    async fn created_at(&self) -> Timestamp {
        ts(self.0.created_at)
    }
    async fn updated_at(&self) -> Timestamp {
        ts(self.0.updated_at)
    }
    /// Per-environment overrides of this service's settings.
    #[graphql(complexity = "10 * child_complexity")]
    async fn overrides(&self, ctx: &Context<'_>) -> Result<Vec<ServiceOverride>> {
        let rows = loaders(ctx).overrides.load(self.0.id).await?;
        Ok(rows.into_iter().map(ServiceOverride).collect())
    }
}

pub struct ServiceOverride(pub service_environment_overrides::Model);

#[Object]
impl ServiceOverride {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn service_id(&self) -> ID {
        ID(self.0.service_id.to_string())
    }
    async fn environment_id(&self) -> ID {
        ID(self.0.environment_id.to_string())
    }
    async fn replicas(&self) -> Option<i32> {
        self.0.replicas
    }
    async fn port(&self) -> Option<i32> {
        self.0.port
    }
    async fn resources(&self) -> Option<Resources> {
        Resources::from_json(&self.0.resources)
    }
    async fn docker_image(&self) -> Option<&str> {
        self.0.docker_image.as_deref()
    }
    async fn updated_at(&self) -> Timestamp {
        ts(self.0.updated_at)
    }
}

/// An env var; `value` is `***` when `secret` is true.
pub struct EnvVar(pub VisibleVar);

#[Object]
impl EnvVar {
    async fn key(&self) -> &str {
        &self.0.key
    }
    async fn value(&self) -> &str {
        &self.0.value
    }
    async fn secret(&self) -> bool {
        self.0.secret
    }
    async fn environment_id(&self) -> ID {
        ID(self.0.environment_id.to_string())
    }
}

pub struct ConfigEntry(pub config_entries::Model);

#[Object]
impl ConfigEntry {
    async fn key(&self) -> &str {
        &self.0.key
    }
    async fn value(&self) -> &str {
        &self.0.value
    }
    async fn updated_at(&self) -> Timestamp {
        ts(self.0.updated_at)
    }
}

pub struct AuditEvent(pub audit_events::Model);

#[Object]
impl AuditEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// `token`, `user` or `system`.
    async fn actor_type(&self) -> &str {
        &self.0.actor_type
    }
    async fn actor_id(&self) -> &str {
        &self.0.actor_id
    }
    async fn action(&self) -> &str {
        &self.0.action
    }
    async fn target_type(&self) -> &str {
        &self.0.target_type
    }
    async fn target_id(&self) -> Option<&str> {
        self.0.target_id.as_deref()
    }
    async fn project_id(&self) -> Option<ID> {
        self.0.project_id.map(|p| ID(p.to_string()))
    }
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    async fn details(&self) -> Option<async_graphql::Json<serde_json::Value>> {
        self.0.details.clone().map(async_graphql::Json)
    }
    async fn created_at(&self) -> Timestamp {
        ts(self.0.created_at)
    }
}

/// The answer to a delete.
#[derive(SimpleObject)]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

/// Who the caller is.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Viewer {
    pub actor_type: String,
    pub actor_id: String,
    pub role: Role,
    #[graphql(skip)]
    pub org_id: Uuid,
}

#[ComplexObject]
impl Viewer {
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        Ok(Organization(
            domain::organizations::get(db(ctx), self.org_id).await?,
        ))
    }
}
