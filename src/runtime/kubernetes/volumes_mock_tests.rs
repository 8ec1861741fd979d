//! Project volumes against the mock API server (see `mock_tests`): a
//! volume is one PersistentVolumeClaim in its environment's namespace.

use http::Method;
use serde_json::json;
use uuid::Uuid;

use super::manifests::tests::{config, env};
use super::mock_tests::{Exchange, not_found, run_script};
use super::names;
use crate::runtime::{Runtime, VolumeMount, VolumeRef};

const NS: &str = "sylphx-shop-production";

fn volume() -> VolumeRef {
    VolumeRef {
        env: env(),
        service: Some("web".into()),
        mount: VolumeMount {
            volume_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0020),
            name: "uploads".into(),
            mount_path: "/app/uploads".into(),
            size_gb: 20,
        },
    }
}

fn claim_path() -> String {
    format!(
        "/api/v1/namespaces/{NS}/persistentvolumeclaims/{}",
        names::volume_claim(volume().mount.volume_id)
    )
}

#[tokio::test]
async fn create_applies_the_namespace_and_a_claim() {
    let script = vec![
        Exchange::new(Method::GET, format!("/api/v1/namespaces/{NS}")).json(404, not_found()),
        Exchange::apply(&format!("/api/v1/namespaces/{NS}"))
            .check(|b| assert_eq!(b["kind"], "Namespace")),
        Exchange::apply(&claim_path()).check(|b| {
            assert_eq!(b["kind"], "PersistentVolumeClaim");
            assert_eq!(b["spec"]["accessModes"], json!(["ReadWriteOnce"]));
            assert_eq!(b["spec"]["storageClassName"], "rook-ceph-block");
            assert_eq!(b["spec"]["resources"]["requests"]["storage"], "20Gi");
            assert_eq!(
                b["metadata"]["labels"][names::VOLUME_ID],
                volume().mount.volume_id.to_string()
            );
        }),
    ];
    run_script(config(), script, |rt| async move {
        rt.create_volume(&volume()).await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn state_is_bound_once_the_claim_is() {
    let claim = |phase: &str| {
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": names::volume_claim(volume().mount.volume_id), "namespace": NS },
            "spec": {},
            "status": { "phase": phase }
        })
    };
    let script = vec![
        Exchange::new(Method::GET, claim_path()).json(200, claim("Pending")),
        Exchange::new(Method::GET, claim_path()).json(200, claim("Bound")),
        Exchange::new(Method::GET, claim_path()).json(404, not_found()),
    ];
    let states = run_script(config(), script, |rt| async move {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(rt.volume_state(&volume()).await.unwrap());
        }
        out
    })
    .await;
    assert!(!states[0].bound);
    assert!(states[1].bound);
    assert!(!states[2].bound);
    assert!(states[2].message.is_some());
}

#[tokio::test]
async fn delete_removes_the_claim_and_is_idempotent() {
    let script = vec![
        Exchange::new(Method::DELETE, format!("{}?", claim_path())).json(200, json!({})),
        Exchange::new(Method::DELETE, format!("{}?", claim_path())).json(404, not_found()),
    ];
    run_script(config(), script, |rt| async move {
        rt.delete_volume(&volume()).await?;
        rt.delete_volume(&volume()).await
    })
    .await
    .unwrap();
}
