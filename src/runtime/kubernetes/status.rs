//! Pure readers of object status: rollout progress (the `kubectl rollout
//! status` algorithm), build Job results, live service state and CI runners.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::core::DynamicObject;
use serde_json::Value;

use super::names;
use crate::runtime::{EnvironmentStatus, Runner, ServiceStatus};

/// Where a Deployment's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the current template and is available.
    Done,
    /// Still rolling; the text says what it waits for.
    Progressing(String),
    /// The controller gave up (`ProgressDeadlineExceeded`).
    Failed(String),
}

/// The kubectl rollout-status algorithm
/// (`pkg/polymorphichelpers/rollout_status.go`). Unlike kube-runtime's
/// `is_deployment_completed`, it checks `observedGeneration` first, so the
/// stale status read right after a patch never counts as done.
pub fn deployment_rollout(d: &Deployment) -> Rollout {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = d.status.as_ref() else {
        return Rollout::Progressing("waiting for the rollout to start".into());
    };
    if generation > status.observed_generation.unwrap_or(0) {
        return Rollout::Progressing("waiting for the new spec to be observed".into());
    }
    let deadline_exceeded = status.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = deadline_exceeded {
        let detail = c.message.as_deref().unwrap_or("progress deadline exceeded");
        return Rollout::Failed(format!("rollout failed: {detail}"));
    }
    let desired = d.spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        return Rollout::Progressing(format!(
            "{updated} of {desired} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return Rollout::Progressing(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return Rollout::Progressing(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    Rollout::Done
}

/// How a build Job ended, if it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    /// With the controller's reason and message.
    Failed(String),
}

/// `Complete=True` or `Failed=True`, as kube-runtime's `is_job_completed`.
pub fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten());
    for c in conditions {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return JobState::Succeeded,
            "Failed" => {
                let reason = c.reason.as_deref().unwrap_or("Failed");
                let message = c.message.as_deref().unwrap_or("the build pod failed");
                return JobState::Failed(format!("{reason}: {message}"));
            }
            _ => {}
        }
    }
    JobState::Running
}

/// Whether a container's log can be read: it is running or has ended.
pub fn container_started(pod: &Pod, container: &str) -> bool {
    container_state(pod, container).is_some_and(|s| s.running.is_some() || s.terminated.is_some())
}

fn container_state<'a>(
    pod: &'a Pod,
    container: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == container)?
        .state
        .as_ref()
}

/// The image digest Kaniko wrote to `/dev/termination-log` (`sha256:<64 hex>`),
/// once the container has exited successfully.
pub fn build_digest(pod: &Pod, container: &str) -> Option<String> {
    let done = container_state(pod, container)?.terminated.as_ref()?;
    if done.exit_code != 0 {
        return None;
    }
    let digest = done.message.as_deref()?.trim();
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| digest.to_string())
}

fn pods_of<'a>(pods: &'a [Pod], service_id: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
    pods.iter().filter(move |p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::SERVICE_ID))
            .is_some_and(|id| id == service_id)
    })
}

/// The container statuses of `pods`, and their restarts summed.
pub fn containers<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> (Vec<&'a ContainerStatus>, u32) {
    let statuses: Vec<&ContainerStatus> = pods
        .into_iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .collect();
    let restarts = statuses
        .iter()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .sum();
    (statuses, restarts)
}

/// Whether a container waits to be restarted after crashing again.
pub fn crash_looping(c: &ContainerStatus) -> bool {
    c.state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref())
        .is_some_and(|r| r == "CrashLoopBackOff")
}

/// Live state of one service from its Deployment and pods.
pub fn service_status(d: &Deployment, pods: &[Pod]) -> ServiceStatus {
    let labels = d.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).cloned();
    let name = label(names::NAME)
        .or_else(|| d.metadata.name.clone())
        .unwrap_or_default();
    let service_id = label(names::SERVICE_ID).unwrap_or_default();
    let count = |n: Option<i32>| u32::try_from(n.unwrap_or(0)).unwrap_or(0);
    let desired = count(d.spec.replicas);
    let ready = count(d.status.as_ref().and_then(|s| s.ready_replicas));

    let (statuses, restarts) = containers(pods_of(pods, &service_id));
    let crashing = statuses.iter().any(|c| crash_looping(c));

    let rollout = deployment_rollout(d);
    let state = if desired == 0 {
        "stopped"
    } else if matches!(rollout, Rollout::Failed(_)) {
        "failed"
    } else if crashing {
        "crashed"
    } else if rollout == Rollout::Done && ready >= desired {
        "running"
    } else {
        "deploying"
    };
    ServiceStatus {
        name,
        ready,
        desired,
        state: state.into(),
        restarts,
    }
}

/// Live state of an environment: its services, and one word for all.
pub fn environment_status(deployments: &[Deployment], pods: &[Pod]) -> EnvironmentStatus {
    let mut services: Vec<ServiceStatus> = deployments
        .iter()
        .map(|d| service_status(d, pods))
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let any = |state: &str| services.iter().any(|s| s.state == state);
    let status = if services.is_empty() {
        "not_deployed"
    } else if services.iter().all(|s| s.state == "stopped") {
        "stopped"
    } else if any("failed") || any("crashed") {
        "degraded"
    } else if any("deploying") {
        "deploying"
    } else {
        "running"
    };
    EnvironmentStatus {
        status: status.into(),
        services,
    }
}

/// The scale-set label ARC copies onto each runner.
pub const SCALE_SET_LABEL: &str = "actions.github.com/scale-set-name";

/// One ARC `EphemeralRunner`: busy while it has a job; idle when it is
/// registered (`ready`) without a job and not finished; offline otherwise.
/// Idle runners report phase `Pending` in newer ARC and `Running` in older
/// releases, so `ready` decides, not the phase.
pub fn runner(obj: &DynamicObject) -> Runner {
    let status = obj.data.get("status").unwrap_or(&Value::Null);
    let text = |key: &str| status.get(key).and_then(Value::as_str).unwrap_or("");
    let has_job = !text("jobId").is_empty()
        || !text("jobRepositoryName").is_empty()
        || status
            .get("jobRequestId")
            .and_then(Value::as_i64)
            .is_some_and(|id| id != 0);
    let ready = status
        .get("ready")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let finished = matches!(text("phase"), "Succeeded" | "Failed" | "Outdated");
    let state = if has_job && !finished {
        "busy"
    } else if ready && !finished {
        "idle"
    } else {
        "offline"
    };
    let name = match text("runnerName") {
        "" => obj.metadata.name.clone().unwrap_or_default(),
        n => n.to_string(),
    };
    let labels = obj
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SCALE_SET_LABEL))
        .map(|set| vec![set.clone()])
        .unwrap_or_default();
    Runner {
        name,
        status: state.into(),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(v: Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn web(generation: i64, replicas: i32, status: Value) -> Deployment {
        deployment(json!({
            "metadata": {
                "name": "web",
                "generation": generation,
                "labels": { names::NAME: "web", names::SERVICE_ID: "svc-web" }
            },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { names::SERVICE_ID: "svc-web" } },
                "template": {}
            },
            "status": status
        }))
    }

    fn rolled_out(generation: i64, n: i32) -> Deployment {
        web(
            generation,
            n,
            json!({
                "observedGeneration": generation,
                "replicas": n, "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n,
                "conditions": [{ "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" }]
            }),
        )
    }

    #[test]
    fn stale_status_right_after_a_patch_is_not_done() {
        // Generation 3 was just applied; the status still describes generation 2,
        // where everything was available.
        let d = web(
            3,
            2,
            json!({
                "observedGeneration": 2,
                "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                "conditions": [{ "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" }]
            }),
        );
        assert!(
            matches!(deployment_rollout(&d), Rollout::Progressing(m) if m.contains("observed"))
        );
        let no_status = web(1, 2, Value::Null);
        assert!(matches!(
            deployment_rollout(&no_status),
            Rollout::Progressing(_)
        ));
    }

    #[test]
    fn partial_rollouts_say_what_they_wait_for() {
        let updating = web(
            4,
            3,
            json!({ "observedGeneration": 4, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3 }),
        );
        assert_eq!(
            deployment_rollout(&updating),
            Rollout::Progressing("1 of 3 new replicas have been updated".into())
        );
        let old_left = web(
            4,
            3,
            json!({ "observedGeneration": 4, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3 }),
        );
        assert_eq!(
            deployment_rollout(&old_left),
            Rollout::Progressing("1 old replicas are pending termination".into())
        );
        let unavailable = web(
            4,
            3,
            json!({ "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2 }),
        );
        assert_eq!(
            deployment_rollout(&unavailable),
            Rollout::Progressing("2 of 3 updated replicas are available".into())
        );
    }

    #[test]
    fn progress_deadline_exceeded_fails() {
        let d = web(
            5,
            2,
            json!({
                "observedGeneration": 5, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                "conditions": [{
                    "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"web-7d4\" has timed out progressing."
                }]
            }),
        );
        assert!(matches!(deployment_rollout(&d), Rollout::Failed(m) if m.contains("timed out")));
        assert_eq!(service_status(&d, &[]).state, "failed");
    }

    #[test]
    fn scaled_to_zero_is_done_and_stopped() {
        let d = web(2, 0, json!({ "observedGeneration": 2 }));
        assert_eq!(deployment_rollout(&d), Rollout::Done);
        let s = service_status(&d, &[]);
        assert_eq!((s.state.as_str(), s.ready, s.desired), ("stopped", 0, 0));
        assert_eq!(environment_status(&[d], &[]).status, "stopped");
    }

    #[test]
    fn complete_rollout_is_running() {
        let d = rolled_out(7, 2);
        assert_eq!(deployment_rollout(&d), Rollout::Done);
        let env = environment_status(std::slice::from_ref(&d), &[]);
        assert_eq!(env.status, "running");
        assert_eq!((env.ready(), env.desired()), (2, 2));
    }

    fn pod(service_id: &str, restarts: i32, waiting: Option<&str>) -> Pod {
        let state = match waiting {
            Some(reason) => json!({ "waiting": { "reason": reason } }),
            None => json!({ "running": {} }),
        };
        serde_json::from_value(json!({
            "metadata": { "name": "web-abc", "labels": { names::SERVICE_ID: service_id } },
            "status": { "containerStatuses": [{
                "name": "web", "image": "i", "imageID": "", "ready": waiting.is_none(),
                "restartCount": restarts, "state": state
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn crash_loops_degrade_the_environment() {
        let d = rolled_out(7, 1);
        let pods = [
            pod("svc-web", 4, Some("CrashLoopBackOff")),
            pod("other", 9, None),
        ];
        let env = environment_status(&[d], &pods);
        assert_eq!(env.status, "degraded");
        assert_eq!(env.services[0].state, "crashed");
        assert_eq!(
            env.services[0].restarts, 4,
            "only the service's own pods count"
        );
    }

    #[test]
    fn nothing_deployed() {
        assert_eq!(environment_status(&[], &[]).status, "not_deployed");
    }

    fn job(conditions: Value) -> Job {
        serde_json::from_value(
            json!({ "metadata": { "name": "b" }, "status": { "conditions": conditions } }),
        )
        .unwrap()
    }

    #[test]
    fn job_results() {
        assert_eq!(job_state(&job(json!([]))), JobState::Running);
        let pending_success = json!([{ "type": "SuccessCriteriaMet", "status": "True" }]);
        assert_eq!(job_state(&job(pending_success)), JobState::Running);
        let done = json!([{ "type": "Complete", "status": "True" }]);
        assert_eq!(job_state(&job(done)), JobState::Succeeded);
        let failed = json!([{ "type": "Failed", "status": "True", "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline" }]);
        assert_eq!(
            job_state(&job(failed)),
            JobState::Failed(
                "DeadlineExceeded: Job was active longer than specified deadline".into()
            )
        );
    }

    fn kaniko_pod(state: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "build-x-abcde" },
            "status": { "containerStatuses": [{
                "name": "kaniko", "image": "k", "imageID": "", "ready": false, "restartCount": 0,
                "state": state
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn digests_come_from_a_successful_termination_message() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let ok = kaniko_pod(
            json!({ "terminated": { "exitCode": 0, "message": format!("{digest}\n") } }),
        );
        assert_eq!(build_digest(&ok, "kaniko"), Some(digest.clone()));
        assert!(container_started(&ok, "kaniko"));
        let failed = kaniko_pod(json!({ "terminated": { "exitCode": 1, "message": digest } }));
        assert_eq!(build_digest(&failed, "kaniko"), None);
        let garbage =
            kaniko_pod(json!({ "terminated": { "exitCode": 0, "message": "sha256:xyz" } }));
        assert_eq!(build_digest(&garbage, "kaniko"), None);
        let creating = kaniko_pod(json!({ "waiting": { "reason": "ContainerCreating" } }));
        assert!(!container_started(&creating, "kaniko"));
    }

    fn ephemeral_runner(status: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "actions.github.com/v1alpha1",
            "kind": "EphemeralRunner",
            "metadata": { "name": "arc-runner-abc", "labels": { SCALE_SET_LABEL: "linux-x64" } },
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn runner_states() {
        let state = |status: Value| runner(&ephemeral_runner(status)).status;
        assert_eq!(
            state(json!({ "phase": "Running", "ready": true, "jobId": "42" })),
            "busy"
        );
        assert_eq!(
            state(json!({ "phase": "Running", "ready": true, "jobRequestId": 7 })),
            "busy"
        );
        assert_eq!(
            state(json!({ "phase": "Running", "ready": true, "jobRepositoryName": "acme/shop" })),
            "busy"
        );
        assert_eq!(state(json!({ "phase": "Running", "ready": true })), "idle");
        assert_eq!(state(json!({ "phase": "Pending", "ready": true })), "idle");
        assert_eq!(
            state(json!({ "phase": "Pending", "ready": false })),
            "offline"
        );
        assert_eq!(
            state(json!({ "phase": "Failed", "ready": false, "jobId": "1" })),
            "offline"
        );
        assert_eq!(state(Value::Null), "offline");
        let r = runner(&ephemeral_runner(
            json!({ "runnerName": "gh-runner-1", "ready": true }),
        ));
        assert_eq!(r.name, "gh-runner-1");
        assert_eq!(r.labels, ["linux-x64"]);
    }
}
