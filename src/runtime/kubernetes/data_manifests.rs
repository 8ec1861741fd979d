//! Pure builders of the data services' objects: a CloudNativePG `Cluster`
//! per PostgreSQL instance (with its credentials, its barman-cloud
//! `ObjectStore` and `ScheduledBackup`), and a StatefulSet, Service and
//! Secret per MariaDB, Redis or Valkey instance. No I/O: golden files pin
//! them.
//!
//! Every object carries [`names::RESOURCE_ID`], so that removing an
//! instance finds everything it left, whatever its name.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Namespace,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Secret, SecretKeySelector, Service, ServicePort, ServiceSpec,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::KubernetesConfig;
use super::names;
use crate::runtime::instances::{
    InstanceSpec, MYSQL, Origin, POSTGRESQL, REDIS, TYPESENSE, VALKEY,
};

/// The barman-cloud CNPG-I plugin.
pub const BARMAN_PLUGIN: &str = "barman-cloud.cloudnative-pg.io";
pub const POSTGRES_PORT: u16 = 5432;
pub const MYSQL_PORT: u16 = 3306;
pub const REDIS_PORT: u16 = 6379;
pub const TYPESENSE_PORT: u16 = 8108;
/// Where redis_exporter serves its metrics.
pub const REDIS_EXPORTER_PORT: u16 = 9121;
/// Keys of the MariaDB and Redis credentials Secret.
pub const ROOT_PASSWORD_KEY: &str = "root-password";
pub const PASSWORD_KEY: &str = "password";

fn cnpg(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("postgresql.cnpg.io", "v1", kind),
        plural,
    )
}

/// CloudNativePG `Cluster`.
pub fn cluster_resource() -> ApiResource {
    cnpg("Cluster", "clusters")
}

/// CloudNativePG `Backup`.
pub fn backup_resource() -> ApiResource {
    cnpg("Backup", "backups")
}

/// CloudNativePG `ScheduledBackup`.
pub fn scheduled_backup_resource() -> ApiResource {
    cnpg("ScheduledBackup", "scheduledbackups")
}

/// The barman-cloud plugin's `ObjectStore`.
pub fn object_store_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("barmancloud.cnpg.io", "v1", "ObjectStore"),
        "objectstores",
    )
}

/// CSI `VolumeSnapshot`.
pub fn volume_snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// The data namespace of an instance's organization.
pub fn data_namespace_name(cfg: &KubernetesConfig, spec: &InstanceSpec) -> String {
    names::data_namespace(&cfg.namespace_prefix, spec.organization_id)
}

/// The organization's data namespace.
pub fn data_namespace(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(data_namespace_name(cfg, spec)),
            labels: Some(BTreeMap::from([
                (names::MANAGED_BY.to_string(), names::MANAGER.to_string()),
                (
                    names::ORGANIZATION_ID.to_string(),
                    spec.organization_id.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The one selector of an instance's pods and volumes.
fn selector(spec: &InstanceSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::MANAGED_BY.to_string(), names::MANAGER.to_string()),
        (names::RESOURCE_ID.to_string(), spec.resource_id.to_string()),
    ])
}

/// Labels of every object of an instance.
pub fn instance_labels(spec: &InstanceSpec) -> BTreeMap<String, String> {
    let mut labels = selector(spec);
    labels.insert(names::NAME.into(), spec.name.clone());
    labels.insert(names::COMPONENT.into(), spec.provider.clone());
    labels.insert(
        names::ORGANIZATION_ID.into(),
        spec.organization_id.to_string(),
    );
    labels
}

fn meta(cfg: &KubernetesConfig, spec: &InstanceSpec, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(data_namespace_name(cfg, spec)),
        labels: Some(instance_labels(spec)),
        ..ObjectMeta::default()
    }
}

fn dynamic(
    cfg: &KubernetesConfig,
    spec: &InstanceSpec,
    resource: &ApiResource,
    name: &str,
    data: Value,
) -> DynamicObject {
    let mut obj = DynamicObject::new(name, resource)
        .within(&data_namespace_name(cfg, spec))
        .data(data);
    obj.metadata.labels = Some(instance_labels(spec));
    obj
}

fn memory(spec: &InstanceSpec) -> String {
    format!("{}Mi", spec.limits.memory_mb)
}

fn storage(spec: &InstanceSpec) -> String {
    format!("{}Gi", spec.limits.storage_gb)
}

/// The memory limit as both request and limit: the plan's size is what
/// the scheduler reserves and what the instance may use.
fn memory_resources(spec: &InstanceSpec) -> ResourceRequirements {
    let amounts = BTreeMap::from([("memory".to_string(), Quantity(memory(spec)))]);
    ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceRequirements::default()
    }
}

fn basic_auth(
    cfg: &KubernetesConfig,
    spec: &InstanceSpec,
    name: &str,
    user: &str,
    password: &str,
) -> Secret {
    Secret {
        metadata: meta(cfg, spec, name),
        type_: Some("kubernetes.io/basic-auth".into()),
        data: Some(BTreeMap::from([
            ("username".to_string(), ByteString(user.as_bytes().to_vec())),
            (
                "password".to_string(),
                ByteString(password.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The PostgreSQL superuser (`superuserSecret`), with the spec's password.
pub fn superuser_secret(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Secret {
    let c = &spec.credentials;
    basic_auth(
        cfg,
        spec,
        &names::superuser_secret(&spec.name),
        &c.admin_user,
        c.admin_password.expose(),
    )
}

/// The PostgreSQL application user (the database's owner).
pub fn app_secret(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Secret {
    let c = &spec.credentials;
    basic_auth(
        cfg,
        spec,
        &names::app_secret(&spec.name),
        &c.app_user,
        c.app_password.expose(),
    )
}

/// The copy of the template `ObjectStore` a PostgreSQL instance archives
/// to (`spec.configuration` as the template has it), keeping the
/// instance's backups and WAL for `backup_retention_days`.
/// `owner` is the instance the store belongs to; `spec` the one whose
/// namespace receives it (a restore reads its source's store).
pub fn object_store(
    cfg: &KubernetesConfig,
    spec: &InstanceSpec,
    owner: &InstanceSpec,
    template_spec: &Value,
) -> DynamicObject {
    let mut store_spec = template_spec.clone();
    if !store_spec.is_object() {
        store_spec = json!({});
    }
    store_spec["retentionPolicy"] = json!(format!("{}d", owner.backup_retention_days.max(1)));
    let mut obj = dynamic(
        cfg,
        owner,
        &object_store_resource(),
        &names::object_store(&owner.name),
        json!({ "spec": store_spec }),
    );
    obj.metadata.namespace = Some(data_namespace_name(cfg, spec));
    obj
}

/// The Secrets a template `ObjectStore` names (`{name, key}` selectors
/// anywhere in its `configuration`): copied next to each instance's store.
pub fn object_store_secrets(template_spec: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let (Some(Value::String(name)), Some(Value::String(_))) =
                    (map.get("name"), map.get("key"))
                {
                    out.push(name.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(c) = template_spec.get("configuration") {
        walk(c, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// A Secret of the template namespace as a copy in a data namespace:
/// its type and data, under the driver's label.
pub fn copied_secret(ns: &str, template: &Secret) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: template.metadata.name.clone(),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([(
                names::MANAGED_BY.to_string(),
                names::MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: template.type_.clone(),
        data: template.data.clone(),
        ..Secret::default()
    }
}

/// The `bootstrap` of a PostgreSQL instance from its origin. Recovery
/// keeps the origin's data but takes this spec's database owner and its
/// password (`secret`).
fn bootstrap(spec: &InstanceSpec) -> Value {
    let c = &spec.credentials;
    let mut boot = json!({
        "database": c.database,
        "owner": c.app_user,
        "secret": { "name": names::app_secret(&spec.name) },
    });
    match &spec.origin {
        Origin::Empty => json!({ "initdb": boot }),
        Origin::Restore {
            source,
            target_time,
        } => {
            boot["source"] = json!(source.name);
            boot["recoveryTarget"] = json!({
                "targetTime": target_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
            json!({ "recovery": boot })
        }
        Origin::Copy { .. } => {
            boot["volumeSnapshots"] = json!({
                "storage": {
                    "name": names::origin_snapshot(&spec.name),
                    "kind": "VolumeSnapshot",
                    "apiGroup": "snapshot.storage.k8s.io",
                }
            });
            json!({ "recovery": boot })
        }
    }
}

/// A PostgreSQL instance as a one-instance CloudNativePG `Cluster`: the
/// spec's size and `max_connections`, its users from the two Secrets, its
/// origin as `bootstrap`, and WAL archiving through the barman-cloud
/// plugin when an object store is configured.
pub fn cluster(cfg: &KubernetesConfig, spec: &InstanceSpec) -> DynamicObject {
    let mut storage_spec = json!({ "size": storage(spec) });
    if let Some(class) = &cfg.storage_class {
        storage_spec["storageClass"] = json!(class);
    }
    let mut cluster = json!({
        "instances": 1,
        "enableSuperuserAccess": true,
        "superuserSecret": { "name": names::superuser_secret(&spec.name) },
        "postgresql": {
            "parameters": { "max_connections": spec.limits.max_connections.to_string() },
        },
        "storage": storage_spec,
        "resources": memory_resources(spec),
        // Pods, PVCs and Services carry the resource id too.
        "inheritedMetadata": { "labels": selector(spec) },
        "bootstrap": bootstrap(spec),
    });
    if let Some(image) = &cfg.postgres_image {
        cluster["imageName"] = json!(image);
    }
    if cfg.object_store.is_some() {
        cluster["plugins"] = json!([{
            "name": BARMAN_PLUGIN,
            "isWALArchiver": true,
            "parameters": { "barmanObjectName": names::object_store(&spec.name) },
        }]);
    }
    if let Origin::Restore { source, .. } = &spec.origin {
        cluster["externalClusters"] = json!([{
            "name": source.name,
            "plugin": {
                "name": BARMAN_PLUGIN,
                "parameters": {
                    "barmanObjectName": names::object_store(&source.name),
                    "serverName": source.name,
                },
            },
        }]);
    }
    dynamic(
        cfg,
        spec,
        &cluster_resource(),
        &spec.name,
        json!({ "spec": cluster }),
    )
}

/// The base backups on the configured schedule, owned by the schedule.
pub fn scheduled_backup(cfg: &KubernetesConfig, spec: &InstanceSpec) -> DynamicObject {
    dynamic(
        cfg,
        spec,
        &scheduled_backup_resource(),
        &spec.name,
        json!({
            "spec": {
                "schedule": cfg.backup_schedule,
                "backupOwnerReference": "self",
                "cluster": { "name": spec.name },
                "method": "plugin",
                "pluginConfiguration": { "name": BARMAN_PLUGIN },
            }
        }),
    )
}

/// An on-demand base backup named `name`.
pub fn backup(cfg: &KubernetesConfig, spec: &InstanceSpec, name: &str) -> DynamicObject {
    let mut obj = dynamic(
        cfg,
        spec,
        &backup_resource(),
        name,
        json!({
            "spec": {
                "cluster": { "name": spec.name },
                "method": "plugin",
                "pluginConfiguration": { "name": BARMAN_PLUGIN },
            }
        }),
    );
    if let Some(labels) = obj.metadata.labels.as_mut() {
        labels.insert(names::CNPG_CLUSTER.into(), spec.name.clone());
    }
    obj
}

/// The snapshot of the source's data volume (`pvc`) a branch starts from.
pub fn origin_snapshot(cfg: &KubernetesConfig, spec: &InstanceSpec, pvc: &str) -> DynamicObject {
    let mut snapshot = json!({ "source": { "persistentVolumeClaimName": pvc } });
    if let Some(class) = &cfg.snapshot_class {
        snapshot["volumeSnapshotClassName"] = json!(class);
    }
    dynamic(
        cfg,
        spec,
        &volume_snapshot_resource(),
        &names::origin_snapshot(&spec.name),
        json!({ "spec": snapshot }),
    )
}

/// The passwords of a MariaDB (root and application), Redis or Typesense
/// (its API key) instance.
pub fn credentials_secret(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Secret {
    let c = &spec.credentials;
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut data = BTreeMap::from([(PASSWORD_KEY.to_string(), bytes(c.app_password.expose()))]);
    if spec.provider == MYSQL {
        data.insert(
            ROOT_PASSWORD_KEY.to_string(),
            bytes(c.admin_password.expose()),
        );
    }
    Secret {
        metadata: meta(cfg, spec, &names::credentials_secret(&spec.name)),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// sha256 over a Secret's data (keys and values in key order), for the
/// pod template: a changed password restarts the server.
pub fn secret_checksum(secret: &Secret) -> String {
    let mut hash = Sha256::new();
    for (k, v) in secret.data.iter().flatten() {
        for part in [k.as_bytes(), v.0.as_slice()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
    }
    hex::encode(hash.finalize())
}

/// The port clients use.
pub fn port(provider: &str) -> u16 {
    match provider {
        POSTGRESQL => POSTGRES_PORT,
        MYSQL => MYSQL_PORT,
        TYPESENSE => TYPESENSE_PORT,
        _ => REDIS_PORT,
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn exec_probe(command: &[&str]) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|s| s.to_string()).collect()),
        }),
        initial_delay_seconds: Some(5),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn server_port(port: u16) -> Option<Vec<ContainerPort>> {
    Some(vec![ContainerPort {
        name: Some("server".into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }])
}

fn data_mount(path: &str) -> Option<Vec<VolumeMount>> {
    Some(vec![VolumeMount {
        name: names::DATA_VOLUME.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }])
}

/// MariaDB: the image's entrypoint creates the database and users on an
/// empty volume from the `MARIADB_*` variables; flags go to `mariadbd`.
fn mariadb_container(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Container {
    let secret = names::credentials_secret(&spec.name);
    let c = &spec.credentials;
    Container {
        name: "mariadb".into(),
        image: Some(cfg.mysql_image.clone()),
        args: Some(vec![format!(
            "--max-connections={}",
            spec.limits.max_connections
        )]),
        env: Some(vec![
            secret_env("MARIADB_ROOT_PASSWORD", &secret, ROOT_PASSWORD_KEY),
            value_env("MARIADB_DATABASE", &c.database),
            value_env("MARIADB_USER", &c.app_user),
            secret_env("MARIADB_PASSWORD", &secret, PASSWORD_KEY),
        ]),
        ports: server_port(MYSQL_PORT),
        // Over TCP, so the entrypoint's socket-only first start is not ready.
        readiness_probe: Some(exec_probe(&[
            "sh",
            "-c",
            "MYSQL_PWD=\"$MARIADB_ROOT_PASSWORD\" exec mysqladmin ping --silent -uroot -h127.0.0.1",
        ])),
        resources: Some(memory_resources(spec)),
        volume_mounts: data_mount("/var/lib/mysql"),
        ..Container::default()
    }
}

/// Typesense with its API key from the Secret (`$(VAR)` expanded by the
/// kubelet) and its index on the volume; ready once `/health` says so.
fn typesense_container(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Container {
    let secret = names::credentials_secret(&spec.name);
    Container {
        name: "typesense".into(),
        image: Some(cfg.typesense_image.clone()),
        args: Some(
            [
                "--data-dir",
                "/data",
                "--api-key",
                "$(TYPESENSE_API_KEY)",
                "--api-port",
                &TYPESENSE_PORT.to_string(),
                "--enable-cors",
                "false",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(vec![secret_env("TYPESENSE_API_KEY", &secret, PASSWORD_KEY)]),
        ports: server_port(TYPESENSE_PORT),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::Int(i32::from(TYPESENSE_PORT)),
                ..HTTPGetAction::default()
            }),
            initial_delay_seconds: Some(5),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: Some(memory_resources(spec)),
        volume_mounts: data_mount("/data"),
        ..Container::default()
    }
}

/// Redis `maxmemory`: the spec's, else three quarters of the memory.
fn max_memory_mb(spec: &InstanceSpec) -> u32 {
    spec.limits
        .max_memory_mb
        .unwrap_or(spec.limits.memory_mb / 4 * 3)
        .max(1)
}

/// Redis or Valkey with the password from the Secret (`$(VAR)` expanded
/// by the kubelet), an append-only file on the volume and `maxmemory`.
/// The CLI of the probe reads the password from its environment.
fn redis_containers(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Vec<Container> {
    let secret = names::credentials_secret(&spec.name);
    let valkey = spec.provider == VALKEY;
    let (image, server, cli) = if valkey {
        (&cfg.valkey_image, "valkey-server", "valkey-cli")
    } else {
        (&cfg.redis_image, "redis-server", "redis-cli")
    };
    let mut env = vec![
        secret_env("REDIS_PASSWORD", &secret, PASSWORD_KEY),
        secret_env("REDISCLI_AUTH", &secret, PASSWORD_KEY),
    ];
    if valkey {
        env.push(secret_env("VALKEYCLI_AUTH", &secret, PASSWORD_KEY));
    }
    let server = Container {
        name: spec.provider.clone(),
        image: Some(image.clone()),
        command: Some(vec![server.into()]),
        args: Some(
            [
                "--requirepass",
                "$(REDIS_PASSWORD)",
                "--appendonly",
                "yes",
                "--dir",
                "/data",
                "--maxmemory",
                &format!("{}mb", max_memory_mb(spec)),
                "--maxclients",
                &spec.limits.max_connections.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(env),
        ports: server_port(REDIS_PORT),
        readiness_probe: Some(exec_probe(&[
            "sh",
            "-c",
            &format!("{cli} ping | grep -q PONG"),
        ])),
        resources: Some(memory_resources(spec)),
        volume_mounts: data_mount("/data"),
        ..Container::default()
    };
    let small = BTreeMap::from([("memory".to_string(), Quantity("64Mi".into()))]);
    let exporter = Container {
        name: "metrics".into(),
        image: Some(cfg.redis_exporter_image.clone()),
        env: Some(vec![
            value_env("REDIS_ADDR", &format!("redis://127.0.0.1:{REDIS_PORT}")),
            secret_env("REDIS_PASSWORD", &secret, PASSWORD_KEY),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: i32::from(REDIS_EXPORTER_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(small.clone()),
            limits: Some(small),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    vec![server, exporter]
}

/// The claim of the data volume: `storage_gb` on the configured class.
pub fn data_claim(cfg: &KubernetesConfig, spec: &InstanceSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(names::DATA_VOLUME.into()),
            labels: Some(selector(spec)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: cfg.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage(spec)),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// A MariaDB, Redis, Valkey or Typesense instance: one replica on its own volume,
/// restarted when its credentials change, its volume removed with it.
pub fn statefulset(cfg: &KubernetesConfig, spec: &InstanceSpec) -> StatefulSet {
    let containers = match spec.provider.as_str() {
        MYSQL => vec![mariadb_container(cfg, spec)],
        TYPESENSE => vec![typesense_container(cfg, spec)],
        _ => redis_containers(cfg, spec),
    };
    let mut annotations = BTreeMap::from([(
        names::CREDENTIALS_CHECKSUM.to_string(),
        secret_checksum(&credentials_secret(cfg, spec)),
    )]);
    if matches!(spec.provider.as_str(), REDIS | VALKEY) {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), REDIS_EXPORTER_PORT.to_string());
    }
    StatefulSet {
        metadata: meta(cfg, spec, &spec.name),
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(spec.name.clone()),
            selector: LabelSelector {
                match_labels: Some(selector(spec)),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(instance_labels(spec)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![data_claim(cfg, spec)]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

/// The instance's in-cluster address: `<name>.<namespace>.svc:<port>`.
pub fn service(cfg: &KubernetesConfig, spec: &InstanceSpec) -> Service {
    let port = port(&spec.provider);
    Service {
        metadata: meta(cfg, spec, &spec.name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(spec)),
            ports: Some(vec![ServicePort {
                name: Some("server".into()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(port))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::runtime::instances::{Credentials, InstanceLimits};
    use crate::secrets::SecretString;

    pub const ORG: u128 = 0x0190_abcd_ef01_7000_8000_0000_0000_0001;
    pub const DATA_NS: &str = "sylphx-data-0190abcdef0170008000000000000001";

    pub fn config() -> KubernetesConfig {
        KubernetesConfig {
            storage_class: Some("fast-ssd".into()),
            snapshot_class: Some("csi-snapclass".into()),
            object_store: Some("s3-backups".into()),
            ..super::super::manifests::tests::config()
        }
    }

    pub fn no_store() -> KubernetesConfig {
        KubernetesConfig {
            object_store: None,
            ..config()
        }
    }

    pub fn instance(provider: &str, id: u128, name: &str) -> InstanceSpec {
        InstanceSpec {
            resource_id: Uuid::from_u128(id),
            organization_id: Uuid::from_u128(ORG),
            provider: provider.into(),
            name: name.into(),
            uid: None,
            port: None,
            limits: InstanceLimits {
                memory_mb: 512,
                max_connections: 100,
                storage_gb: 10,
                max_memory_mb: None,
            },
            credentials: Credentials {
                admin_user: if provider == MYSQL {
                    "root"
                } else {
                    "postgres"
                }
                .into(),
                admin_password: SecretString::new("fake-admin-pw"),
                app_user: "app".into(),
                app_password: SecretString::new("fake-app-pw"),
                database: if provider == REDIS { "" } else { "app" }.into(),
            },
            origin: Origin::Empty,
            backup_retention_days: 7,
        }
    }

    pub fn postgres() -> InstanceSpec {
        instance(
            POSTGRESQL,
            0x0190_0000_0000_7000_8000_0000_0000_0a01,
            "pg-0a01",
        )
    }

    pub fn redis() -> InstanceSpec {
        instance(
            REDIS,
            0x0190_0000_0000_7000_8000_0000_0000_0c01,
            "redis-0c01",
        )
    }

    pub fn typesense() -> InstanceSpec {
        instance(
            TYPESENSE,
            0x0190_0000_0000_7000_8000_0000_0000_0d01,
            "ts-0d01",
        )
    }

    pub fn mysql() -> InstanceSpec {
        instance(
            MYSQL,
            0x0190_0000_0000_7000_8000_0000_0000_0b01,
            "mysql-0b01",
        )
    }

    pub fn restored() -> InstanceSpec {
        let mut spec = instance(
            POSTGRESQL,
            0x0190_0000_0000_7000_8000_0000_0000_0a02,
            "pg-0a02",
        );
        spec.credentials.app_password = SecretString::new("fake-new-app-pw");
        spec.origin = Origin::Restore {
            source: Box::new(postgres()),
            target_time: "2025-03-01T10:00:00Z".parse().unwrap(),
        };
        spec
    }

    pub fn branch() -> InstanceSpec {
        let mut spec = instance(
            POSTGRESQL,
            0x0190_0000_0000_7000_8000_0000_0000_0a03,
            "pg-0a03",
        );
        spec.credentials.app_password = SecretString::new("fake-branch-app-pw");
        spec.origin = Origin::Copy {
            source: Box::new(postgres()),
        };
        spec
    }

    pub fn template_store() -> Value {
        json!({
            "configuration": {
                "destinationPath": "s3://backups/sylphx",
                "endpointURL": "https://s3.example.com",
                "s3Credentials": {
                    "accessKeyId": { "name": "s3-creds", "key": "ACCESS_KEY_ID" },
                    "secretAccessKey": { "name": "s3-creds", "key": "ACCESS_SECRET_KEY" },
                },
                "wal": { "compression": "gzip" },
            },
            "retentionPolicy": "30d",
        })
    }

    #[test]
    fn data_namespace_manifest() {
        insta::assert_yaml_snapshot!(data_namespace(&config(), &postgres()));
    }

    #[test]
    fn postgres_secrets_manifest() {
        insta::assert_yaml_snapshot!(vec![
            superuser_secret(&config(), &postgres()),
            app_secret(&config(), &postgres()),
        ]);
    }

    #[test]
    fn postgres_cluster_manifest() {
        insta::assert_yaml_snapshot!(cluster(&config(), &postgres()));
    }

    #[test]
    fn postgres_cluster_without_object_store_manifest() {
        let cfg = KubernetesConfig {
            storage_class: None,
            postgres_image: Some("ghcr.io/cloudnative-pg/postgresql:17.5".into()),
            ..no_store()
        };
        let c = cluster(&cfg, &postgres());
        assert!(c.data["spec"].get("plugins").is_none());
        insta::assert_yaml_snapshot!(c);
    }

    #[test]
    fn scheduled_backup_manifest() {
        insta::assert_yaml_snapshot!(scheduled_backup(&config(), &postgres()));
    }

    #[test]
    fn backup_manifest() {
        insta::assert_yaml_snapshot!(backup(&config(), &postgres(), "pg-0a01-initial"));
    }

    #[test]
    fn object_store_manifest() {
        let store = object_store(&config(), &postgres(), &postgres(), &template_store());
        assert_eq!(store.data["spec"]["retentionPolicy"], "7d");
        insta::assert_yaml_snapshot!(store);
        assert_eq!(
            object_store_secrets(&template_store()),
            ["s3-creds".to_string()]
        );
        assert!(object_store_secrets(&json!({})).is_empty());
    }

    #[test]
    fn restore_cluster_manifest() {
        let c = cluster(&config(), &restored());
        let recovery = &c.data["spec"]["bootstrap"]["recovery"];
        assert_eq!(recovery["source"], "pg-0a01");
        assert_eq!(
            recovery["recoveryTarget"]["targetTime"],
            "2025-03-01T10:00:00Z"
        );
        insta::assert_yaml_snapshot!(c);
    }

    #[test]
    fn branch_cluster_and_snapshot_manifests() {
        insta::assert_yaml_snapshot!(vec![
            origin_snapshot(&config(), &branch(), "pg-0a01-1"),
            cluster(&config(), &branch()),
        ]);
    }

    #[test]
    fn mysql_manifests() {
        let spec = mysql();
        let sts = statefulset(&config(), &spec);
        let template = sts.spec.template.clone();
        let annotations = template.metadata.unwrap().annotations.unwrap();
        let checksum = &annotations[names::CREDENTIALS_CHECKSUM];
        assert!(!checksum.contains("fake"));
        insta::assert_yaml_snapshot!("mysql_statefulset_manifest", sts);
        insta::assert_yaml_snapshot!("mysql_service_manifest", service(&config(), &spec));
        insta::assert_yaml_snapshot!(
            "mysql_secret_manifest",
            credentials_secret(&config(), &spec)
        );
    }

    #[test]
    fn redis_statefulset_manifest() {
        insta::assert_yaml_snapshot!(statefulset(&config(), &redis()));
        let mut valkey = redis();
        valkey.provider = VALKEY.into();
        valkey.limits.max_memory_mb = Some(256);
        let sts = statefulset(&config(), &valkey);
        let pod = sts.spec.template.spec.unwrap();
        let server = &pod.containers[0];
        assert_eq!(server.image.as_deref(), Some("valkey/valkey:8"));
        assert_eq!(server.command.as_ref().unwrap()[0], "valkey-server");
        assert!(server.args.as_ref().unwrap().contains(&"256mb".to_string()));
    }

    #[test]
    fn typesense_manifests() {
        let spec = typesense();
        let sts = statefulset(&config(), &spec);
        let pod = sts.spec.template.spec.clone().unwrap();
        assert_eq!(pod.containers.len(), 1);
        let server = &pod.containers[0];
        assert_eq!(server.image.as_deref(), Some("typesense/typesense:29.0"));
        let args = server.args.clone().unwrap();
        assert!(
            args.contains(&"$(TYPESENSE_API_KEY)".to_string()),
            "{args:?}"
        );
        insta::assert_yaml_snapshot!("typesense_statefulset_manifest", sts);
        let svc = service(&config(), &spec);
        let ports = svc.spec.unwrap().ports.unwrap();
        assert_eq!(ports[0].port, i32::from(TYPESENSE_PORT));
    }

    #[test]
    fn selectors_match_the_pods_and_secrets_never_reach_the_pod_spec() {
        for spec in [mysql(), redis(), typesense()] {
            let sts = statefulset(&config(), &spec);
            let sts_spec = sts.spec;
            let sel = sts_spec.selector.match_labels.unwrap();
            let labels = sts_spec.template.metadata.unwrap().labels.unwrap();
            for (k, v) in &sel {
                assert_eq!(labels.get(k), Some(v));
            }
            assert_eq!(service(&config(), &spec).spec.unwrap().selector, Some(sel));
            let pod = serde_json::to_string(&sts_spec.template.spec).unwrap();
            assert!(!pod.contains("fake-"), "{pod}");
        }
        let pg = serde_json::to_string(&cluster(&config(), &branch())).unwrap();
        assert!(!pg.contains("fake-"), "{pg}");
    }
}
