//! The driver against a mock API server: each test lists the exact
//! requests an action must make (method, path with query, key body fields)
//! and the answers, and fails on any extra or missing request. The pattern
//! of kube-rs's controller-rs fixtures: a `Scenario` becomes a script that a
//! spawned verifier plays, joined with a timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::manifests::tests::{build_request, config, env, release, vars};
use super::manifests::{self, env_checksum};
use super::{KubernetesConfig, KubernetesRuntime, names};
use crate::runtime::{EnvironmentRef, LogLine, LogQuery, Release, Runtime};

pub(super) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Check = Box<dyn FnOnce(&Value) + Send>;
type Reply = Box<dyn FnOnce(&Value) -> (u16, Vec<u8>) + Send>;

const NS: &str = "sylphx-shop-production";
pub(super) const APPLY: &str = "&force=true&fieldManager=sylphx";
const V1: u128 = 0x0190_0000_0000_7000_8000_0000_0000_0101;
const V2: u128 = 0x0190_0000_0000_7000_8000_0000_0000_0102;
const IMAGE_V1: &str = "registry.local/sylphx/shop/app@sha256:1111";
const IMAGE_V2: &str = "registry.local/sylphx/shop/app@sha256:2222";

/// One request the driver must make, and the answer it gets.
pub(super) struct Exchange {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    check: Check,
    reply: Reply,
}

impl Exchange {
    pub(super) fn new(method: Method, path: impl Into<String>) -> Self {
        Exchange {
            method,
            path: path.into(),
            content_type: None,
            check: Box::new(|_| {}),
            reply: Box::new(|_| (200, b"{}".to_vec())),
        }
    }

    /// A server-side apply: PATCH with the apply content type, the field
    /// manager and `force`; answered with the applied object.
    pub(super) fn apply(path: &str) -> Self {
        let mut ex = Exchange::new(Method::PATCH, format!("{path}?{APPLY}"));
        ex.content_type = Some("application/apply-patch+yaml");
        ex.reply = Box::new(|body| (200, serde_json::to_vec(body).unwrap()));
        ex
    }

    pub(super) fn check(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }

    pub(super) fn json(mut self, status: u16, body: Value) -> Self {
        self.reply = Box::new(move |_| (status, serde_json::to_vec(&body).unwrap()));
        self
    }

    fn text(mut self, body: &'static str) -> Self {
        self.reply = Box::new(move |_| (200, body.as_bytes().to_vec()));
        self
    }
}

pub(super) fn not_found() -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" })
}

/// Plays the exchanges in order, then expects the client to go away.
pub(super) async fn verify(mut handle: Handle, script: Vec<Exchange>) {
    for (i, ex) in script.into_iter().enumerate() {
        let Some((request, send)) = handle.next_request().await else {
            panic!("request #{i} never came: {} {}", ex.method, ex.path);
        };
        let got = format!("{} {}", request.method(), request.uri());
        assert_eq!(got, format!("{} {}", ex.method, ex.path), "request #{i}");
        if let Some(ct) = ex.content_type {
            assert_eq!(request.headers()["content-type"], ct, "request #{i}");
        }
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (ex.check)(&body);
        let (status, reply) = (ex.reply)(&body);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(reply))
                .unwrap(),
        );
    }
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected request: {} {}", request.method(), request.uri());
    }
}

/// What a test drives the runtime through.
enum Scenario {
    Provision,
    /// Deploy a release; `leftovers` are objects of an earlier release that
    /// the prune step must delete.
    Deploy {
        release: Box<Release>,
        leftovers: bool,
    },
    DeployFails,
    /// One stale read, then the time is up.
    DeployTimesOut,
    Build,
    Delete {
        present: bool,
    },
    Scale,
    Status,
    Logs,
    FollowLogs,
    Health {
        up: bool,
    },
    Runners {
        installed: bool,
    },
}

fn base(kind: &str) -> String {
    match kind {
        "deployments" => format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        "httproutes" => format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes"),
        "jobs" => "/apis/batch/v1/namespaces/sylphx-builds/jobs".into(),
        "build-pods" => "/api/v1/namespaces/sylphx-builds/pods".into(),
        other => format!("/api/v1/namespaces/{NS}/{other}"),
    }
}

/// A Deployment as the API reports it.
fn deployment_status(
    name: &str,
    replicas: i32,
    generation: i64,
    observed: i64,
    status: Value,
) -> Value {
    let mut status = status;
    status["observedGeneration"] = json!(observed);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": NS, "generation": generation },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { names::SERVICE_ID: name } },
            "template": {}
        },
        "status": status
    })
}

fn rolled_out(name: &str, replicas: i32) -> Value {
    deployment_status(
        name,
        replicas,
        2,
        2,
        json!({
            "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [{ "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" }]
        }),
    )
}

pub(super) fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({ "kind": kind, "apiVersion": "v1", "metadata": {}, "items": items })
}

fn named(name: &str) -> Value {
    json!({ "metadata": { "name": name, "namespace": NS } })
}

/// A watch answer: a replica is created (its container not started yet),
/// starts, and gets a new version (nothing to follow again).
const WATCH_EVENTS: &str = concat!(
    r#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-b","namespace":"sylphx-shop-production","labels":{"app.kubernetes.io/name":"web"}},"status":{"containerStatuses":[{"name":"app","image":"","imageID":"","ready":false,"restartCount":0,"state":{"waiting":{"reason":"ContainerCreating"}}}]}}}"#,
    "\n",
    r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-b","namespace":"sylphx-shop-production","labels":{"app.kubernetes.io/name":"web"}},"status":{"containerStatuses":[{"name":"app","image":"","imageID":"","ready":true,"restartCount":0,"state":{"running":{"startedAt":"2025-03-01T10:00:03Z"}}}]}}}"#,
    "\n",
    r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-b","namespace":"sylphx-shop-production","labels":{"app.kubernetes.io/name":"web"}},"status":{"containerStatuses":[{"name":"app","image":"","imageID":"","ready":true,"restartCount":0,"state":{"running":{"startedAt":"2025-03-01T10:00:03Z"}}}]}}}"#,
    "\n",
);

fn managed() -> String {
    "&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsylphx".into()
}

impl Scenario {
    fn script(self) -> Vec<Exchange> {
        match self {
            Scenario::Provision => vec![
                Exchange::new(Method::GET, format!("/api/v1/namespaces/{NS}")).json(404, not_found()),
                Exchange::apply(&format!("/api/v1/namespaces/{NS}")).check(|b| {
                    assert_eq!(b["kind"], "Namespace");
                    assert_eq!(b["metadata"]["labels"][names::ENVIRONMENT_ID], env().environment_id.to_string());
                }),
                Exchange::apply(&format!("{}/sylphx-env", base("secrets"))).check(|b| {
                    assert_eq!(b["kind"], "Secret");
                    assert_eq!(b["type"], "Opaque");
                    assert_eq!(b["data"]["DATABASE_URL"], B64.encode("postgres://db/shop"));
                    assert!(b.get("stringData").is_none());
                }),
                Exchange::apply(&format!("{}/sylphx-web", base("httproutes"))).check(|b| {
                    assert_eq!(b["apiVersion"], "gateway.networking.k8s.io/v1");
                    assert_eq!(b["kind"], "HTTPRoute");
                    assert_eq!(b["spec"]["hostnames"], json!(["shop.example.com"]));
                    assert_eq!(b["spec"]["parentRefs"][0]["name"], "public");
                    assert_eq!(b["spec"]["rules"][0]["backendRefs"][0], json!({ "name": "sylphx-web", "port": 80 }));
                }),
            ],
            Scenario::Deploy { release, leftovers } => {
                let mut script = applies(&release);
                script.extend([
                    // Right after the patch the status is stale: not done yet.
                    Exchange::new(Method::GET, format!("{}/web", base("deployments")))
                        .json(200, deployment_status("web", 2, 3, 2, json!({ "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2 }))),
                    Exchange::new(Method::GET, format!("{}/worker", base("deployments"))).json(200, rolled_out("worker", 1)),
                    Exchange::new(Method::GET, format!("{}/web", base("deployments")))
                        .json(200, deployment_status("web", 2, 3, 3, json!({ "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2 }))),
                    Exchange::new(Method::GET, format!("{}/web", base("deployments"))).json(200, rolled_out("web", 2)),
                ]);
                let mut live_deployments = vec![named("web"), named("worker")];
                let mut live_services = vec![named("web"), named("sylphx-web")];
                if leftovers {
                    live_deployments.push(named("old-api"));
                    live_services.push(named("old-api"));
                }
                script.push(
                    Exchange::new(Method::GET, format!("{}?{}", base("deployments"), managed()))
                        .json(200, list("DeploymentList", live_deployments)),
                );
                if leftovers {
                    script.push(
                        Exchange::new(Method::DELETE, format!("{}/old-api?", base("deployments")))
                            .check(|b| assert_eq!(b["propagationPolicy"], "Background"))
                            .json(200, named("old-api")),
                    );
                }
                script.push(
                    Exchange::new(Method::GET, format!("{}?{}", base("services"), managed()))
                        .json(200, list("ServiceList", live_services)),
                );
                if leftovers {
                    script.push(
                        Exchange::new(Method::DELETE, format!("{}/old-api?", base("services"))).json(200, named("old-api")),
                    );
                }
                script
            }
            Scenario::DeployFails => {
                let mut script = applies(&release(V2, IMAGE_V2, "postgres://db/v2"));
                script.push(
                    Exchange::new(Method::GET, format!("{}/web", base("deployments"))).json(
                        200,
                        deployment_status(
                            "web",
                            2,
                            3,
                            3,
                            json!({
                                "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                                "conditions": [{ "type": "Progressing", "status": "False",
                                    "reason": "ProgressDeadlineExceeded",
                                    "message": "ReplicaSet \"web-2\" has timed out progressing." }]
                            }),
                        ),
                    ),
                );
                // No prune: the old release keeps its objects and keeps serving.
                script
            }
            Scenario::DeployTimesOut => {
                let mut script = applies(&release(V2, IMAGE_V2, "postgres://db/v2"));
                script.extend([
                    Exchange::new(Method::GET, format!("{}/web", base("deployments")))
                        .json(200, deployment_status("web", 2, 3, 2, json!({}))),
                    Exchange::new(Method::GET, format!("{}/worker", base("deployments"))).json(200, rolled_out("worker", 1)),
                ]);
                script
            }
            Scenario::Build => {
                let job = names::build_job(build_request().deployment_id);
                let digest = format!("sha256:{}", "ab".repeat(32));
                vec![
                    Exchange::apply(&format!("{}/{job}", base("jobs"))).check(|b| {
                        assert_eq!(b["kind"], "Job");
                        assert_eq!(b["spec"]["backoffLimit"], 0);
                        let pod = &b["spec"]["template"]["spec"];
                        assert_eq!(pod["restartPolicy"], "Never");
                        let args = pod["containers"][0]["args"].as_array().unwrap();
                        assert!(args.contains(&json!(
                            "--context=git://github.com/acme/shop.git#refs/heads/main#0123456789abcdef0123456789abcdef01234567"
                        )));
                        assert!(args.contains(&json!(
                            "--destination=registry.local/sylphx/shop/app:0123456789abcdef0123456789abcdef01234567"
                        )));
                        assert!(args.contains(&json!("--digest-file=/dev/termination-log")));
                    }),
                    Exchange::new(
                        Method::GET,
                        format!("{}?&labelSelector=batch.kubernetes.io%2Fjob-name%3D{job}", base("build-pods")),
                    )
                    .json(
                        200,
                        list(
                            "PodList",
                            vec![json!({
                                "metadata": { "name": format!("{job}-x7k2p") },
                                "status": { "phase": "Running", "containerStatuses": [{
                                    "name": "kaniko", "image": "k", "imageID": "", "ready": true,
                                    "restartCount": 0, "state": { "running": {} }
                                }]}
                            })],
                        ),
                    ),
                    Exchange::new(
                        Method::GET,
                        format!("{}/{job}-x7k2p/log?&container=kaniko&follow=true&timestamps=true", base("build-pods")),
                    )
                    .text(
                        "2025-03-01T10:00:00Z INFO Retrieving image manifest node:22\n\
                         2025-03-01T10:00:05Z INFO Pushing image to registry.local/sylphx/shop/app\n",
                    ),
                    Exchange::new(Method::GET, format!("{}/{job}", base("jobs"))).json(
                        200,
                        json!({
                            "metadata": { "name": job },
                            "status": { "conditions": [{ "type": "Complete", "status": "True" }] }
                        }),
                    ),
                    Exchange::new(Method::GET, format!("{}/{job}-x7k2p", base("build-pods"))).json(
                        200,
                        json!({
                            "metadata": { "name": format!("{job}-x7k2p") },
                            "status": { "phase": "Succeeded", "containerStatuses": [{
                                "name": "kaniko", "image": "k", "imageID": "", "ready": false,
                                "restartCount": 0,
                                "state": { "terminated": { "exitCode": 0, "message": digest } }
                            }]}
                        }),
                    ),
                ]
            }
            Scenario::Delete { present } => vec![
                Exchange::new(Method::DELETE, format!("/api/v1/namespaces/{NS}?"))
                    .check(|b| assert_eq!(b["propagationPolicy"], "Background"))
                    .json(
                        if present { 200 } else { 404 },
                        if present {
                            json!({ "metadata": { "name": NS }, "status": { "phase": "Terminating" } })
                        } else {
                            not_found()
                        },
                    ),
            ],
            Scenario::Scale => vec![
                Exchange::new(Method::PATCH, format!("{}/worker/scale?&fieldManager=sylphx", base("deployments")))
                    .check(|b| assert_eq!(*b, json!({ "spec": { "replicas": 4 } })))
                    .json(200, json!({ "apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": { "name": "worker" }, "spec": { "replicas": 4 } })),
                Exchange::new(Method::PATCH, format!("{}/gone/scale?&fieldManager=sylphx", base("deployments")))
                    .json(404, not_found()),
            ],
            Scenario::Status => vec![
                Exchange::new(Method::GET, format!("{}?{}", base("deployments"), managed()))
                    .json(200, list("DeploymentList", vec![with_labels(rolled_out("web", 2), "web"), with_labels(rolled_out("worker", 1), "worker")])),
                Exchange::new(Method::GET, format!("{}?&labelSelector=sylphx.io%2Fservice-id", base("pods")))
                    .json(200, list("PodList", vec![])),
            ],
            Scenario::Logs => vec![
                Exchange::new(
                    Method::GET,
                    format!("{}?&labelSelector=sylphx.io%2Fservice-id%2Csylphx.io%2Fdeployment-id%3D{}", base("pods"), Uuid::from_u128(V2)),
                )
                .json(
                    200,
                    list(
                        "PodList",
                        vec![
                            json!({ "metadata": { "name": "web-b", "labels": { names::DEPLOYMENT_ID: Uuid::from_u128(V2).to_string() } } }),
                            json!({ "metadata": { "name": "web-a", "labels": { names::DEPLOYMENT_ID: Uuid::from_u128(V2).to_string() } } }),
                        ],
                    ),
                ),
                Exchange::new(Method::GET, format!("{}/web-a/log?&tailLines=2&timestamps=true", base("pods")))
                    .text("2025-03-01T10:00:01Z a1\n2025-03-01T10:00:04Z a2\n"),
                Exchange::new(Method::GET, format!("{}/web-b/log?&tailLines=2&timestamps=true", base("pods")))
                    .text("2025-03-01T10:00:02Z b1\n2025-03-01T10:00:03Z b2\n"),
            ],
            Scenario::FollowLogs => vec![
                // The pods running when the first follower comes, from now on.
                Exchange::new(Method::GET, format!("{}?&labelSelector=sylphx.io%2Fservice-id", base("pods"))).json(
                    200,
                    json!({ "kind": "PodList", "apiVersion": "v1", "metadata": { "resourceVersion": "41" }, "items": [named("web-a"), named("worker-a")] }),
                ),
                Exchange::new(Method::GET, format!("{}/web-a/log?&follow=true&tailLines=0&timestamps=true", base("pods")))
                    .text("2025-03-01T10:00:01Z GET / 200\n"),
                Exchange::new(Method::GET, format!("{}/worker-a/log?&follow=true&tailLines=0&timestamps=true", base("pods")))
                    .text("2025-03-01T10:00:02Z job done\n"),
                // Then the pods, from that version on: a replica that
                // starts later is followed from its first line.
                Exchange::new(
                    Method::GET,
                    format!("{}?&watch=true&timeoutSeconds=290&labelSelector=sylphx.io%2Fservice-id&allowWatchBookmarks=true&resourceVersion=41", base("pods")),
                )
                .text(WATCH_EVENTS),
                Exchange::new(Method::GET, format!("{}/web-b/log?&follow=true&timestamps=true", base("pods")))
                    .text("2025-03-01T10:00:03Z web-b up\n"),
            ],
            Scenario::Health { up } => vec![Exchange::new(Method::GET, "/version").json(
                if up { 200 } else { 503 },
                if up {
                    json!({
                        "major": "1", "minor": "34", "gitVersion": "v1.34.1", "gitCommit": "", "gitTreeState": "clean",
                        "buildDate": "", "goVersion": "", "compiler": "gc", "platform": "linux/amd64"
                    })
                } else {
                    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "message": "etcd down", "reason": "ServiceUnavailable" })
                },
            )],
            Scenario::Runners { installed } => vec![
                Exchange::new(Method::GET, "/apis/actions.github.com/v1alpha1/ephemeralrunners?").json(
                    if installed { 200 } else { 404 },
                    if installed {
                        list(
                            "EphemeralRunnerList",
                            vec![
                                json!({ "metadata": { "name": "r-2", "labels": { "actions.github.com/scale-set-name": "linux" } },
                                        "status": { "phase": "Running", "ready": true, "jobId": "9" } }),
                                json!({ "metadata": { "name": "r-1", "labels": { "actions.github.com/scale-set-name": "linux" } },
                                        "status": { "phase": "Pending", "ready": true } }),
                            ],
                        )
                    } else {
                        not_found()
                    },
                ),
            ],
        }
    }
}

fn with_labels(mut d: Value, name: &str) -> Value {
    d["metadata"]["labels"] = json!({ names::NAME: name, names::SERVICE_ID: name });
    d
}

/// The writes of `deploy`, in order; the Deployment bodies carry the
/// release's image, env checksum and id.
fn applies(release: &Release) -> Vec<Exchange> {
    let image = release.image.clone();
    let checksum = env_checksum(&release.env_vars);
    let deployment_id = release.deployment_id.to_string();
    let secret_value = B64.encode(release.env_vars.0["DATABASE_URL"].expose());
    let deployment_check = move |name: &'static str| {
        let (image, checksum, deployment_id) =
            (image.clone(), checksum.clone(), deployment_id.clone());
        move |b: &Value| {
            assert_eq!(b["kind"], "Deployment");
            let template = &b["spec"]["template"];
            assert_eq!(template["spec"]["containers"][0]["image"], image.as_str());
            assert_eq!(
                template["metadata"]["annotations"][names::ENV_CHECKSUM],
                checksum.as_str()
            );
            assert_eq!(
                template["metadata"]["labels"][names::DEPLOYMENT_ID],
                deployment_id.as_str()
            );
            assert_eq!(
                b["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .unwrap()
                    .len(),
                1
            );
            assert_eq!(
                b["spec"]["strategy"]["rollingUpdate"],
                json!({ "maxUnavailable": 0, "maxSurge": 1 })
            );
            assert_eq!(b["metadata"]["name"], name);
        }
    };
    vec![
        Exchange::apply(&format!("{}/sylphx-env", base("secrets")))
            .check(move |b| assert_eq!(b["data"]["DATABASE_URL"], secret_value.as_str())),
        Exchange::apply(&format!("{}/web", base("deployments"))).check(deployment_check("web")),
        Exchange::apply(&format!("{}/worker", base("deployments")))
            .check(deployment_check("worker")),
        Exchange::apply(&format!("{}/web", base("services"))).check(|b| {
            assert_eq!(b["spec"]["ports"][0]["port"], 3000);
        }),
        Exchange::apply(&format!("{}/sylphx-web", base("services"))).check(|b| {
            assert_eq!(
                b["spec"]["ports"][0],
                json!({ "name": "http", "port": 80, "targetPort": 3000, "protocol": "TCP" })
            );
        }),
        Exchange::apply(&format!("{}/sylphx-web", base("httproutes"))),
    ]
}

/// Runs `action` against a verifier playing `scenario`; the verifier's
/// verdict comes first, then the action's result is returned.
async fn run<T, F, Fut>(scenario: Scenario, action: F) -> T
where
    F: FnOnce(KubernetesRuntime) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    run_with(config(), scenario, action).await
}

async fn run_with<T, F, Fut>(cfg: KubernetesConfig, scenario: Scenario, action: F) -> T
where
    F: FnOnce(KubernetesRuntime) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    run_script(cfg, scenario.script(), action).await
}

/// Runs `action` against a verifier playing `script`.
pub(super) async fn run_script<T, F, Fut>(
    cfg: KubernetesConfig,
    script: Vec<Exchange>,
    action: F,
) -> T
where
    F: FnOnce(KubernetesRuntime) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = tokio::spawn(verify(handle, script));
    let runtime = KubernetesRuntime::new(kube::Client::new(service, "default"), cfg);
    // The action owns the runtime: when it ends, the client goes and the
    // verifier sees the end of the requests.
    let out = tokio::time::timeout(Duration::from_secs(5), action(runtime))
        .await
        .expect("the action timed out");
    tokio::time::timeout(Duration::from_secs(1), verifier)
        .await
        .expect("the verifier timed out")
        .expect("the scenario failed");
    out
}

fn drain(mut rx: mpsc::UnboundedReceiver<LogLine>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(line) = rx.try_recv() {
        match &line.step {
            Some(step) => out.push(format!("{} {} [{step}]", line.source, line.msg)),
            None => out.push(format!("{} {}", line.source, line.msg)),
        }
    }
    out
}

#[tokio::test]
async fn provision_applies_namespace_secret_and_route() {
    run(Scenario::Provision, |rt| async move {
        rt.provision(&env(), &vars("postgres://db/shop")).await
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn provision_refuses_a_namespace_of_another_environment() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), format!("/api/v1/namespaces/{NS}"));
        let body = json!({ "metadata": { "name": NS, "labels": { names::ENVIRONMENT_ID: Uuid::nil().to_string() } } });
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&body).unwrap(),
        )));
        assert!(handle.next_request().await.is_none(), "nothing is written");
    });
    let rt = KubernetesRuntime::new(kube::Client::new(service, "default"), config());
    let err = rt.provision(&env(), &vars("x")).await.unwrap_err();
    drop(rt);
    server.await.unwrap();
    assert_eq!(err.code(), "CONFLICT");
}

#[tokio::test]
async fn deploy_applies_waits_for_the_rollout_and_prunes() {
    let (tx, rx) = mpsc::unbounded_channel();
    let release = release(V2, IMAGE_V2, "postgres://db/v2");
    let scenario = Scenario::Deploy {
        release: Box::new(release.clone()),
        leftovers: true,
    };
    run(scenario, |rt| async move { rt.deploy(&release, tx).await })
        .await
        .unwrap();
    let lines = drain(rx);
    assert_eq!(
        lines,
        [
            format!("deploy applying release to namespace {NS} [starting]"),
            "deploy waiting for the rollout [health-checking]".into(),
            "deploy web: waiting for the new spec to be observed".into(),
            "deploy worker: rolled out".into(),
            "deploy web: 1 of 2 new replicas have been updated".into(),
            "deploy web: rolled out".into(),
            "deploy release is live [switching]".into(),
            "deploy removing what the previous release no longer runs [stopping-old]".into(),
        ]
    );
}

#[tokio::test]
async fn rollback_reapplies_the_older_release() {
    let old = release(V1, IMAGE_V1, "postgres://db/v1");
    let new = release(V2, IMAGE_V2, "postgres://db/v2");
    assert_ne!(env_checksum(&old.env_vars), env_checksum(&new.env_vars));
    let (tx, _rx) = mpsc::unbounded_channel();
    // Same requests as any deploy; the bodies carry the old image, env
    // checksum and deployment id (checked in `applies`).
    let scenario = Scenario::Deploy {
        release: Box::new(old.clone()),
        leftovers: false,
    };
    run(scenario, |rt| async move { rt.deploy(&old, tx).await })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stuck_rollout_fails_without_pruning() {
    let (tx, rx) = mpsc::unbounded_channel();
    let release = release(V2, IMAGE_V2, "postgres://db/v2");
    let err = run(Scenario::DeployFails, |rt| async move {
        rt.deploy(&release, tx).await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "UNPROCESSABLE");
    assert!(
        err.message().contains("timed out progressing"),
        "{}",
        err.message()
    );
    assert!(drain(rx).last().unwrap().contains("rollout failed"));
}

#[tokio::test]
async fn a_rollout_that_outlasts_the_timeout_fails() {
    let cfg = KubernetesConfig {
        rollout_timeout: Duration::ZERO,
        ..config()
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let release = release(V2, IMAGE_V2, "postgres://db/v2");
    let err = run_with(cfg, Scenario::DeployTimesOut, |rt| async move {
        rt.deploy(&release, tx).await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "UNPROCESSABLE");
    assert!(
        err.message().starts_with("rollout of web did not finish"),
        "{}",
        err.message()
    );
    assert!(
        drain(rx)
            .last()
            .unwrap()
            .contains("previous release keeps serving")
    );
}

#[tokio::test]
async fn build_runs_kaniko_and_returns_the_pushed_digest() {
    let (tx, rx) = mpsc::unbounded_channel();
    let out = run(Scenario::Build, |rt| async move {
        rt.build(&build_request(), tx).await
    })
    .await
    .unwrap();
    assert_eq!(
        out.image,
        format!("registry.local/sylphx/shop/app@sha256:{}", "ab".repeat(32))
    );
    assert_eq!(out.commit, "0123456789abcdef0123456789abcdef01234567");
    let lines = drain(rx);
    assert!(
        lines.contains(&"build INFO Retrieving image manifest node:22".to_string()),
        "{lines:?}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("build pushed registry.local/sylphx/shop/app@sha256:")
    );
}

#[tokio::test]
async fn invalid_builds_make_no_request() {
    let mut req = build_request();
    req.git_repository = "/home/me/shop".into();
    let (tx, _rx) = mpsc::unbounded_channel();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let rt = KubernetesRuntime::new(kube::Client::new(service, "default"), config());
    assert_eq!(rt.build(&req, tx).await.unwrap_err().code(), "BAD_REQUEST");
    drop(rt);
    assert!(handle.next_request().await.is_none());
}

#[tokio::test]
async fn delete_removes_the_namespace_and_is_idempotent() {
    for present in [true, false] {
        run(Scenario::Delete { present }, |rt| async move {
            rt.delete(&env()).await
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn scale_patches_the_scale_subresource() {
    let err = run(Scenario::Scale, |rt| async move {
        rt.scale(&env(), "worker", 4).await.unwrap();
        rt.scale(&env(), "gone", 1).await.unwrap_err()
    })
    .await;
    assert_eq!(err.code(), "NOT_FOUND");
}

#[tokio::test]
async fn status_reads_deployments() {
    let status = run(
        Scenario::Status,
        |rt| async move { rt.status(&env()).await },
    )
    .await
    .unwrap();
    assert_eq!(status.status, "running");
    let services: BTreeMap<_, _> = status
        .services
        .iter()
        .map(|s| (s.name.as_str(), (s.ready, s.desired)))
        .collect();
    assert_eq!(
        services,
        BTreeMap::from([("web", (2, 2)), ("worker", (1, 1))])
    );
}

#[tokio::test]
async fn logs_merge_pods_by_time() {
    let query = LogQuery {
        tail: 2,
        filter: crate::runtime::LogFilter {
            deployment_id: Some(Uuid::from_u128(V2)),
            ..Default::default()
        },
        after: None,
    };
    let lines = run(
        Scenario::Logs,
        |rt| async move { rt.logs(&env(), &query).await },
    )
    .await
    .unwrap();
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.source.as_str(), l.msg.as_str()))
        .collect();
    assert_eq!(got, [("web-b", "b2"), ("web-a", "a2")]);
    assert!(
        lines
            .iter()
            .all(|l| l.deployment_id == Some(Uuid::from_u128(V2)))
    );
}

#[tokio::test]
async fn follow_logs_merges_the_pod_streams_and_follows_new_pods() {
    use futures_util::StreamExt;
    let query = LogQuery::default();
    let (mut lines, joined) = run(Scenario::FollowLogs, |rt| async move {
        let first = rt.follow_logs(&env(), &query).await.unwrap();
        // A second follower shares the hub: no request of its own.
        let second = rt.follow_logs(&env(), &query).await.unwrap();
        let lines = first.take(3).collect::<Vec<_>>().await;
        let joined = second.take(3).collect::<Vec<_>>().await;
        (lines, joined)
    })
    .await;
    assert_eq!(lines.len(), joined.len());
    lines.sort_by_key(|l| l.ts);
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.source.as_str(), l.msg.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("web-a", "GET / 200"),
            ("worker-a", "job done"),
            ("web-b", "web-b up")
        ]
    );
    let web_b = &lines[2];
    assert_eq!(
        (
            web_b.service.as_deref(),
            web_b.replica.as_deref(),
            web_b.stream.as_str()
        ),
        (Some("web"), Some("web-b"), "stdout")
    );
}

#[tokio::test]
async fn health_asks_for_the_server_version() {
    run(Scenario::Health { up: true }, |rt| async move {
        rt.health().await
    })
    .await
    .unwrap();
    let err = run(Scenario::Health { up: false }, |rt| async move {
        rt.health().await
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "UNAVAILABLE");
}

#[tokio::test]
async fn runners_come_from_ephemeral_runners() {
    let runners = run(Scenario::Runners { installed: true }, |rt| async move {
        rt.runners().await
    })
    .await
    .unwrap();
    let got: Vec<_> = runners
        .iter()
        .map(|r| (r.name.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(got, [("r-1", "idle"), ("r-2", "busy")]);
    let none = run(Scenario::Runners { installed: false }, |rt| async move {
        rt.runners().await
    })
    .await
    .unwrap();
    assert!(none.is_empty());
}

/// Against a real cluster, when `SYLPHX_TEST_KUBECONFIG` names a kubeconfig:
/// provision, deploy a tiny worker, read its status, delete.
#[tokio::test]
async fn smoke_against_a_real_cluster() {
    let Ok(path) = std::env::var("SYLPHX_TEST_KUBECONFIG") else {
        eprintln!("skipped: set SYLPHX_TEST_KUBECONFIG to run against a real cluster");
        return;
    };
    let cfg = KubernetesConfig {
        namespace_prefix: "sylphx-smoke".into(),
        rollout_timeout: Duration::from_secs(180),
        ..KubernetesConfig::default()
    };
    let rt = KubernetesRuntime::connect(cfg, Some(std::path::Path::new(&path)))
        .await
        .expect("client from the kubeconfig");
    rt.health().await.expect("health");

    let env = EnvironmentRef {
        environment_id: Uuid::new_v4(),
        environment_name: format!("t{}", &Uuid::new_v4().simple().to_string()[..8]),
        domain: None,
        ..env()
    };
    rt.provision(&env, &vars("postgres://smoke"))
        .await
        .expect("provision");
    let mut worker = manifests::tests::worker();
    worker.command = Some("sleep 3600".into());
    let release = Release {
        deployment_id: Uuid::new_v4(),
        env: env.clone(),
        image: "busybox:1.37".into(),
        env_vars: vars("postgres://smoke"),
        services: vec![worker],
        sandbox_uid: None,
        restore: false,
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let deployed = rt.deploy(&release, tx).await;
    let status = rt.status(&env).await;
    rt.delete(&env).await.expect("delete");
    deployed.expect("deploy");
    let status = status.expect("status");
    assert_eq!(status.status, "running", "{status:?}");
}
