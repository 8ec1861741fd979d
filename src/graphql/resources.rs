//! Managed resources (databases, KV stores): queries, mutations and the
//! `resourceStatus` subscription. Resolvers are thin; the rules live in
//! `domain::resources`.

use async_graphql::{Context, ID, InputObject, Json, Object, Result, SimpleObject, Subscription};
use serde_json::Value;

use super::domain_ctx;
use super::types::Timestamp;
use crate::domain::deployments::Deployer;
use crate::domain::resources::bindings::BindingView;
use crate::domain::resources::metrics::MetricsView;
use crate::domain::resources::{self, BranchInput, NewResource, View};
use crate::error::Error;

fn deployer<'a>(ctx: &Context<'a>) -> Result<&'a Deployer, Error> {
    ctx.data_opt::<Deployer>()
        .ok_or_else(|| Error::Unavailable("no runtime is configured".into()))
}

/// A managed resource.
pub struct Resource(pub View);

#[Object]
impl Resource {
    async fn id(&self) -> ID {
        ID(self.0.row.id.to_string())
    }
    /// `database`, `kv`, `blob`, `search` or `volume`.
    async fn kind(&self) -> &str {
        &self.0.row.kind
    }
    async fn name(&self) -> &str {
        &self.0.row.name
    }
    /// `postgresql`, `mysql`, `redis`, `valkey`.
    async fn provider(&self) -> &str {
        &self.0.row.provider
    }
    /// `pending`, `provisioning`, `ready` or `failed`; a ready resource
    /// whose instance is down reads `crashed` until it is back.
    async fn status(&self) -> String {
        resources::shown(&self.0.row, self.0.live.as_ref()).0
    }
    /// `pending` while the platform works on it, `synced`, or `failed`.
    async fn reconcile_status(&self) -> &str {
        &self.0.row.reconcile_status
    }
    /// Progress while provisioning; why, when it failed.
    async fn message(&self) -> Option<String> {
        resources::shown(&self.0.row, self.0.live.as_ref()).1
    }
    async fn tier(&self) -> Option<&str> {
        self.0.row.tier.as_deref()
    }
    /// The provider's settings, defaults filled in.
    async fn config(&self) -> Json<Value> {
        Json(Value::Object(self.0.config.clone()))
    }
    /// With the password: only for a single resource, to a writer.
    async fn connection_string(&self) -> Option<String> {
        self.0.connection.as_ref().and_then(|c| c.url.clone())
    }
    /// The connection string with the password as `***`.
    async fn masked_connection_string(&self) -> Option<String> {
        self.0.connection.as_ref().map(|c| c.masked.clone())
    }
    /// The connection string for clients outside the platform's network.
    async fn public_connection_string(&self) -> Option<String> {
        self.0
            .connection
            .as_ref()
            .and_then(|c| c.public_url.clone())
    }
    async fn public_host(&self) -> Option<String> {
        self.0.connection.as_ref().map(|c| c.public_host.clone())
    }
    /// Days of backups and WAL kept (PostgreSQL).
    async fn backup_retention_days(&self) -> Option<i32> {
        self.0
            .backup_retention_days()
            .map(|d| i32::try_from(d).unwrap_or(i32::MAX))
    }
    /// The resource this one was branched or restored from.
    async fn source_resource_id(&self) -> Option<ID> {
        self.0.row.source_resource_id.map(|i| ID(i.to_string()))
    }
    /// The environment a branch was made for.
    async fn env(&self) -> Option<&str> {
        self.0.row.branch_env.as_deref()
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.row.created_at)
    }
    async fn updated_at(&self) -> Timestamp {
        Timestamp(self.0.row.updated_at)
    }
}

/// `{object: "list", data}`.
#[derive(SimpleObject)]
pub struct ResourceList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<Resource>,
}

#[derive(InputObject)]
pub struct CreateResourceInput {
    pub name: String,
    /// `database`, `kv`, `blob`, `search` or `volume`.
    pub kind: String,
    /// The kind's default when absent: database → postgresql, kv → redis.
    pub provider: Option<String>,
    /// Provider settings (`storageGb`, `memoryMb`, `maxConnections`,
    /// `backupRetentionDays`, `maxMemoryMb`); unknown keys are refused.
    pub config: Option<Json<Value>>,
    /// Bind to this environment once ready.
    pub environment_id: Option<String>,
}

#[derive(InputObject)]
pub struct UpdateResourceInput {
    pub name: Option<String>,
    pub config: Option<Json<Value>>,
}

#[derive(InputObject)]
pub struct BranchResourceInput {
    pub name: Option<String>,
    /// The environment the branch is for (`staging` by default).
    pub env: Option<String>,
    /// `true`: a copy of the data; `false` (default): an empty database.
    pub fast: Option<bool>,
    /// Disk of the branch in GiB (10 by default).
    pub storage_gb: Option<i32>,
}

#[derive(InputObject)]
pub struct CreateBindingInput {
    pub project_environment_id: String,
    /// `primary` (default), `replica`, `analytics` or `backup`.
    pub role: Option<String>,
}

/// What `POST /resources` answers at once.
#[derive(SimpleObject)]
pub struct ResourceAccepted {
    pub id: ID,
    pub kind: String,
    pub name: String,
    pub provider: String,
    pub reconcile_status: String,
    pub status: String,
    pub message: String,
    pub created_at: Timestamp,
}

#[derive(SimpleObject)]
pub struct RestoreAccepted {
    /// The new resource.
    pub restore_id: ID,
    pub restored_cluster_name: String,
    pub target_time: Timestamp,
    pub message: String,
}

#[derive(SimpleObject)]
pub struct Binding {
    pub id: ID,
    pub project_environment_id: ID,
    pub resource_type: String,
    pub role: String,
    pub env_name: String,
    pub project_name: String,
    pub project_slug: String,
    pub created_at: Timestamp,
}

impl From<BindingView> for Binding {
    fn from(b: BindingView) -> Self {
        Binding {
            id: ID(b.id.to_string()),
            project_environment_id: ID(b.project_environment_id.to_string()),
            resource_type: b.resource_type,
            role: b.role,
            env_name: b.env_name,
            project_name: b.project_name,
            project_slug: b.project_slug,
            created_at: Timestamp(b.created_at),
        }
    }
}

#[derive(SimpleObject)]
pub struct BindingList {
    pub bindings: Vec<Binding>,
}

/// One sample of a rate: unix seconds and value.
#[derive(SimpleObject)]
pub struct Point {
    pub t: i64,
    pub v: f64,
}

/// Figures of a resource; the fields of its kind are set, the others null.
#[derive(SimpleObject)]
pub struct ResourceMetrics {
    pub available: bool,
    pub kind: String,
    /// Why there are no figures.
    pub reason: Option<String>,
    /// Bytes (database).
    pub database_size: Option<i64>,
    pub cache_hit_ratio: Option<f64>,
    pub active_connections: Option<i64>,
    /// Transactions per second, sampled every 15 s over the last day.
    pub query_throughput: Option<Vec<Point>>,
    pub memory_used_bytes: Option<i64>,
    pub memory_used_percent: Option<f64>,
    pub hit_ratio: Option<f64>,
    pub connected_clients: Option<i64>,
    /// Commands per second, sampled every 15 s over the last day.
    pub commands_per_sec: Option<Vec<Point>>,
}

impl From<MetricsView> for ResourceMetrics {
    fn from(m: MetricsView) -> Self {
        let available = m.unavailable.is_none();
        let database = available && m.kind == "database";
        let kv = available && m.kind == "kv";
        let series = || {
            m.series
                .iter()
                .map(|(t, v)| Point { t: *t, v: *v })
                .collect::<Vec<_>>()
        };
        let s = &m.scalars;
        ResourceMetrics {
            available,
            kind: m.kind.clone(),
            reason: m.unavailable.clone(),
            database_size: s.database_size.filter(|_| database),
            cache_hit_ratio: s.cache_hit_ratio.filter(|_| database),
            active_connections: s.active_connections.filter(|_| database),
            query_throughput: database.then(series),
            memory_used_bytes: s.memory_used_bytes.filter(|_| kv),
            memory_used_percent: s.memory_used_percent.filter(|_| kv),
            hit_ratio: s.hit_ratio.filter(|_| kv),
            connected_clients: s.connected_clients.filter(|_| kv),
            commands_per_sec: kv.then(series),
        }
    }
}

#[derive(SimpleObject)]
pub struct BackupEntry {
    pub name: String,
    /// `running`, `completed` or `failed`.
    pub status: String,
    pub started_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub method: String,
}

#[derive(SimpleObject)]
pub struct BackupList {
    /// `false` where the provider keeps no backups (MySQL) or the
    /// database is not ready.
    pub available: bool,
    pub backups: Vec<BackupEntry>,
}

#[derive(SimpleObject)]
pub struct ResourceStatus {
    pub status: String,
    pub reconcile_status: String,
    pub message: Option<String>,
    /// Crash restarts of the instance.
    pub restarts: Option<i32>,
}

#[derive(Default)]
pub struct ResourceQuery;

#[Object]
impl ResourceQuery {
    /// The organisation's resources, oldest first, of one `kind` if asked.
    async fn resources(&self, ctx: &Context<'_>, kind: Option<String>) -> Result<ResourceList> {
        let list = deployer(ctx)?
            .list_resources(domain_ctx(ctx)?, kind.as_deref())
            .await?;
        Ok(ResourceList {
            object: "list".into(),
            data: list.into_iter().map(Resource).collect(),
        })
    }

    /// One resource with its live status and, for a writer, its
    /// connection strings.
    async fn resource(&self, ctx: &Context<'_>, id: ID) -> Result<Resource> {
        Ok(Resource(
            deployer(ctx)?.get_resource(domain_ctx(ctx)?, &id).await?,
        ))
    }

    /// Live figures of a database or KV store.
    async fn resource_metrics(&self, ctx: &Context<'_>, id: ID) -> Result<ResourceMetrics> {
        Ok(deployer(ctx)?
            .resource_metrics(domain_ctx(ctx)?, &id)
            .await?
            .into())
    }

    /// Base backups of a database (400 for other kinds).
    async fn resource_backups(&self, ctx: &Context<'_>, id: ID) -> Result<BackupList> {
        let backups = deployer(ctx)?
            .resource_backups(domain_ctx(ctx)?, &id)
            .await?;
        Ok(BackupList {
            available: backups.is_some(),
            backups: backups
                .unwrap_or_default()
                .into_iter()
                .map(|b| BackupEntry {
                    name: b.name,
                    status: b.status,
                    started_at: Timestamp(b.started_at),
                    completed_at: b.completed_at.map(Timestamp),
                    method: b.method,
                })
                .collect(),
        })
    }

    /// The environments a resource is bound to.
    async fn resource_bindings(&self, ctx: &Context<'_>, id: ID) -> Result<BindingList> {
        let list = deployer(ctx)?
            .resource_bindings(domain_ctx(ctx)?, &id)
            .await?;
        Ok(BindingList {
            bindings: list.into_iter().map(Binding::from).collect(),
        })
    }
}

#[derive(Default)]
pub struct ResourceMutation;

#[Object]
impl ResourceMutation {
    /// Starts provisioning a resource; it is `ready` (or `failed`) later.
    async fn create_resource(
        &self,
        ctx: &Context<'_>,
        input: CreateResourceInput,
    ) -> Result<ResourceAccepted> {
        let view = deployer(ctx)?
            .create_resource(
                domain_ctx(ctx)?,
                NewResource {
                    name: input.name,
                    kind: input.kind,
                    provider: input.provider,
                    config: input.config.map(|j| j.0),
                    environment_id: input.environment_id,
                },
            )
            .await?;
        let row = view.row;
        Ok(ResourceAccepted {
            id: ID(row.id.to_string()),
            kind: row.kind,
            name: row.name,
            provider: row.provider,
            reconcile_status: row.reconcile_status,
            status: row.status,
            message: row.message.unwrap_or_default(),
            created_at: Timestamp(row.created_at),
        })
    }

    /// Renames a resource or changes its settings (a size change restarts it).
    async fn update_resource(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateResourceInput,
    ) -> Result<Resource> {
        Ok(Resource(
            deployer(ctx)?
                .update_resource(domain_ctx(ctx)?, &id, input.name, input.config.map(|j| j.0))
                .await?,
        ))
    }

    /// Deprovisions a resource: its instance, data and bindings go.
    async fn delete_resource(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        Ok(deployer(ctx)?
            .delete_resource(domain_ctx(ctx)?, &id)
            .await?)
    }

    /// Restores a database to `targetTime` into a NEW resource.
    async fn restore_resource(
        &self,
        ctx: &Context<'_>,
        id: ID,
        target_time: String,
    ) -> Result<RestoreAccepted> {
        let (view, target) = deployer(ctx)?
            .restore_resource(domain_ctx(ctx)?, &id, &target_time)
            .await?;
        let name = view
            .provider()
            .map(|p| resources::instance_name(p, view.row.id))?;
        Ok(RestoreAccepted {
            restore_id: ID(view.row.id.to_string()),
            restored_cluster_name: name,
            target_time: Timestamp(target),
            message: "Restore in progress. Poll GET /resources/:restoreId for status.".into(),
        })
    }

    /// A branch of a database: a new resource, with the data (`fast`) or empty.
    async fn branch_resource(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: Option<BranchResourceInput>,
    ) -> Result<Resource> {
        let input = input.map_or_else(BranchInput::default, |i| BranchInput {
            name: i.name,
            env: i.env,
            fast: i.fast,
            storage_gb: i.storage_gb.map(i64::from),
        });
        Ok(Resource(
            deployer(ctx)?
                .branch_resource(domain_ctx(ctx)?, &id, input)
                .await?,
        ))
    }

    /// Binds a ready resource to an environment: its connection variables
    /// become managed secret env vars there.
    async fn create_resource_binding(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: CreateBindingInput,
    ) -> Result<Binding> {
        Ok(deployer(ctx)?
            .bind_resource(
                domain_ctx(ctx)?,
                &id,
                &input.project_environment_id,
                input.role.as_deref(),
            )
            .await?
            .into())
    }

    /// Removes a binding and exactly the variables it wrote.
    async fn delete_resource_binding(
        &self,
        ctx: &Context<'_>,
        id: ID,
        binding_id: ID,
    ) -> Result<bool> {
        Ok(deployer(ctx)?
            .unbind_resource(domain_ctx(ctx)?, &id, &binding_id)
            .await?)
    }
}

#[derive(Default)]
pub struct ResourceSubscription;

#[Subscription]
impl ResourceSubscription {
    /// The resource's status now (provisioning progress in `message`),
    /// then each change (ready, crashed, restarted, failed); a last
    /// `deleted` when it is deleted, then the end.
    async fn resource_status(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<impl futures_util::Stream<Item = ResourceStatus> + use<>> {
        let updates = deployer(ctx)?.watch_resource(domain_ctx(ctx)?, &id).await?;
        Ok(futures_util::StreamExt::map(updates, |u| ResourceStatus {
            status: u.status,
            reconcile_status: u.reconcile_status,
            message: u.message,
            restarts: u.restarts.map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
        }))
    }
}
