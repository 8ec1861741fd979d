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

use std::time::Duration;

mod driver;
mod hub;
mod logs;
pub mod manifests;
pub mod names;
pub mod status;

#[cfg(test)]
mod mock_tests;

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
        }
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
