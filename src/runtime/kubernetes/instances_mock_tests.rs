//! The data service actions against the mock API server (the exchanges of
//! `mock_tests`), and the figures against a tiny fake Prometheus.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::KubernetesConfig;
use super::data_manifests::tests::{
    DATA_NS, branch, config, mysql, no_store, postgres, redis, restored, template_store,
};
use super::mock_tests::{Exchange, list, not_found, run_script};
use crate::runtime::instances::{InstanceState, Instances};
use crate::runtime::kubernetes::KubernetesRuntime;

const CNPG: &str =
    "/apis/postgresql.cnpg.io/v1/namespaces/sylphx-data-0190abcdef0170008000000000000001";
const STORES: &str = "/apis/barmancloud.cnpg.io/v1/namespaces/sylphx-data-0190abcdef0170008000000000000001/objectstores";
const SNAPSHOTS: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/sylphx-data-0190abcdef0170008000000000000001/volumesnapshots";
const CORE: &str = "/api/v1/namespaces/sylphx-data-0190abcdef0170008000000000000001";
const STS: &str =
    "/apis/apps/v1/namespaces/sylphx-data-0190abcdef0170008000000000000001/statefulsets";

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn cluster(name: &str, status: Value) -> Value {
    json!({
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
        "metadata": { "name": name, "namespace": DATA_NS, "generation": 1 },
        "spec": { "instances": 1 },
        "status": status,
    })
}

fn healthy(name: &str) -> Value {
    cluster(
        name,
        json!({ "phase": "Cluster in healthy state", "readyInstances": 1, "currentPrimary": format!("{name}-2"),
            "conditions": [{ "type": "Ready", "status": "True", "observedGeneration": 1 }] }),
    )
}

fn backup(name: &str, phase: &str, started: &str) -> Value {
    json!({
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
        "metadata": { "name": name, "namespace": DATA_NS, "labels": { "cnpg.io/cluster": "pg-0a01" } },
        "spec": { "cluster": { "name": "pg-0a01" }, "method": "plugin" },
        "status": { "phase": phase, "startedAt": started },
    })
}

fn obj(api_version: &str, kind: &str, name: &str) -> Value {
    json!({ "apiVersion": api_version, "kind": kind, "metadata": { "name": name, "namespace": DATA_NS } })
}

/// The writes every PostgreSQL ensure starts with: the namespace, the
/// instance's object store (copied from the template with its Secret),
/// and the two credentials Secrets carrying the spec's passwords.
fn postgres_preamble(name: &'static str, app_password: &'static str) -> Vec<Exchange> {
    vec![
        Exchange::new(Method::GET, CORE).json(
            200,
            json!({ "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": DATA_NS, "labels": { "sylphx.io/organization-id": "0190abcd-ef01-7000-8000-000000000001" } },
                "status": { "phase": "Active" } }),
        ),
        Exchange::apply(CORE).check(|b| {
            assert_eq!(b["kind"], "Namespace");
            assert_eq!(
                b["metadata"]["labels"]["sylphx.io/organization-id"],
                "0190abcd-ef01-7000-8000-000000000001"
            );
        }),
        Exchange::new(
            Method::GET,
            "/apis/barmancloud.cnpg.io/v1/namespaces/sylphx-system/objectstores/s3-backups",
        )
        .json(
            200,
            json!({ "apiVersion": "barmancloud.cnpg.io/v1", "kind": "ObjectStore",
                "metadata": { "name": "s3-backups", "namespace": "sylphx-system" }, "spec": template_store() }),
        ),
        Exchange::new(Method::GET, "/api/v1/namespaces/sylphx-system/secrets/s3-creds").json(
            200,
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "s3-creds", "namespace": "sylphx-system" },
                "type": "Opaque", "data": { "ACCESS_KEY_ID": b64("fake-key"), "ACCESS_SECRET_KEY": b64("fake-secret") } }),
        ),
        Exchange::apply(&format!("{CORE}/secrets/s3-creds")).check(|b| {
            assert_eq!(b["metadata"]["namespace"], DATA_NS);
            assert_eq!(b["data"]["ACCESS_KEY_ID"], b64("fake-key"));
        }),
        Exchange::apply(&format!("{STORES}/{name}-store")).check(|b| {
            assert_eq!(b["spec"]["configuration"]["destinationPath"], "s3://backups/sylphx");
            assert_eq!(b["spec"]["retentionPolicy"], "7d");
        }),
        Exchange::apply(&format!("{CORE}/secrets/{name}-superuser-credentials")).check(|b| {
            assert_eq!(b["type"], "kubernetes.io/basic-auth");
            assert_eq!(b["data"]["username"], b64("postgres"));
            assert_eq!(b["data"]["password"], b64("fake-admin-pw"));
        }),
        Exchange::apply(&format!("{CORE}/secrets/{name}-app-credentials")).check(move |b| {
            assert_eq!(b["data"]["username"], b64("app"));
            assert_eq!(b["data"]["password"], b64(app_password));
        }),
    ]
}

fn drain(mut rx: mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(line) = rx.try_recv() {
        out.push(line);
    }
    assert!(out.iter().all(|l| !l.contains("fake-")), "{out:?}");
    out
}

#[tokio::test]
async fn ensure_postgres_applies_waits_for_ready_and_the_first_backup() {
    let mut script = postgres_preamble("pg-0a01", "fake-app-pw");
    script.extend([
        Exchange::apply(&format!("{CNPG}/clusters/pg-0a01")).check(|b| {
            let spec = &b["spec"];
            assert_eq!(spec["instances"], 1);
            assert_eq!(spec["storage"], json!({ "size": "10Gi", "storageClass": "fast-ssd" }));
            assert_eq!(spec["postgresql"]["parameters"]["max_connections"], "100");
            assert_eq!(
                spec["bootstrap"]["initdb"],
                json!({ "database": "app", "owner": "app", "secret": { "name": "pg-0a01-app-credentials" } })
            );
            assert_eq!(spec["plugins"][0]["parameters"]["barmanObjectName"], "pg-0a01-store");
            assert_eq!(spec["plugins"][0]["isWALArchiver"], true);
        }),
        Exchange::apply(&format!("{CNPG}/scheduledbackups/pg-0a01")).check(|b| {
            assert_eq!(b["spec"]["schedule"], "0 0 3 * * *");
            assert_eq!(b["spec"]["method"], "plugin");
        }),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a01")).json(200, cluster("pg-0a01", Value::Null)),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a01")).json(
            200,
            cluster("pg-0a01", json!({ "phase": "Setting up primary",
                "conditions": [{ "type": "Ready", "status": "False", "observedGeneration": 1 }] })),
        ),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a01")).json(200, healthy("pg-0a01")),
        Exchange::new(Method::GET, format!("{CNPG}/backups?&labelSelector=cnpg.io%2Fcluster%3Dpg-0a01"))
            .json(200, list("BackupList", vec![])),
        Exchange::apply(&format!("{CNPG}/backups/pg-0a01-initial")).check(|b| {
            assert_eq!(b["metadata"]["labels"]["cnpg.io/cluster"], "pg-0a01");
            assert_eq!(b["spec"]["pluginConfiguration"]["name"], "barman-cloud.cloudnative-pg.io");
        }),
        Exchange::new(Method::GET, format!("{CNPG}/backups/pg-0a01-initial"))
            .json(200, backup("pg-0a01-initial", "running", "2025-03-01T10:00:00Z")),
        Exchange::new(Method::GET, format!("{CNPG}/backups/pg-0a01-initial"))
            .json(200, backup("pg-0a01-initial", "completed", "2025-03-01T10:00:00Z")),
    ]);
    let (tx, rx) = mpsc::unbounded_channel();
    let endpoint = run_script(config(), script, |rt| async move {
        rt.ensure(&postgres(), &tx).await
    })
    .await
    .unwrap();
    assert_eq!(endpoint.host, format!("pg-0a01-rw.{DATA_NS}.svc"));
    assert_eq!(endpoint.port, 5432);
    assert_eq!(
        drain(rx),
        [
            format!("creating PostgreSQL pg-0a01 in {DATA_NS}"),
            "pg-0a01: waiting for the operator".into(),
            "pg-0a01: Setting up primary".into(),
            "pg-0a01: ready".into(),
            "taking the first base backup".into(),
            "base backup pg-0a01-initial: running".into(),
            "base backup pg-0a01-initial: ready".into(),
        ]
    );
}

#[tokio::test]
async fn ensure_postgres_without_an_object_store_takes_no_backup() {
    let script = vec![
        Exchange::new(Method::GET, CORE).json(404, not_found()),
        Exchange::apply(CORE),
        Exchange::apply(&format!("{CORE}/secrets/pg-0a01-superuser-credentials")),
        Exchange::apply(&format!("{CORE}/secrets/pg-0a01-app-credentials")),
        Exchange::apply(&format!("{CNPG}/clusters/pg-0a01"))
            .check(|b| assert!(b["spec"].get("plugins").is_none())),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a01"))
            .json(200, healthy("pg-0a01")),
    ];
    let (tx, _rx) = mpsc::unbounded_channel();
    run_script(no_store(), script, |rt| async move {
        rt.ensure(&postgres(), &tx).await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_branch_starts_from_a_snapshot_of_the_source_primary() {
    let mut script = postgres_preamble("pg-0a03", "fake-branch-app-pw");
    script.extend([
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a03")).json(404, not_found()),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a01")).json(200, healthy("pg-0a01")),
        Exchange::apply(&format!("{SNAPSHOTS}/pg-0a03-origin")).check(|b| {
            assert_eq!(
                b["spec"],
                json!({ "source": { "persistentVolumeClaimName": "pg-0a01-2" }, "volumeSnapshotClassName": "csi-snapclass" })
            );
            assert_eq!(b["metadata"]["labels"]["sylphx.io/resource-id"], branch().resource_id.to_string());
        }),
        Exchange::new(Method::GET, format!("{SNAPSHOTS}/pg-0a03-origin")).json(
            200,
            json!({ "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": { "name": "pg-0a03-origin" }, "status": { "readyToUse": false } }),
        ),
        Exchange::new(Method::GET, format!("{SNAPSHOTS}/pg-0a03-origin")).json(
            200,
            json!({ "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": { "name": "pg-0a03-origin" }, "status": { "readyToUse": true } }),
        ),
        Exchange::apply(&format!("{CNPG}/clusters/pg-0a03")).check(|b| {
            let recovery = &b["spec"]["bootstrap"]["recovery"];
            assert_eq!(
                recovery["volumeSnapshots"]["storage"],
                json!({ "name": "pg-0a03-origin", "kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io" })
            );
            assert_eq!(recovery["secret"]["name"], "pg-0a03-app-credentials");
            assert!(b["spec"]["bootstrap"].get("initdb").is_none());
        }),
        Exchange::apply(&format!("{CNPG}/scheduledbackups/pg-0a03")),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a03")).json(200, healthy("pg-0a03")),
        Exchange::new(Method::DELETE, format!("{SNAPSHOTS}/pg-0a03-origin?"))
            .json(200, obj("snapshot.storage.k8s.io/v1", "VolumeSnapshot", "pg-0a03-origin")),
        // The schedule's first backup already completed: none is taken.
        Exchange::new(Method::GET, format!("{CNPG}/backups?&labelSelector=cnpg.io%2Fcluster%3Dpg-0a03"))
            .json(200, list("BackupList", vec![backup("pg-0a03-20250301030000", "completed", "2025-03-01T03:00:00Z")])),
    ]);
    let (tx, rx) = mpsc::unbounded_channel();
    run_script(config(), script, |rt| async move {
        rt.ensure(&branch(), &tx).await
    })
    .await
    .unwrap();
    assert!(drain(rx).contains(&"taking a snapshot of pg-0a01-2".to_string()));
}

#[tokio::test]
async fn a_restore_reads_the_source_store_and_fails_clearly_without_one() {
    let mut script = postgres_preamble("pg-0a02", "fake-new-app-pw");
    // The source's store joins the instance's own, before the credentials.
    script.insert(
        6,
        Exchange::apply(&format!("{STORES}/pg-0a01-store")).check(|b| {
            assert_eq!(
                b["metadata"]["labels"]["sylphx.io/resource-id"],
                postgres().resource_id.to_string()
            )
        }),
    );
    script.extend([
        Exchange::apply(&format!("{CNPG}/clusters/pg-0a02")).check(|b| {
            assert_eq!(b["spec"]["bootstrap"]["recovery"]["source"], "pg-0a01");
            assert_eq!(
                b["spec"]["externalClusters"][0]["plugin"]["parameters"],
                json!({ "barmanObjectName": "pg-0a01-store", "serverName": "pg-0a01" })
            );
        }),
        Exchange::apply(&format!("{CNPG}/scheduledbackups/pg-0a02")),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a02"))
            .json(200, healthy("pg-0a02")),
        Exchange::new(
            Method::GET,
            format!("{CNPG}/backups?&labelSelector=cnpg.io%2Fcluster%3Dpg-0a02"),
        )
        .json(
            200,
            list(
                "BackupList",
                vec![backup(
                    "pg-0a02-initial",
                    "completed",
                    "2025-03-01T10:00:00Z",
                )],
            ),
        ),
    ]);
    let (tx, _rx) = mpsc::unbounded_channel();
    run_script(config(), script, |rt| async move {
        rt.ensure(&restored(), &tx).await
    })
    .await
    .unwrap();

    let (tx, _rx) = mpsc::unbounded_channel();
    let err = run_script(no_store(), vec![], |rt| async move {
        rt.ensure(&restored(), &tx).await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "UNPROCESSABLE");
    assert!(
        err.message().contains("no object store is configured"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_namespace_of_another_organization_is_refused() {
    let script = vec![Exchange::new(Method::GET, CORE).json(
        200,
        json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": DATA_NS, "labels": { "sylphx.io/organization-id": "0190abcd-ef01-7000-8000-00000000ffff" } } }),
    )];
    let (tx, _rx) = mpsc::unbounded_channel();
    let err = run_script(config(), script, |rt| async move {
        rt.ensure(&redis(), &tx).await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "CONFLICT");
}

#[tokio::test]
async fn status_reads_the_cluster_and_its_pods_once() {
    let pods = format!(
        "{CORE}/pods?&labelSelector=sylphx.io%2Fresource-id%3D{}",
        postgres().resource_id
    );
    let script = vec![
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a01")).json(200, healthy("pg-0a01")),
        Exchange::new(Method::GET, pods).json(
            200,
            list(
                "PodList",
                vec![json!({ "metadata": { "name": "pg-0a01-2" }, "status": { "containerStatuses": [{
                    "name": "postgres", "image": "", "imageID": "", "ready": true, "restartCount": 2,
                    "state": { "running": {} } }] } })],
            ),
        ),
        Exchange::new(Method::GET, format!("{CNPG}/clusters/pg-0a01")).json(404, not_found()),
    ];
    let (ready, missing) = run_script(config(), script, |rt| async move {
        (
            rt.status(&postgres()).await.unwrap(),
            rt.status(&postgres()).await.unwrap(),
        )
    })
    .await;
    assert_eq!((ready.state, ready.restarts), (InstanceState::Ready, 2));
    assert_eq!(missing.state, InstanceState::Missing);
}

#[tokio::test]
async fn backups_are_listed_oldest_first() {
    let script = vec![
        Exchange::new(
            Method::GET,
            format!("{CNPG}/backups?&labelSelector=cnpg.io%2Fcluster%3Dpg-0a01"),
        )
        .json(
            200,
            list(
                "BackupList",
                vec![
                    backup("pg-0a01-20250302030000", "running", "2025-03-02T03:00:00Z"),
                    backup("pg-0a01-initial", "completed", "2025-03-01T10:00:00Z"),
                    backup("pg-0a01-20250301030000", "failed", "2025-03-01T11:00:00Z"),
                ],
            ),
        ),
    ];
    let backups = run_script(config(), script, |rt| async move {
        rt.backups(&postgres()).await
    })
    .await
    .unwrap();
    let got: Vec<_> = backups
        .iter()
        .map(|b| (b.name.as_str(), b.status.as_str(), b.method.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("pg-0a01-initial", "completed", "plugin"),
            ("pg-0a01-20250301030000", "failed", "plugin"),
            ("pg-0a01-20250302030000", "running", "plugin"),
        ]
    );
    // Without an object store there are none, and no request.
    let none = run_script(no_store(), vec![], |rt| async move {
        rt.backups(&postgres()).await
    })
    .await
    .unwrap();
    assert!(none.is_empty());
    let err = run_script(no_store(), vec![], |rt| async move {
        rt.backup(&postgres()).await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "UNPROCESSABLE");
}

#[tokio::test]
async fn remove_deletes_everything_of_the_instance_and_tolerates_404() {
    let claims = format!(
        "{CORE}/persistentvolumeclaims?&labelSelector=sylphx.io%2Fresource-id%3D{}",
        postgres().resource_id
    );
    let script = vec![
        Exchange::new(Method::DELETE, format!("{CNPG}/scheduledbackups/pg-0a01?"))
            .json(404, not_found()),
        Exchange::new(Method::DELETE, format!("{CNPG}/clusters/pg-0a01?"))
            .check(|b| assert_eq!(b["propagationPolicy"], "Background"))
            .json(200, obj("postgresql.cnpg.io/v1", "Cluster", "pg-0a01")),
        Exchange::new(
            Method::DELETE,
            format!("{CNPG}/backups?&labelSelector=cnpg.io%2Fcluster%3Dpg-0a01"),
        )
        .json(200, list("BackupList", vec![])),
        Exchange::new(Method::DELETE, format!("{STORES}/pg-0a01-store?")).json(
            200,
            obj("barmancloud.cnpg.io/v1", "ObjectStore", "pg-0a01-store"),
        ),
        Exchange::new(Method::DELETE, format!("{SNAPSHOTS}/pg-0a01-origin?"))
            .json(404, not_found()),
        Exchange::new(
            Method::DELETE,
            format!("{CORE}/secrets/pg-0a01-superuser-credentials?"),
        )
        .json(200, obj("v1", "Secret", "pg-0a01-superuser-credentials")),
        Exchange::new(
            Method::DELETE,
            format!("{CORE}/secrets/pg-0a01-app-credentials?"),
        )
        .json(404, not_found()),
        Exchange::new(Method::DELETE, claims).json(200, list("PersistentVolumeClaimList", vec![])),
    ];
    run_script(config(), script, |rt| async move {
        rt.remove(&postgres()).await
    })
    .await
    .unwrap();

    let claims = format!(
        "{CORE}/persistentvolumeclaims?&labelSelector=sylphx.io%2Fresource-id%3D{}",
        mysql().resource_id
    );
    let gone = vec![
        Exchange::new(Method::DELETE, format!("{STS}/mysql-0b01?")).json(404, not_found()),
        Exchange::new(Method::DELETE, format!("{CORE}/services/mysql-0b01?"))
            .json(404, not_found()),
        Exchange::new(
            Method::DELETE,
            format!("{CORE}/secrets/mysql-0b01-credentials?"),
        )
        .json(404, not_found()),
        Exchange::new(Method::DELETE, claims).json(404, not_found()),
    ];
    run_script(
        config(),
        gone,
        |rt| async move { rt.remove(&mysql()).await },
    )
    .await
    .unwrap();
}

fn statefulset(generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": "redis-0c01", "namespace": DATA_NS, "generation": generation },
        "spec": { "replicas": 1, "selector": {}, "serviceName": "redis-0c01", "template": {},
            "volumeClaimTemplates": [{ "metadata": { "name": "data" },
                "spec": { "resources": { "requests": { "storage": "5Gi" } } } }] },
        "status": status,
    })
}

#[tokio::test]
async fn ensure_redis_applies_the_statefulset_and_waits_for_its_replica() {
    let script = vec![
        Exchange::new(Method::GET, CORE).json(404, not_found()),
        Exchange::apply(CORE),
        Exchange::apply(&format!("{CORE}/secrets/redis-0c01-credentials")).check(|b| {
            assert_eq!(b["data"], json!({ "password": b64("fake-app-pw") }));
        }),
        Exchange::apply(&format!("{CORE}/services/redis-0c01")).check(|b| {
            assert_eq!(b["spec"]["ports"][0]["port"], 6379);
        }),
        Exchange::new(Method::GET, format!("{STS}/redis-0c01")).json(404, not_found()),
        Exchange::apply(&format!("{STS}/redis-0c01")).check(|b| {
            let server = &b["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(server["image"], "redis:7.2-alpine");
            let args = server["args"].as_array().unwrap();
            assert!(args.contains(&json!("$(REDIS_PASSWORD)")));
            assert!(args.contains(&json!("384mb")));
            assert_eq!(
                b["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
                "10Gi"
            );
            assert!(!b.to_string().contains("fake-"));
        }),
        Exchange::new(Method::GET, format!("{STS}/redis-0c01")).json(
            200,
            statefulset(1, json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                "currentRevision": "r-1", "updateRevision": "r-1" })),
        ),
        Exchange::new(Method::GET, format!("{STS}/redis-0c01")).json(
            200,
            statefulset(1, json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                "currentRevision": "r-1", "updateRevision": "r-1" })),
        ),
    ];
    let (tx, rx) = mpsc::unbounded_channel();
    let endpoint = run_script(config(), script, |rt| async move {
        rt.ensure(&redis(), &tx).await
    })
    .await
    .unwrap();
    assert_eq!(endpoint.host, format!("redis-0c01.{DATA_NS}.svc"));
    assert_eq!(endpoint.port, 6379);
    assert_eq!(
        drain(rx),
        [
            format!("creating redis redis-0c01 in {DATA_NS}"),
            "redis-0c01: 0 of 1 replicas ready".into(),
            "redis-0c01: ready".into(),
        ]
    );
}

#[tokio::test]
async fn a_larger_redis_volume_grows_the_claim_in_place() {
    let claim = format!("{CORE}/persistentvolumeclaims/data-redis-0c01-0?&fieldManager=sylphx");
    let script = vec![
        Exchange::new(Method::GET, CORE).json(404, not_found()),
        Exchange::apply(CORE),
        Exchange::apply(&format!("{CORE}/secrets/redis-0c01-credentials")),
        Exchange::apply(&format!("{CORE}/services/redis-0c01")),
        Exchange::new(Method::GET, format!("{STS}/redis-0c01")).json(200, statefulset(1, json!({}))),
        Exchange::new(Method::PATCH, claim)
            .check(|b| assert_eq!(*b, json!({ "spec": { "resources": { "requests": { "storage": "10Gi" } } } })))
            .json(200, json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": "data-redis-0c01-0" } })),
        // The immutable template keeps its size.
        Exchange::apply(&format!("{STS}/redis-0c01")).check(|b| {
            assert_eq!(
                b["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
                "5Gi"
            );
        }),
        Exchange::new(Method::GET, format!("{STS}/redis-0c01")).json(
            200,
            statefulset(2, json!({ "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                "currentRevision": "r-2", "updateRevision": "r-2" })),
        ),
    ];
    let (tx, _rx) = mpsc::unbounded_channel();
    run_script(config(), script, |rt| async move {
        rt.ensure(&redis(), &tx).await
    })
    .await
    .unwrap();
}

/// A fake Prometheus on a random port: answers each instant query with a
/// value chosen by its series, and records the queries.
async fn fake_prometheus(queries: Arc<Mutex<Vec<String>>>) -> String {
    use axum::extract::Query;
    use std::collections::HashMap;
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |Query(q): Query<HashMap<String, String>>| {
            let queries = queries.clone();
            async move {
                let query = q.get("query").cloned().unwrap_or_default();
                queries.lock().unwrap().push(query.clone());
                let value = [
                    ("redis_memory_used_bytes", "1048576"),
                    ("redis_memory_max_bytes", "4194304"),
                    ("redis_keyspace_hits_total", "90"),
                    ("redis_keyspace_misses_total", "10"),
                    ("redis_connected_clients", "3"),
                    ("redis_commands_processed_total", "12345"),
                    ("cnpg_pg_database_size_bytes", "8388608"),
                    ("cnpg_backends_total", "4"),
                    ("blks_hit", "99"),
                    ("blks_read", "1"),
                    ("xact_commit", "1000"),
                ]
                .iter()
                .find(|(series, _)| query.contains(series))
                .map(|(_, v)| *v);
                let result = match value {
                    Some(v) => json!([{ "metric": {}, "value": [1740823200.0, v] }]),
                    None => json!([]),
                };
                axum::Json(json!({ "status": "success", "data": { "resultType": "vector", "result": result } }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn scalars_come_from_prometheus() {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let cfg = KubernetesConfig {
        prometheus_url: Some(fake_prometheus(queries.clone()).await),
        ..config()
    };
    let (redis_figures, pg_figures) = run_script(cfg, vec![], |rt| async move {
        let timeout = Duration::from_secs(2);
        (
            rt.scalars(&redis(), timeout).await.unwrap(),
            rt.scalars(&postgres(), timeout).await.unwrap(),
        )
    })
    .await;
    assert_eq!(redis_figures.memory_used_bytes, Some(1048576));
    assert_eq!(redis_figures.memory_used_percent, Some(25.0));
    assert_eq!(redis_figures.hit_ratio, Some(0.9));
    assert_eq!(redis_figures.connected_clients, Some(3));
    assert_eq!(redis_figures.commands, Some(12345));
    assert_eq!(pg_figures.database_size, Some(8388608));
    assert_eq!(pg_figures.active_connections, Some(4));
    assert_eq!(pg_figures.cache_hit_ratio, Some(0.99));
    assert_eq!(pg_figures.transactions, Some(1000));
    let queries = queries.lock().unwrap();
    assert_eq!(queries.len(), 11);
    for q in queries.iter() {
        assert!(q.contains(&format!("namespace=\"{DATA_NS}\"")), "{q}");
        assert!(
            q.contains("pod=~\"redis-0c01-[0-9]+\"") || q.contains("pod=~\"pg-0a01-[0-9]+\""),
            "{q}"
        );
    }
}

#[tokio::test]
async fn scalars_without_prometheus_are_unavailable() {
    let err = run_script(config(), vec![], |rt: KubernetesRuntime| async move {
        rt.scalars(&redis(), Duration::from_secs(1)).await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "UNAVAILABLE");
    assert_eq!(
        err.message(),
        "no metrics source is configured (prometheus_url)"
    );
}
