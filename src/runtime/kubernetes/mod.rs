//! The Kubernetes runtime: one namespace per project environment, a
//! Deployment (and a ClusterIP Service when it listens) per service, the
//! env vars in one Secret, a Gateway API HTTPRoute for the domain, and
//! Kaniko Jobs for builds.
//!
//! Every write is a server-side apply under one field manager, so applying a
//! release twice changes nothing and rolling back is applying an older one.
//! Objects are selected by UUID labels only (`sylphx.io/service-id`), never
//! by names, which follow slugs.
//!
//! - [`names`]: deterministic DNS-1123 names and label keys.
//! - [`manifests`]: pure builders for every object (golden-tested).
//! - [`status`]: pure readers of rollout, Job, service and runner status.
//! - `driver`: the [`Runtime`](crate::runtime::Runtime) actions against the API.
//! - [`tcp_proxy`]: a service's public TCP proxy (NodePort Service and
//!   NetworkPolicy).
//! - [`data_manifests`]: pure builders of the data services' objects
//!   (CloudNativePG clusters, MariaDB and Redis StatefulSets).
//! - `instances`: the [`Instances`](crate::runtime::instances::Instances)
//!   actions, one namespace per organization (`<prefix>-data-<org>`).

use std::time::Duration;

pub mod data_manifests;
mod driver;
mod hub;
mod instances;
mod logs;
pub mod manifests;
pub mod names;
pub mod status;
pub mod tcp_proxy;

#[cfg(test)]
mod instances_mock_tests;
#[cfg(test)]
mod mock_tests;
#[cfg(test)]
mod volumes_mock_tests;

/// How the driver names, routes and builds. `Default` gives a working
/// single-cluster setup; operators mostly set the gateway and registry.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Start of every environment namespace (`<prefix>-<project>-<env>`).
    pub namespace_prefix: String,
    /// The shared Gateway that environment HTTPRoutes attach to. Its
    /// listener must allow routes from other namespaces (`from: All` or a
    /// selector).
    pub gateway_name: String,
    pub gateway_namespace: String,
    /// Image registry and path builds push to (`<registry>/<project>/app`).
    pub registry: String,
    /// Kaniko executor image; the upstream project is archived, this is a
    /// maintained fork.
    pub kaniko_image: String,
    /// The one server-side apply field manager for every write.
    pub field_manager: String,
    /// How long `deploy` waits for a rollout; also the Deployments'
    /// `progressDeadlineSeconds`.
    pub rollout_timeout: Duration,
    /// Namespace where build Jobs run (must exist, with the secrets below).
    pub build_namespace: String,
    /// `activeDeadlineSeconds` of a build Job.
    pub build_timeout: Duration,
    /// A `kubernetes.io/dockerconfigjson` Secret in the build namespace with
    /// push rights to the registry.
    pub registry_secret: Option<String>,
    /// A Secret in the build namespace with `GIT_USERNAME`/`GIT_PASSWORD`
    /// (or `GIT_TOKEN`) for private repositories.
    pub git_secret: Option<String>,
    /// Where ARC `EphemeralRunner`s live; all namespaces when `None`.
    pub runners_namespace: Option<String>,
    /// Pause between status reads while waiting for a rollout or a build.
    pub poll_interval: Duration,

    // Data services (see `instances`).
    /// A barman-cloud `ObjectStore` (`barmancloud.cnpg.io/v1`) in
    /// [`object_store_namespace`](Self::object_store_namespace): each
    /// PostgreSQL instance gets a copy of it (and of the Secrets it names)
    /// in its data namespace, archives its WAL and takes its base backups
    /// there. `None`: no archiving, no backups, no point-in-time restore.
    /// `SYLPHX_K8S_OBJECT_STORE` (`name` or `namespace/name`).
    pub object_store: Option<String>,
    /// Where the template `ObjectStore` and its credentials live.
    pub object_store_namespace: String,
    /// StorageClass of the data volumes; the cluster's default when `None`.
    /// `SYLPHX_K8S_STORAGE_CLASS`.
    pub storage_class: Option<String>,
    /// StorageClass of the PersistentVolumeClaims of project volumes.
    /// `SYLPHX_K8S_VOLUME_STORAGE_CLASS`.
    pub volume_storage_class: String,
    /// VolumeSnapshotClass of the snapshots PostgreSQL branches start
    /// from; the cluster's default when `None`. `SYLPHX_K8S_SNAPSHOT_CLASS`.
    pub snapshot_class: Option<String>,
    /// PostgreSQL operand image; CloudNativePG's default when `None`.
    /// `SYLPHX_K8S_POSTGRES_IMAGE`.
    pub postgres_image: Option<String>,
    /// Redis server image (pinned).
    pub redis_image: String,
    /// Valkey server image (pinned major).
    pub valkey_image: String,
    /// MySQL-compatible server image: MariaDB (pinned).
    pub mysql_image: String,
    /// Typesense server image (pinned).
    pub typesense_image: String,
    /// The metrics sidecar of Redis and Valkey instances.
    pub redis_exporter_image: String,
    /// Prometheus HTTP API base URL (`http://prometheus.monitoring:9090`)
    /// that scrapes the CloudNativePG and redis_exporter metrics; without
    /// it, instances have no figures. `SYLPHX_K8S_PROMETHEUS_URL`.
    pub prometheus_url: Option<String>,
    /// When the `ScheduledBackup`s run: a 6-field cron with seconds.
    /// `SYLPHX_K8S_BACKUP_SCHEDULE`.
    pub backup_schedule: String,
    /// How long `ensure` waits for an instance to accept connections.
    pub instance_timeout: Duration,
    /// How long `ensure` (the first one) and `backup` wait for a base backup.
    pub backup_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace_prefix: "sylphx".into(),
            gateway_name: "sylphx".into(),
            gateway_namespace: "sylphx-system".into(),
            registry: "registry.local/sylphx".into(),
            kaniko_image: "ghcr.io/osscontainertools/kaniko:latest".into(),
            field_manager: "sylphx".into(),
            rollout_timeout: Duration::from_secs(600),
            build_namespace: "sylphx-builds".into(),
            build_timeout: Duration::from_secs(1800),
            registry_secret: None,
            git_secret: None,
            runners_namespace: None,
            poll_interval: Duration::from_secs(2),
            object_store: None,
            object_store_namespace: "sylphx-system".into(),
            storage_class: None,
            volume_storage_class: "rook-ceph-block".into(),
            snapshot_class: None,
            postgres_image: None,
            redis_image: "redis:7.2-alpine".into(),
            valkey_image: "valkey/valkey:8".into(),
            mysql_image: "mariadb:10.11".into(),
            typesense_image: "typesense/typesense:29.0".into(),
            redis_exporter_image: "oliver006/redis_exporter:v1.67.0".into(),
            prometheus_url: None,
            backup_schedule: "0 0 3 * * *".into(),
            instance_timeout: Duration::from_secs(900),
            backup_timeout: Duration::from_secs(3600),
        }
    }
}

impl KubernetesConfig {
    /// Reads the data service settings from `SYLPHX_K8S_OBJECT_STORE`,
    /// `SYLPHX_K8S_STORAGE_CLASS`, `SYLPHX_K8S_SNAPSHOT_CLASS`,
    /// `SYLPHX_K8S_POSTGRES_IMAGE`, `SYLPHX_K8S_PROMETHEUS_URL` and
    /// `SYLPHX_K8S_BACKUP_SCHEDULE`; unset or empty ones keep their value.
    pub fn read_data_env(&mut self) {
        self.read_data_vars(|key| std::env::var(key).ok());
    }

    fn read_data_vars(&mut self, var: impl Fn(&str) -> Option<String>) {
        let var = |key: &str| {
            var(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(store) = var("SYLPHX_K8S_OBJECT_STORE") {
            match store.split_once('/') {
                Some((ns, name)) => {
                    self.object_store_namespace = ns.to_string();
                    self.object_store = Some(name.to_string());
                }
                None => self.object_store = Some(store),
            }
        }
        if let Some(v) = var("SYLPHX_K8S_STORAGE_CLASS") {
            self.storage_class = Some(v);
        }
        if let Some(v) = var("SYLPHX_K8S_VOLUME_STORAGE_CLASS") {
            self.volume_storage_class = v;
        }
        if let Some(v) = var("SYLPHX_K8S_SNAPSHOT_CLASS") {
            self.snapshot_class = Some(v);
        }
        if let Some(v) = var("SYLPHX_K8S_POSTGRES_IMAGE") {
            self.postgres_image = Some(v);
        }
        if let Some(v) = var("SYLPHX_K8S_PROMETHEUS_URL") {
            self.prometheus_url = Some(v);
        }
        if let Some(v) = var("SYLPHX_K8S_BACKUP_SCHEDULE") {
            self.backup_schedule = v;
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn data_settings_come_from_the_environment() {
        let mut cfg = KubernetesConfig::default();
        assert_eq!(cfg.backup_schedule.split(' ').count(), 6);
        cfg.read_data_vars(|key| match key {
            "SYLPHX_K8S_OBJECT_STORE" => Some("backups/s3".into()),
            "SYLPHX_K8S_STORAGE_CLASS" => Some("fast".into()),
            "SYLPHX_K8S_PROMETHEUS_URL" => Some(" ".into()),
            _ => None,
        });
        assert_eq!(cfg.object_store.as_deref(), Some("s3"));
        assert_eq!(cfg.object_store_namespace, "backups");
        assert_eq!(cfg.storage_class.as_deref(), Some("fast"));
        assert_eq!(cfg.prometheus_url, None, "empty values are ignored");
        assert_eq!(cfg.snapshot_class, None);
    }
}

/// The [`Runtime`](crate::runtime::Runtime) on a Kubernetes cluster.
#[derive(Clone)]
pub struct KubernetesRuntime {
    client: kube::Client,
    config: KubernetesConfig,
    hubs: hub::Hubs,
}

impl std::fmt::Debug for KubernetesRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesRuntime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubernetesRuntime {
    /// A driver on an existing client (tests pass a mock service here).
    pub fn new(client: kube::Client, config: KubernetesConfig) -> Self {
        KubernetesRuntime {
            client,
            config,
            hubs: hub::Hubs::default(),
        }
    }

    /// A driver on the kubeconfig at `kubeconfig`, else the ambient
    /// kubeconfig or the in-cluster service account.
    pub async fn connect(
        config: KubernetesConfig,
        kubeconfig: Option<&std::path::Path>,
    ) -> crate::Result<Self> {
        let unavailable = |e: &dyn std::fmt::Display| {
            crate::Error::Unavailable(format!("no Kubernetes client config: {e}"))
        };
        let client = match kubeconfig {
            None => kube::Client::try_default()
                .await
                .map_err(|e| unavailable(&e))?,
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    crate::Error::bad_request(format!("kubeconfig {}: {e}", path.display()))
                })?;
                let options = kube::config::KubeConfigOptions::default();
                let cfg = kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| unavailable(&e))?;
                kube::Client::try_from(cfg).map_err(|e| unavailable(&e))?
            }
        };
        Ok(Self::new(client, config))
    }

    /// The settings in force.
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }
}
