//! Projects: an app, its source (git or image) and its environments.
//! Creating one creates its `production` environment.

use async_graphql::{Enum, InputObject, MaybeUndefined};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Set, SqlErr, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::deployments::{self, env_ref};
use super::{Ctx, environments, new_id, now, patch, sandboxes, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::runtime::Teardown;
use entity::{environments as envs, projects};

/// How a git project is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(rename_items = "lowercase")]
pub enum BuildPack {
    Dockerfile,
    Nixpacks,
}

impl BuildPack {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildPack::Dockerfile => "dockerfile",
            BuildPack::Nixpacks => "nixpacks",
        }
    }
}

/// A new project. Option A: `gitRepository` (+ branch, build pack); option B: `dockerImage`.
#[derive(Debug, Clone, InputObject)]
pub struct CreateProjectInput {
    pub name: String,
    pub slug: String,
    pub description: Option<String>,
    pub git_repository: Option<String>,
    pub git_branch: Option<String>,
    pub build_pack: Option<BuildPack>,
    pub docker_image: Option<String>,
    pub port: Option<i32>,
    pub domain: Option<String>,
}

/// A partial update; `null` clears a clearable field.
#[derive(Debug, Clone, Default, InputObject)]
pub struct UpdateProjectInput {
    pub name: Option<String>,
    pub description: MaybeUndefined<String>,
    pub domain: MaybeUndefined<String>,
    pub port: MaybeUndefined<i32>,
    pub git_repository: MaybeUndefined<String>,
    pub git_branch: MaybeUndefined<String>,
    pub build_pack: MaybeUndefined<BuildPack>,
    pub docker_image: MaybeUndefined<String>,
    pub is_active: Option<bool>,
}

fn source_text(field: &str, value: &str) -> Result<String> {
    validate::text(field, value, 500)
}

/// Finds a project by UUID or slug, in the caller's organisation.
pub async fn resolve<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    id_or_slug: &str,
) -> Result<projects::Model> {
    let key = id_or_slug.trim();
    let found = match Uuid::parse_str(key) {
        Ok(id) => projects::Entity::find_by_id(id).one(conn).await?,
        Err(_) => {
            if validate::dns_label("id", key).is_err() {
                return Err(Error::field("id", "must be a project UUID or slug"));
            }
            projects::Entity::find()
                .filter(projects::Column::Slug.eq(key))
                .one(conn)
                .await?
        }
    };
    let project = found.ok_or_else(|| Error::not_found("project", key))?;
    ctx.check_org(project.organization_id, "project")?;
    Ok(project)
}

fn slug_taken(slug: &str) -> Error {
    Error::Conflict(format!("slug '{slug}' is already taken"))
}

async fn ensure_slug_free<C: ConnectionTrait>(conn: &C, slug: &str) -> Result<()> {
    let taken = projects::Entity::find()
        .filter(projects::Column::Slug.eq(slug))
        .one(conn)
        .await?
        .is_some();
    if taken { Err(slug_taken(slug)) } else { Ok(()) }
}

/// Creates a project and its `production` environment.
pub async fn create(
    db: &DatabaseConnection,
    ctx: &Ctx,
    input: CreateProjectInput,
) -> Result<projects::Model> {
    ctx.require(Role::Write)?;
    let name = validate::text("name", &input.name, 100)?;
    validate::dns_label("slug", &input.slug)?;
    if let Some(d) = &input.description {
        validate::long_text("description", d, 2000)?;
    }
    let git_repository = input
        .git_repository
        .as_deref()
        .map(|v| source_text("gitRepository", v))
        .transpose()?;
    let docker_image = input
        .docker_image
        .as_deref()
        .map(|v| source_text("dockerImage", v))
        .transpose()?;
    if git_repository.is_some() && docker_image.is_some() {
        return Err(Error::field(
            "dockerImage",
            "give either gitRepository (option A) or dockerImage (option B), not both",
        ));
    }
    if docker_image.is_some() && (input.git_branch.is_some() || input.build_pack.is_some()) {
        return Err(Error::field(
            "gitBranch",
            "gitBranch and buildPack only apply to gitRepository projects",
        ));
    }
    let git_branch = input
        .git_branch
        .as_deref()
        .map(|v| source_text("gitBranch", v))
        .transpose()?
        .or_else(|| git_repository.as_ref().map(|_| "main".to_string()));
    let build_pack = input
        .build_pack
        .or_else(|| git_repository.as_ref().map(|_| BuildPack::Dockerfile));
    if let Some(p) = input.port {
        validate::port("port", p)?;
    }
    let domain = input
        .domain
        .as_deref()
        .map(|d| validate::domain("domain", d))
        .transpose()?;

    let txn = db.begin().await?;
    ensure_slug_free(&txn, &input.slug).await?;
    if let Some(d) = &domain {
        environments::ensure_domain_free(&txn, d, None).await?;
    }
    let now = now();
    let project = projects::ActiveModel {
        id: Set(new_id()),
        organization_id: Set(ctx.org_id()),
        slug: Set(input.slug.clone()),
        name: Set(name),
        description: Set(input.description.filter(|d| !d.trim().is_empty())),
        is_active: Set(true),
        git_repository: Set(git_repository),
        git_branch: Set(git_branch),
        build_pack: Set(build_pack.map(|b| b.as_str().to_string())),
        docker_image: Set(docker_image),
        port: Set(input.port),
        domain: Set(domain.clone()),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await
    // The slug is the project row's only unique key; the domain's is the
    // environment's, checked when that row goes in.
    .map_err(|e| match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => slug_taken(&input.slug),
        _ => e.into(),
    })?;
    environments::insert(&txn, project.id, environments::PRODUCTION, domain, 1).await?;
    audit::record(
        &txn,
        ctx,
        "project.create",
        Target::new("project", project.id).in_project(project.id),
        Some(json!({ "slug": project.slug })),
    )
    .await?;
    txn.commit().await?;
    Ok(project)
}

/// Applies a partial update.
pub async fn update(
    db: &DatabaseConnection,
    ctx: &Ctx,
    id_or_slug: &str,
    input: UpdateProjectInput,
) -> Result<projects::Model> {
    ctx.require(Role::Write)?;
    let txn = db.begin().await?;
    let project = resolve(&txn, ctx, id_or_slug).await?;
    let project_id = project.id;
    let mut active = project.clone().into_active_model();
    if let Some(name) = &input.name {
        active.name = Set(validate::text("name", name, 100)?);
    }
    patch(&mut active.description, &input.description, |d| {
        validate::long_text("description", d, 2000)?;
        Ok(d.clone())
    })?;
    patch(&mut active.port, &input.port, |p| {
        validate::port("port", *p)?;
        Ok(*p)
    })?;
    patch(&mut active.git_repository, &input.git_repository, |v| {
        source_text("gitRepository", v)
    })?;
    patch(&mut active.git_branch, &input.git_branch, |v| {
        source_text("gitBranch", v)
    })?;
    patch(&mut active.docker_image, &input.docker_image, |v| {
        source_text("dockerImage", v)
    })?;
    patch(&mut active.build_pack, &input.build_pack, |b| {
        Ok(b.as_str().to_string())
    })?;
    if let Some(a) = input.is_active {
        active.is_active = Set(a);
    }
    let new_domain = match &input.domain {
        MaybeUndefined::Value(d) => Some(Some(validate::domain("domain", d)?)),
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Undefined => None,
    };
    let has_git = active.git_repository.as_ref().is_some();
    let has_image = active.docker_image.as_ref().is_some();
    if has_git && has_image {
        // The request is well formed; it clashes with what the project holds.
        return Err(Error::Conflict(
            "a project has either gitRepository or dockerImage, not both: set the other to null in the same request".into(),
        ));
    }
    if let Some(domain) = &new_domain {
        let production = environments::by_name(&txn, project_id, environments::PRODUCTION).await?;
        if let Some(d) = domain {
            environments::ensure_domain_free(&txn, d, production.as_ref().map(|e| e.id)).await?;
        }
        active.domain = Set(domain.clone());
        if let Some(env) = production {
            environments::set_domain(&txn, env, domain.clone()).await?;
        }
    }
    active.updated_at = Set(now());
    let project = active.update(&txn).await?;
    audit::record(
        &txn,
        ctx,
        "project.update",
        Target::new("project", project.id).in_project(project.id),
        None,
    )
    .await?;
    txn.commit().await?;
    Ok(project)
}

/// Deletes a project; its environments, services, env vars, config and
/// bindings go with it (foreign-key cascades). What it ran, its routes,
/// releases and logs are removed by a teardown job recorded in the same
/// transaction, which also frees its sandbox user afterwards.
pub async fn delete(
    db: &DatabaseConnection,
    ctx: &Ctx,
    id_or_slug: &str,
) -> Result<projects::Model> {
    ctx.require(Role::Write)?;
    let txn = db.begin().await?;
    let project = resolve(&txn, ctx, id_or_slug).await?;
    let envs = environments::list(&txn, project.id).await?;
    let teardown = Teardown {
        project_id: project.id,
        environments: envs.iter().map(|e| env_ref(&project, e)).collect(),
        deployments: deployments::ids_of(&txn, project.id, None).await?,
        whole_project: true,
        sandbox_uid: sandboxes::uid_of(&txn, project.id).await?,
        volumes: super::volumes::refs_of(&txn, &project, None).await?,
    };
    // Its blob storage keys are refused from now on; the blobs stay.
    super::storage::revoke_all(&txn, project.id, None).await?;
    super::volumes::forget_resources_of(&txn, project.id, None).await?;
    projects::Entity::delete_by_id(project.id)
        .exec(&txn)
        .await?;
    deployments::record_deletion(
        &txn,
        ctx,
        &teardown,
        "project.delete",
        Target::new("project", project.id).in_project(project.id),
        json!({ "slug": project.slug }),
    )
    .await?;
    txn.commit().await?;
    Ok(project)
}

/// Environments of many projects at once (for the batch loaders).
pub async fn environments_of<C: ConnectionTrait>(
    conn: &C,
    project_ids: &[Uuid],
) -> Result<Vec<envs::Model>> {
    Ok(envs::Entity::find()
        .filter(envs::Column::ProjectId.is_in(project_ids.iter().copied()))
        .order_by_asc(envs::Column::Id)
        .all(conn)
        .await?)
}
