//! Mutation root. Every mutation checks the caller's role in the domain.

use async_graphql::{Context, ID, Object, Result};

use super::types::*;
use super::{db, domain_ctx, keyring};
use crate::auth::Role;
use crate::domain::{
    self, config_entries::ConfigEntryInput, env_vars::EnvVarInput, environments::*, parse_id,
    projects::*, services::*,
};

#[derive(async_graphql::InputObject)]
pub struct CreateApiKeyInput {
    pub name: String,
    /// Defaults to `write`.
    pub role: Option<Role>,
    pub expires_at: Option<Timestamp>,
}

#[derive(Default)]
pub struct MutationRoot;

/// After a change the runtime must follow (a delete's teardown job, a new
/// domain): wakes the job worker and the routing refresh at once rather
/// than at their next tick.
fn runtime_follows(ctx: &Context<'_>) {
    if let Some(d) = ctx.data_opt::<crate::domain::deployments::Deployer>() {
        d.queue.notify();
        d.routes_changed();
    }
}

#[Object]
impl MutationRoot {
    /// Creates an API key. The token is in this response and nowhere else, ever.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> Result<CreatedApiKey> {
        let (key, token) = domain::api_keys::create(
            db(ctx),
            domain_ctx(ctx)?,
            domain::api_keys::NewKey {
                name: input.name,
                role: input.role.unwrap_or(Role::Write),
                expires_at: input.expires_at.map(|t| t.0),
            },
        )
        .await?;
        Ok(CreatedApiKey {
            api_key: ApiKey(key),
            token: token.expose().to_string(),
        })
    }

    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> Result<ApiKey> {
        let id = parse_id("id", &id)?;
        let key = domain::api_keys::revoke(db(ctx), domain_ctx(ctx)?, id).await?;
        // This server refuses it from now on; others within their cache's time.
        ctx.data_unchecked::<crate::auth::tokens::TokenAuthenticator>()
            .forget(key.id);
        Ok(ApiKey(key))
    }

    /// Creates a project and its `production` environment.
    async fn create_project(
        &self,
        ctx: &Context<'_>,
        input: CreateProjectInput,
    ) -> Result<Project> {
        Ok(Project::of(
            domain::projects::create(db(ctx), domain_ctx(ctx)?, input).await?,
        ))
    }

    async fn update_project(
        &self,
        ctx: &Context<'_>,
        id: String,
        input: UpdateProjectInput,
    ) -> Result<Project> {
        let p = domain::projects::update(db(ctx), domain_ctx(ctx)?, &id, input).await?;
        runtime_follows(ctx);
        Ok(Project::of(p))
    }

    /// Deletes a project with its environments, services, env vars and
    /// config; what it ran, its routes, releases and logs follow at once.
    async fn delete_project(&self, ctx: &Context<'_>, id: String) -> Result<Deleted> {
        let p = domain::projects::delete(db(ctx), domain_ctx(ctx)?, &id).await?;
        runtime_follows(ctx);
        Ok(Deleted {
            id: p.id.to_string(),
            deleted: true,
        })
    }

    async fn create_environment(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        input: CreateEnvironmentInput,
    ) -> Result<Environment> {
        Ok(Environment(
            domain::environments::create(db(ctx), domain_ctx(ctx)?, &project_id, input).await?,
        ))
    }

    async fn update_environment(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        id: ID,
        input: UpdateEnvironmentInput,
    ) -> Result<Environment> {
        let env = domain::environments::update(db(ctx), domain_ctx(ctx)?, &project_id, &id, input)
            .await?;
        runtime_follows(ctx);
        Ok(Environment(env))
    }

    /// Deletes an environment other than `production` with its env vars,
    /// overrides and deployments; what it ran, its routes, releases and
    /// logs follow at once.
    async fn delete_environment(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        id: ID,
    ) -> Result<Deleted> {
        let env = domain::environments::delete(db(ctx), domain_ctx(ctx)?, &project_id, &id).await?;
        runtime_follows(ctx);
        Ok(Deleted {
            id: env.id.to_string(),
            deleted: true,
        })
    }

    async fn create_service(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        input: CreateServiceInput,
    ) -> Result<Service> {
        Ok(Service(
            domain::services::create(db(ctx), domain_ctx(ctx)?, &project_id, input).await?,
        ))
    }

    async fn update_service(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        name: String,
        input: UpdateServiceInput,
    ) -> Result<Service> {
        Ok(Service(
            domain::services::update(db(ctx), domain_ctx(ctx)?, &project_id, &name, input).await?,
        ))
    }

    /// Overrides a service's settings in one environment.
    async fn set_service_override(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        name: String,
        environment_id: ID,
        input: ServiceOverrideInput,
    ) -> Result<ServiceOverride> {
        Ok(ServiceOverride(
            domain::services::set_override(
                db(ctx),
                domain_ctx(ctx)?,
                &project_id,
                &name,
                &environment_id,
                input,
            )
            .await?,
        ))
    }

    /// Upserts env vars of one environment. Nothing restarts; a deploy applies them.
    async fn set_env_vars(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: String,
        vars: Vec<EnvVarInput>,
    ) -> Result<Vec<EnvVar>> {
        let out = domain::env_vars::set(
            db(ctx),
            keyring(ctx),
            domain_ctx(ctx)?,
            &project_id,
            &env_type,
            vars,
        )
        .await?;
        Ok(out.into_iter().map(EnvVar).collect())
    }

    async fn delete_env_var(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: String,
        key: String,
    ) -> Result<Deleted> {
        domain::env_vars::delete(db(ctx), domain_ctx(ctx)?, &project_id, &env_type, &key).await?;
        Ok(Deleted {
            id: key,
            deleted: true,
        })
    }

    /// Upserts config entries; returns the project's whole config.
    async fn set_config_entries(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        entries: Vec<ConfigEntryInput>,
    ) -> Result<Vec<ConfigEntry>> {
        let rows =
            domain::config_entries::set_many(db(ctx), domain_ctx(ctx)?, &project_id, entries)
                .await?;
        Ok(rows.into_iter().map(ConfigEntry).collect())
    }

    async fn set_config_entry(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        key: String,
        value: String,
    ) -> Result<ConfigEntry> {
        Ok(ConfigEntry(
            domain::config_entries::set_one(db(ctx), domain_ctx(ctx)?, &project_id, &key, &value)
                .await?,
        ))
    }

    async fn delete_config_entry(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        key: String,
    ) -> Result<Deleted> {
        domain::config_entries::delete(db(ctx), domain_ctx(ctx)?, &project_id, &key).await?;
        Ok(Deleted {
            id: key,
            deleted: true,
        })
    }
}
