//! Environments of a project (production, staging, previews): each has its
//! own domain, replica count and env vars.

use async_graphql::{InputObject, MaybeUndefined};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Set, SqlErr, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::{Ctx, deployments, new_id, now, parse_id, projects, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::runtime::Teardown;
use entity::environments;

/// The environment every project starts with.
pub const PRODUCTION: &str = "production";

#[derive(Debug, Clone, InputObject)]
pub struct CreateEnvironmentInput {
    pub name: String,
    pub domain: Option<String>,
    pub replicas: Option<i32>,
}

#[derive(Debug, Clone, Default, InputObject)]
pub struct UpdateEnvironmentInput {
    pub domain: MaybeUndefined<String>,
    pub replicas: Option<i32>,
}

/// The store's unique index on `lower(domain)` (migration
/// `m20261130_000001_environment_domains`): a domain serves one environment.
const DOMAIN_INDEX: &str = "uq_environments_domain_lower";

fn domain_in_use(domain: &str) -> Error {
    Error::Conflict(format!("domain '{domain}' is already in use"))
}

/// The error of a write that set `domain` on an environment: a violation of
/// the domain index (another request took the domain after
/// `ensure_domain_free` looked) names the domain.
fn write_error(err: DbErr, domain: Option<&str>) -> Error {
    match (domain, err.sql_err()) {
        (Some(d), Some(SqlErr::UniqueConstraintViolation(m))) if m.contains(DOMAIN_INDEX) => {
            domain_in_use(d)
        }
        _ => err.into(),
    }
}

/// Inserts an environment row (callers validate and audit).
pub async fn insert<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    name: &str,
    domain: Option<String>,
    replicas: i32,
) -> Result<environments::Model> {
    let now = now();
    environments::ActiveModel {
        id: Set(new_id()),
        project_id: Set(project_id),
        name: Set(name.to_string()),
        domain: Set(domain.clone()),
        replicas: Set(replicas),
        provisioned_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await
    .map_err(|e| write_error(e, domain.as_deref()))
}

/// Sets an environment's domain (callers validate, check it is free and audit).
pub async fn set_domain<C: ConnectionTrait>(
    conn: &C,
    env: environments::Model,
    domain: Option<String>,
) -> Result<environments::Model> {
    let mut active = env.into_active_model();
    active.domain = Set(domain.clone());
    active.updated_at = Set(now());
    active
        .update(conn)
        .await
        .map_err(|e| write_error(e, domain.as_deref()))
}

/// Refuses a hostname already served by another environment.
pub async fn ensure_domain_free<C: ConnectionTrait>(
    conn: &C,
    domain: &str,
    except: Option<Uuid>,
) -> Result<()> {
    let mut q = environments::Entity::find().filter(environments::Column::Domain.eq(domain));
    if let Some(id) = except {
        q = q.filter(environments::Column::Id.ne(id));
    }
    if q.one(conn).await?.is_some() {
        Err(domain_in_use(domain))
    } else {
        Ok(())
    }
}

pub async fn by_name<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    name: &str,
) -> Result<Option<environments::Model>> {
    Ok(environments::Entity::find()
        .filter(environments::Column::ProjectId.eq(project_id))
        .filter(environments::Column::Name.eq(name))
        .one(conn)
        .await?)
}

/// An environment of `project_id` by id.
pub async fn get<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    env_id: &str,
) -> Result<environments::Model> {
    let id = parse_id("envId", env_id)?;
    environments::Entity::find_by_id(id)
        .filter(environments::Column::ProjectId.eq(project_id))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("environment", id))
}

/// Picks an environment by id or by name (`envType`), production by default.
pub async fn select<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    env_type: Option<&str>,
    env_id: Option<&str>,
) -> Result<environments::Model> {
    if let Some(id) = env_id {
        return get(conn, project_id, id).await;
    }
    let name = env_type.unwrap_or(PRODUCTION);
    validate::dns_label("envType", name)?;
    by_name(conn, project_id, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("environment '{name}' not found in this project")))
}

pub async fn list<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
) -> Result<Vec<environments::Model>> {
    Ok(environments::Entity::find()
        .filter(environments::Column::ProjectId.eq(project_id))
        .order_by_asc(environments::Column::Id)
        .all(conn)
        .await?)
}

pub async fn create(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    input: CreateEnvironmentInput,
) -> Result<environments::Model> {
    ctx.require(Role::Write)?;
    validate::dns_label("name", &input.name)?;
    let domain = input
        .domain
        .as_deref()
        .map(|d| validate::domain("domain", d))
        .transpose()?;
    let replicas = input.replicas.unwrap_or(1);
    validate::replicas("replicas", replicas)?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    if by_name(&txn, project.id, &input.name).await?.is_some() {
        return Err(Error::Conflict(format!(
            "environment '{}' already exists in this project",
            input.name
        )));
    }
    if let Some(d) = &domain {
        ensure_domain_free(&txn, d, None).await?;
    }
    let env = insert(&txn, project.id, &input.name, domain, replicas).await?;
    audit::record(
        &txn,
        ctx,
        "environment.create",
        Target::new("environment", env.id).in_project(project.id),
        Some(json!({ "name": env.name })),
    )
    .await?;
    txn.commit().await?;
    Ok(env)
}

pub async fn update(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    env_id: &str,
    input: UpdateEnvironmentInput,
) -> Result<environments::Model> {
    ctx.require(Role::Write)?;
    if let Some(r) = input.replicas {
        validate::replicas("replicas", r)?;
    }
    let domain = match &input.domain {
        MaybeUndefined::Value(d) => Some(Some(validate::domain("domain", d)?)),
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Undefined => None,
    };
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let env = get(&txn, project.id, env_id).await?;
    let is_production = env.name == PRODUCTION;
    let mut active = env.into_active_model();
    if let Some(r) = input.replicas {
        active.replicas = Set(r);
    }
    if let Some(d) = &domain {
        if let Some(host) = d {
            ensure_domain_free(&txn, host, Some(*active.id.as_ref())).await?;
        }
        active.domain = Set(d.clone());
        if is_production {
            // The project's domain is its production environment's domain.
            let mut p = project.clone().into_active_model();
            p.domain = Set(d.clone());
            p.updated_at = Set(now());
            p.update(&txn).await?;
        }
    }
    active.updated_at = Set(now());
    let env = active
        .update(&txn)
        .await
        .map_err(|e| write_error(e, domain.as_ref().and_then(|d| d.as_deref())))?;
    audit::record(
        &txn,
        ctx,
        "environment.update",
        Target::new("environment", env.id).in_project(project.id),
        None,
    )
    .await?;
    txn.commit().await?;
    Ok(env)
}

/// Deletes an environment that is not `production` (that one goes with its
/// project): its env vars, overrides and deployments go with it, and a
/// teardown job recorded in the same transaction removes what it ran, its
/// routes, releases and logs.
pub async fn delete(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    env_id: &str,
) -> Result<environments::Model> {
    ctx.require(Role::Write)?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let env = get(&txn, project.id, env_id).await?;
    if env.name == PRODUCTION {
        return Err(Error::field(
            "id",
            "the production environment is deleted with its project",
        ));
    }
    let teardown = Teardown {
        project_id: project.id,
        environments: vec![deployments::env_ref(&project, &env)],
        deployments: deployments::ids_of(&txn, project.id, Some(env.id)).await?,
        whole_project: false,
        sandbox_uid: None,
        volumes: super::volumes::refs_of(&txn, &project, Some(env.id)).await?,
    };
    // Its storages' keys are refused from now on (the blobs stay); its
    // volumes and storages leave /resources with it.
    super::storage::revoke_all(&txn, project.id, Some(env.id)).await?;
    super::volumes::forget_resources_of(&txn, project.id, Some(env.id)).await?;
    environments::Entity::delete_by_id(env.id)
        .exec(&txn)
        .await?;
    deployments::record_deletion(
        &txn,
        ctx,
        &teardown,
        "environment.delete",
        Target::new("environment", env.id).in_project(project.id),
        json!({ "name": env.name }),
    )
    .await?;
    txn.commit().await?;
    Ok(env)
}
