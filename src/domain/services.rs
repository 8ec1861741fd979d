//! Named services of a project (web, worker, …), each deployed on its own,
//! with optional per-environment overrides.

use async_graphql::{InputObject, MaybeUndefined, SimpleObject};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::{Ctx, environments, new_id, now, patch, projects, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use entity::{service_environment_overrides as overrides, services};

/// CPU and memory for each replica, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, InputObject, SimpleObject)]
#[graphql(input_name = "ResourcesInput")]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpu: Option<String>,
    pub memory: Option<String>,
}

impl Resources {
    fn validate(&self, field: &str) -> Result<serde_json::Value> {
        if let Some(c) = &self.cpu {
            validate::cpu_quantity(&format!("{field}.cpu"), c)?;
        }
        if let Some(m) = &self.memory {
            validate::memory_quantity(&format!("{field}.memory"), m)?;
        }
        serde_json::to_value(self).map_err(Error::internal)
    }

    /// The CPU quantity in thousandths of a CPU (`250m` → 250, `1.5` → 1500).
    pub fn cpu_millis(&self) -> Option<u64> {
        let cpu = self.cpu.as_deref()?;
        if let Some(m) = cpu.strip_suffix('m') {
            return m.parse().ok();
        }
        let (whole, frac) = cpu.split_once('.').unwrap_or((cpu, ""));
        let frac: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
        Some(whole.parse::<u64>().ok()? * 1000 + frac.parse::<u64>().ok()?)
    }

    /// The memory quantity in bytes (`512Mi`, `1G`, `1000`).
    pub fn memory_bytes(&self) -> Option<u64> {
        let m = self.memory.as_deref()?;
        const UNITS: [(&str, u64); 8] = [
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("Ti", 1 << 40),
            ("K", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
            ("T", 1_000_000_000_000),
        ];
        let (digits, unit) = UNITS
            .iter()
            .find_map(|(s, n)| m.strip_suffix(s).map(|d| (d, *n)))
            .unwrap_or((m, 1));
        digits.parse::<u64>().ok()?.checked_mul(unit)
    }

    /// Reads the stored JSON form.
    pub fn from_json(v: &Option<serde_json::Value>) -> Option<Resources> {
        v.as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

#[derive(Debug, Clone, InputObject)]
pub struct CreateServiceInput {
    pub name: String,
    /// Omit for background workers.
    pub port: Option<i32>,
    pub dockerfile_path: Option<String>,
    pub replicas: Option<i32>,
    pub resources: Option<Resources>,
}

#[derive(Debug, Clone, Default, InputObject)]
pub struct UpdateServiceInput {
    pub replicas: Option<i32>,
    pub port: MaybeUndefined<i32>,
    pub dockerfile_path: Option<String>,
    pub resources: MaybeUndefined<Resources>,
}

/// Settings that replace the service's own in one environment; `null` removes one.
#[derive(Debug, Clone, Default, InputObject)]
pub struct ServiceOverrideInput {
    pub replicas: MaybeUndefined<i32>,
    pub port: MaybeUndefined<i32>,
    pub resources: MaybeUndefined<Resources>,
    pub docker_image: MaybeUndefined<String>,
}

/// A service is idle until its first deployment.
pub const STATUS_IDLE: &str = "idle";

pub async fn list<C: ConnectionTrait>(conn: &C, project_id: Uuid) -> Result<Vec<services::Model>> {
    Ok(services::Entity::find()
        .filter(services::Column::ProjectId.eq(project_id))
        .order_by_asc(services::Column::Id)
        .all(conn)
        .await?)
}

/// Services of many projects at once (for the batch loaders).
pub async fn of_projects<C: ConnectionTrait>(
    conn: &C,
    project_ids: &[Uuid],
) -> Result<Vec<services::Model>> {
    Ok(services::Entity::find()
        .filter(services::Column::ProjectId.is_in(project_ids.iter().copied()))
        .order_by_asc(services::Column::Id)
        .all(conn)
        .await?)
}

pub async fn get<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    name: &str,
) -> Result<services::Model> {
    validate::dns_label("name", name)?;
    services::Entity::find()
        .filter(services::Column::ProjectId.eq(project_id))
        .filter(services::Column::Name.eq(name))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("service", name))
}

/// Overrides of many services at once.
pub async fn overrides_of<C: ConnectionTrait>(
    conn: &C,
    service_ids: &[Uuid],
) -> Result<Vec<overrides::Model>> {
    Ok(overrides::Entity::find()
        .filter(overrides::Column::ServiceId.is_in(service_ids.iter().copied()))
        .order_by_asc(overrides::Column::Id)
        .all(conn)
        .await?)
}

fn check_port(p: &i32) -> Result<i32> {
    validate::port("port", *p)?;
    Ok(*p)
}

fn dockerfile_path(value: &str) -> Result<String> {
    let v = validate::text("dockerfilePath", value, 255)?;
    if v.starts_with('/') || v.split('/').any(|p| p == "..") {
        return Err(Error::field(
            "dockerfilePath",
            "must be a relative path inside the repository",
        ));
    }
    Ok(v)
}

pub async fn create(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    input: CreateServiceInput,
) -> Result<services::Model> {
    ctx.require(Role::Write)?;
    validate::dns_label("name", &input.name)?;
    if let Some(p) = input.port {
        validate::port("port", p)?;
    }
    let replicas = input.replicas.unwrap_or(1);
    validate::replicas("replicas", replicas)?;
    let dockerfile = dockerfile_path(input.dockerfile_path.as_deref().unwrap_or("Dockerfile"))?;
    let resources = input
        .resources
        .as_ref()
        .map(|r| r.validate("resources"))
        .transpose()?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let exists = services::Entity::find()
        .filter(services::Column::ProjectId.eq(project.id))
        .filter(services::Column::Name.eq(&input.name))
        .one(&txn)
        .await?
        .is_some();
    if exists {
        return Err(Error::Conflict(format!(
            "service '{}' already exists in this project",
            input.name
        )));
    }
    let now = now();
    let service = services::ActiveModel {
        id: Set(new_id()),
        project_id: Set(project.id),
        name: Set(input.name),
        port: Set(input.port),
        dockerfile_path: Set(dockerfile),
        replicas: Set(replicas),
        resources: Set(resources),
        status: Set(STATUS_IDLE.to_string()),
        latest_image: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    audit::record(
        &txn,
        ctx,
        "service.create",
        Target::new("service", service.id).in_project(project.id),
        Some(json!({ "name": service.name })),
    )
    .await?;
    txn.commit().await?;
    Ok(service)
}

pub async fn update(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    name: &str,
    input: UpdateServiceInput,
) -> Result<services::Model> {
    ctx.require(Role::Write)?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let service = get(&txn, project.id, name).await?;
    let mut active = service.into_active_model();
    if let Some(r) = input.replicas {
        validate::replicas("replicas", r)?;
        active.replicas = Set(r);
    }
    patch(&mut active.port, &input.port, check_port)?;
    if let Some(d) = &input.dockerfile_path {
        active.dockerfile_path = Set(dockerfile_path(d)?);
    }
    patch(&mut active.resources, &input.resources, |r| {
        r.validate("resources")
    })?;
    active.updated_at = Set(now());
    let service = active.update(&txn).await?;
    audit::record(
        &txn,
        ctx,
        "service.update",
        Target::new("service", service.id).in_project(project.id),
        None,
    )
    .await?;
    txn.commit().await?;
    Ok(service)
}

/// Creates or changes the override of a service in one environment.
pub async fn set_override(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    name: &str,
    env_id: &str,
    input: ServiceOverrideInput,
) -> Result<overrides::Model> {
    ctx.require(Role::Write)?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let service = get(&txn, project.id, name).await?;
    let env = environments::get(&txn, project.id, env_id).await?;
    let existing = overrides::Entity::find()
        .filter(overrides::Column::ServiceId.eq(service.id))
        .filter(overrides::Column::EnvironmentId.eq(env.id))
        .one(&txn)
        .await?;
    let now = now();
    let is_new = existing.is_none();
    let mut active = match existing {
        Some(o) => o.into_active_model(),
        None => overrides::ActiveModel {
            id: Set(new_id()),
            service_id: Set(service.id),
            environment_id: Set(env.id),
            replicas: Set(None),
            port: Set(None),
            resources: Set(None),
            docker_image: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        },
    };
    patch(&mut active.replicas, &input.replicas, |r| {
        validate::replicas("replicas", *r)?;
        Ok(*r)
    })?;
    patch(&mut active.port, &input.port, check_port)?;
    patch(&mut active.resources, &input.resources, |r| {
        r.validate("resources")
    })?;
    patch(&mut active.docker_image, &input.docker_image, |i| {
        validate::text("dockerImage", i, 500)
    })?;
    active.updated_at = Set(now);
    let saved = if is_new {
        active.insert(&txn).await?
    } else {
        active.update(&txn).await?
    };
    audit::record(
        &txn,
        ctx,
        "service.override",
        Target::new("service", service.id).in_project(project.id),
        Some(json!({ "environmentId": env.id })),
    )
    .await?;
    txn.commit().await?;
    Ok(saved)
}

#[cfg(test)]
mod tests {
    use super::Resources;

    #[test]
    fn quantities() {
        let r = |cpu: &str, memory: &str| Resources {
            cpu: Some(cpu.into()),
            memory: Some(memory.into()),
        };
        assert_eq!(r("250m", "512Mi").cpu_millis(), Some(250));
        assert_eq!(r("1.5", "1Gi").cpu_millis(), Some(1500));
        assert_eq!(r("2", "1G").cpu_millis(), Some(2000));
        assert_eq!(r("2", "512Mi").memory_bytes(), Some(512 << 20));
        assert_eq!(r("2", "1G").memory_bytes(), Some(1_000_000_000));
        assert_eq!(r("2", "4096").memory_bytes(), Some(4096));
        assert_eq!(
            Resources {
                cpu: None,
                memory: None
            }
            .memory_bytes(),
            None
        );
    }
}
