//! A service's public TCP proxy on Kubernetes: a NodePort Service
//! (`externalTrafficPolicy: Local`, so pods see the client's address)
//! selecting the service's pods, and a NetworkPolicy that admits ingress to
//! the target port from the allowlist's blocks only (from anywhere when the
//! list is empty). Both live in the environment's namespace and are named
//! after the service (`tcp-<service>`); removal deletes both.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as KubeServiceSpec};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;

use super::manifests::env_labels;
use super::{KubernetesConfig, KubernetesRuntime, names};
use crate::error::Result;
use crate::runtime::TcpProxySpec;

/// The name of both objects of a service's proxy.
pub fn object_name(service: &str) -> String {
    names::dns_label(&format!("tcp-{service}"), names::MAX_LABEL)
}

fn metadata(cfg: &KubernetesConfig, spec: &TcpProxySpec) -> ObjectMeta {
    let mut labels = env_labels(&spec.env);
    labels.insert(names::COMPONENT.into(), "tcp-proxy".into());
    labels.insert(names::SERVICE_ID.into(), spec.service_id.to_string());
    ObjectMeta {
        name: Some(object_name(&spec.service_name)),
        namespace: Some(names::namespace(&cfg.namespace_prefix, &spec.env)),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The service's pods, by the one label that never changes.
fn pods(spec: &TcpProxySpec) -> BTreeMap<String, String> {
    BTreeMap::from([(names::SERVICE_ID.to_string(), spec.service_id.to_string())])
}

/// The NodePort Service on `externalPort` in front of the service's pods.
pub fn node_port_service(cfg: &KubernetesConfig, spec: &TcpProxySpec) -> Service {
    Service {
        metadata: metadata(cfg, spec),
        spec: Some(KubeServiceSpec {
            type_: Some("NodePort".into()),
            external_traffic_policy: Some("Local".into()),
            selector: Some(pods(spec)),
            ports: Some(vec![ServicePort {
                name: Some("tcp".into()),
                protocol: Some("TCP".into()),
                port: i32::from(spec.target_port),
                target_port: Some(IntOrString::Int(i32::from(spec.target_port))),
                node_port: Some(i32::from(spec.external_port)),
                ..ServicePort::default()
            }]),
            ..KubeServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Ingress to the target port of the service's pods from the allowlist's
/// blocks; an empty list admits every source.
pub fn network_policy(cfg: &KubernetesConfig, spec: &TcpProxySpec) -> NetworkPolicy {
    let from = (!spec.allowlist.is_empty()).then(|| {
        spec.allowlist
            .iter()
            .map(|net| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: net.to_string(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            })
            .collect()
    });
    NetworkPolicy {
        metadata: metadata(cfg, spec),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pods(spec)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from,
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".into()),
                    port: Some(IntOrString::Int(i32::from(spec.target_port))),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

impl KubernetesRuntime {
    /// Applies the proxy's NetworkPolicy, then its NodePort Service (the
    /// policy is in place before the port opens).
    pub(super) async fn apply_tcp_proxy_objects(&self, spec: &TcpProxySpec) -> Result<()> {
        let ns = names::namespace(&self.config.namespace_prefix, &spec.env);
        let policies: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &ns);
        self.apply(
            &policies,
            &network_policy(&self.config, spec),
            "apply NetworkPolicy",
        )
        .await?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        self.apply(
            &services,
            &node_port_service(&self.config, spec),
            "apply NodePort Service",
        )
        .await?;
        Ok(())
    }

    /// Deletes the proxy's Service, then its NetworkPolicy.
    pub(super) async fn delete_tcp_proxy_objects(&self, spec: &TcpProxySpec) -> Result<()> {
        let ns = names::namespace(&self.config.namespace_prefix, &spec.env);
        let name = object_name(&spec.service_name);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
        self.delete_if_present(&services, &name, "delete NodePort Service")
            .await?;
        let policies: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &ns);
        self.delete_if_present(&policies, &name, "delete NetworkPolicy")
            .await
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;
    use uuid::Uuid;

    use super::super::manifests::tests::{config, env};
    use super::super::mock_tests::{Exchange, not_found, run_script};
    use super::*;
    use crate::runtime::Runtime;

    const BASE: &str = "/api/v1/namespaces/sylphx-shop-production";
    const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/sylphx-shop-production";

    fn spec(allowlist: &[&str]) -> TcpProxySpec {
        TcpProxySpec {
            env: env(),
            service_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0012),
            service_name: "db".into(),
            external_port: 31432,
            target_port: 5432,
            allowlist: allowlist.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn node_port_service_manifest() {
        insta::assert_yaml_snapshot!(node_port_service(&config(), &spec(&[])));
    }

    #[test]
    fn network_policy_manifests() {
        insta::assert_yaml_snapshot!(
            "network_policy_with_allowlist",
            network_policy(&config(), &spec(&["203.0.113.0/24", "2001:db8::/32"]))
        );
        insta::assert_yaml_snapshot!("network_policy_open", network_policy(&config(), &spec(&[])));
    }

    #[test]
    fn object_names_are_labels() {
        assert_eq!(object_name("db"), "tcp-db");
        let long = object_name(&"x".repeat(80));
        assert!(long.len() <= names::MAX_LABEL, "{long}");
        assert!(long.starts_with("tcp-"));
    }

    #[tokio::test]
    async fn apply_writes_the_policy_then_the_node_port() {
        let script = vec![
            Exchange::apply(&format!("{POLICIES}/networkpolicies/tcp-db")).check(|b| {
                assert_eq!(
                    b["spec"]["ingress"][0]["from"],
                    json!([{ "ipBlock": { "cidr": "198.51.100.0/24" } }])
                );
                assert_eq!(b["spec"]["ingress"][0]["ports"][0]["port"], 5432);
            }),
            Exchange::apply(&format!("{BASE}/services/tcp-db")).check(|b| {
                assert_eq!(b["spec"]["type"], "NodePort");
                assert_eq!(b["spec"]["externalTrafficPolicy"], "Local");
                assert_eq!(
                    b["spec"]["ports"][0],
                    json!({ "name": "tcp", "protocol": "TCP", "port": 5432, "targetPort": 5432, "nodePort": 31432 })
                );
                assert_eq!(
                    b["spec"]["selector"],
                    json!({ "sylphx.io/service-id": "01900000-0000-7000-8000-000000000012" })
                );
            }),
        ];
        run_script(config(), script, |rt| async move {
            rt.apply_tcp_proxy(&spec(&["198.51.100.0/24"])).await
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn remove_deletes_both_objects_and_is_idempotent() {
        for present in [true, false] {
            let answer = move || {
                if present {
                    (200, json!({ "kind": "Status", "status": "Success" }))
                } else {
                    (404, not_found())
                }
            };
            let (s1, b1) = answer();
            let (s2, b2) = answer();
            let script = vec![
                Exchange::new(Method::DELETE, format!("{BASE}/services/tcp-db?")).json(s1, b1),
                Exchange::new(
                    Method::DELETE,
                    format!("{POLICIES}/networkpolicies/tcp-db?"),
                )
                .json(s2, b2),
            ];
            run_script(config(), script, |rt| async move {
                rt.remove_tcp_proxy(&spec(&[])).await
            })
            .await
            .unwrap();
        }
    }
}
