//! Persistent volumes: a directory of a project's service that outlives its
//! releases, mounted at `mountPath` in every replica of the service in one
//! environment. Rules and store access here; the runtime makes, mounts and
//! removes the storage.

use std::collections::HashMap;

use async_graphql::InputObject;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, RelationTrait, Set, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::deployments::{self, Deployer, env_ref};
use super::{Ctx, environments, new_id, now, parse_id, projects, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::runtime::{Teardown, VolumeMount, VolumeRef, VolumeState};
use entity::{environments as envs, projects as proj, services as svcs, volumes};

/// Limits on volumes, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSettings {
    /// The largest single volume (`max_volume_size_gb`).
    pub max_size_gb: u32,
    /// All volumes of one organisation together (`max_volume_gb_per_organization`).
    pub organization_budget_gb: u64,
}

impl Default for VolumeSettings {
    fn default() -> Self {
        VolumeSettings {
            max_size_gb: 100,
            organization_budget_gb: 100,
        }
    }
}

/// `POST /projects/:id/volumes`.
#[derive(Debug, Clone, InputObject)]
pub struct CreateVolumeInput {
    /// A DNS-1123 label, unique in the project (e.g. `uploads`).
    pub name: String,
    /// Absolute path inside the service's containers (e.g. `/app/uploads`).
    pub mount_path: String,
    /// Size in GB (whole number).
    pub size_gb: i32,
    /// The service that mounts it: by default the one that serves HTTP,
    /// or the project's only service.
    pub service: Option<String>,
    /// The environment (default `production`).
    pub env_type: Option<String>,
}

/// A volume with its service, environment and live state.
#[derive(Debug, Clone)]
pub struct View {
    pub row: volumes::Model,
    pub service: Option<String>,
    pub environment: String,
    pub state: VolumeState,
}

impl View {
    /// `bound` once a running release of its service mounts it, else `pending`.
    pub fn status(&self) -> &'static str {
        if self.state.bound {
            STATUS_BOUND
        } else {
            STATUS_PENDING
        }
    }
}

pub const STATUS_PENDING: &str = "pending";
pub const STATUS_BOUND: &str = "bound";

/// Top-level directories a volume may not cover: the system a container
/// needs (read-only in the local sandbox), its scratch space, and what the
/// kernel or the platform mounts there.
const RESERVED_ROOTS: [&str; 11] = [
    "proc", "sys", "dev", "etc", "usr", "bin", "sbin", "boot", "run", "tmp", "opt",
];

/// Longest `mountPath`.
const MAX_MOUNT_PATH: usize = 255;

/// Checks a `mountPath`: absolute, plain segments (letters, digits, `.`,
/// `_`, `-`; never `.` or `..`), not `/`, not the release directory
/// itself, not in a reserved system directory.
pub fn mount_path(field: &str, value: &str) -> Result<()> {
    if !value.starts_with('/') {
        return Err(Error::field(field, "must be an absolute path"));
    }
    if value == "/" {
        return Err(Error::field(field, "cannot be / itself"));
    }
    if value.len() > MAX_MOUNT_PATH {
        return Err(Error::field(
            field,
            format!("must be at most {MAX_MOUNT_PATH} characters"),
        ));
    }
    let segments: Vec<&str> = value[1..].split('/').collect();
    for seg in &segments {
        if seg.is_empty() {
            return Err(Error::field(
                field,
                "must not contain empty segments ('//' or a trailing '/')",
            ));
        }
        if *seg == "." || *seg == ".." {
            return Err(Error::field(field, "must not contain '.' or '..' segments"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Error::field(
                field,
                "segments may hold only letters, digits, '.', '_' and '-'",
            ));
        }
    }
    let first = segments[0];
    if RESERVED_ROOTS.contains(&first) || first.starts_with("lib") {
        return Err(Error::field(
            field,
            format!("/{first} is a system directory the container needs"),
        ));
    }
    if value == "/app"
        || value == "/var"
        || is_under(value, "/var/tmp")
        || is_under(value, "/var/run")
    {
        return Err(Error::field(
            field,
            format!("{value} is reserved (the release directory, or system scratch space)"),
        ));
    }
    Ok(())
}

/// [`mount_path`] as JSON Schema (a subset: no segment starts with '.').
pub fn mount_path_schema() -> serde_json::Value {
    json!({
        "pattern": "^(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$",
        "maxLength": MAX_MOUNT_PATH,
        "not": { "pattern": "^/(proc|sys|dev|etc|usr|bin|sbin|boot|run|tmp|opt|lib[^/]*)(/|$)|^/(app|var)$|^/var/(tmp|run)(/|$)" },
        "description": "An absolute path of plain segments; not /, /app, /var, and not in /proc, /sys, /dev, /etc, /usr, /bin, /sbin, /lib*, /boot, /run, /tmp, /opt, /var/tmp or /var/run; not overlapping another volume of the same service"
    })
}

/// Whether `path` is `dir` or below it.
fn is_under(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether two mount paths would overlap (one is the other or inside it).
fn nested(a: &str, b: &str) -> bool {
    is_under(a, b) || is_under(b, a)
}

/// The largest `sizeGb` any server takes (and `max_volume_size_gb` may
/// be): what the API document states.
pub const MAX_SIZE_GB: u32 = 16384;

/// Checks a size (`field`): a whole number from 1 to [`MAX_SIZE_GB`] (else
/// 400); past this server's `max_volume_size_gb`, a limit its operator
/// sets, 403.
pub fn size_gb(settings: &VolumeSettings, field: &str, value: i64) -> Result<u32> {
    match u32::try_from(value) {
        Ok(n) if (1..=MAX_SIZE_GB).contains(&n) => {
            if n > settings.max_size_gb {
                Err(Error::Forbidden(format!(
                    "{field}: this server's volumes hold at most {} GB (max_volume_size_gb)",
                    settings.max_size_gb
                )))
            } else {
                Ok(n)
            }
        }
        _ => Err(Error::field(
            field,
            format!("must be a whole number of GB from 1 to {MAX_SIZE_GB}"),
        )),
    }
}

/// A checked request for a volume.
#[derive(Debug, Clone)]
pub struct Draft {
    pub name: String,
    pub mount_path: String,
    pub size_gb: u32,
    pub service: Option<String>,
    /// The fields the size and the service come in, for the errors that
    /// name them.
    pub size_field: &'static str,
    pub service_field: &'static str,
}

/// The kind of the resources (`/resources`) that are volumes: such a
/// resource and its volume share one id, and go together.
const VOLUME_KIND: &str = "volume";

fn mount_of(row: &volumes::Model) -> VolumeMount {
    VolumeMount {
        volume_id: row.id,
        name: row.name.clone(),
        mount_path: row.mount_path.clone(),
        size_gb: u32::try_from(row.size_gb).unwrap_or(0),
    }
}

/// What the runtime needs to know of a volume.
fn volume_ref(
    project: &proj::Model,
    env: &envs::Model,
    service: Option<&svcs::Model>,
    row: &volumes::Model,
) -> VolumeRef {
    VolumeRef {
        env: env_ref(project, env),
        service: service.map(|s| s.name.clone()),
        mount: mount_of(row),
    }
}

/// The volumes of a project (of one environment, if given), for the
/// teardown that removes their data with the project or environment.
pub async fn refs_of<C: ConnectionTrait>(
    conn: &C,
    project: &proj::Model,
    environment_id: Option<Uuid>,
) -> Result<Vec<VolumeRef>> {
    let mut q = volumes::Entity::find().filter(volumes::Column::ProjectId.eq(project.id));
    if let Some(env) = environment_id {
        q = q.filter(volumes::Column::EnvironmentId.eq(env));
    }
    let rows = q.all(conn).await?;
    let envs = environments::list(conn, project.id).await?;
    let services = super::services::list(conn, project.id).await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let env = envs.iter().find(|e| Some(e.id) == row.environment_id)?;
            let svc = services.iter().find(|s| Some(s.id) == row.service_id);
            Some(volume_ref(project, env, svc, row))
        })
        .collect())
}

/// The volumes each service mounts in environment `env_id`, by service id.
pub async fn mounts_in<C: ConnectionTrait>(
    conn: &C,
    env_id: Uuid,
) -> Result<HashMap<Uuid, Vec<VolumeMount>>> {
    let rows = volumes::Entity::find()
        .filter(volumes::Column::EnvironmentId.eq(env_id))
        .order_by_asc(volumes::Column::MountPath)
        .all(conn)
        .await?;
    let mut out: HashMap<Uuid, Vec<VolumeMount>> = HashMap::new();
    for row in &rows {
        if let Some(service) = row.service_id {
            out.entry(service).or_default().push(mount_of(row));
        }
    }
    Ok(out)
}

/// The service a new volume belongs to: the one named, else the one that
/// serves HTTP (`web`, else the first with a port), else the only one.
/// Errors name `field`, the field the service came in (or would have).
fn pick_service<'a>(
    services: &'a [svcs::Model],
    name: Option<&str>,
    field: &str,
) -> Result<&'a svcs::Model> {
    if let Some(name) = name {
        validate::dns_label(field, name)?;
        return services.iter().find(|s| s.name == name).ok_or_else(|| {
            Error::NotFound(format!("{field}: the project has no service '{name}'"))
        });
    }
    let http = services
        .iter()
        .find(|s| s.name == "web" && s.port.is_some())
        .or_else(|| services.iter().find(|s| s.port.is_some()));
    match (http, services) {
        (Some(s), _) => Ok(s),
        (None, [only]) => Ok(only),
        // What the project holds decides these, not the request alone.
        (None, []) => Err(Error::Conflict(format!(
            "{field}: the project has no service yet: deploy it once, or create one, first"
        ))),
        (None, _) => Err(Error::Conflict(format!(
            "{field}: the project has several services and none serves HTTP: name one"
        ))),
    }
}

impl Deployer {
    async fn volume_view(
        &self,
        project: &proj::Model,
        envs: &[envs::Model],
        services: &[svcs::Model],
        row: volumes::Model,
    ) -> Result<View> {
        let env = envs
            .iter()
            .find(|e| Some(e.id) == row.environment_id)
            .ok_or_else(|| Error::not_found("volume", row.id))?;
        let svc = services.iter().find(|s| Some(s.id) == row.service_id);
        let state = self
            .runtime
            .volume_state(&volume_ref(project, env, svc, &row))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(volume.id = %row.id, error = e.message(), "could not read a volume's state");
                VolumeState::default()
            });
        Ok(View {
            service: svc.map(|s| s.name.clone()),
            environment: env.name.clone(),
            state,
            row,
        })
    }

    /// A project's volumes, oldest first.
    #[tracing::instrument(skip_all, fields(project = %project))]
    pub async fn list_volumes(&self, ctx: &Ctx, project: &str) -> Result<Vec<View>> {
        let project = projects::resolve(&self.db, ctx, project).await?;
        let rows = volumes::Entity::find()
            .filter(volumes::Column::ProjectId.eq(project.id))
            .order_by_asc(volumes::Column::Id)
            .all(&self.db)
            .await?;
        let envs = environments::list(&self.db, project.id).await?;
        let services = super::services::list(&self.db, project.id).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.volume_view(&project, &envs, &services, row).await?);
        }
        Ok(out)
    }

    /// One volume of a project.
    #[tracing::instrument(skip_all, fields(project = %project))]
    pub async fn volume(&self, ctx: &Ctx, project: &str, id: &str) -> Result<View> {
        let id = parse_id("volId", id)?;
        let project = projects::resolve(&self.db, ctx, project).await?;
        let row = find(&self.db, project.id, id).await?;
        let envs = environments::list(&self.db, project.id).await?;
        let services = super::services::list(&self.db, project.id).await?;
        self.volume_view(&project, &envs, &services, row).await
    }

    /// Creates a volume: checks the input, the project's other volumes and
    /// the organisation's budget, records it, and has the runtime make its
    /// storage. The next deploy of its service mounts it.
    #[tracing::instrument(skip_all, fields(project = %project))]
    pub async fn create_volume(
        &self,
        ctx: &Ctx,
        project: &str,
        input: CreateVolumeInput,
    ) -> Result<View> {
        ctx.require(Role::Write)?;
        validate::dns_label("name", &input.name)?;
        mount_path("mountPath", &input.mount_path)?;
        let draft = Draft {
            size_gb: size_gb(&self.volumes, "sizeGb", i64::from(input.size_gb))?,
            name: input.name,
            mount_path: input.mount_path,
            service: input.service,
            size_field: "sizeGb",
            service_field: "service",
        };
        let txn = self.db.begin().await?;
        super::organizations::take_turns(&txn, ctx.org_id()).await?;
        let project = projects::resolve(&txn, ctx, project).await?;
        let env = environments::select(&txn, project.id, input.env_type.as_deref(), None).await?;
        let made = self
            .insert_volume(&txn, ctx, &project, &env, &draft, new_id())
            .await?;
        audit::record(
            &txn,
            ctx,
            "volume.create",
            Target::new("volume", made.row.id).in_project(project.id),
            Some(json!({ "name": made.row.name, "mountPath": made.row.mount_path, "sizeGb": made.row.size_gb })),
        )
        .await?;
        txn.commit().await?;
        self.make_volume(&made).await?;
        self.volume_view(
            &project,
            std::slice::from_ref(&env),
            &made.services,
            made.row,
        )
        .await
    }

    /// Records volume `id` of `env` in the caller's transaction (which has
    /// taken the organisation's turn): the service it mounts in, the
    /// project's other volumes and the organisation's budget are checked.
    /// [`Deployer::make_volume`] makes its storage once that commits.
    pub async fn insert_volume<C: ConnectionTrait>(
        &self,
        conn: &C,
        ctx: &Ctx,
        project: &proj::Model,
        env: &envs::Model,
        draft: &Draft,
        id: Uuid,
    ) -> Result<Made> {
        let services = super::services::list(conn, project.id).await?;
        let service =
            pick_service(&services, draft.service.as_deref(), draft.service_field)?.clone();
        let taken = volumes::Entity::find()
            .filter(volumes::Column::ProjectId.eq(project.id))
            .all(conn)
            .await?;
        if taken.iter().any(|v| v.name == draft.name) {
            return Err(Error::Conflict(format!(
                "name: the project already has a volume named '{}'",
                draft.name
            )));
        }
        if let Some(other) = taken.iter().find(|v| {
            v.service_id == Some(service.id)
                && v.environment_id == Some(env.id)
                && nested(&v.mount_path, &draft.mount_path)
        }) {
            // A clash with what the service holds, like a taken name.
            return Err(Error::Conflict(format!(
                "mountPath: overlaps the volume '{}' at {} of the same service",
                other.name, other.mount_path
            )));
        }
        let held: i64 = volumes::Entity::find()
            .select_only()
            .column(volumes::Column::SizeGb)
            .join(
                sea_orm::JoinType::InnerJoin,
                volumes::Relation::Projects.def(),
            )
            .filter(proj::Column::OrganizationId.eq(ctx.org_id()))
            .into_tuple::<i32>()
            .all(conn)
            .await?
            .into_iter()
            .map(i64::from)
            .sum();
        let budget = self.volumes.organization_budget_gb;
        let size = draft.size_gb;
        if held as u64 + u64::from(size) > budget {
            return Err(Error::Forbidden(format!(
                "{}: the organisation's volumes would hold {} GB, more than its {budget} GB (max_volume_gb_per_organization): delete a volume or ask for a smaller one",
                draft.size_field,
                held as u64 + u64::from(size)
            )));
        }
        let now = now();
        let row = volumes::ActiveModel {
            id: Set(id),
            project_id: Set(project.id),
            environment_id: Set(Some(env.id)),
            service_id: Set(Some(service.id)),
            name: Set(draft.name.clone()),
            mount_path: Set(draft.mount_path.clone()),
            size_gb: Set(size as i32),
            status: Set(STATUS_PENDING.into()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(conn)
        .await
        .map_err(|e| match Error::from(e) {
            Error::Conflict(_) => Error::Conflict(format!(
                "name: the project already has a volume named '{}'",
                draft.name
            )),
            other => other,
        })?;
        Ok(Made {
            vref: volume_ref(project, env, Some(&service), &row),
            service: service.name.clone(),
            row,
            services,
        })
    }

    /// Has the runtime make a recorded volume's storage. If it cannot,
    /// nothing half-made stays: what it made goes, and so do the volume's
    /// row and the resource of the same id.
    pub async fn make_volume(&self, made: &Made) -> Result<()> {
        if let Err(e) = self.runtime.create_volume(&made.vref).await {
            let _ = self.runtime.delete_volume(&made.vref).await;
            let txn = self.db.begin().await?;
            volumes::Entity::delete_by_id(made.row.id)
                .exec(&txn)
                .await?;
            forget_resources(&txn, &[made.row.id]).await?;
            txn.commit().await?;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes a volume: it leaves the API at once, and a durable job
    /// removes its data (replicas that mount it restart without it).
    #[tracing::instrument(skip_all, fields(project = %project))]
    pub async fn delete_volume(&self, ctx: &Ctx, project: &str, id: &str) -> Result<()> {
        ctx.require(Role::Write)?;
        let id = parse_id("volId", id)?;
        let txn = self.db.begin().await?;
        let project = projects::resolve(&txn, ctx, project).await?;
        let row = find(&txn, project.id, id).await?;
        let target = Target::new("volume", row.id).in_project(project.id);
        remove_in(&txn, ctx, &project, row, "volume.delete", target).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// A volume recorded by [`Deployer::insert_volume`].
#[derive(Debug, Clone)]
pub struct Made {
    pub row: volumes::Model,
    pub vref: VolumeRef,
    /// The service it mounts in.
    pub service: String,
    /// The project's services.
    pub services: Vec<svcs::Model>,
}

/// Removes volume `row` of `project` in the caller's transaction, with the
/// resource of the same id; a teardown job recorded with it (audited as
/// `action` on `target`) removes the data.
pub async fn remove_in<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    project: &proj::Model,
    row: volumes::Model,
    action: &str,
    target: Target<'_>,
) -> Result<()> {
    let envs = environments::list(conn, project.id).await?;
    let services = super::services::list(conn, project.id).await?;
    let env = envs
        .iter()
        .find(|e| Some(e.id) == row.environment_id)
        .ok_or_else(|| Error::not_found("volume", row.id))?;
    let svc = services.iter().find(|s| Some(s.id) == row.service_id);
    let teardown = Teardown {
        project_id: project.id,
        environments: Vec::new(),
        deployments: Vec::new(),
        whole_project: false,
        sandbox_uid: None,
        volumes: vec![volume_ref(project, env, svc, &row)],
    };
    volumes::Entity::delete_by_id(row.id).exec(conn).await?;
    forget_resources(conn, &[row.id]).await?;
    deployments::record_deletion(
        conn,
        ctx,
        &teardown,
        action,
        target,
        json!({ "name": row.name }),
    )
    .await
}

/// Volume `id` and its project, for a resource of the same id.
pub async fn with_project<C: ConnectionTrait>(
    conn: &C,
    id: Uuid,
) -> Result<Option<(volumes::Model, proj::Model)>> {
    Ok(volumes::Entity::find_by_id(id)
        .find_also_related(proj::Entity)
        .one(conn)
        .await?
        .and_then(|(row, project)| Some((row, project?))))
}

/// Deletes the `kind: volume` resources of volumes `ids` (which are going).
async fn forget_resources<C: ConnectionTrait>(conn: &C, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    entity::resources::Entity::delete_many()
        .filter(entity::resources::Column::Id.is_in(ids.iter().copied()))
        .filter(entity::resources::Column::Kind.eq(VOLUME_KIND))
        .exec(conn)
        .await?;
    Ok(())
}

/// Deletes the `kind: volume` resources of a project's volumes (of one
/// environment, if given): the project or environment is being deleted,
/// and its volumes with it.
pub async fn forget_resources_of<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    environment_id: Option<Uuid>,
) -> Result<()> {
    let mut q = volumes::Entity::find()
        .select_only()
        .column(volumes::Column::Id)
        .filter(volumes::Column::ProjectId.eq(project_id));
    if let Some(env) = environment_id {
        q = q.filter(volumes::Column::EnvironmentId.eq(env));
    }
    let ids: Vec<Uuid> = q.into_tuple().all(conn).await?;
    forget_resources(conn, &ids).await
}

async fn find<C: ConnectionTrait>(conn: &C, project_id: Uuid, id: Uuid) -> Result<volumes::Model> {
    volumes::Entity::find_by_id(id)
        .filter(volumes::Column::ProjectId.eq(project_id))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("volume", id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<()>) -> Option<String> {
        match r {
            Err(Error::BadRequest { field, .. }) => field,
            _ => None,
        }
    }

    #[test]
    fn mount_paths() {
        for ok in [
            "/data",
            "/app/uploads",
            "/var/lib/data",
            "/srv/x.y_z-1",
            "/home/app/.cache",
        ] {
            assert!(mount_path("mountPath", ok).is_ok(), "{ok}");
        }
        for bad in [
            "data",
            "/",
            "/data/",
            "//data",
            "/a/../b",
            "/a/./b",
            "/proc",
            "/proc/x",
            "/sys/fs",
            "/dev/shm",
            "/etc/app",
            "/usr/local/x",
            "/bin",
            "/lib",
            "/lib64/x",
            "/libx32",
            "/sbin/x",
            "/tmp",
            "/tmp/x",
            "/var/tmp/x",
            "/app",
            "/var",
            "/run/x",
            "/a b",
            "/opt/app",
        ] {
            assert_eq!(
                field_of(mount_path("mountPath", bad)).as_deref(),
                Some("mountPath"),
                "{bad}"
            );
        }
    }

    #[test]
    fn nesting() {
        assert!(nested("/data", "/data"));
        assert!(nested("/data", "/data/sub"));
        assert!(nested("/data/sub", "/data"));
        assert!(!nested("/data", "/database"));
    }

    #[test]
    fn sizes() {
        let s = VolumeSettings::default();
        assert_eq!(size_gb(&s, "sizeGb", 1).unwrap(), 1);
        assert_eq!(size_gb(&s, "sizeGb", 100).unwrap(), 100);
        for bad in [0, -1, 16385, i64::from(u32::MAX) + 1] {
            assert_eq!(
                size_gb(&s, "sizeGb", bad).unwrap_err().code(),
                "BAD_REQUEST"
            );
        }
        assert_eq!(size_gb(&s, "sizeGb", 101).unwrap_err().code(), "FORBIDDEN");
    }
}
