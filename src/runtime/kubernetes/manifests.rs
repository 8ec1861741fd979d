//! Pure builders for every object the driver applies. They take platform
//! types and return Kubernetes objects; no I/O, so golden files pin them.
//!
//! Each builder sets only the fields the platform owns: with server-side
//! apply, a field left out here is a field the platform gives up.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvFromSource, EnvVar, KeyToPath, Namespace, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Secret, SecretEnvSource, SecretVolumeSource, Service, ServicePort,
    ServiceSpec as KubeServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::KubernetesConfig;
use super::names;
use crate::error::{Error, Result};
use crate::runtime::{BuildRequest, EnvVars, EnvironmentRef, Release, ServiceSpec, VolumeRef};

/// Old ReplicaSets kept per Deployment: how far `kubectl rollout undo` could go.
pub const REVISION_HISTORY_LIMIT: i32 = 10;
/// Finished build Jobs (and their pods, with the logs) stay this long.
pub const BUILD_TTL_SECONDS: i32 = 3600;
/// The build container's name, for log requests.
pub const KANIKO_CONTAINER: &str = "kaniko";
const DOCKER_CONFIG_VOLUME: &str = "docker-config";

/// The Gateway API `HTTPRoute` resource (served as v1 since Gateway API 1.0).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Labels every object of an environment carries.
pub fn env_labels(env: &EnvironmentRef) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::MANAGED_BY.to_string(), names::MANAGER.to_string()),
        (names::PROJECT_ID.to_string(), env.project_id.to_string()),
        (
            names::ENVIRONMENT_ID.to_string(),
            env.environment_id.to_string(),
        ),
    ])
}

fn service_labels(env: &EnvironmentRef, svc: &ServiceSpec) -> BTreeMap<String, String> {
    let mut labels = env_labels(env);
    labels.insert(
        names::NAME.into(),
        names::dns_label(&svc.name, names::MAX_LABEL),
    );
    labels.insert(names::COMPONENT.into(), "service".into());
    labels.insert(names::SERVICE_ID.into(), svc.service_id.to_string());
    labels
}

/// The only selector of a service's pods: immutable on a Deployment, so it
/// holds the one id that never changes.
fn selector(svc: &ServiceSpec) -> BTreeMap<String, String> {
    BTreeMap::from([(names::SERVICE_ID.to_string(), svc.service_id.to_string())])
}

fn meta(name: &str, ns: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The environment's namespace.
pub fn namespace(cfg: &KubernetesConfig, env: &EnvironmentRef) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(names::namespace(&cfg.namespace_prefix, env)),
            labels: Some(env_labels(env)),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The env vars as an `Opaque` Secret. Uses base64 `data` rather than
/// `stringData`: server-side apply tracks `data` keys, so a removed var is
/// removed from the Secret, while `stringData` keys would linger.
pub fn env_secret(cfg: &KubernetesConfig, env: &EnvironmentRef, vars: &EnvVars) -> Secret {
    let data = vars
        .0
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.expose().as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: meta(
            names::ENV_SECRET,
            &names::namespace(&cfg.namespace_prefix, env),
            env_labels(env),
        ),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// sha256 over the env vars (keys and values, in key order). Goes into the
/// pod template so that a changed value rolls the pods.
pub fn env_checksum(vars: &EnvVars) -> String {
    let mut hash = Sha256::new();
    for (k, v) in &vars.0 {
        // Length prefixes keep `a=bc` and `ab=c` apart.
        for part in [k.as_bytes(), v.expose().as_bytes()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
    }
    hex::encode(hash.finalize())
}

fn resources(svc: &ServiceSpec) -> Option<ResourceRequirements> {
    let r = svc.resources.as_ref()?;
    let mut amounts = BTreeMap::new();
    if let Some(cpu) = &r.cpu {
        amounts.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &r.memory {
        amounts.insert("memory".to_string(), Quantity(memory.clone()));
    }
    if amounts.is_empty() {
        return None;
    }
    // Requests equal limits: the plan's size is both what the scheduler
    // reserves and what the service may use.
    Some(ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceRequirements::default()
    })
}

/// One service of a release as a Deployment: rolling update that never
/// drops below the desired count, env from the Secret, a TCP readiness probe
/// on the port, and the env checksum and deployment id on the pod template.
pub fn deployment(cfg: &KubernetesConfig, release: &Release, svc: &ServiceSpec) -> Deployment {
    let env = &release.env;
    let name = names::service_object(&svc.name);
    let mut pod_labels = service_labels(env, svc);
    pod_labels.insert(
        names::DEPLOYMENT_ID.into(),
        release.deployment_id.to_string(),
    );
    let port = svc.port.map(i32::from);
    let container = Container {
        name: name.clone(),
        image: Some(release.image.clone()),
        command: svc
            .command
            .as_ref()
            .map(|c| vec!["/bin/sh".into(), "-c".into(), c.clone()]),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: names::ENV_SECRET.into(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        ports: port.map(|p| {
            vec![ContainerPort {
                name: Some("http".into()),
                container_port: p,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]
        }),
        readiness_probe: port.map(|p| Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(p),
                host: None,
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: resources(svc),
        volume_mounts: (!svc.volumes.is_empty()).then(|| {
            svc.volumes
                .iter()
                .map(|v| VolumeMount {
                    name: names::volume_claim(v.volume_id),
                    mount_path: v.mount_path.clone(),
                    ..VolumeMount::default()
                })
                .collect()
        }),
        ..Container::default()
    };
    // A ReadWriteOnce volume attaches to one node: a rolling update could
    // schedule the new pod elsewhere while the old one holds it, and wait
    // forever. Such a service is replaced instead (old pods stop first).
    let strategy = if svc.volumes.is_empty() {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::Int(1)),
            }),
        }
    } else {
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        }
    };
    let pod_volumes = (!svc.volumes.is_empty()).then(|| {
        svc.volumes
            .iter()
            .map(|v| Volume {
                name: names::volume_claim(v.volume_id),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: names::volume_claim(v.volume_id),
                    read_only: None,
                }),
                ..Volume::default()
            })
            .collect()
    });
    Deployment {
        metadata: meta(
            &name,
            &names::namespace(&cfg.namespace_prefix, env),
            service_labels(env, svc),
        ),
        spec: DeploymentSpec {
            replicas: Some(i32::try_from(svc.replicas).unwrap_or(i32::MAX)),
            revision_history_limit: Some(REVISION_HISTORY_LIMIT),
            progress_deadline_seconds: Some(
                i32::try_from(cfg.rollout_timeout.as_secs()).unwrap_or(i32::MAX),
            ),
            selector: LabelSelector {
                match_labels: Some(selector(svc)),
                ..LabelSelector::default()
            },
            strategy: Some(strategy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        names::ENV_CHECKSUM.to_string(),
                        env_checksum(&release.env_vars),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: pod_volumes,
                    // User code gets no API token, and no Docker-link env
                    // vars that could shadow its own.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// A project volume as a PersistentVolumeClaim in its environment's
/// namespace: ReadWriteOnce, `sizeGb` GiB, of the volumes' StorageClass.
pub fn volume_claim(cfg: &KubernetesConfig, v: &VolumeRef) -> PersistentVolumeClaim {
    let mut labels = BTreeMap::from([
        (names::PROJECT_ID.to_string(), v.env.project_id.to_string()),
        (
            names::ENVIRONMENT_ID.to_string(),
            v.env.environment_id.to_string(),
        ),
        (names::VOLUME_ID.to_string(), v.mount.volume_id.to_string()),
    ]);
    labels.insert(names::MANAGED_BY.into(), names::MANAGER.into());
    PersistentVolumeClaim {
        metadata: meta(
            &names::volume_claim(v.mount.volume_id),
            &names::namespace(&cfg.namespace_prefix, &v.env),
            labels,
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(cfg.volume_storage_class.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(format!("{}Gi", v.mount.size_gb)),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn cluster_ip(
    cfg: &KubernetesConfig,
    env: &EnvironmentRef,
    name: &str,
    labels: BTreeMap<String, String>,
    svc: &ServiceSpec,
    port: u16,
    target: u16,
) -> Service {
    Service {
        metadata: meta(name, &names::namespace(&cfg.namespace_prefix, env), labels),
        spec: Some(KubeServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(svc)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(target))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..KubeServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The in-cluster endpoint of a ported service (`http://<name>:<port>`);
/// `None` for workers.
pub fn service(cfg: &KubernetesConfig, env: &EnvironmentRef, svc: &ServiceSpec) -> Option<Service> {
    let port = svc.port?;
    Some(cluster_ip(
        cfg,
        env,
        &names::service_object(&svc.name),
        service_labels(env, svc),
        svc,
        port,
        port,
    ))
}

/// The public entry: a Service on port 80 selecting the web service's pods.
/// The HTTPRoute points here.
pub fn public_service(cfg: &KubernetesConfig, env: &EnvironmentRef, web: &ServiceSpec) -> Service {
    let mut labels = env_labels(env);
    labels.insert(names::COMPONENT.into(), "public".into());
    let port = web.port.unwrap_or(names::PUBLIC_PORT);
    cluster_ip(
        cfg,
        env,
        names::PUBLIC,
        labels,
        web,
        names::PUBLIC_PORT,
        port,
    )
}

/// The service that receives the environment's public traffic: the first
/// ported service named `web`, else the first ported one.
pub fn web_service(services: &[ServiceSpec]) -> Option<&ServiceSpec> {
    let ported = || services.iter().filter(|s| s.port.is_some());
    ported()
        .find(|s| s.name == "web")
        .or_else(|| ported().next())
}

/// The environment's domain routed through the shared Gateway to the public
/// Service; `None` when the environment has no domain.
pub fn http_route(cfg: &KubernetesConfig, env: &EnvironmentRef) -> Option<DynamicObject> {
    let domain = env.domain.as_ref()?;
    let mut labels = env_labels(env);
    labels.insert(names::COMPONENT.into(), "public".into());
    let mut route = DynamicObject::new(names::PUBLIC, &http_route_resource())
        .within(&names::namespace(&cfg.namespace_prefix, env))
        .data(json!({
            "spec": {
                "parentRefs": [{
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "name": cfg.gateway_name,
                    "namespace": cfg.gateway_namespace,
                }],
                "hostnames": [domain],
                "rules": [{
                    "matches": [{ "path": { "type": "PathPrefix", "value": "/" } }],
                    "backendRefs": [{ "name": names::PUBLIC, "port": names::PUBLIC_PORT }],
                }],
            }
        }));
    route.metadata.labels = Some(labels);
    Some(route)
}

/// Where a build pushes: `<registry>/<project slug>/app`, without tag.
pub fn image_repository(cfg: &KubernetesConfig, env: &EnvironmentRef) -> String {
    format!(
        "{}/{}/app",
        cfg.registry.trim_end_matches('/'),
        names::dns_label(&env.project_slug, names::MAX_LABEL)
    )
}

/// A Kaniko context URL and whether the clone must use plain HTTP.
struct GitContext {
    url: String,
    plain_http: bool,
}

/// `git://<host>/<path>.git#refs/heads/<branch>#<commit>`: Kaniko clones it
/// over HTTPS (or HTTP) and checks out the commit.
fn git_context(repo: &str, branch: &str, commit: &str) -> Result<GitContext> {
    let field = "gitRepository";
    let repo = repo.trim();
    let mut plain_http = false;
    let host_path = if let Some(rest) = repo.strip_prefix("https://") {
        rest.to_string()
    } else if let Some(rest) = repo.strip_prefix("http://") {
        plain_http = true;
        rest.to_string()
    } else if let Some(rest) = repo.strip_prefix("git://") {
        rest.to_string()
    } else if let Some(rest) = repo.strip_prefix("ssh://") {
        // Cloned over HTTPS with the configured credentials instead.
        rest.split_once('@').map_or(rest, |(_, r)| r).to_string()
    } else if let Some(rest) = repo.strip_prefix("git@") {
        rest.replacen(':', "/", 1)
    } else if repo.starts_with("file://") || repo.starts_with('/') || repo.starts_with('.') {
        return Err(Error::field(
            field,
            "a local path cannot be built on Kubernetes; use a git URL",
        ));
    } else if repo.split('/').count() == 2 && !repo.contains(':') {
        format!("github.com/{repo}")
    } else {
        return Err(Error::field(field, "expected owner/repo or a git URL"));
    };
    if host_path.contains('@') {
        return Err(Error::field(
            field,
            "credentials in the URL are not supported; configure the build's git secret",
        ));
    }
    let host_path = host_path.trim_end_matches('/');
    let host_path = host_path.strip_suffix(".git").unwrap_or(host_path);
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._/~:".contains(c);
    if host_path.is_empty() || !host_path.contains('/') || !host_path.chars().all(ok_char) {
        return Err(Error::field(field, "expected owner/repo or a git URL"));
    }
    let branch_ok = !branch.is_empty()
        && !branch.starts_with('-')
        && !branch.contains("..")
        && branch
            .chars()
            .all(|c| c.is_ascii_graphic() && !"#?*[\\^~:".contains(c));
    if !branch_ok {
        return Err(Error::field("gitBranch", "not a valid branch name"));
    }
    Ok(GitContext {
        url: format!("git://{host_path}.git#refs/heads/{branch}#{commit}"),
        plain_http,
    })
}

/// The URL the build clones `repo` from (`https://<host>/<path>.git`, or
/// `http://` for plain-HTTP repositories), after the same checks as the
/// build itself: a local path or `file://` URL is refused, so nothing on
/// the server's own disk is ever read for a tenant.
pub fn clone_url(repo: &str, branch: &str) -> Result<String> {
    let ctx = git_context(repo, branch, "0")?;
    let host_path = ctx
        .url
        .strip_prefix("git://")
        .and_then(|u| u.split('#').next())
        .unwrap_or_default();
    let scheme = if ctx.plain_http { "http" } else { "https" };
    Ok(format!("{scheme}://{host_path}"))
}

/// A commit sha as given (7 to 40 hex digits), lowercased.
pub fn commit_sha(req: &BuildRequest) -> Result<String> {
    let commit = req.git_commit.as_deref().ok_or_else(|| {
        Error::field(
            "gitCommit",
            "a build needs a commit (the driver resolves the branch head first)",
        )
    })?;
    let ok = (7..=40).contains(&commit.len()) && commit.chars().all(|c| c.is_ascii_hexdigit());
    if !ok {
        return Err(Error::field("gitCommit", "must be 7 to 40 hex digits"));
    }
    Ok(commit.to_ascii_lowercase())
}

/// The Kaniko build Job of one deployment: clones the commit, builds the
/// Dockerfile, pushes `<repository>:<commit>` and writes the pushed digest
/// to the termination message. Fails fast (no retries) and cleans itself up.
pub fn build_job(cfg: &KubernetesConfig, req: &BuildRequest) -> Result<Job> {
    match req.build_pack.as_deref() {
        None | Some("dockerfile") => {}
        Some(_) => {
            return Err(Error::field(
                "buildPack",
                "the Kubernetes runtime builds Dockerfiles only",
            ));
        }
    }
    let commit = commit_sha(req)?;
    let context = git_context(&req.git_repository, &req.git_branch, &commit)?;
    let dockerfile = match req.dockerfile_path.trim() {
        "" => "Dockerfile",
        p => p,
    };
    let mut labels = env_labels(&req.env);
    labels.insert(names::COMPONENT.into(), "build".into());
    labels.insert(names::DEPLOYMENT_ID.into(), req.deployment_id.to_string());

    let mut env = Vec::new();
    if context.plain_http {
        env.push(EnvVar {
            name: "GIT_PULL_METHOD".into(),
            value: Some("http".into()),
            ..EnvVar::default()
        });
    }
    let env_from = cfg.git_secret.as_ref().map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]
    });
    let (volumes, mounts) = match &cfg.registry_secret {
        Some(secret) => (
            Some(vec![Volume {
                name: DOCKER_CONFIG_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    items: Some(vec![KeyToPath {
                        key: ".dockerconfigjson".into(),
                        path: "config.json".into(),
                        ..KeyToPath::default()
                    }]),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            Some(vec![VolumeMount {
                name: DOCKER_CONFIG_VOLUME.into(),
                mount_path: "/kaniko/.docker".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
        ),
        None => (None, None),
    };
    let destination = format!("{}:{commit}", image_repository(cfg, &req.env));
    let container = Container {
        name: KANIKO_CONTAINER.into(),
        image: Some(cfg.kaniko_image.clone()),
        args: Some(vec![
            format!("--context={}", context.url),
            format!("--dockerfile={dockerfile}"),
            format!("--destination={destination}"),
            "--digest-file=/dev/termination-log".into(),
            "--cache=true".into(),
            "--push-retry=2".into(),
        ]),
        env: (!env.is_empty()).then_some(env),
        env_from,
        volume_mounts: mounts,
        ..Container::default()
    };
    Ok(Job {
        metadata: meta(
            &names::build_job(req.deployment_id),
            &cfg.build_namespace,
            labels.clone(),
        ),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(
                i64::try_from(cfg.build_timeout.as_secs()).unwrap_or(i64::MAX),
            ),
            ttl_seconds_after_finished: Some(BUILD_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    containers: vec![container],
                    volumes,
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;
    use crate::domain::services::Resources;
    use crate::secrets::SecretString;

    pub fn config() -> KubernetesConfig {
        KubernetesConfig {
            gateway_name: "public".into(),
            gateway_namespace: "gateway-system".into(),
            registry: "registry.local/sylphx".into(),
            registry_secret: Some("registry-push".into()),
            git_secret: Some("git-credentials".into()),
            rollout_timeout: Duration::from_secs(300),
            build_timeout: Duration::from_secs(1200),
            poll_interval: Duration::from_millis(5),
            ..KubernetesConfig::default()
        }
    }

    pub fn env() -> EnvironmentRef {
        EnvironmentRef {
            project_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            project_slug: "shop".into(),
            environment_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002),
            environment_name: "production".into(),
            domain: Some("shop.example.com".into()),
        }
    }

    pub fn vars(db: &str) -> EnvVars {
        EnvVars(BTreeMap::from([
            ("DATABASE_URL".to_string(), SecretString::new(db)),
            ("LOG_LEVEL".to_string(), SecretString::new("info")),
        ]))
    }

    pub fn web() -> ServiceSpec {
        ServiceSpec {
            service_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0010),
            name: "web".into(),
            port: Some(3000),
            replicas: 2,
            resources: Some(Resources {
                cpu: Some("500m".into()),
                memory: Some("512Mi".into()),
            }),
            command: None,
            volumes: Vec::new(),
        }
    }

    pub fn worker() -> ServiceSpec {
        ServiceSpec {
            service_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0011),
            name: "worker".into(),
            port: None,
            replicas: 1,
            resources: None,
            command: Some("bin/worker --queue default".into()),
            volumes: Vec::new(),
        }
    }

    pub fn release(deployment: u128, image: &str, db: &str) -> Release {
        Release {
            deployment_id: Uuid::from_u128(deployment),
            env: env(),
            image: image.into(),
            env_vars: vars(db),
            services: vec![web(), worker()],
            sandbox_uid: None,
            restore: false,
        }
    }

    pub fn build_request() -> BuildRequest {
        BuildRequest {
            deployment_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0100),
            env: env(),
            git_repository: "acme/shop".into(),
            git_branch: "main".into(),
            git_commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            dockerfile_path: "Dockerfile".into(),
            build_pack: None,
            sandbox_uid: None,
        }
    }

    #[test]
    fn clone_urls_never_name_local_paths() {
        assert_eq!(
            clone_url("acme/shop", "main").unwrap(),
            "https://github.com/acme/shop.git"
        );
        assert_eq!(
            clone_url("http://git.internal/a/b", "main").unwrap(),
            "http://git.internal/a/b.git"
        );
        for local in ["/srv/repo", "file:///srv/repo", "./repo"] {
            let err = clone_url(local, "main").unwrap_err();
            assert!(
                err.message().contains("local path"),
                "{local}: {}",
                err.message()
            );
        }
    }

    #[test]
    fn namespace_manifest() {
        insta::assert_yaml_snapshot!(namespace(&config(), &env()));
    }

    #[test]
    fn secret_manifest() {
        insta::assert_yaml_snapshot!(env_secret(&config(), &env(), &vars("postgres://db/shop")));
    }

    #[test]
    fn web_deployment_manifest() {
        let r = release(
            0x100,
            "registry.local/sylphx/shop/app@sha256:aaaa",
            "postgres://db/shop",
        );
        insta::assert_yaml_snapshot!(deployment(&config(), &r, &web()));
    }

    #[test]
    fn worker_deployment_manifest() {
        let r = release(
            0x100,
            "registry.local/sylphx/shop/app@sha256:aaaa",
            "postgres://db/shop",
        );
        insta::assert_yaml_snapshot!(deployment(&config(), &r, &worker()));
    }

    fn uploads() -> crate::runtime::VolumeMount {
        crate::runtime::VolumeMount {
            volume_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0020),
            name: "uploads".into(),
            mount_path: "/app/uploads".into(),
            size_gb: 20,
        }
    }

    #[test]
    fn web_deployment_with_volume_manifest() {
        let r = release(
            0x100,
            "registry.local/sylphx/shop/app@sha256:aaaa",
            "postgres://db/shop",
        );
        let mut svc = web();
        svc.volumes = vec![uploads()];
        insta::assert_yaml_snapshot!(deployment(&config(), &r, &svc));
    }

    #[test]
    fn volume_claim_manifest() {
        let v = VolumeRef {
            env: env(),
            service: Some("web".into()),
            mount: uploads(),
        };
        insta::assert_yaml_snapshot!(volume_claim(&config(), &v));
    }

    #[test]
    fn service_manifests() {
        assert!(service(&config(), &env(), &worker()).is_none());
        insta::assert_yaml_snapshot!(service(&config(), &env(), &web()));
    }

    #[test]
    fn public_service_manifest() {
        insta::assert_yaml_snapshot!(public_service(&config(), &env(), &web()));
    }

    #[test]
    fn http_route_manifest() {
        insta::assert_yaml_snapshot!(http_route(&config(), &env()));
        let no_domain = EnvironmentRef {
            domain: None,
            ..env()
        };
        assert!(http_route(&config(), &no_domain).is_none());
    }

    #[test]
    fn build_job_manifest() {
        insta::assert_yaml_snapshot!(build_job(&config(), &build_request()).unwrap());
    }

    #[test]
    fn selector_is_the_service_id_and_matches_the_pods() {
        let r = release(0x100, "img", "x");
        let d = deployment(&config(), &r, &web());
        let spec = d.spec;
        let sel = spec.selector.match_labels.unwrap();
        assert_eq!(sel.keys().collect::<Vec<_>>(), [names::SERVICE_ID]);
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in &sel {
            assert_eq!(pod_labels.get(k), Some(v));
        }
        let svc_sel = service(&config(), &env(), &web())
            .unwrap()
            .spec
            .unwrap()
            .selector;
        assert_eq!(svc_sel, Some(sel));
    }

    #[test]
    fn env_changes_change_the_checksum_only_through_values() {
        let a = env_checksum(&vars("postgres://a"));
        assert_eq!(a, env_checksum(&vars("postgres://a")));
        assert_ne!(a, env_checksum(&vars("postgres://b")));
        assert_eq!(a.len(), 64);
        let split = |k: &str, v: &str| {
            env_checksum(&EnvVars(BTreeMap::from([(
                k.to_string(),
                SecretString::new(v),
            )])))
        };
        assert_ne!(split("AB", "C"), split("A", "BC"));
        assert!(!a.contains("postgres"));
    }

    #[test]
    fn web_is_named_web_else_the_first_ported() {
        let mut api = web();
        api.name = "api".into();
        let services = vec![worker(), api.clone(), web()];
        assert_eq!(web_service(&services).unwrap().name, "web");
        let services = vec![worker(), api.clone()];
        assert_eq!(web_service(&services).unwrap().name, "api");
        assert!(web_service(&[worker()]).is_none());
    }

    #[test]
    fn git_contexts() {
        let sha = "abcdef1";
        let url = |repo: &str| git_context(repo, "main", sha).map(|c| c.url);
        let want = "git://github.com/acme/shop.git#refs/heads/main#abcdef1";
        for repo in [
            "acme/shop",
            "https://github.com/acme/shop",
            "https://github.com/acme/shop.git",
            "git@github.com:acme/shop.git",
            "ssh://git@github.com/acme/shop.git",
        ] {
            assert_eq!(url(repo).unwrap(), want, "{repo}");
        }
        assert!(
            git_context("http://git.local/a/b", "main", sha)
                .unwrap()
                .plain_http
        );
        for bad in [
            "/srv/repo",
            "file:///srv/repo",
            "https://u:p@github.com/a/b",
            "nope",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
        assert!(git_context("acme/shop", "a#b", sha).is_err());
        assert!(git_context("acme/shop", "feature/x-1", sha).is_ok());
    }

    #[test]
    fn builds_need_a_commit_and_a_dockerfile() {
        let mut req = build_request();
        req.git_commit = None;
        assert!(build_job(&config(), &req).is_err());
        req.git_commit = Some("not-hex".into());
        assert!(build_job(&config(), &req).is_err());
        let mut req = build_request();
        req.build_pack = Some("nixpacks".into());
        assert!(build_job(&config(), &req).is_err());
    }
}
