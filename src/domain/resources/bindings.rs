//! Bindings of a resource to project environments: each writes the
//! provider's connection variables into the environment as secret env
//! vars owned by the binding. Users cannot change or delete those by hand;
//! unbinding removes exactly them; the next deploy applies either.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set,
    TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::{READY, find, open, providers};
use crate::auth::Role;
use crate::domain::audit::{self, Target};
use crate::domain::deployments::Deployer;
use crate::domain::{Ctx, new_id, now, parse_id};
use crate::error::{Error, Result};
use entity::{env_vars, environments, projects, resource_bindings, resources};

/// Where env vars written by a binding come from.
pub const SOURCE: &str = "binding";

/// A binding as the API shows it.
#[derive(Debug, Clone)]
pub struct BindingView {
    pub id: Uuid,
    pub project_environment_id: Uuid,
    pub resource_type: String,
    pub role: String,
    pub env_name: String,
    pub project_name: String,
    pub project_slug: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// An environment of the caller's organisation, with its project; errors
/// name `field`.
pub async fn environment<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    field: &str,
    id: &str,
) -> Result<(environments::Model, projects::Model)> {
    let id = parse_id(field, id)?;
    let (env, project) = environments::Entity::find_by_id(id)
        .find_also_related(projects::Entity)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("environment", id))?;
    let project = project.ok_or_else(|| Error::not_found("environment", id))?;
    ctx.check_org(project.organization_id, "environment")?;
    Ok((env, project))
}

fn view(
    b: &resource_bindings::Model,
    resource: &resources::Model,
    env: &environments::Model,
    project: &projects::Model,
) -> BindingView {
    BindingView {
        id: b.id,
        project_environment_id: env.id,
        resource_type: resource.kind.clone(),
        role: b.role.clone(),
        env_name: env.name.clone(),
        project_name: project.name.clone(),
        project_slug: project.slug.clone(),
        created_at: b.created_at,
    }
}

/// Records a binding and writes its variables; a variable the
/// environment already has is a conflict naming it and its owner.
async fn insert<C: ConnectionTrait>(
    conn: &C,
    deployer: &Deployer,
    resource: &resources::Model,
    env: &environments::Model,
    role: &str,
) -> Result<resource_bindings::Model> {
    let provider = providers::of(&resource.kind, &resource.provider)?;
    let sealed = open(&deployer.keyring, resource)?;
    let connection = super::connection(provider, &sealed).ok_or_else(|| {
        Error::Conflict("the resource has no address yet: bind it once it is ready".into())
    })?;
    let taken = resource_bindings::Entity::find()
        .filter(resource_bindings::Column::ResourceId.eq(resource.id))
        .filter(resource_bindings::Column::EnvironmentId.eq(env.id))
        .filter(resource_bindings::Column::Role.eq(role))
        .one(conn)
        .await?;
    if let Some(b) = taken {
        return Err(Error::Conflict(format!(
            "the resource is already bound to this environment as {role} (binding {})",
            b.id
        )));
    }
    let now = now();
    let binding = resource_bindings::ActiveModel {
        id: Set(new_id()),
        resource_id: Set(resource.id),
        environment_id: Set(env.id),
        role: Set(role.to_string()),
        created_at: Set(now),
    }
    .insert(conn)
    .await?;
    for (key, value) in provider.binding_vars(role, &connection) {
        let existing = env_vars::Entity::find()
            .filter(env_vars::Column::EnvironmentId.eq(env.id))
            .filter(env_vars::Column::Key.eq(key.as_str()))
            .one(conn)
            .await?;
        if let Some(e) = existing {
            let owner = match e.binding_id {
                Some(b) => format!("it is managed by binding {b}"),
                None => "it was set by hand: delete it first".into(),
            };
            return Err(Error::Conflict(format!(
                "the environment already has {key}: {owner}"
            )));
        }
        env_vars::ActiveModel {
            id: Set(new_id()),
            environment_id: Set(env.id),
            key: Set(key),
            value_ciphertext: Set(deployer.keyring.seal(&value)?),
            secret: Set(true),
            source: Set(SOURCE.into()),
            binding_id: Set(Some(binding.id)),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(conn)
        .await?;
    }
    Ok(binding)
}

/// Removes every binding of a resource and the variables they wrote.
pub async fn remove_all<C: ConnectionTrait>(conn: &C, resource_id: Uuid) -> Result<()> {
    let ids: Vec<Uuid> = resource_bindings::Entity::find()
        .select_only()
        .column(resource_bindings::Column::Id)
        .filter(resource_bindings::Column::ResourceId.eq(resource_id))
        .into_tuple()
        .all(conn)
        .await?;
    if ids.is_empty() {
        return Ok(());
    }
    env_vars::Entity::delete_many()
        .filter(env_vars::Column::BindingId.is_in(ids.clone()))
        .exec(conn)
        .await?;
    resource_bindings::Entity::delete_many()
        .filter(resource_bindings::Column::Id.is_in(ids))
        .exec(conn)
        .await?;
    Ok(())
}

impl Deployer {
    /// Bindings of a resource, oldest first.
    pub async fn resource_bindings(&self, ctx: &Ctx, id: &str) -> Result<Vec<BindingView>> {
        let resource = find(&self.db, ctx, id).await?;
        let rows = resource_bindings::Entity::find()
            .filter(resource_bindings::Column::ResourceId.eq(resource.id))
            .find_also_related(environments::Entity)
            .all(&self.db)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (b, env) in rows {
            let Some(env) = env else { continue };
            let Some(project) = projects::Entity::find_by_id(env.project_id)
                .one(&self.db)
                .await?
            else {
                continue;
            };
            out.push(view(&b, &resource, &env, &project));
        }
        out.sort_by_key(|b| (b.created_at, b.id));
        Ok(out)
    }

    /// Binds a ready resource to an environment of the same organisation.
    pub async fn bind_resource(
        &self,
        ctx: &Ctx,
        id: &str,
        environment_id: &str,
        role: Option<&str>,
    ) -> Result<BindingView> {
        ctx.require(Role::Write)?;
        let role = role
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or("primary");
        if !providers::ROLES.iter().any(|(r, _)| *r == role) {
            return Err(Error::field(
                "role",
                "must be one of primary, replica, analytics, backup",
            ));
        }
        let txn = self.db.begin().await?;
        let resource = find(&txn, ctx, id).await?;
        let (env, project) = environment(&txn, ctx, "projectEnvironmentId", environment_id).await?;
        match providers::of(&resource.kind, &resource.provider)?.hosting {
            providers::Hosting::Instance => {}
            providers::Hosting::Storage => {
                return Err(Error::field(
                    "id",
                    "a blob resource's BLOB_* variables are already in its own environment; for another environment create a blob resource there",
                ));
            }
            providers::Hosting::Volume => {
                return Err(Error::field(
                    "id",
                    "a volume is mounted by its service, not bound: for another environment create a volume resource there",
                ));
            }
        }
        if resource.status != READY {
            return Err(Error::Conflict(format!(
                "the resource is {}: bind it once it is ready (or pass environmentId when creating it)",
                resource.status
            )));
        }
        let binding = insert(&txn, self, &resource, &env, role).await?;
        audit::record(
            &txn,
            ctx,
            "resources.bind",
            Target::new("resource", resource.id).in_project(project.id),
            Some(json!({ "bindingId": binding.id, "environmentId": env.id, "role": role })),
        )
        .await?;
        txn.commit().await?;
        Ok(view(&binding, &resource, &env, &project))
    }

    /// Removes a binding and exactly the variables it wrote.
    pub async fn unbind_resource(&self, ctx: &Ctx, id: &str, binding_id: &str) -> Result<bool> {
        ctx.require(Role::Write)?;
        let binding_id = parse_id("bindingId", binding_id)?;
        let txn = self.db.begin().await?;
        let resource = find(&txn, ctx, id).await?;
        let binding = resource_bindings::Entity::find_by_id(binding_id)
            .filter(resource_bindings::Column::ResourceId.eq(resource.id))
            .one(&txn)
            .await?
            .ok_or_else(|| Error::not_found("binding", binding_id))?;
        env_vars::Entity::delete_many()
            .filter(env_vars::Column::BindingId.eq(binding.id))
            .exec(&txn)
            .await?;
        resource_bindings::Entity::delete_by_id(binding.id)
            .exec(&txn)
            .await?;
        audit::record(
            &txn,
            ctx,
            "resources.unbind",
            Target::new("resource", resource.id),
            Some(json!({ "bindingId": binding.id })),
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }
}

/// The binding `environmentId` of `POST /resources` asked for, made once
/// the resource is ready; a retried job finds it made.
pub async fn bind_once_ready(deployer: &Deployer, resource_id: Uuid, env_id: Uuid) -> Result<()> {
    let txn = deployer.db.begin().await?;
    let Some(resource) = resources::Entity::find_by_id(resource_id).one(&txn).await? else {
        return Ok(());
    };
    let Some(env) = environments::Entity::find_by_id(env_id).one(&txn).await? else {
        return Ok(());
    };
    let made = resource_bindings::Entity::find()
        .filter(resource_bindings::Column::ResourceId.eq(resource_id))
        .filter(resource_bindings::Column::EnvironmentId.eq(env_id))
        .filter(resource_bindings::Column::Role.eq("primary"))
        .one(&txn)
        .await?
        .is_some();
    if made {
        return Ok(());
    }
    match insert(&txn, deployer, &resource, &env, "primary").await {
        Ok(_) => {}
        Err(Error::Conflict(why)) => {
            // The environment took the names meanwhile: the resource is
            // ready all the same, and says why it is not bound.
            drop(txn);
            let mut active: resources::ActiveModel = resource.into();
            active.message = Set(Some(format!("not bound to the environment: {why}")));
            active.update(&deployer.db).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    txn.commit().await?;
    Ok(())
}

/// Refuses a hand-made change to a variable a binding (or a blob
/// storage) owns.
pub fn refuse_managed(row: &env_vars::Model) -> Result<()> {
    match row.binding_id {
        Some(s) if row.source == crate::domain::storage::SOURCE => Err(Error::Conflict(format!(
            "{} is managed by storage {s}: delete the storage to remove it",
            row.key
        ))),
        Some(b) => Err(Error::Conflict(format!(
            "{} is managed by resource binding {b}: unbind the resource to change it",
            row.key
        ))),
        None => Ok(()),
    }
}
