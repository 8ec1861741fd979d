//! Managed resources (databases, KV stores): recorded at once, provisioned
//! by durable jobs through the runtime's [`Instances`], bound to project
//! environments as managed secret env vars.
//!
//! `status`: `pending` → `provisioning` → `ready`, or `failed` with a
//! message; `deleting` once a delete is accepted (the resource is gone
//! from every API at that moment; a job removes the instance).
//! `reconcileStatus`: `pending` while a job has work to do, `synced`
//! when the instance matches the record, `failed` when a job gave up.

pub mod bindings;
pub mod metrics;
pub mod providers;

use std::time::Duration;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::audit::{self, Target};
use super::deployments::Deployer;
use super::{Ctx, new_id, now, parse_id, sandboxes, validate, volumes};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::reconcile::{self, NewJob};
use crate::runtime::instances::{
    Backup, Credentials, Endpoint, InstanceSpec, Instances, Origin, Scalars,
};
use crate::secrets::{Keyring, SecretString, random_hex};
use entity::resources;
pub use providers::{Connection, Hosting, Provider};

pub const PENDING: &str = "pending";
pub const PROVISIONING: &str = "provisioning";
pub const READY: &str = "ready";
pub const FAILED: &str = "failed";
pub const DELETING: &str = "deleting";
pub const SYNCED: &str = "synced";

/// Job kinds.
pub const PROVISION_JOB: &str = "resource.provision";
pub const DEPROVISION_JOB: &str = "resource.deprovision";

/// Owner kind of a resource's sandbox user.
pub const SANDBOX_OWNER: &str = "resource";

/// The longest resource name.
const MAX_NAME: usize = 100;
/// How far back a point-in-time restore may go.
const RESTORE_WINDOW_DAYS: i64 = 7;
/// How long a request waits for a live instance's figures.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a `POST /resources` asks for.
#[derive(Debug, Clone)]
pub struct NewResource {
    pub name: String,
    pub kind: String,
    pub provider: Option<String>,
    pub config: Option<Value>,
    pub environment_id: Option<String>,
}

/// Secrets and where the instance answers, sealed in the row.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sealed {
    admin_password: String,
    app_password: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

/// What a provisioning job carries (durably, in its payload).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionJob {
    pub resource_id: Uuid,
    /// Bind to this environment once ready.
    #[serde(default)]
    pub environment_id: Option<Uuid>,
    /// Copy the data of this resource (a fast branch).
    #[serde(default)]
    pub copy_of: Option<Uuid>,
    /// Recover this resource's data to `target_time`.
    #[serde(default)]
    pub restore_of: Option<Uuid>,
    #[serde(default)]
    pub target_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// A resource as the API shows it; connection details only where asked
/// (a single resource to a writer), always with the password masked in
/// the masked form.
#[derive(Debug, Clone)]
pub struct View {
    pub row: resources::Model,
    pub config: Map<String, Value>,
    pub connection: Option<ConnectionView>,
    /// The instance's live state (a single ready resource).
    pub live: Option<crate::runtime::instances::InstanceStatus>,
}

/// Connection strings of a ready database or KV store.
#[derive(Clone)]
pub struct ConnectionView {
    pub url: Option<String>,
    pub masked: String,
    pub public_url: Option<String>,
    pub public_host: String,
}

impl std::fmt::Debug for ConnectionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionView")
            .field("masked", &self.masked)
            .finish_non_exhaustive()
    }
}

impl View {
    pub fn provider(&self) -> Result<&'static Provider> {
        providers::of(&self.row.kind, &self.row.provider)
    }

    pub fn backup_retention_days(&self) -> Option<u32> {
        let p = self.provider().ok()?;
        p.backups.then(|| p.retention_days(&self.config))
    }
}

fn config_of(row: &resources::Model) -> Map<String, Value> {
    match &row.config {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    }
}

/// The instance's name: objects and directories of it start with this.
pub fn instance_name(provider: &Provider, id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!("{}-{}", provider.short, &hex[hex.len() - 12..])
}

fn seal(keyring: &Keyring, s: &Sealed) -> Result<String> {
    keyring.seal(&serde_json::to_string(s).map_err(Error::internal)?)
}

fn open(keyring: &Keyring, row: &resources::Model) -> Result<Sealed> {
    let text = row
        .connection_ciphertext
        .as_deref()
        .ok_or_else(|| Error::internal(format!("resource {} has no credentials", row.id)))?;
    serde_json::from_str(keyring.open(text)?.expose()).map_err(Error::internal)
}

/// How the application connects, once the instance answers.
fn connection(provider: &Provider, sealed: &Sealed) -> Option<Connection> {
    Some(Connection {
        host: sealed.host.clone()?,
        port: sealed.port?,
        user: provider.app_user.to_string(),
        password: SecretString::new(sealed.app_password.clone()),
        database: provider.database.to_string(),
    })
}

/// Whether a server of the runtime's data services stands behind `row`.
pub(super) fn hosts_instance(row: &resources::Model) -> bool {
    providers::of(&row.kind, &row.provider).is_ok_and(|p| p.hosting == Hosting::Instance)
}

/// The name (a DNS label) of the storage or volume behind a resource of
/// `kind`, from the resource's name: `Media Files` becomes `media-files`.
fn label_of(kind: &str, name: &str) -> Result<String> {
    let mut label = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            label.push(c.to_ascii_lowercase());
        } else if !label.ends_with('-') {
            label.push('-');
        }
    }
    let label: String = label.trim_matches('-').chars().take(63).collect();
    let label = label.trim_end_matches('-').to_string();
    if label.is_empty() {
        return Err(Error::field(
            "name",
            format!(
                "a {kind} resource's name needs a letter or digit: what stands behind it is named after it"
            ),
        ));
    }
    Ok(label)
}

/// A resource of the caller's organisation that is not being deleted.
pub async fn find<C: ConnectionTrait>(conn: &C, ctx: &Ctx, id: &str) -> Result<resources::Model> {
    let id = parse_id("id", id)?;
    let row = resources::Entity::find_by_id(id)
        .one(conn)
        .await?
        .filter(|r| r.status != DELETING)
        .ok_or_else(|| Error::not_found("resource", id))?;
    ctx.check_org(row.organization_id, "resource")?;
    Ok(row)
}

impl Deployer {
    fn instances(&self) -> Result<&dyn Instances> {
        self.runtime.instances().ok_or_else(|| {
            Error::Unavailable(format!(
                "the {} runtime of this server hosts no data services",
                self.runtime.kind()
            ))
        })
    }

    /// A view of `row`; with `secrets`, the full connection string too.
    pub fn view(&self, row: resources::Model, secrets: bool) -> Result<View> {
        let config = config_of(&row);
        let provider = providers::of(&row.kind, &row.provider)?;
        let connection = match (row.status.as_str(), &row.connection_ciphertext) {
            (READY, Some(_)) => {
                let sealed = open(&self.keyring, &row)?;
                connection(provider, &sealed).map(|c| {
                    let public_host = row.public_host.clone().unwrap_or_else(|| c.host.clone());
                    let public = Connection {
                        host: public_host.clone(),
                        ..c.clone()
                    };
                    ConnectionView {
                        url: secrets.then(|| provider.url(&c, c.password.expose())),
                        masked: provider.url(&c, crate::domain::env_vars::MASK),
                        public_url: secrets
                            .then(|| provider.url(&public, public.password.expose())),
                        public_host,
                    }
                })
            }
            _ => None,
        };
        Ok(View {
            row,
            config,
            connection,
            live: None,
        })
    }

    /// Records a new resource and the job that provisions it.
    pub async fn create_resource(&self, ctx: &Ctx, input: NewResource) -> Result<View> {
        ctx.require(Role::Write)?;
        let name = validate::text("name", &input.name, MAX_NAME)?;
        let mut provider = providers::find(&input.kind, input.provider.as_deref())?;
        if provider.hosting == Hosting::Storage {
            // One blob provider serves a server: the one it is set up with.
            let serving = self.storages.provider();
            match input.provider.as_deref().map(str::trim) {
                None | Some("") => provider = providers::of(provider.kind, serving)?,
                Some(asked) if asked != serving => {
                    return Err(Error::field(
                        "provider",
                        format!(
                            "this server's blob storage is provider '{serving}' (blob_provider), not '{asked}'"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let config = provider.config(input.config.as_ref(), None)?;
        if provider.hosting.attached() {
            return self
                .create_attached(
                    ctx,
                    &name,
                    provider,
                    config,
                    input.environment_id.as_deref(),
                )
                .await;
        }
        let environment_id = match &input.environment_id {
            Some(e) => Some(
                bindings::environment(&self.db, ctx, "environmentId", e)
                    .await?
                    .0
                    .id,
            ),
            None => None,
        };
        self.instances()?;
        let txn = self.db.begin().await?;
        let row = self
            .insert_resource(&txn, ctx, &name, provider, config, None, None)
            .await?;
        self.enqueue_provision(
            &txn,
            ctx,
            ProvisionJob {
                resource_id: row.id,
                environment_id,
                ..ProvisionJob::default()
            },
        )
        .await?;
        audit::record(
            &txn,
            ctx,
            "resources.create",
            Target::new("resource", row.id),
            Some(json!({ "kind": provider.kind, "provider": provider.name })),
        )
        .await?;
        txn.commit().await?;
        self.queue.notify();
        self.changes.notify_waiters();
        self.view(row, false)
    }

    /// A `kind: blob` or `kind: volume` resource: a storage or a volume of
    /// one project environment, made with it in one transaction under the
    /// same id, ready at once (a storage's variables are written into that
    /// environment; a volume is mounted by its service's next deploy).
    async fn create_attached(
        &self,
        ctx: &Ctx,
        name: &str,
        provider: &'static Provider,
        config: Map<String, Value>,
        environment: Option<&str>,
    ) -> Result<View> {
        let Some(environment) = environment else {
            return Err(Error::field(
                "environmentId",
                format!(
                    "a {} resource belongs to one project environment: give that environment's id",
                    provider.kind
                ),
            ));
        };
        let label = label_of(provider.kind, name)?;
        let draft = match provider.hosting {
            Hosting::Volume => Some(self.volume_draft(&label, &config)?),
            _ => None,
        };
        let txn = self.db.begin().await?;
        let (env, project) = bindings::environment(&txn, ctx, "environmentId", environment).await?;
        let row = self
            .insert_resource(&txn, ctx, name, provider, config, None, None)
            .await?;
        let (made, what) = match &draft {
            Some(draft) => {
                let made = self
                    .insert_volume(&txn, ctx, &project, &env, draft, row.id)
                    .await?;
                let what = format!(
                    "It is volume '{label}' of service {} at {}",
                    made.service, made.row.mount_path
                );
                (Some(made), what)
            }
            None => {
                self.storages
                    .create_in(&txn, ctx, &project, &env, &label, None, row.id)
                    .await?;
                (None, format!("It is storage '{label}'"))
            }
        };
        let mut active = row.clone().into_active_model();
        if let Some(made) = &made {
            // The service it went to, when none was named.
            let mut config = config_of(&row);
            config.insert("service".into(), Value::from(made.service.clone()));
            active.config = Set(Some(Value::Object(config)));
        }
        active.status = Set(READY.into());
        active.reconcile_status = Set(SYNCED.into());
        active.message = Set(Some(format!(
            "{} {what} in environment {} of project {}.",
            provider.started, env.name, project.slug
        )));
        let row = active.update(&txn).await?;
        audit::record(
            &txn,
            ctx,
            "resources.create",
            Target::new("resource", row.id),
            Some(json!({ "kind": provider.kind, "provider": provider.name, "environmentId": env.id })),
        )
        .await?;
        txn.commit().await?;
        if let Some(made) = &made {
            self.make_volume(made).await?;
        }
        self.changes.notify_waiters();
        self.view(row, false)
    }

    /// A volume from a checked `kind: volume` config.
    fn volume_draft(&self, label: &str, config: &Map<String, Value>) -> Result<volumes::Draft> {
        let text = |k: &str| config.get(k).and_then(Value::as_str).map(str::to_string);
        let size = config.get("storageGb").and_then(Value::as_i64).unwrap_or(0);
        Ok(volumes::Draft {
            name: label.to_string(),
            mount_path: text("mountPath")
                .ok_or_else(|| Error::field("config.mountPath", "is required"))?,
            size_gb: volumes::size_gb(&self.volumes, "config.storageGb", size)?,
            service: text("service"),
            size_field: "config.storageGb",
            service_field: "config.service",
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_resource<C: ConnectionTrait>(
        &self,
        conn: &C,
        ctx: &Ctx,
        name: &str,
        provider: &Provider,
        config: Map<String, Value>,
        source: Option<Uuid>,
        branch_env: Option<String>,
    ) -> Result<resources::Model> {
        super::organizations::take_turns(conn, ctx.org_id()).await?;
        let held = resources::Entity::find()
            .filter(resources::Column::OrganizationId.eq(ctx.org_id()))
            .count(conn)
            .await?;
        if held >= self.resource_quota {
            return Err(Error::Forbidden(format!(
                "the organisation has {held} resources, the most it may have (max_resources_per_organization): delete one first"
            )));
        }
        let id = new_id();
        let sealed = Sealed {
            admin_password: random_hex(24),
            app_password: random_hex(24),
            host: None,
            port: None,
        };
        let instance = provider.hosting == Hosting::Instance;
        let port = match self.runtime.kind() {
            "local" if instance => Some(self.allocate_port(conn).await?),
            _ => None,
        };
        let now = now();
        let row = resources::ActiveModel {
            id: Set(id),
            organization_id: Set(ctx.org_id()),
            name: Set(name.to_string()),
            kind: Set(provider.kind.to_string()),
            provider: Set(provider.name.to_string()),
            config: Set(Some(Value::Object(config))),
            status: Set(PENDING.into()),
            reconcile_status: Set(PENDING.into()),
            tier: Set(Some("standard".into())),
            message: Set(Some(provider.started.to_string())),
            connection_ciphertext: Set(if instance {
                Some(seal(&self.keyring, &sealed)?)
            } else {
                None
            }),
            public_host: Set(instance.then(|| self.public_host.clone())),
            source_resource_id: Set(source),
            port: Set(port.map(i32::from)),
            branch_env: Set(branch_env),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(conn)
        .await?;
        Ok(row)
    }

    /// The lowest port of the range that no resource holds and nothing on
    /// this machine listens on (the unique column settles races).
    async fn allocate_port<C: ConnectionTrait>(&self, conn: &C) -> Result<u16> {
        let range = self.resource_ports;
        let taken: std::collections::HashSet<i32> = resources::Entity::find()
            .select_only()
            .column(resources::Column::Port)
            .filter(resources::Column::Port.is_not_null())
            .into_tuple::<Option<i32>>()
            .all(conn)
            .await?
            .into_iter()
            .flatten()
            .collect();
        (range.first..=range.last)
            .find(|p| {
                !taken.contains(&i32::from(*p))
                    && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
            })
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "every port of resource_ports ({}-{}) is in use: widen the range",
                    range.first, range.last
                ))
            })
    }

    async fn enqueue_provision<C: ConnectionTrait>(
        &self,
        conn: &C,
        ctx: &Ctx,
        job: ProvisionJob,
    ) -> Result<()> {
        reconcile::enqueue(
            conn,
            NewJob {
                kind: PROVISION_JOB,
                payload: serde_json::to_value(&job).map_err(Error::internal)?,
                organization_id: Some(ctx.org_id()),
                deployment_id: None,
            },
        )
        .await?;
        Ok(())
    }

    /// The caller's resources, optionally of one kind, oldest first.
    pub async fn list_resources(&self, ctx: &Ctx, kind: Option<&str>) -> Result<Vec<View>> {
        let mut q = resources::Entity::find()
            .filter(resources::Column::OrganizationId.eq(ctx.org_id()))
            .filter(resources::Column::Status.ne(DELETING))
            .order_by_asc(resources::Column::CreatedAt)
            .order_by_asc(resources::Column::Id);
        if let Some(kind) = kind.map(str::trim).filter(|k| !k.is_empty()) {
            if !providers::KINDS.contains(&kind) {
                return Err(Error::field(
                    "kind",
                    format!("must be one of {}", providers::KINDS.join(", ")),
                ));
            }
            q = q.filter(resources::Column::Kind.eq(kind));
        }
        q.all(&self.db)
            .await?
            .into_iter()
            .map(|r| self.view(r, false))
            .collect()
    }

    /// One resource; its connection strings in full for a writer.
    pub async fn get_resource(&self, ctx: &Ctx, id: &str) -> Result<View> {
        let row = find(&self.db, ctx, id).await?;
        let live = self.instance_status(&row).await.ok().flatten();
        let mut view = self.view(row, ctx.require(Role::Write).is_ok())?;
        view.live = live;
        Ok(view)
    }

    /// Renames a resource or changes its config; a change of size
    /// restarts the instance (through a provisioning job).
    pub async fn update_resource(
        &self,
        ctx: &Ctx,
        id: &str,
        name: Option<String>,
        config: Option<Value>,
    ) -> Result<View> {
        ctx.require(Role::Write)?;
        let name = name
            .map(|n| validate::text("name", &n, MAX_NAME))
            .transpose()?;
        let txn = self.db.begin().await?;
        let row = find(&txn, ctx, id).await?;
        let provider = providers::of(&row.kind, &row.provider)?;
        let before = config_of(&row);
        let after = provider.config(config.as_ref(), Some(&Value::Object(before.clone())))?;
        if provider.hosting.attached() && after != before {
            return Err(Error::field(
                "config",
                format!(
                    "a {} resource's settings are fixed when it is made: make a new one (its name may change)",
                    provider.kind
                ),
            ));
        }
        let restart = provider.needs_restart(&before, &after);
        let mut active = row.clone().into_active_model();
        if let Some(n) = &name {
            active.name = Set(n.clone());
        }
        active.config = Set(Some(Value::Object(after)));
        if restart && row.status != FAILED {
            active.reconcile_status = Set(PENDING.into());
        }
        active.updated_at = Set(now());
        let row = active.update(&txn).await?;
        if restart && row.status != FAILED {
            self.enqueue_provision(
                &txn,
                ctx,
                ProvisionJob {
                    resource_id: row.id,
                    ..ProvisionJob::default()
                },
            )
            .await?;
        }
        audit::record(
            &txn,
            ctx,
            "resources.update",
            Target::new("resource", row.id),
            Some(json!({ "restart": restart })),
        )
        .await?;
        txn.commit().await?;
        self.queue.notify();
        self.changes.notify_waiters();
        self.view(row, false)
    }

    /// Deletes a resource: it leaves every API at once with its bindings
    /// and their env vars; a job stops the instance and removes its data.
    pub async fn delete_resource(&self, ctx: &Ctx, id: &str) -> Result<bool> {
        ctx.require(Role::Write)?;
        let txn = self.db.begin().await?;
        let row = find(&txn, ctx, id).await?;
        let target = || Target::new("resource", row.id);
        // Whether the deletion is audited already (with its teardown).
        let audited = match providers::of(&row.kind, &row.provider)?.hosting {
            Hosting::Instance => {
                bindings::remove_all(&txn, row.id).await?;
                let mut active = row.clone().into_active_model();
                active.status = Set(DELETING.into());
                active.reconcile_status = Set(PENDING.into());
                active.updated_at = Set(now());
                active.update(&txn).await?;
                reconcile::enqueue(
                    &txn,
                    NewJob {
                        kind: DEPROVISION_JOB,
                        payload: json!({ "resourceId": row.id }),
                        organization_id: Some(ctx.org_id()),
                        deployment_id: None,
                    },
                )
                .await?;
                false
            }
            Hosting::Storage => {
                // Its key is refused from the next S3 request on; blobs stay.
                crate::domain::storage::remove(&txn, &[row.id]).await?;
                false
            }
            // It leaves at once; a teardown job removes the data.
            Hosting::Volume => match volumes::with_project(&txn, row.id).await? {
                Some((volume, project)) => {
                    volumes::remove_in(&txn, ctx, &project, volume, "resources.delete", target())
                        .await?;
                    true
                }
                None => {
                    resources::Entity::delete_by_id(row.id).exec(&txn).await?;
                    false
                }
            },
        };
        if !audited {
            audit::record(&txn, ctx, "resources.delete", target(), None).await?;
        }
        txn.commit().await?;
        self.queue.notify();
        self.changes.notify_waiters();
        Ok(true)
    }

    /// What the runtime needs to run `row`'s instance.
    pub async fn instance_spec(
        &self,
        row: &resources::Model,
        origin: Origin,
    ) -> Result<InstanceSpec> {
        let provider = providers::of(&row.kind, &row.provider)?;
        let sealed = open(&self.keyring, row)?;
        let config = config_of(row);
        let uid = match self.runtime.kind() {
            "local" => {
                Some(sandboxes::uid_for(&self.db, &self.sandbox_ids, SANDBOX_OWNER, row.id).await?)
            }
            _ => None,
        };
        Ok(InstanceSpec {
            resource_id: row.id,
            organization_id: row.organization_id,
            provider: provider.name.to_string(),
            name: instance_name(provider, row.id),
            uid,
            port: row.port.and_then(|p| u16::try_from(p).ok()),
            limits: provider.limits(&config),
            credentials: Credentials {
                admin_user: provider.admin_user.into(),
                admin_password: SecretString::new(sealed.admin_password),
                app_user: provider.app_user.into(),
                app_password: SecretString::new(sealed.app_password),
                database: provider.database.into(),
            },
            origin,
            backup_retention_days: provider.retention_days(&config),
        })
    }

    async fn set_state(
        &self,
        id: Uuid,
        status: &str,
        reconcile: &str,
        message: Option<String>,
        endpoint: Option<&Endpoint>,
    ) -> Result<()> {
        let Some(row) = resources::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(());
        };
        if row.status == DELETING {
            return Ok(());
        }
        let mut active = row.clone().into_active_model();
        if let Some(e) = endpoint {
            let mut sealed = open(&self.keyring, &row)?;
            sealed.host = Some(e.host.clone());
            sealed.port = Some(e.port);
            active.connection_ciphertext = Set(Some(seal(&self.keyring, &sealed)?));
        }
        active.status = Set(status.into());
        active.reconcile_status = Set(reconcile.into());
        active.message = Set(message);
        active.updated_at = Set(now());
        active.update(&self.db).await?;
        self.changes.notify_waiters();
        Ok(())
    }

    /// The provisioning job: makes the instance exist and run as recorded.
    pub async fn run_resource_provision(&self, job: ProvisionJob) -> Result<()> {
        let Some(row) = resources::Entity::find_by_id(job.resource_id)
            .one(&self.db)
            .await?
        else {
            return Ok(());
        };
        if row.status == DELETING {
            return Ok(());
        }
        let origin = self.origin(&job).await?;
        let spec = self.instance_spec(&row, origin).await?;
        let instances = self.instances()?;
        instances
            .supports(&spec.provider)
            .await
            .map_err(|e| Error::Unprocessable(e.message().to_string()))?;
        if row.status != READY {
            self.set_state(
                row.id,
                PROVISIONING,
                PENDING,
                Some("provisioning".into()),
                None,
            )
            .await?;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let progress = {
            let me = self.clone();
            let id = row.id;
            let was_ready = row.status == READY;
            tokio::spawn(async move {
                while let Some(step) = rx.recv().await {
                    if !was_ready {
                        let _ = me
                            .set_state(id, PROVISIONING, PENDING, Some(step), None)
                            .await;
                    }
                }
            })
        };
        let endpoint = instances.ensure(&spec, &tx).await;
        drop(tx);
        let _ = progress.await;
        let endpoint = endpoint?;
        self.set_state(row.id, READY, SYNCED, None, Some(&endpoint))
            .await?;
        if let Some(env) = job.environment_id {
            bindings::bind_once_ready(self, row.id, env).await?;
        }
        Ok(())
    }

    async fn origin(&self, job: &ProvisionJob) -> Result<Origin> {
        let source = |id: Uuid| async move {
            let row = resources::Entity::find_by_id(id)
                .one(&self.db)
                .await?
                .filter(|r| r.status == READY)
                .ok_or_else(|| {
                    Error::Unprocessable(
                        "the source resource was deleted or is not ready any more".into(),
                    )
                })?;
            self.instance_spec(&row, Origin::Empty).await
        };
        Ok(match (job.copy_of, job.restore_of, job.target_time) {
            (Some(id), _, _) => Origin::Copy {
                source: Box::new(source(id).await?),
            },
            (None, Some(id), Some(t)) => Origin::Restore {
                source: Box::new(source(id).await?),
                target_time: t,
            },
            _ => Origin::Empty,
        })
    }

    /// The deprovisioning job: stops the instance, removes its data, frees
    /// its uid and port.
    pub async fn run_resource_deprovision(&self, resource_id: Uuid) -> Result<()> {
        let Some(row) = resources::Entity::find_by_id(resource_id)
            .one(&self.db)
            .await?
        else {
            return Ok(());
        };
        let spec = self.instance_spec(&row, Origin::Empty).await?;
        self.instances()?.remove(&spec).await?;
        let txn = self.db.begin().await?;
        sandboxes::free(&txn, row.id).await?;
        resources::Entity::delete_by_id(row.id).exec(&txn).await?;
        txn.commit().await?;
        self.changes.notify_waiters();
        Ok(())
    }

    /// A provisioning job was given up: the resource says why.
    pub async fn resource_gave_up(&self, job: &entity::jobs::Model, error: &str) {
        let Some(id) = job.payload["resourceId"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            return;
        };
        let outcome = if job.kind == PROVISION_JOB {
            self.set_state(id, FAILED, FAILED, Some(error.to_string()), None)
                .await
        } else {
            Ok(())
        };
        if let Err(e) = outcome {
            tracing::error!(resource.id = %id, error = e.message(), "could not record a failed resource");
        }
    }

    /// After a restart of the server: every ready instance runs again
    /// (local runtime: its servers stopped with the last `serve`; a
    /// cluster's run on their own). Each starts on its own task; a slow
    /// one holds up no other.
    pub async fn restore_resources(&self) -> Result<()> {
        if self.runtime.instances().is_none() || self.runtime.kind() != "local" {
            return Ok(());
        }
        let rows = resources::Entity::find()
            .filter(resources::Column::Status.eq(READY))
            .all(&self.db)
            .await?;
        for row in rows.into_iter().filter(hosts_instance) {
            let me = self.clone();
            tokio::spawn(async move {
                let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                let result = match me.instance_spec(&row, Origin::Empty).await {
                    Ok(spec) => match me.instances() {
                        Ok(i) => i.ensure(&spec, &tx).await.map(|_| ()),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(resource.id = %row.id, error = e.message(), "could not start a resource's instance again");
                }
            });
        }
        Ok(())
    }

    /// Live state of a ready resource's instance (`None` otherwise).
    pub async fn instance_status(
        &self,
        row: &resources::Model,
    ) -> Result<Option<crate::runtime::instances::InstanceStatus>> {
        if row.status != READY || !hosts_instance(row) {
            return Ok(None);
        }
        let spec = self.instance_spec(row, Origin::Empty).await?;
        Ok(Some(self.instances()?.status(&spec).await?))
    }

    /// The live figures of a resource, with the sampled series.
    pub async fn resource_scalars(&self, row: &resources::Model) -> Result<Scalars> {
        if !hosts_instance(row) {
            return Err(Error::Unavailable(format!(
                "no figures are collected for {} resources",
                row.kind
            )));
        }
        let spec = self.instance_spec(row, Origin::Empty).await?;
        self.instances()?.scalars(&spec, LIVE_TIMEOUT).await
    }

    /// Base backups of a database (`None`: the provider keeps none).
    pub async fn resource_backups(&self, ctx: &Ctx, id: &str) -> Result<Option<Vec<Backup>>> {
        let row = find(&self.db, ctx, id).await?;
        let provider = providers::of(&row.kind, &row.provider)?;
        if row.kind != "database" {
            return Err(Error::field(
                "id",
                format!(
                    "backups are kept for databases only; this resource is a {}",
                    row.kind
                ),
            ));
        }
        if !provider.backups || row.status != READY {
            return Ok(None);
        }
        let spec = self.instance_spec(&row, Origin::Empty).await?;
        Ok(Some(self.instances()?.backups(&spec).await?))
    }

    /// Starts a point-in-time restore of a database into a NEW resource.
    pub async fn restore_resource(
        &self,
        ctx: &Ctx,
        id: &str,
        target_time: &str,
    ) -> Result<(View, chrono::DateTime<chrono::Utc>)> {
        ctx.require(Role::Write)?;
        let target = chrono::DateTime::parse_from_rfc3339(target_time.trim())
            .map_err(|_| {
                Error::field(
                    "targetTime",
                    "must be an ISO 8601 time with a zone, such as 2026-03-09T10:00:00Z",
                )
            })?
            .with_timezone(&chrono::Utc);
        let row = find(&self.db, ctx, id).await?;
        let provider = providers::of(&row.kind, &row.provider)?;
        if !provider.backups {
            return Err(Error::field(
                "id",
                format!(
                    "point-in-time restore is available for PostgreSQL databases only, not {} {}",
                    row.provider, row.kind
                ),
            ));
        }
        let now = chrono::Utc::now();
        if target > now {
            return Err(Error::field("targetTime", "must not be in the future"));
        }
        if target < now - chrono::Duration::days(RESTORE_WINDOW_DAYS) {
            return Err(Error::field(
                "targetTime",
                format!("must be at most {RESTORE_WINDOW_DAYS} days ago"),
            ));
        }
        if row.status != READY {
            return Err(Error::Conflict(format!(
                "the resource is {}: restore it once it is ready",
                row.status
            )));
        }
        let spec = self.instance_spec(&row, Origin::Empty).await?;
        let first = self
            .instances()?
            .backups(&spec)
            .await?
            .into_iter()
            .filter(|b| b.status == "completed")
            .filter_map(|b| b.completed_at)
            .min();
        match first {
            Some(first) if target >= first => {}
            Some(first) => {
                return Err(Error::field(
                    "targetTime",
                    format!(
                        "must not be before the first backup, completed at {}",
                        first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                ));
            }
            None => {
                return Err(Error::field(
                    "targetTime",
                    "the resource has no completed backup yet",
                ));
            }
        }
        let name = format!(
            "{} (restored to {})",
            row.name,
            target.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let new = self
            .derive(
                ctx,
                &row,
                Derived {
                    name: name.chars().take(MAX_NAME).collect(),
                    config: config_of(&row),
                    branch_env: None,
                    job: ProvisionJob {
                        restore_of: Some(row.id),
                        target_time: Some(target),
                        ..ProvisionJob::default()
                    },
                    action: "resources.restore",
                },
            )
            .await?;
        Ok((self.view(new, false)?, target))
    }

    /// A branch of a database: a new resource with the source's data
    /// (`fast`) or empty.
    pub async fn branch_resource(&self, ctx: &Ctx, id: &str, input: BranchInput) -> Result<View> {
        ctx.require(Role::Write)?;
        let row = find(&self.db, ctx, id).await?;
        let provider = providers::of(&row.kind, &row.provider)?;
        if row.kind != "database" {
            return Err(Error::field(
                "id",
                format!(
                    "branches are made of databases only; this resource is a {}",
                    row.kind
                ),
            ));
        }
        let fast = input.fast.unwrap_or(false);
        if fast && !provider.branches {
            return Err(Error::field(
                "fast",
                format!(
                    "{} databases branch empty only (fast: false)",
                    provider.name
                ),
            ));
        }
        if fast && row.status != READY {
            return Err(Error::Conflict(format!(
                "the resource is {}: branch it once it is ready",
                row.status
            )));
        }
        let env = match input.env {
            Some(e) => {
                validate::dns_label("env", e.trim())?;
                e.trim().to_string()
            }
            None => "staging".to_string(),
        };
        let name = match input.name {
            Some(n) => validate::text("name", &n, MAX_NAME)?,
            None => format!("{} ({env})", row.name)
                .chars()
                .take(MAX_NAME)
                .collect(),
        };
        let mut config = config_of(&row);
        let storage = input.storage_gb.unwrap_or(10);
        config.insert("storageGb".into(), json!(storage));
        let config = provider
            .config(Some(&Value::Object(config)), None)
            .map_err(|_| Error::field("storageGb", "must be a whole number from 1 to 1000"))?;
        let new = self
            .derive(
                ctx,
                &row,
                Derived {
                    name,
                    config,
                    branch_env: Some(env),
                    job: ProvisionJob {
                        copy_of: fast.then_some(row.id),
                        ..ProvisionJob::default()
                    },
                    action: "resources.branch",
                },
            )
            .await?;
        self.view(new, false)
    }

    /// Records a resource made from `source` (a restore, a branch) and the
    /// job that provisions it, in one transaction.
    async fn derive(
        &self,
        ctx: &Ctx,
        source: &resources::Model,
        d: Derived,
    ) -> Result<resources::Model> {
        let provider = providers::of(&source.kind, &source.provider)?;
        let txn = self.db.begin().await?;
        let new = self
            .insert_resource(
                &txn,
                ctx,
                &d.name,
                provider,
                d.config,
                Some(source.id),
                d.branch_env,
            )
            .await?;
        self.enqueue_provision(
            &txn,
            ctx,
            ProvisionJob {
                resource_id: new.id,
                ..d.job
            },
        )
        .await?;
        audit::record(
            &txn,
            ctx,
            d.action,
            Target::new("resource", source.id),
            Some(json!({ "resourceId": new.id })),
        )
        .await?;
        txn.commit().await?;
        self.queue.notify();
        self.changes.notify_waiters();
        Ok(new)
    }

    /// Takes the scheduled base backups: each ready PostgreSQL resource
    /// whose newest backup is older than `every`.
    pub async fn take_due_backups(&self, every: Duration) -> Result<()> {
        let Some(instances) = self.runtime.instances() else {
            return Ok(());
        };
        if instances.schedules_backups() {
            return Ok(());
        }
        let rows = resources::Entity::find()
            .filter(resources::Column::Status.eq(READY))
            .all(&self.db)
            .await?;
        for row in rows {
            let Ok(provider) = providers::of(&row.kind, &row.provider) else {
                continue;
            };
            if !provider.backups {
                continue;
            }
            let spec = self.instance_spec(&row, Origin::Empty).await?;
            let newest = instances
                .backups(&spec)
                .await?
                .into_iter()
                .filter_map(|b| b.completed_at)
                .max();
            let due = newest.is_none_or(|t| {
                chrono::Utc::now() - t > chrono::Duration::from_std(every).unwrap_or_default()
            });
            if due && let Err(e) = instances.backup(&spec).await {
                tracing::warn!(resource.id = %row.id, error = e.message(), "a scheduled backup failed");
            }
        }
        Ok(())
    }
}

/// A resource made from another.
struct Derived {
    name: String,
    config: Map<String, Value>,
    branch_env: Option<String>,
    /// The provisioning job, but for the new resource's id.
    job: ProvisionJob,
    action: &'static str,
}

/// What `POST /resources/:id/branch` asks for.
#[derive(Debug, Clone, Default)]
pub struct BranchInput {
    pub name: Option<String>,
    pub env: Option<String>,
    pub fast: Option<bool>,
    pub storage_gb: Option<i64>,
}

/// Current status of a resource for its subscription: what changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub status: String,
    pub reconcile_status: String,
    pub message: Option<String>,
    pub restarts: Option<u32>,
}

impl Deployer {
    /// The status of a resource now, then each change, until it is
    /// deleted (a last `deleted` update, then the end).
    pub async fn watch_resource(
        &self,
        ctx: &Ctx,
        id: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, StatusUpdate>> {
        use futures_util::StreamExt;
        let id = find(&self.db, ctx, id).await?.id;
        let me = self.clone();
        let theirs = self.runtime.instances().and_then(|i| i.changed());
        // `None` once the last update (`deleted`) went out.
        let start: Option<Option<StatusUpdate>> = Some(None);
        Ok(futures_util::stream::unfold(start, move |last| {
            let (me, theirs) = (me.clone(), theirs.clone());
            async move {
                let last = last?;
                let now = me
                    .when(theirs, || {
                        let (me, last) = (me.clone(), last.clone());
                        async move {
                            let now = me.resource_update(id).await.ok()?;
                            (last.as_ref() != Some(&now)).then_some(now)
                        }
                    })
                    .await;
                let next = (now.status != "deleted").then(|| Some(now.clone()));
                Some((now, next))
            }
        })
        .boxed())
    }

    /// What a resource's subscriber is told now.
    async fn resource_update(&self, id: Uuid) -> Result<StatusUpdate> {
        let row = resources::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .filter(|r| r.status != DELETING);
        let Some(row) = row else {
            return Ok(StatusUpdate {
                status: "deleted".into(),
                reconcile_status: SYNCED.into(),
                message: None,
                restarts: None,
            });
        };
        let live = self.instance_status(&row).await.ok().flatten();
        let (status, message) = shown(&row, live.as_ref());
        Ok(StatusUpdate {
            status,
            reconcile_status: row.reconcile_status,
            message,
            restarts: live.map(|l| l.restarts),
        })
    }
}

/// The status and message a user reads: the record's, unless the
/// instance of a ready resource says otherwise (crashed, starting).
pub fn shown(
    row: &resources::Model,
    live: Option<&crate::runtime::instances::InstanceStatus>,
) -> (String, Option<String>) {
    use crate::runtime::instances::InstanceState;
    let status = match live.map(|l| l.state) {
        Some(InstanceState::Crashed) => "crashed".to_string(),
        Some(InstanceState::Missing | InstanceState::Starting) => "starting".to_string(),
        _ => row.status.clone(),
    };
    let message = live
        .and_then(|l| l.message.clone())
        .or_else(|| row.message.clone());
    (status, message)
}

/// Job payload reader shared by the handler.
pub fn provision_job(payload: &Value) -> Result<ProvisionJob> {
    serde_json::from_value(payload.clone())
        .map_err(|e| Error::bad_request(format!("not a provisioning job: {e}")))
}
