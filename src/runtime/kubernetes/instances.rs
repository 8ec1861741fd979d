//! The [`Instances`] actions on Kubernetes: PostgreSQL through
//! CloudNativePG (backups and WAL through the barman-cloud plugin), MariaDB,
//! Redis and Valkey as one-replica StatefulSets, all of an organization in
//! its data namespace. Figures come from Prometheus (the CloudNativePG
//! exporter and a redis_exporter sidecar).
//!
//! Writes are server-side applies under the driver's one field manager;
//! Secret values go only into Secret objects, never into logs or errors.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::instrument;

use super::data_manifests::{self as dm, POSTGRES_PORT};
use super::driver::{is_not_found, kube_error};
use super::{KubernetesRuntime, names};
use crate::error::{Error, Result};
use crate::runtime::instances::{
    Backup, Endpoint, InstanceSpec, InstanceState, InstanceStatus, Instances, MYSQL, Origin,
    POSTGRESQL, Progress, REDIS, Scalars, TYPESENSE, VALKEY,
};

/// Where an instance (or a backup, or a snapshot) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still on its way; the text says what it waits for.
    Waiting(String),
    /// It will not get there without help.
    Failed(String),
}

fn conditions(status: &Value) -> impl Iterator<Item = &Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A CloudNativePG `Cluster`: ready when its `Ready` condition is true
/// for the current spec (or, without conditions, every instance is ready
/// and the cluster is healthy). Phases that need a person are failures.
pub fn cluster_readiness(obj: &DynamicObject) -> Readiness {
    let status = match obj.data.get("status") {
        Some(s) if s.is_object() => s,
        _ => return Readiness::Waiting("waiting for the operator".into()),
    };
    let text = |key: &str| status.get(key).and_then(Value::as_str).unwrap_or("");
    let phase = text("phase");
    let generation = obj.metadata.generation.unwrap_or(0);
    let ready = conditions(status).find(|c| c["type"] == "Ready");
    let instances = obj.data["spec"]["instances"].as_i64().unwrap_or(1);
    let ready_instances = status["readyInstances"].as_i64().unwrap_or(0);
    let lower = phase.to_ascii_lowercase();
    if ["unrecoverable", "cannot", "unable"]
        .iter()
        .any(|w| lower.contains(w))
    {
        let reason = text("phaseReason");
        return Readiness::Failed(if reason.is_empty() {
            phase.to_string()
        } else {
            format!("{phase}: {reason}")
        });
    }
    let healthy = match ready {
        Some(c) => {
            let observed = c["observedGeneration"].as_i64().unwrap_or(generation);
            if observed < generation {
                return Readiness::Waiting("waiting for the new spec to be observed".into());
            }
            c["status"] == "True"
        }
        None => phase == "Cluster in healthy state",
    };
    if healthy && ready_instances >= instances {
        return Readiness::Ready;
    }
    Readiness::Waiting(match phase {
        "" => format!("{ready_instances} of {instances} instances ready"),
        p => p.to_string(),
    })
}

/// A StatefulSet of one replica: ready when the current spec is observed,
/// its replica runs the current revision and is ready (the kubectl
/// rollout-status rules for StatefulSets).
pub fn statefulset_readiness(sts: &StatefulSet) -> Readiness {
    let Some(status) = sts.status.as_ref() else {
        return Readiness::Waiting("waiting for the controller".into());
    };
    let generation = sts.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Readiness::Waiting("waiting for the new spec to be observed".into());
    }
    let desired = sts.spec.replicas.unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if updated < desired
        || (status.update_revision.is_some() && status.current_revision != status.update_revision)
    {
        return Readiness::Waiting("rolling out the new revision".into());
    }
    if ready < desired.max(1) {
        return Readiness::Waiting(format!("{ready} of {desired} replicas ready"));
    }
    Readiness::Ready
}

/// A VolumeSnapshot: ready once its content can be restored from.
pub fn snapshot_readiness(obj: &DynamicObject) -> Readiness {
    let status = obj.data.get("status").unwrap_or(&Value::Null);
    if status["readyToUse"].as_bool() == Some(true) {
        return Readiness::Ready;
    }
    match status["error"]["message"].as_str() {
        // Snapshot errors are often retried by the controller.
        Some(m) => Readiness::Waiting(format!("snapshot: {m}")),
        None => Readiness::Waiting("taking the snapshot".into()),
    }
}

/// Crash restarts of an instance's pods, and why it is crashing if it is.
pub fn pods_health(pods: &[Pod]) -> (u32, Option<String>) {
    let (statuses, restarts) = super::status::containers(pods);
    let crash = statuses.iter().find_map(|c| {
        if !super::status::crash_looping(c) {
            return None;
        }
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| {
                format!(
                    " ({}, exit code {})",
                    t.reason.as_deref().unwrap_or("exited"),
                    t.exit_code
                )
            })
            .unwrap_or_default();
        Some(format!("{} keeps crashing{last}", c.name))
    });
    (restarts, crash)
}

/// What a user sees: ready, starting (and why), crashed (and why).
pub fn instance_status(readiness: Readiness, pods: &[Pod]) -> InstanceStatus {
    let (restarts, crash) = pods_health(pods);
    let (state, message) = match (readiness, crash) {
        (Readiness::Ready, _) => (InstanceState::Ready, None),
        (_, Some(why)) => (InstanceState::Crashed, Some(why)),
        (Readiness::Failed(why), None) => (InstanceState::Crashed, Some(why)),
        (Readiness::Waiting(why), None) => (InstanceState::Starting, Some(why)),
    };
    InstanceStatus {
        state,
        restarts,
        message,
    }
}

fn timestamp(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_str()?.parse().ok()
}

/// One CloudNativePG `Backup` as the platform shows it.
pub fn backup_of(obj: &DynamicObject) -> Backup {
    let status = obj.data.get("status").unwrap_or(&Value::Null);
    let phase = status["phase"].as_str().unwrap_or("");
    let state = match phase {
        "completed" => "completed",
        "failed" | "walArchivingFailing" => "failed",
        _ => "running",
    };
    let created = obj.metadata.creation_timestamp.as_ref().and_then(|t| {
        chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
    });
    let started_at = timestamp(&status["startedAt"])
        .or(created)
        .unwrap_or_default();
    Backup {
        name: obj.name_any(),
        status: state.into(),
        started_at,
        completed_at: (state == "completed")
            .then(|| timestamp(&status["stoppedAt"]))
            .flatten(),
        method: obj.data["spec"]["method"]
            .as_str()
            .unwrap_or("plugin")
            .into(),
    }
}

fn backup_readiness(obj: &DynamicObject) -> Readiness {
    let status = obj.data.get("status").unwrap_or(&Value::Null);
    match backup_of(obj).status.as_str() {
        "completed" => Readiness::Ready,
        "failed" => Readiness::Failed(
            status["error"]
                .as_str()
                .unwrap_or("the backup failed")
                .to_string(),
        ),
        _ => Readiness::Waiting(match status["phase"].as_str() {
            Some(p) if !p.is_empty() => p.to_string(),
            _ => "pending".into(),
        }),
    }
}

/// A PromQL string literal.
fn promql_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Prometheus queries of an instance's figures, by key: the
/// CloudNativePG exporter's series for PostgreSQL, redis_exporter's for
/// Redis and Valkey, each filtered by the namespace and the instance's
/// pods (`<name>-<n>`).
pub fn prometheus_queries(spec: &InstanceSpec, ns: &str) -> Vec<(&'static str, String)> {
    let pods = promql_str(&format!("{}-[0-9]+", spec.name));
    let sel = format!("namespace={},pod=~{pods}", promql_str(ns));
    match spec.provider.as_str() {
        POSTGRESQL => {
            let sel = format!("{sel},datname={}", promql_str(&spec.credentials.database));
            vec![
                ("size", format!("max(cnpg_pg_database_size_bytes{{{sel}}})")),
                ("backends", format!("sum(cnpg_backends_total{{{sel}}})")),
                (
                    "blks_hit",
                    format!("sum(cnpg_pg_stat_database_blks_hit{{{sel}}})"),
                ),
                (
                    "blks_read",
                    format!("sum(cnpg_pg_stat_database_blks_read{{{sel}}})"),
                ),
                (
                    "xacts",
                    format!(
                        "sum(cnpg_pg_stat_database_xact_commit{{{sel}}}) + sum(cnpg_pg_stat_database_xact_rollback{{{sel}}})"
                    ),
                ),
            ]
        }
        REDIS | VALKEY => vec![
            ("used", format!("max(redis_memory_used_bytes{{{sel}}})")),
            ("max", format!("max(redis_memory_max_bytes{{{sel}}})")),
            ("hits", format!("sum(redis_keyspace_hits_total{{{sel}}})")),
            (
                "misses",
                format!("sum(redis_keyspace_misses_total{{{sel}}})"),
            ),
            ("clients", format!("max(redis_connected_clients{{{sel}}})")),
            (
                "commands",
                format!("sum(redis_commands_processed_total{{{sel}}})"),
            ),
        ],
        _ => Vec::new(),
    }
}

/// The first sample of an instant-query answer; `None` when the series
/// does not exist (yet).
pub fn prometheus_value(answer: &Value) -> Result<Option<f64>> {
    if answer["status"] != "success" {
        let kind = answer["errorType"].as_str().unwrap_or("error");
        let why = answer["error"].as_str().unwrap_or("");
        return Err(Error::Unavailable(format!(
            "the metrics source refused a query ({kind}: {why})"
        )));
    }
    Ok(answer["data"]["result"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite()))
}

fn ratio(part: Option<f64>, other: Option<f64>) -> Option<f64> {
    let (a, b) = (part?, other?);
    (a + b > 0.0).then(|| a / (a + b))
}

/// The figures from the answers of [`prometheus_queries`].
pub fn scalars_from(spec: &InstanceSpec, values: &HashMap<&str, Option<f64>>) -> Scalars {
    let get = |k: &str| values.get(k).copied().flatten();
    let int = |k: &str| get(k).map(|v| v.round() as i64);
    match spec.provider.as_str() {
        POSTGRESQL => Scalars {
            database_size: int("size"),
            cache_hit_ratio: ratio(get("blks_hit"), get("blks_read")),
            active_connections: int("backends"),
            transactions: int("xacts"),
            ..Scalars::default()
        },
        REDIS | VALKEY => {
            let max = get("max").filter(|m| *m > 0.0).or_else(|| {
                spec.limits
                    .max_memory_mb
                    .map(|mb| f64::from(mb) * 1048576.0)
            });
            Scalars {
                memory_used_bytes: int("used"),
                memory_used_percent: get("used").zip(max).map(|(u, m)| u / m * 100.0),
                hit_ratio: ratio(get("hits"), get("misses")),
                connected_clients: int("clients"),
                commands: int("commands"),
                ..Scalars::default()
            }
        }
        _ => Scalars::default(),
    }
}

fn validate(spec: &InstanceSpec) -> Result<()> {
    if !matches!(
        spec.provider.as_str(),
        POSTGRESQL | MYSQL | REDIS | VALKEY | TYPESENSE
    ) {
        return Err(Error::bad_request(format!(
            "unknown data service provider '{}'",
            spec.provider
        )));
    }
    if spec.name.len() > 40 || names::dns_label(&spec.name, 40) != spec.name {
        return Err(Error::internal(format!(
            "instance name '{}' is not a DNS-1123 label of at most 40 characters",
            spec.name
        )));
    }
    Ok(())
}

fn report(progress: &Progress, msg: String) {
    // A caller that stopped listening does not stop the action.
    let _ = progress.send(msg);
}

fn no_store() -> Error {
    Error::Unprocessable(
        "no object store is configured for PostgreSQL backups (object_store)".into(),
    )
}

impl KubernetesRuntime {
    fn data_ns(&self, spec: &InstanceSpec) -> String {
        dm::data_namespace_name(&self.config, spec)
    }

    fn dyn_api(&self, ns: &str, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, resource)
    }

    fn core_api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Reads an object, `None` when it is not there.
    async fn read<K>(&self, api: &Api<K>, name: &str, what: &str) -> Result<Option<K>>
    where
        K: Resource + DeserializeOwned + Clone + std::fmt::Debug,
    {
        api.get_opt(name).await.map_err(|e| kube_error(what, e))
    }

    /// Deletes every object `selector` selects, if the kind exists at all.
    async fn delete_selected<K>(&self, api: &Api<K>, selector: &str, what: &str) -> Result<()>
    where
        K: Resource + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let lp = ListParams::default().labels(selector);
        match api
            .delete_collection(&DeleteParams::background(), &lp)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_error(what, e)),
        }
    }

    /// Applies the organization's data namespace, refusing one that
    /// belongs to another organization (their ids share the first 12 hex
    /// digits) or is still being deleted.
    async fn apply_data_namespace(&self, spec: &InstanceSpec) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = dm::data_namespace(&self.config, spec);
        let name = ns.name_any();
        if let Some(existing) = self.read(&api, &name, "read data Namespace").await? {
            let owner = existing.labels().get(names::ORGANIZATION_ID);
            if owner.is_some_and(|id| *id != spec.organization_id.to_string()) {
                return Err(Error::Conflict(format!(
                    "namespace {name} belongs to another organization"
                )));
            }
            let phase = existing.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Terminating") {
                return Err(Error::Unavailable(format!(
                    "namespace {name} is still being deleted; try again shortly"
                )));
            }
        }
        self.apply(&api, &ns, "apply data Namespace")
            .await
            .map(drop)
    }

    /// Gives the instance (and, for a restore, its source) an `ObjectStore`
    /// in its namespace: the template's configuration and the Secrets it
    /// names, copied from the template namespace.
    async fn apply_object_stores(&self, spec: &InstanceSpec, store: &str) -> Result<()> {
        let template_ns = &self.config.object_store_namespace;
        let templates = self.dyn_api(template_ns, &dm::object_store_resource());
        let template = self
            .read(&templates, store, "read the template ObjectStore")
            .await?
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "the object store {template_ns}/{store} does not exist"
                ))
            })?;
        let template_spec = template.data.get("spec").cloned().unwrap_or(Value::Null);
        let ns = self.data_ns(spec);
        let from: Api<Secret> = self.core_api(template_ns);
        let to: Api<Secret> = self.core_api(&ns);
        for name in dm::object_store_secrets(&template_spec) {
            let secret = self
                .read(&from, &name, "read an object store Secret")
                .await?
                .ok_or_else(|| {
                    Error::Unavailable(format!(
                        "the object store's Secret {template_ns}/{name} does not exist"
                    ))
                })?;
            // The answer echoes the values: dropped at once.
            self.apply(
                &to,
                &dm::copied_secret(&ns, &secret),
                "apply an object store Secret",
            )
            .await?;
        }
        let stores = self.dyn_api(&ns, &dm::object_store_resource());
        let own = dm::object_store(&self.config, spec, spec, &template_spec);
        self.apply(&stores, &own, "apply ObjectStore").await?;
        if let Origin::Restore { source, .. } = &spec.origin {
            let theirs = dm::object_store(&self.config, spec, source, &template_spec);
            self.apply(&stores, &theirs, "apply the source's ObjectStore")
                .await?;
        }
        Ok(())
    }

    /// Polls `read` until it is ready, failed, or `timeout` passed;
    /// reports each change of what it waits for.
    async fn wait_until<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        progress: &Progress,
        mut read: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Readiness>>,
    {
        let deadline = Instant::now() + timeout;
        let mut reported = String::new();
        loop {
            match read().await? {
                Readiness::Ready => {
                    report(progress, format!("{what}: ready"));
                    return Ok(());
                }
                Readiness::Failed(why) => {
                    report(progress, format!("{what}: {why}"));
                    return Err(Error::Unprocessable(format!("{what}: {why}")));
                }
                Readiness::Waiting(why) => {
                    if why != reported {
                        report(progress, format!("{what}: {why}"));
                        reported = why;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unprocessable(format!(
                    "{what} was not ready within {}s ({reported})",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    async fn wait_for_backup(
        &self,
        spec: &InstanceSpec,
        name: &str,
        progress: &Progress,
    ) -> Result<()> {
        let api = self.dyn_api(&self.data_ns(spec), &dm::backup_resource());
        let what = format!("base backup {name}");
        self.wait_until(&what, self.config.backup_timeout, progress, || async {
            let b = api
                .get(name)
                .await
                .map_err(|e| kube_error("read Backup", e))?;
            Ok(backup_readiness(&b))
        })
        .await
    }

    /// Makes sure the instance has a completed base backup: takes
    /// `<name>-initial` when none has completed (again when it failed).
    async fn first_backup(&self, spec: &InstanceSpec, progress: &Progress) -> Result<()> {
        let api = self.dyn_api(&self.data_ns(spec), &dm::backup_resource());
        let of_cluster =
            ListParams::default().labels(&names::selector(names::CNPG_CLUSTER, &spec.name));
        let backups = api
            .list(&of_cluster)
            .await
            .map_err(|e| kube_error("list Backups", e))?
            .items;
        if backups.iter().any(|b| backup_of(b).status == "completed") {
            return Ok(());
        }
        let initial = names::initial_backup(&spec.name);
        let failed_before = backups
            .iter()
            .any(|b| b.name_any() == initial && backup_of(b).status == "failed");
        if failed_before {
            self.delete_if_present(&api, &initial, "delete the failed Backup")
                .await?;
        }
        report(progress, "taking the first base backup".into());
        let backup = dm::backup(&self.config, spec, &initial);
        self.apply(&api, &backup, "apply Backup").await?;
        self.wait_for_backup(spec, &initial, progress).await
    }

    /// The snapshot of the source's data volume a branch starts from,
    /// taken once: a branch whose Cluster exists has no further use for it.
    async fn branch_snapshot(
        &self,
        spec: &InstanceSpec,
        source: &InstanceSpec,
        progress: &Progress,
    ) -> Result<()> {
        let ns = self.data_ns(spec);
        let clusters = self.dyn_api(&ns, &dm::cluster_resource());
        if self
            .read(&clusters, &spec.name, "read Cluster")
            .await?
            .is_some()
        {
            return Ok(());
        }
        let origin = self
            .read(&clusters, &source.name, "read the source Cluster")
            .await?
            .ok_or_else(|| {
                Error::Unprocessable(format!(
                    "the source instance {} does not exist",
                    source.name
                ))
            })?;
        // The primary's pod and its data PVC share a name.
        let pvc = origin
            .data
            .get("status")
            .and_then(|s| s["currentPrimary"].as_str())
            .filter(|p| !p.is_empty())
            .map_or_else(|| format!("{}-1", source.name), str::to_string);
        report(progress, format!("taking a snapshot of {pvc}"));
        let snapshots = self.dyn_api(&ns, &dm::volume_snapshot_resource());
        let snapshot = dm::origin_snapshot(&self.config, spec, &pvc);
        self.apply(&snapshots, &snapshot, "apply VolumeSnapshot")
            .await?;
        let name = snapshot.name_any();
        self.wait_until(
            &format!("snapshot {name}"),
            self.config.instance_timeout,
            progress,
            || async {
                let s = snapshots
                    .get(&name)
                    .await
                    .map_err(|e| kube_error("read VolumeSnapshot", e))?;
                Ok(snapshot_readiness(&s))
            },
        )
        .await
    }

    async fn ensure_postgres(&self, spec: &InstanceSpec, progress: &Progress) -> Result<Endpoint> {
        let ns = self.data_ns(spec);
        let store = self.config.object_store.clone();
        // Everything that can be refused is refused before any write.
        match &spec.origin {
            Origin::Empty => {}
            Origin::Restore { source, .. } | Origin::Copy { source }
                if source.provider != POSTGRESQL =>
            {
                return Err(Error::Unprocessable(
                    "a PostgreSQL instance starts from a PostgreSQL instance only".into(),
                ));
            }
            Origin::Restore { .. } if store.is_none() => {
                return Err(Error::Unprocessable(
                    "point-in-time restore needs archived WAL and base backups, and no object store is configured (object_store)".into(),
                ));
            }
            Origin::Copy { source } if self.data_ns(source) != ns => {
                return Err(Error::Unprocessable(
                    "a branch must belong to the organization of its source".into(),
                ));
            }
            Origin::Restore { .. } | Origin::Copy { .. } => {}
        }
        report(
            progress,
            format!("creating PostgreSQL {} in {ns}", spec.name),
        );
        self.apply_data_namespace(spec).await?;
        if let Some(store) = &store {
            self.apply_object_stores(spec, store).await?;
        }
        let secrets: Api<Secret> = self.core_api(&ns);
        for secret in [
            dm::superuser_secret(&self.config, spec),
            dm::app_secret(&self.config, spec),
        ] {
            // The answer echoes the values: dropped at once.
            self.apply(&secrets, &secret, "apply credentials Secret")
                .await?;
        }
        if let Origin::Copy { source } = &spec.origin {
            self.branch_snapshot(spec, source, progress).await?;
        }
        let clusters = self.dyn_api(&ns, &dm::cluster_resource());
        self.apply(&clusters, &dm::cluster(&self.config, spec), "apply Cluster")
            .await?;
        if store.is_some() {
            let schedules = self.dyn_api(&ns, &dm::scheduled_backup_resource());
            let schedule = dm::scheduled_backup(&self.config, spec);
            self.apply(&schedules, &schedule, "apply ScheduledBackup")
                .await?;
        }
        self.wait_until(
            &spec.name,
            self.config.instance_timeout,
            progress,
            || async {
                let c = clusters
                    .get(&spec.name)
                    .await
                    .map_err(|e| kube_error("read Cluster", e))?;
                Ok(cluster_readiness(&c))
            },
        )
        .await?;
        if let Origin::Copy { .. } = &spec.origin {
            // The branch has its own volume now: the snapshot only holds storage.
            let snapshots = self.dyn_api(&ns, &dm::volume_snapshot_resource());
            self.delete_if_present(
                &snapshots,
                &names::origin_snapshot(&spec.name),
                "delete VolumeSnapshot",
            )
            .await?;
        }
        if store.is_some() {
            self.first_backup(spec, progress).await?;
        }
        Ok(Endpoint {
            host: format!("{}-rw.{ns}.svc", spec.name),
            port: POSTGRES_PORT,
        })
    }

    async fn ensure_stateful(&self, spec: &InstanceSpec, progress: &Progress) -> Result<Endpoint> {
        if spec.origin != Origin::Empty {
            return Err(Error::Unprocessable(format!(
                "{} instances on Kubernetes start empty: branches and restores are for PostgreSQL",
                spec.provider
            )));
        }
        let ns = self.data_ns(spec);
        report(
            progress,
            format!("creating {} {} in {ns}", spec.provider, spec.name),
        );
        self.apply_data_namespace(spec).await?;
        let secrets: Api<Secret> = self.core_api(&ns);
        self.apply(
            &secrets,
            &dm::credentials_secret(&self.config, spec),
            "apply credentials Secret",
        )
        .await?;
        let services: Api<Service> = self.core_api(&ns);
        self.apply(&services, &dm::service(&self.config, spec), "apply Service")
            .await?;
        let sets: Api<StatefulSet> = self.core_api(&ns);
        let mut sts = dm::statefulset(&self.config, spec);
        let existing = self.read(&sets, &spec.name, "read StatefulSet").await?;
        if let Some(size) = existing.as_ref().and_then(claim_size) {
            let wanted = format!("{}Gi", spec.limits.storage_gb);
            if size != wanted {
                // Claim templates cannot change: the volume grows in place.
                self.resize_volume(spec, &wanted).await?;
                set_claim_size(&mut sts, &size);
            }
        }
        self.apply(&sets, &sts, "apply StatefulSet").await?;
        self.wait_until(
            &spec.name,
            self.config.instance_timeout,
            progress,
            || async {
                let s = sets
                    .get(&spec.name)
                    .await
                    .map_err(|e| kube_error("read StatefulSet", e))?;
                Ok(statefulset_readiness(&s))
            },
        )
        .await?;
        Ok(Endpoint {
            host: format!("{}.{ns}.svc", spec.name),
            port: dm::port(&spec.provider),
        })
    }

    async fn resize_volume(&self, spec: &InstanceSpec, size: &str) -> Result<()> {
        let api: Api<PersistentVolumeClaim> = self.core_api(&self.data_ns(spec));
        let pvc = format!("{}-{}-0", names::DATA_VOLUME, spec.name);
        let params = PatchParams {
            field_manager: Some(self.config.field_manager.clone()),
            ..PatchParams::default()
        };
        let patch =
            Patch::Merge(json!({ "spec": { "resources": { "requests": { "storage": size } } } }));
        api.patch(&pvc, &params, &patch)
            .await
            .map(drop)
            .map_err(|e| kube_error("resize the data volume", e))
    }

    async fn pods_of(&self, spec: &InstanceSpec) -> Result<Vec<Pod>> {
        let api: Api<Pod> = self.core_api(&self.data_ns(spec));
        let lp =
            ListParams::default().labels(&names::selector(names::RESOURCE_ID, spec.resource_id));
        Ok(api
            .list(&lp)
            .await
            .map_err(|e| kube_error("list instance pods", e))?
            .items)
    }

    async fn query_prometheus(
        &self,
        base: &str,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<Scalars> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::internal(format!("metrics client: {e}")))?;
        let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
        let queries = prometheus_queries(spec, &self.data_ns(spec));
        let answers = futures_util::future::try_join_all(queries.iter().map(|(key, q)| {
            let (client, url) = (&client, &url);
            async move {
                let unavailable = |e: &dyn std::fmt::Display| {
                    tracing::warn!(error = %e, "Prometheus query");
                    Error::Unavailable("the metrics source does not answer".into())
                };
                let resp = client
                    .get(url)
                    .query(&[("query", q.as_str())])
                    .send()
                    .await
                    .map_err(|e| unavailable(&e))?;
                let answer: Value = resp.json().await.map_err(|e| unavailable(&e))?;
                Ok::<_, Error>((*key, prometheus_value(&answer)?))
            }
        }));
        let values = tokio::time::timeout(timeout, answers).await.map_err(|_| {
            Error::Unavailable("the metrics source did not answer in time".into())
        })??;
        Ok(scalars_from(spec, &values.into_iter().collect()))
    }
}

/// The storage request of a StatefulSet's data claim template.
fn claim_size(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(names::DATA_VOLUME))?
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

fn set_claim_size(sts: &mut StatefulSet, size: &str) {
    let claims = sts.spec.volume_claim_templates.as_mut();
    for claim in claims.into_iter().flatten() {
        if let Some(requests) = claim
            .spec
            .as_mut()
            .and_then(|s| s.resources.as_mut())
            .and_then(|r| r.requests.as_mut())
        {
            requests.insert(
                "storage".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()),
            );
        }
    }
}

#[async_trait]
impl Instances for KubernetesRuntime {
    /// A `ScheduledBackup` per cluster takes them.
    fn schedules_backups(&self) -> bool {
        true
    }

    async fn supports(&self, provider: &str) -> Result<()> {
        match provider {
            POSTGRESQL | MYSQL | REDIS | VALKEY | TYPESENSE => Ok(()),
            other => Err(Error::Unprocessable(format!(
                "the Kubernetes runtime does not host {other}"
            ))),
        }
    }

    #[instrument(skip_all, fields(resource.id = %spec.resource_id, provider = %spec.provider))]
    async fn ensure(&self, spec: &InstanceSpec, progress: &Progress) -> Result<Endpoint> {
        validate(spec)?;
        match spec.provider.as_str() {
            POSTGRESQL => self.ensure_postgres(spec, progress).await,
            _ => self.ensure_stateful(spec, progress).await,
        }
    }

    #[instrument(skip_all, fields(resource.id = %spec.resource_id))]
    async fn status(&self, spec: &InstanceSpec) -> Result<InstanceStatus> {
        validate(spec)?;
        let ns = self.data_ns(spec);
        let readiness = if spec.provider == POSTGRESQL {
            let clusters = self.dyn_api(&ns, &dm::cluster_resource());
            self.read(&clusters, &spec.name, "read Cluster")
                .await?
                .map(|c| cluster_readiness(&c))
        } else {
            let sets: Api<StatefulSet> = self.core_api(&ns);
            self.read(&sets, &spec.name, "read StatefulSet")
                .await?
                .map(|s| statefulset_readiness(&s))
        };
        let Some(readiness) = readiness else {
            return Ok(InstanceStatus {
                state: InstanceState::Missing,
                restarts: 0,
                message: None,
            });
        };
        let pods = self.pods_of(spec).await?;
        Ok(instance_status(readiness, &pods))
    }

    #[instrument(skip_all, fields(resource.id = %spec.resource_id))]
    async fn remove(&self, spec: &InstanceSpec) -> Result<()> {
        validate(spec)?;
        let ns = self.data_ns(spec);
        let name = spec.name.as_str();
        let secrets: Api<Secret> = self.core_api(&ns);
        if spec.provider == POSTGRESQL {
            let schedules = self.dyn_api(&ns, &dm::scheduled_backup_resource());
            self.delete_if_present(&schedules, name, "delete ScheduledBackup")
                .await?;
            let clusters = self.dyn_api(&ns, &dm::cluster_resource());
            self.delete_if_present(&clusters, name, "delete Cluster")
                .await?;
            let backups = self.dyn_api(&ns, &dm::backup_resource());
            self.delete_selected(
                &backups,
                &names::selector(names::CNPG_CLUSTER, name),
                "delete Backups",
            )
            .await?;
            let stores = self.dyn_api(&ns, &dm::object_store_resource());
            self.delete_if_present(&stores, &names::object_store(name), "delete ObjectStore")
                .await?;
            let snapshots = self.dyn_api(&ns, &dm::volume_snapshot_resource());
            self.delete_if_present(
                &snapshots,
                &names::origin_snapshot(name),
                "delete VolumeSnapshot",
            )
            .await?;
            for secret in [names::superuser_secret(name), names::app_secret(name)] {
                self.delete_if_present(&secrets, &secret, "delete Secret")
                    .await?;
            }
        } else {
            let sets: Api<StatefulSet> = self.core_api(&ns);
            self.delete_if_present(&sets, name, "delete StatefulSet")
                .await?;
            let services: Api<Service> = self.core_api(&ns);
            self.delete_if_present(&services, name, "delete Service")
                .await?;
            self.delete_if_present(&secrets, &names::credentials_secret(name), "delete Secret")
                .await?;
        }
        let claims: Api<PersistentVolumeClaim> = self.core_api(&ns);
        self.delete_selected(
            &claims,
            &names::selector(names::RESOURCE_ID, spec.resource_id),
            "delete PersistentVolumeClaims",
        )
        .await
    }

    #[instrument(skip_all, fields(resource.id = %spec.resource_id))]
    async fn scalars(&self, spec: &InstanceSpec, timeout: Duration) -> Result<Scalars> {
        validate(spec)?;
        let Some(base) = &self.config.prometheus_url else {
            return Err(Error::Unavailable(
                "no metrics source is configured (prometheus_url)".into(),
            ));
        };
        if spec.provider == MYSQL {
            // No MySQL figure is defined.
            return Ok(Scalars::default());
        }
        if spec.provider == TYPESENSE {
            return Err(Error::Unavailable(
                "metrics are not collected for Typesense".into(),
            ));
        }
        self.query_prometheus(base, spec, timeout).await
    }

    #[instrument(skip_all, fields(resource.id = %spec.resource_id))]
    async fn backups(&self, spec: &InstanceSpec) -> Result<Vec<Backup>> {
        validate(spec)?;
        if spec.provider != POSTGRESQL || self.config.object_store.is_none() {
            return Ok(Vec::new());
        }
        let api = self.dyn_api(&self.data_ns(spec), &dm::backup_resource());
        let of_cluster =
            ListParams::default().labels(&names::selector(names::CNPG_CLUSTER, &spec.name));
        let items = match api.list(&of_cluster).await {
            Ok(list) => list.items,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(kube_error("list Backups", e)),
        };
        let mut backups: Vec<Backup> = items.iter().map(backup_of).collect();
        backups.sort_by(|a, b| (a.started_at, &a.name).cmp(&(b.started_at, &b.name)));
        Ok(backups)
    }

    #[instrument(skip_all, fields(resource.id = %spec.resource_id))]
    async fn backup(&self, spec: &InstanceSpec) -> Result<Backup> {
        validate(spec)?;
        if spec.provider != POSTGRESQL {
            return Err(Error::Unprocessable(
                "only PostgreSQL instances have base backups".into(),
            ));
        }
        if self.config.object_store.is_none() {
            return Err(no_store());
        }
        let api = self.dyn_api(&self.data_ns(spec), &dm::backup_resource());
        let name = format!(
            "{}-{}",
            spec.name,
            chrono::Utc::now().format("%Y%m%d%H%M%S")
        );
        api.create(
            &PostParams::default(),
            &dm::backup(&self.config, spec, &name),
        )
        .await
        .map_err(|e| kube_error("create Backup", e))?;
        let (progress, _rx) = tokio::sync::mpsc::unbounded_channel();
        self.wait_for_backup(spec, &name, &progress).await?;
        let done = api
            .get(&name)
            .await
            .map_err(|e| kube_error("read Backup", e))?;
        Ok(backup_of(&done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::kubernetes::data_manifests::tests::{postgres, redis};

    fn cluster(status: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
            "metadata": { "name": "pg-0a01", "generation": 2 },
            "spec": { "instances": 1 },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn clusters_are_ready_on_their_ready_condition() {
        assert_eq!(
            cluster_readiness(&cluster(Value::Null)),
            Readiness::Waiting("waiting for the operator".into())
        );
        let setting_up = cluster(json!({ "phase": "Setting up primary", "readyInstances": 0,
            "conditions": [{ "type": "Ready", "status": "False", "observedGeneration": 2 }] }));
        assert_eq!(
            cluster_readiness(&setting_up),
            Readiness::Waiting("Setting up primary".into())
        );
        let ready = cluster(
            json!({ "phase": "Cluster in healthy state", "readyInstances": 1,
            "conditions": [{ "type": "Ready", "status": "True", "observedGeneration": 2 }] }),
        );
        assert_eq!(cluster_readiness(&ready), Readiness::Ready);
        let stale = cluster(
            json!({ "phase": "Cluster in healthy state", "readyInstances": 1,
            "conditions": [{ "type": "Ready", "status": "True", "observedGeneration": 1 }] }),
        );
        assert!(
            matches!(cluster_readiness(&stale), Readiness::Waiting(m) if m.contains("observed"))
        );
        let no_conditions =
            cluster(json!({ "phase": "Cluster in healthy state", "readyInstances": 1 }));
        assert_eq!(cluster_readiness(&no_conditions), Readiness::Ready);
        let broken = cluster(
            json!({ "phase": "Cluster is unrecoverable and needs manual intervention",
            "phaseReason": "no primary" }),
        );
        assert!(
            matches!(cluster_readiness(&broken), Readiness::Failed(m) if m.ends_with(": no primary"))
        );
    }

    fn sts(generation: i64, status: Value) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": { "name": "redis-0c01", "generation": generation },
            "spec": { "replicas": 1, "selector": {}, "serviceName": "redis-0c01", "template": {} },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn statefulsets_are_ready_on_the_current_revision() {
        let ready = json!({ "observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
            "currentRevision": "r-2", "updateRevision": "r-2" });
        assert_eq!(
            statefulset_readiness(&sts(2, ready.clone())),
            Readiness::Ready
        );
        assert!(matches!(
            statefulset_readiness(&sts(3, ready)),
            Readiness::Waiting(_)
        ));
        let rolling = json!({ "observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
            "currentRevision": "r-1", "updateRevision": "r-2" });
        assert_eq!(
            statefulset_readiness(&sts(2, rolling)),
            Readiness::Waiting("rolling out the new revision".into())
        );
        let starting = json!({ "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
            "currentRevision": "r-2", "updateRevision": "r-2" });
        assert_eq!(
            statefulset_readiness(&sts(2, starting)),
            Readiness::Waiting("0 of 1 replicas ready".into())
        );
    }

    #[test]
    fn crash_loops_are_crashed_with_the_reason() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "redis-0c01-0" },
            "status": { "containerStatuses": [{
                "name": "redis", "image": "", "imageID": "", "ready": false, "restartCount": 3,
                "state": { "waiting": { "reason": "CrashLoopBackOff" } },
                "lastState": { "terminated": { "exitCode": 1, "reason": "Error" } }
            }]}
        }))
        .unwrap();
        let s = instance_status(Readiness::Waiting("0 of 1 replicas ready".into()), &[pod]);
        assert_eq!(s.state, InstanceState::Crashed);
        assert_eq!(s.restarts, 3);
        assert_eq!(
            s.message.as_deref(),
            Some("redis keeps crashing (Error, exit code 1)")
        );
        let s = instance_status(Readiness::Ready, &[]);
        assert_eq!((s.state, s.message), (InstanceState::Ready, None));
    }

    #[test]
    fn backups_map_their_phase() {
        let b: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
            "metadata": { "name": "pg-0a01-initial", "creationTimestamp": "2025-03-01T02:59:59Z" },
            "spec": { "method": "plugin" },
            "status": { "phase": "completed", "startedAt": "2025-03-01T03:00:00Z", "stoppedAt": "2025-03-01T03:01:00Z" }
        }))
        .unwrap();
        let got = backup_of(&b);
        assert_eq!(got.status, "completed");
        assert_eq!(got.method, "plugin");
        assert_eq!(got.started_at.to_rfc3339(), "2025-03-01T03:00:00+00:00");
        assert!(got.completed_at.is_some());
        let mut running = b.clone();
        running.data["status"] = json!({ "phase": "running" });
        let got = backup_of(&running);
        assert_eq!((got.status.as_str(), got.completed_at), ("running", None));
        assert_eq!(got.started_at.to_rfc3339(), "2025-03-01T02:59:59+00:00");
        let mut failed = b;
        failed.data["status"] = json!({ "phase": "failed", "error": "no space" });
        assert_eq!(
            backup_readiness(&failed),
            Readiness::Failed("no space".into())
        );
    }

    #[test]
    fn queries_select_the_instance_pods_and_database() {
        let q = prometheus_queries(&postgres(), "ns-1");
        let (_, size) = &q[0];
        assert_eq!(
            size,
            r#"max(cnpg_pg_database_size_bytes{namespace="ns-1",pod=~"pg-0a01-[0-9]+",datname="app"})"#
        );
        assert_eq!(q.len(), 5);
        assert_eq!(prometheus_queries(&redis(), "ns-1").len(), 6);
        assert_eq!(promql_str(r#"a"b\"#), r#""a\"b\\""#);
    }

    #[test]
    fn figures_come_from_the_samples() {
        let answer = json!({ "status": "success", "data": { "resultType": "vector",
            "result": [{ "metric": {}, "value": [1.0, "1234"] }] } });
        assert_eq!(prometheus_value(&answer).unwrap(), Some(1234.0));
        let empty =
            json!({ "status": "success", "data": { "resultType": "vector", "result": [] } });
        assert_eq!(prometheus_value(&empty).unwrap(), None);
        let bad = json!({ "status": "error", "errorType": "bad_data", "error": "parse error" });
        assert_eq!(prometheus_value(&bad).unwrap_err().code(), "UNAVAILABLE");

        let values = HashMap::from([
            ("used", Some(50.0)),
            ("max", Some(200.0)),
            ("hits", Some(3.0)),
            ("misses", Some(1.0)),
            ("clients", Some(2.0)),
            ("commands", None),
        ]);
        let s = scalars_from(&redis(), &values);
        assert_eq!(s.memory_used_bytes, Some(50));
        assert_eq!(s.memory_used_percent, Some(25.0));
        assert_eq!(s.hit_ratio, Some(0.75));
        assert_eq!(s.connected_clients, Some(2));
        assert_eq!(s.commands, None);
        assert_eq!(s.database_size, None);
    }
}
