//! The [`Runtime`] actions against the Kubernetes API.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;
use tracing::instrument;

use super::logs::{last_lines, parse_line, parse_pod_line, pod_deployment, pod_service};
use super::manifests::{self, KANIKO_CONTAINER};
use super::status::{self, JobState, Rollout};
use super::{KubernetesRuntime, names};
use crate::error::{Error, Result};
use crate::runtime::instances::Instances;
use crate::runtime::{
    BuildOutput, BuildRequest, EnvVars, EnvironmentRef, EnvironmentStatus, LogLine, LogQuery,
    LogSink, Release, Runner, Runtime, VolumeRef, VolumeState,
};

/// A failed API call as the crate's error. API messages name objects and
/// fields, never Secret values; they go to `Internal` (logged only) except
/// where a client can act on them.
pub(super) fn kube_error(what: &str, err: kube::Error) -> Error {
    match &err {
        kube::Error::Api(s) if s.code == 404 => Error::NotFound(format!("{what}: not found")),
        kube::Error::Api(s) if s.code == 409 => Error::Conflict(format!("{what}: {}", s.message)),
        kube::Error::Api(s) if s.code >= 500 => {
            tracing::warn!(error = %err, "{what}");
            Error::Unavailable(format!("{what}: the Kubernetes API failed ({})", s.code))
        }
        kube::Error::Api(s) => {
            Error::internal(format!("{what}: {} {}: {}", s.code, s.reason, s.message))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            tracing::warn!(error = %err, "{what}");
            Error::Unavailable(format!("{what}: the Kubernetes API is unreachable"))
        }
        other => Error::internal(format!("{what}: {other}")),
    }
}

pub(super) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// A progress line for the caller's log.
fn say(sink: &LogSink, source: &str, level: &str, msg: String, deployment: Option<uuid::Uuid>) {
    // A caller that stopped listening does not stop the action.
    let _ = sink.send(LogLine::platform(source, level, msg, deployment));
}

/// A progress line that starts deployment step `step`.
fn step(sink: &LogSink, source: &str, step: &str, msg: String, deployment: uuid::Uuid) {
    let _ = sink.send(LogLine::step(source, step, msg, deployment));
}

/// How long past the build Job's own deadline (which fails it first) the
/// driver keeps waiting.
const BUILD_SLACK: std::time::Duration = std::time::Duration::from_secs(60);

/// The ARC `EphemeralRunner` resource.
fn ephemeral_runner_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("actions.github.com", "v1alpha1", "EphemeralRunner"),
        "ephemeralrunners",
    )
}

impl KubernetesRuntime {
    fn ns(&self, env: &EnvironmentRef) -> String {
        names::namespace(&self.config.namespace_prefix, env)
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Server-side apply under the one field manager, taking over fields
    /// another manager may have touched (`force`).
    pub(super) async fn apply<K>(&self, api: &Api<K>, obj: &K, what: &str) -> Result<K>
    where
        K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    {
        let params = PatchParams::apply(&self.config.field_manager).force();
        api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
            .await
            .map_err(|e| kube_error(what, e))
    }

    /// Deletes an object if it is there.
    pub(super) async fn delete_if_present<K>(
        &self,
        api: &Api<K>,
        name: &str,
        what: &str,
    ) -> Result<()>
    where
        K: Resource + DeserializeOwned + Clone + Debug,
    {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_error(what, e)),
        }
    }

    /// Refuses to take over a namespace that belongs to another environment
    /// (two slug/name pairs can join to one name) or is still being deleted.
    async fn check_namespace(&self, env: &EnvironmentRef, ns: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let Some(existing) = api
            .get_opt(ns)
            .await
            .map_err(|e| kube_error("read Namespace", e))?
        else {
            return Ok(());
        };
        let owner = existing.labels().get(names::ENVIRONMENT_ID);
        if owner.is_some_and(|id| *id != env.environment_id.to_string()) {
            return Err(Error::Conflict(format!(
                "namespace {ns} belongs to another environment"
            )));
        }
        let terminating = existing
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating");
        if terminating {
            return Err(Error::Conflict(format!(
                "namespace {ns} is still being deleted; try again shortly"
            )));
        }
        Ok(())
    }

    async fn apply_secret(&self, env: &EnvironmentRef, vars: &EnvVars) -> Result<()> {
        let secret = manifests::env_secret(&self.config, env, vars);
        let api: Api<Secret> = self.api(&self.ns(env));
        // The answer echoes the values: dropped at once.
        self.apply(&api, &secret, "apply env Secret").await?;
        Ok(())
    }

    /// Applies the domain's route, or removes it when there is no domain.
    async fn apply_route(&self, env: &EnvironmentRef) -> Result<()> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.ns(env),
            &manifests::http_route_resource(),
        );
        match manifests::http_route(&self.config, env) {
            Some(route) => self.apply(&api, &route, "apply HTTPRoute").await.map(drop),
            None => {
                self.delete_if_present(&api, names::PUBLIC, "delete HTTPRoute")
                    .await
            }
        }
    }

    /// Polls the Deployments until each has rolled out, one has failed, or
    /// the rollout timeout passes. Reports each change of progress.
    async fn wait_for_rollout(
        &self,
        release: &Release,
        names: &[String],
        sink: &LogSink,
    ) -> Result<()> {
        let api: Api<Deployment> = self.api(&self.ns(&release.env));
        let deadline = Instant::now() + self.config.rollout_timeout;
        let mut pending = names.to_vec();
        let mut reported: HashMap<String, String> = HashMap::new();
        let say =
            |level: &str, msg: String| say(sink, "deploy", level, msg, Some(release.deployment_id));
        loop {
            let mut still = Vec::new();
            for name in pending {
                let d = api
                    .get(&name)
                    .await
                    .map_err(|e| kube_error("read Deployment", e))?;
                match status::deployment_rollout(&d) {
                    Rollout::Done => say("info", format!("{name}: rolled out")),
                    Rollout::Progressing(msg) => {
                        if reported.get(&name) != Some(&msg) {
                            say("info", format!("{name}: {msg}"));
                            reported.insert(name.clone(), msg);
                        }
                        still.push(name);
                    }
                    Rollout::Failed(msg) => {
                        say("error", format!("{name}: {msg}"));
                        return Err(Error::Unprocessable(format!("{name}: {msg}")));
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "rollout of {} did not finish within {}s; the previous release keeps serving",
                    still.join(", "),
                    self.config.rollout_timeout.as_secs()
                );
                say("error", msg.clone());
                return Err(Error::Unprocessable(msg));
            }
            tokio::time::sleep(self.config.poll_interval).await;
            pending = still;
        }
    }

    /// Removes the Deployments and Services of services the release no
    /// longer has. Runs after a successful rollout only.
    async fn prune(
        &self,
        env: &EnvironmentRef,
        deployments: &BTreeSet<String>,
        services: &BTreeSet<String>,
    ) -> Result<()> {
        let ns = self.ns(env);
        let managed =
            ListParams::default().labels(&names::selector(names::MANAGED_BY, names::MANAGER));
        let api: Api<Deployment> = self.api(&ns);
        let live = api
            .list(&managed)
            .await
            .map_err(|e| kube_error("list Deployments", e))?;
        for d in live.items.iter().map(|d| d.name_any()) {
            if !deployments.contains(&d) {
                self.delete_if_present(&api, &d, "delete Deployment")
                    .await?;
            }
        }
        let api: Api<Service> = self.api(&ns);
        let live = api
            .list(&managed)
            .await
            .map_err(|e| kube_error("list Services", e))?;
        for s in live.items.iter().map(|s| s.name_any()) {
            if !services.contains(&s) {
                self.delete_if_present(&api, &s, "delete Service").await?;
            }
        }
        Ok(())
    }

    /// Waits until the build pod's container has started (so its log can be
    /// read), or the Job ended without one. Returns the pod's name.
    async fn wait_for_build_pod(
        &self,
        job_name: &str,
        deadline: Instant,
    ) -> Result<Option<String>> {
        let pods: Api<Pod> = self.api(&self.config.build_namespace);
        let jobs: Api<Job> = self.api(&self.config.build_namespace);
        let of_job = ListParams::default().labels(&names::selector(names::JOB_NAME, job_name));
        loop {
            let list = pods
                .list(&of_job)
                .await
                .map_err(|e| kube_error("list build pods", e))?;
            if let Some(pod) = list
                .items
                .iter()
                .find(|p| status::container_started(p, KANIKO_CONTAINER))
            {
                return Ok(Some(pod.name_any()));
            }
            let job = jobs
                .get(job_name)
                .await
                .map_err(|e| kube_error("read build Job", e))?;
            if status::job_state(&job) != JobState::Running {
                return Ok(list.items.first().map(|p| p.name_any()));
            }
            if Instant::now() >= deadline {
                return Err(Error::Unprocessable(
                    "the build did not start in time".into(),
                ));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Copies the build container's log into the sink until it exits.
    async fn follow_build_log(&self, pod: &str, req: &BuildRequest, sink: &LogSink) {
        let pods: Api<Pod> = self.api(&self.config.build_namespace);
        let params = LogParams {
            container: Some(KANIKO_CONTAINER.into()),
            follow: true,
            timestamps: true,
            ..LogParams::default()
        };
        let reader = match pods.log_stream(pod, &params).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, pod, "cannot read the build log");
                say(
                    sink,
                    "build",
                    "error",
                    "the build log is not available".into(),
                    Some(req.deployment_id),
                );
                return;
            }
        };
        let mut lines = reader.lines();
        while let Some(line) = lines.next().await {
            match line {
                Ok(line) => {
                    let _ = sink.send(parse_line(&line, "build", Some(req.deployment_id)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, pod, "the build log stream broke");
                    break;
                }
            }
        }
    }

    async fn wait_for_job(&self, job_name: &str, deadline: Instant) -> Result<JobState> {
        let jobs: Api<Job> = self.api(&self.config.build_namespace);
        loop {
            let job = jobs
                .get(job_name)
                .await
                .map_err(|e| kube_error("read build Job", e))?;
            match status::job_state(&job) {
                JobState::Running if Instant::now() < deadline => {
                    tokio::time::sleep(self.config.poll_interval).await;
                }
                JobState::Running => {
                    return Err(Error::Unprocessable(
                        "the build did not finish in time".into(),
                    ));
                }
                done => return Ok(done),
            }
        }
    }

    /// The service pods of an environment (optionally of one release).
    async fn service_pods(
        &self,
        env: &EnvironmentRef,
        deployment: Option<uuid::Uuid>,
    ) -> Result<Vec<Pod>> {
        let mut selector = names::SERVICE_ID.to_string();
        if let Some(id) = deployment {
            selector.push(',');
            selector.push_str(&names::selector(names::DEPLOYMENT_ID, id));
        }
        let api: Api<Pod> = self.api(&self.ns(env));
        let mut pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| kube_error("list pods", e))?
            .items;
        pods.sort_by_key(|p| p.name_any());
        Ok(pods)
    }
}

#[async_trait]
impl Runtime for KubernetesRuntime {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    #[instrument(skip_all, fields(env.id = %env.environment_id))]
    async fn provision(&self, env: &EnvironmentRef, vars: &EnvVars) -> Result<()> {
        let ns = self.ns(env);
        self.check_namespace(env, &ns).await?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.apply(
            &api,
            &manifests::namespace(&self.config, env),
            "apply Namespace",
        )
        .await?;
        self.apply_secret(env, vars).await?;
        self.apply_route(env).await
    }

    #[instrument(skip_all, fields(deployment.id = %req.deployment_id))]
    async fn build(&self, req: &BuildRequest, logs: LogSink) -> Result<BuildOutput> {
        // A deploy without a commit builds the branch head as it is now.
        let resolved;
        let req = match &req.git_commit {
            Some(_) => req,
            None => {
                // Checked as the build checks it before git touches it.
                let url = manifests::clone_url(&req.git_repository, &req.git_branch)?;
                let head = crate::runtime::git::branch_head(&url, &req.git_branch).await?;
                resolved = BuildRequest {
                    git_commit: Some(head),
                    ..req.clone()
                };
                &resolved
            }
        };
        // Invalid input fails before anything is written.
        let job = manifests::build_job(&self.config, req)?;
        let commit = manifests::commit_sha(req)?;
        let job_name = job.name_any();
        let jobs: Api<Job> = self.api(&self.config.build_namespace);
        self.apply(&jobs, &job, "apply build Job").await?;
        step(
            &logs,
            "build",
            crate::runtime::step::BUILDING,
            format!("building {} at {commit}", req.git_repository),
            req.deployment_id,
        );

        // Slack over the Job's own deadline, which fails it first.
        let deadline = Instant::now() + self.config.build_timeout + BUILD_SLACK;
        let pod = self.wait_for_build_pod(&job_name, deadline).await?;
        if let Some(pod) = &pod {
            self.follow_build_log(pod, req, &logs).await;
        }
        if let JobState::Failed(why) = self.wait_for_job(&job_name, deadline).await? {
            say(
                &logs,
                "build",
                "error",
                format!("build failed: {why}"),
                Some(req.deployment_id),
            );
            return Err(Error::Unprocessable(format!("build failed: {why}")));
        }
        let pod = pod.ok_or_else(|| Error::internal("the build Job finished without a pod"))?;
        let pods: Api<Pod> = self.api(&self.config.build_namespace);
        let finished = pods
            .get(&pod)
            .await
            .map_err(|e| kube_error("read build pod", e))?;
        let digest = status::build_digest(&finished, KANIKO_CONTAINER)
            .ok_or_else(|| Error::internal("the build finished without an image digest"))?;
        let image = format!(
            "{}@{digest}",
            manifests::image_repository(&self.config, &req.env)
        );
        say(
            &logs,
            "build",
            "info",
            format!("pushed {image}"),
            Some(req.deployment_id),
        );
        Ok(BuildOutput {
            image,
            commit,
            declared_services: Vec::new(),
        })
    }

    #[instrument(skip_all, fields(env.id = %release.env.environment_id, deployment.id = %release.deployment_id))]
    async fn deploy(&self, release: &Release, logs: LogSink) -> Result<()> {
        let env = &release.env;
        let ns = self.ns(env);
        step(
            &logs,
            "deploy",
            crate::runtime::step::STARTING,
            format!("applying release to namespace {ns}"),
            release.deployment_id,
        );
        self.apply_secret(env, &release.env_vars).await?;

        let deployments: Api<Deployment> = self.api(&ns);
        let mut rolled = Vec::new();
        for svc in &release.services {
            let d = manifests::deployment(&self.config, release, svc);
            self.apply(&deployments, &d, "apply Deployment").await?;
            rolled.push(d.name_any());
        }
        let services: Api<Service> = self.api(&ns);
        let mut kept_services = BTreeSet::new();
        for svc in &release.services {
            if let Some(s) = manifests::service(&self.config, env, svc) {
                self.apply(&services, &s, "apply Service").await?;
                kept_services.insert(s.name_any());
            }
        }
        if let Some(web) = manifests::web_service(&release.services) {
            let public = manifests::public_service(&self.config, env, web);
            self.apply(&services, &public, "apply Service").await?;
            kept_services.insert(public.name_any());
        }
        self.apply_route(env).await?;

        step(
            &logs,
            "deploy",
            crate::runtime::step::HEALTH_CHECKING,
            "waiting for the rollout".into(),
            release.deployment_id,
        );
        self.wait_for_rollout(release, &rolled, &logs).await?;
        step(
            &logs,
            "deploy",
            crate::runtime::step::SWITCHING,
            "release is live".into(),
            release.deployment_id,
        );
        step(
            &logs,
            "deploy",
            crate::runtime::step::STOPPING_OLD,
            "removing what the previous release no longer runs".into(),
            release.deployment_id,
        );
        self.prune(env, &rolled.iter().cloned().collect(), &kept_services)
            .await?;
        Ok(())
    }

    #[instrument(skip_all, fields(env.id = %env.environment_id))]
    async fn scale(&self, env: &EnvironmentRef, service: &str, replicas: u32) -> Result<()> {
        let api: Api<Deployment> = self.api(&self.ns(env));
        // A merge patch on the scale subresource: an apply of `replicas`
        // alone would drop every other field this manager owns.
        let params = PatchParams {
            field_manager: Some(self.config.field_manager.clone()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        match api
            .patch_scale(&names::service_object(service), &params, &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::not_found("service", service)),
            Err(e) => Err(kube_error("scale Deployment", e)),
        }
    }

    #[instrument(skip_all, fields(env.id = %env.environment_id))]
    async fn status(&self, env: &EnvironmentRef) -> Result<EnvironmentStatus> {
        let api: Api<Deployment> = self.api(&self.ns(env));
        let managed =
            ListParams::default().labels(&names::selector(names::MANAGED_BY, names::MANAGER));
        let deployments = api
            .list(&managed)
            .await
            .map_err(|e| kube_error("list Deployments", e))?
            .items;
        let pods = self.service_pods(env, None).await?;
        Ok(status::environment_status(&deployments, &pods))
    }

    #[instrument(skip_all, fields(env.id = %env.environment_id))]
    async fn logs(&self, env: &EnvironmentRef, query: &LogQuery) -> Result<Vec<LogLine>> {
        if query.tail == 0 {
            return Ok(Vec::new());
        }
        let api: Api<Pod> = self.api(&self.ns(env));
        let params = LogParams {
            tail_lines: Some(i64::try_from(query.tail).unwrap_or(i64::MAX)),
            timestamps: true,
            ..LogParams::default()
        };
        let mut lines = Vec::new();
        for pod in self.service_pods(env, query.filter.deployment_id).await? {
            let name = pod.name_any();
            let (deployment, service) = (pod_deployment(&pod), pod_service(&pod));
            match api.logs(&name, &params).await {
                Ok(text) => lines.extend(
                    text.lines()
                        .map(|l| parse_pod_line(l, &name, service.as_deref(), deployment))
                        .filter(|l| query.filter.keeps(l)),
                ),
                // A pod that has not started yet has no log.
                Err(kube::Error::Api(s)) if s.code == 400 || s.code == 404 => {}
                Err(e) => return Err(kube_error("read pod log", e)),
            }
        }
        Ok(last_lines(lines, query.tail))
    }

    #[instrument(skip_all, fields(env.id = %env.environment_id))]
    async fn follow_logs(
        &self,
        env: &EnvironmentRef,
        query: &LogQuery,
    ) -> Result<BoxStream<'static, LogLine>> {
        // One reader per pod, shared by every follower of the environment.
        let rx = self
            .hubs
            .subscribe(env.environment_id, self.api(&self.ns(env)));
        Ok(crate::runtime::follow_channel(rx, query.filter.clone()))
    }

    #[instrument(skip_all, fields(env.id = %env.environment_id))]
    async fn delete(&self, env: &EnvironmentRef) -> Result<()> {
        // Everything the environment runs lives in its namespace.
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.delete_if_present(&api, &self.ns(env), "delete Namespace")
            .await
    }

    #[instrument(skip_all, fields(service.id = %spec.service_id))]
    async fn apply_tcp_proxy(&self, spec: &crate::runtime::TcpProxySpec) -> Result<()> {
        self.apply_tcp_proxy_objects(spec).await
    }

    #[instrument(skip_all, fields(service.id = %spec.service_id))]
    async fn remove_tcp_proxy(&self, spec: &crate::runtime::TcpProxySpec) -> Result<()> {
        self.delete_tcp_proxy_objects(spec).await
    }

    /// The claim goes in the environment's namespace (made here if the
    /// environment was never provisioned).
    #[instrument(skip_all, fields(volume.id = %v.mount.volume_id))]
    async fn create_volume(&self, v: &VolumeRef) -> Result<()> {
        let ns = self.ns(&v.env);
        self.check_namespace(&v.env, &ns).await?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.apply(
            &api,
            &manifests::namespace(&self.config, &v.env),
            "apply Namespace",
        )
        .await?;
        self.apply(
            &self.api::<PersistentVolumeClaim>(&ns),
            &manifests::volume_claim(&self.config, v),
            "apply PersistentVolumeClaim",
        )
        .await
        .map(drop)
    }

    /// `bound` is the claim's `status.phase: Bound`.
    async fn volume_state(&self, v: &VolumeRef) -> Result<VolumeState> {
        let claim = self
            .api::<PersistentVolumeClaim>(&self.ns(&v.env))
            .get_opt(&names::volume_claim(v.mount.volume_id))
            .await
            .map_err(|e| kube_error("read PersistentVolumeClaim", e))?;
        let phase = claim
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase.clone());
        Ok(VolumeState {
            bound: phase.as_deref() == Some("Bound"),
            used_bytes: None,
            message: claim.is_none().then(|| "its claim is missing".to_string()),
        })
    }

    /// Deletes the claim; Kubernetes keeps it (`Terminating`) until no pod
    /// uses it, so its data goes once the service's pods are replaced.
    #[instrument(skip_all, fields(volume.id = %v.mount.volume_id))]
    async fn delete_volume(&self, v: &VolumeRef) -> Result<()> {
        self.delete_if_present(
            &self.api::<PersistentVolumeClaim>(&self.ns(&v.env)),
            &names::volume_claim(v.mount.volume_id),
            "delete PersistentVolumeClaim",
        )
        .await
    }

    async fn health(&self) -> Result<()> {
        self.client
            .apiserver_version()
            .await
            .map(drop)
            .map_err(|e| {
                tracing::warn!(error = %e, "Kubernetes health check");
                Error::Unavailable("the Kubernetes API does not answer".into())
            })
    }

    fn instances(&self) -> Option<&dyn Instances> {
        Some(self)
    }

    async fn runners(&self) -> Result<Vec<Runner>> {
        let resource = ephemeral_runner_resource();
        let api: Api<DynamicObject> = match &self.config.runners_namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            // No ARC installed: no runner pool.
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(kube_error("list EphemeralRunners", e)),
        };
        let mut runners: Vec<Runner> = list.items.iter().map(status::runner).collect();
        runners.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(runners)
    }
}
