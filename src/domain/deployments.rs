//! Deployments: recorded with a snapshot of the environment's image and env
//! vars, carried out by the reconciler's `deploy` jobs through the runtime.
//! `queued → building → deploying → success | failed | cancelled`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use super::audit::{self, Target};
use super::{
    Ctx, deployment_events, env_vars, environments, new_id, now, parse_id, projects, sandboxes,
    services,
};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::reconcile::{self, Handler, NewJob, Queue};
use crate::runtime::{
    BuildRequest, EnvVars, EnvironmentRef, EnvironmentStatus, LogFilter, LogLine, LogQuery,
    Release, Runtime, ServiceSpec,
};
use crate::runtime::{LiveEnvironments, Teardown};
use crate::secrets::{Keyring, SecretString};
use crate::settings::SandboxIds;
use crate::streams::LogStore;
use entity::deployment_events as deployment_events_rows;
use entity::{deployments, environments as envs, jobs, projects as proj, services as svcs};

pub const QUEUED: &str = "queued";
pub const BUILDING: &str = "building";
pub const DEPLOYING: &str = "deploying";
pub const SUCCESS: &str = "success";
pub const FAILED: &str = "failed";

/// Who or what started a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Api,
    Push,
    Rollback,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Push => "push",
            Trigger::Rollback => "rollback",
        }
    }
}

/// What the runtime actions of the domain need.
#[derive(Clone)]
pub struct Deployer {
    pub db: DatabaseConnection,
    pub keyring: Arc<Keyring>,
    pub runtime: Arc<dyn Runtime>,
    pub queue: Queue,
    pub logs: LogStore,
    /// Where projects' sandbox uids come from (local runtime).
    pub sandbox_ids: SandboxIds,
    /// Wakes the routing refresh (a domain changed, something was deleted).
    pub refresh: Arc<Notify>,
    /// Wakes status watchers: a deployment was queued or changed status,
    /// or a resource did.
    pub changes: Arc<Notify>,
    /// The host name managed data services are reached by from outside.
    pub public_host: String,
    /// Ports of managed data services (local runtime).
    pub resource_ports: crate::settings::PortRange,
    /// Resources one organisation may have at once.
    pub resource_quota: u64,
    /// Public TCP proxies: their ports and quota.
    pub tcp_proxy: crate::settings::TcpProxyConfig,
    /// The resources' sampled counters.
    pub samples: Arc<super::resources::metrics::Samples>,
    /// Blob storages (`kind: blob` resources are storages).
    pub storages: Arc<super::storage::Storages>,
    /// Limits on persistent volumes.
    pub volumes: super::volumes::VolumeSettings,
}

fn seal_vars(keyring: &Keyring, vars: &BTreeMap<String, SecretString>) -> Result<String> {
    let plain: BTreeMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
    keyring.seal(&serde_json::to_string(&plain).map_err(Error::internal)?)
}

fn open_vars(keyring: &Keyring, sealed: Option<&str>) -> Result<EnvVars> {
    let Some(sealed) = sealed else {
        return Ok(EnvVars::default());
    };
    let text = keyring.open(sealed)?;
    let map: BTreeMap<String, String> =
        serde_json::from_str(text.expose()).map_err(Error::internal)?;
    Ok(EnvVars(
        map.into_iter()
            .map(|(k, v)| (k, SecretString::new(v)))
            .collect(),
    ))
}

pub fn env_ref(project: &proj::Model, env: &envs::Model) -> EnvironmentRef {
    EnvironmentRef {
        project_id: project.id,
        project_slug: project.slug.clone(),
        environment_id: env.id,
        environment_name: env.name.clone(),
        domain: env.domain.clone(),
    }
}

/// What a new deployment records: source, image, sealed env vars, target.
struct Snapshot {
    git_branch: Option<String>,
    git_commit: Option<String>,
    image: Option<String>,
    env_snapshot: Option<String>,
    target: Option<Uuid>,
}

async fn insert<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    project: &proj::Model,
    env: &envs::Model,
    trigger: Trigger,
    fields: Snapshot,
) -> Result<deployments::Model> {
    let Snapshot {
        git_branch,
        git_commit,
        image,
        env_snapshot,
        target,
    } = fields;
    let now = now();
    let d = deployments::ActiveModel {
        id: Set(new_id()),
        project_id: Set(project.id),
        environment_id: Set(env.id),
        service_id: Set(None),
        status: Set(QUEUED.into()),
        triggered_by: Set(trigger.as_str().into()),
        git_branch: Set(git_branch),
        git_commit: Set(git_commit),
        image: Set(image),
        env_snapshot: Set(env_snapshot),
        rollback_target_id: Set(target),
        error: Set(None),
        started_at: Set(None),
        finished_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await?;
    deployment_events::record(conn, d.id, deployment_events::QUEUED, None).await?;
    reconcile::enqueue(
        conn,
        NewJob {
            kind: "deploy",
            payload: json!({ "deploymentId": d.id }),
            organization_id: Some(ctx.org_id()),
            deployment_id: Some(d.id),
        },
    )
    .await?;
    Ok(d)
}

impl Deployer {
    /// Records a deployment of an environment (production by default) and its job.
    pub async fn deploy(
        &self,
        ctx: &Ctx,
        project: &str,
        env_type: Option<&str>,
        trigger: Trigger,
        commit: Option<String>,
    ) -> Result<(deployments::Model, envs::Model)> {
        ctx.require(Role::Write)?;
        let txn = self.db.begin().await?;
        let project = projects::resolve(&txn, ctx, project).await?;
        if project.git_repository.is_none() && project.docker_image.is_none() {
            return Err(Error::Conflict(
                "the project has neither gitRepository nor dockerImage to deploy".into(),
            ));
        }
        let env = environments::select(&txn, project.id, env_type, None).await?;
        let vars = env_vars::plaintext(&txn, &self.keyring, env.id).await?;
        let snapshot = seal_vars(&self.keyring, &vars)?;
        let d = insert(
            &txn,
            ctx,
            &project,
            &env,
            trigger,
            Snapshot {
                git_branch: project.git_branch.clone(),
                git_commit: commit,
                image: project.docker_image.clone(),
                env_snapshot: Some(snapshot),
                target: None,
            },
        )
        .await?;
        audit::record(
            &txn,
            ctx,
            "deployment.create",
            Target::new("deployment", d.id).in_project(project.id),
            Some(json!({ "environment": env.name, "triggeredBy": d.triggered_by })),
        )
        .await?;
        txn.commit().await?;
        self.queue.notify();
        self.changed();
        Ok((d, env))
    }

    /// A new deployment restoring an earlier successful one's image and env vars.
    pub async fn rollback(
        &self,
        ctx: &Ctx,
        project: &str,
        target: &str,
    ) -> Result<deployments::Model> {
        ctx.require(Role::Write)?;
        let target_id = parse_id("deploymentId", target)?;
        let txn = self.db.begin().await?;
        let project = projects::resolve(&txn, ctx, project).await?;
        let old = deployments::Entity::find_by_id(target_id)
            .filter(deployments::Column::ProjectId.eq(project.id))
            .one(&txn)
            .await?
            .ok_or_else(|| Error::not_found("deployment", target_id))?;
        if old.status != SUCCESS || old.image.is_none() {
            return Err(Error::Conflict(
                "deploymentId: only a deployment that succeeded can be rolled back to".into(),
            ));
        }
        let env = envs::Entity::find_by_id(old.environment_id)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::not_found("environment", old.environment_id))?;
        let d = insert(
            &txn,
            ctx,
            &project,
            &env,
            Trigger::Rollback,
            Snapshot {
                git_branch: old.git_branch.clone(),
                git_commit: old.git_commit.clone(),
                image: old.image.clone(),
                env_snapshot: old.env_snapshot.clone(),
                target: Some(old.id),
            },
        )
        .await?;
        audit::record(
            &txn,
            ctx,
            "deployment.rollback",
            Target::new("deployment", d.id).in_project(project.id),
            Some(json!({ "targetDeploymentId": old.id })),
        )
        .await?;
        txn.commit().await?;
        self.queue.notify();
        self.changed();
        Ok(d)
    }

    /// Records a provisioning job for an environment.
    pub async fn provision(
        &self,
        ctx: &Ctx,
        project: &str,
        env_id: &str,
    ) -> Result<(envs::Model, Uuid)> {
        ctx.require(Role::Write)?;
        let txn = self.db.begin().await?;
        let project = projects::resolve(&txn, ctx, project).await?;
        let env = environments::get(&txn, project.id, env_id).await?;
        let job = reconcile::enqueue(
            &txn,
            NewJob {
                kind: "provision",
                payload: json!({ "environmentId": env.id }),
                organization_id: Some(ctx.org_id()),
                deployment_id: None,
            },
        )
        .await?;
        audit::record(
            &txn,
            ctx,
            "environment.provision",
            Target::new("environment", env.id).in_project(project.id),
            None,
        )
        .await?;
        txn.commit().await?;
        self.queue.notify();
        Ok((env, job))
    }

    /// Live status of an environment: the runtime's, `deploying` while a
    /// deployment of it is in flight; and the deployment in flight, else
    /// the newest that succeeded.
    pub async fn status(
        &self,
        ctx: &Ctx,
        project: &str,
        env_type: Option<&str>,
    ) -> Result<(envs::Model, EnvironmentStatus, Option<Uuid>)> {
        let project = projects::resolve(&self.db, ctx, project).await?;
        let env = environments::select(&self.db, project.id, env_type, None).await?;
        let (status, deployment) = self.current_status(&env_ref(&project, &env)).await?;
        Ok((env, status, deployment))
    }

    async fn current_status(
        &self,
        env: &EnvironmentRef,
    ) -> Result<(EnvironmentStatus, Option<Uuid>)> {
        let mut status = self.runtime.status(env).await?;
        let newest = |statuses: &[&str]| {
            deployments::Entity::find()
                .filter(deployments::Column::EnvironmentId.eq(env.environment_id))
                .filter(deployments::Column::Status.is_in(statuses.iter().copied()))
                .order_by_desc(deployments::Column::Id)
                .one(&self.db)
        };
        if let Some(d) = newest(&[QUEUED, BUILDING, DEPLOYING]).await? {
            status.status = DEPLOYING.into();
            return Ok((status, Some(d.id)));
        }
        Ok((status, newest(&[SUCCESS]).await?.map(|d| d.id)))
    }

    /// The environment's status now, then each time it changes (a
    /// deployment queued or moving on, a replica started, crashed or
    /// restarted): woken by the runtime and the deployments, and checked
    /// every two seconds for what neither reports (another replica's
    /// deployments, a Kubernetes cluster).
    pub async fn watch_status(
        &self,
        ctx: &Ctx,
        project: &str,
        env_type: Option<&str>,
    ) -> Result<BoxStream<'static, (EnvironmentStatus, Option<Uuid>)>> {
        let project = projects::resolve(&self.db, ctx, project).await?;
        let env = env_ref(
            &project,
            &environments::select(&self.db, project.id, env_type, None).await?,
        );
        let me = self.clone();
        let last: Option<(EnvironmentStatus, Option<Uuid>)> = None;
        Ok(futures_util::stream::unfold(last, move |last| {
            let (me, env) = (me.clone(), env.clone());
            async move {
                let now = me
                    .when(me.runtime.changes(), || {
                        let (me, env, last) = (me.clone(), env.clone(), last.clone());
                        async move {
                            let now = me.current_status(&env).await.ok()?;
                            (last.as_ref() != Some(&now)).then_some(now)
                        }
                    })
                    .await;
                Some((now.clone(), Some(now)))
            }
        })
        .boxed())
    }

    /// The last log lines of an environment, or of one deployment.
    pub async fn logs(&self, ctx: &Ctx, project: &str, args: &LogArgs<'_>) -> Result<Vec<LogLine>> {
        let tail = args.tail.unwrap_or(200);
        if !(0..=1000).contains(&tail) {
            return Err(Error::field("tail", "must be between 0 and 1000"));
        }
        let (env, filter) = self.log_source(ctx, project, args).await?;
        if tail == 0 {
            return Ok(Vec::new());
        }
        self.runtime
            .logs(
                &env,
                &LogQuery {
                    tail: tail as usize,
                    filter,
                    after: None,
                },
            )
            .await
    }

    /// The last `tail` log lines (0 to 1000, default 200) of an environment
    /// or of one deployment, then each new line as it is captured. Without
    /// a deployment it follows the environment across deploys and
    /// restarts. The stream subscribes before it reads the past lines, so
    /// that none falls between the two; a line in both is sent once.
    pub async fn follow(
        &self,
        ctx: &Ctx,
        project: &str,
        args: &LogArgs<'_>,
    ) -> Result<BoxStream<'static, LogLine>> {
        let tail = args.tail.unwrap_or(200);
        if !(0..=1000).contains(&tail) {
            return Err(Error::field("tail", "must be between 0 and 1000"));
        }
        let after = args.after;
        let (env, filter) = self.log_source(ctx, project, args).await?;
        let deployment_id = filter.deployment_id;
        let query = LogQuery {
            tail: tail as usize,
            filter,
            after,
        };
        let live = self.runtime.follow_logs(&env, &query).await?;
        let past = if tail > 0 || after.is_some() {
            self.runtime.logs(&env, &query).await?
        } else {
            Vec::new()
        };
        // Numbered lines are told apart by cursor; others by content (only
        // those are kept for it).
        let newest = past.last().map(|l| (l.ts, l.cursor));
        let sent: Vec<LogLine> = past.iter().filter(|l| l.cursor == 0).cloned().collect();
        let live = live.filter(move |line| {
            let again = match newest {
                Some((_, c)) if line.cursor != 0 => line.cursor <= c,
                Some((ts, _)) => line.ts <= ts && sent.contains(line),
                None => after.is_some_and(|a| line.cursor != 0 && line.cursor <= a),
            };
            std::future::ready(!again)
        });
        let lines = futures_util::stream::iter(past).chain(live).boxed();
        let Some(deployment) = deployment_id else {
            return Ok(lines);
        };
        // A deployment's lines end when its processes have stopped: the
        // lines already captured are sent, then the stream ends.
        let me = self.clone();
        let over = Box::pin(async move { me.stopped(env.environment_id, deployment).await });
        Ok(
            futures_util::stream::unfold((lines, Some(over)), |(mut lines, over)| async move {
                match over {
                    Some(mut over) => tokio::select! {
                        biased;
                        line = lines.next() => line.map(|l| (l, (lines, Some(over)))),
                        () = &mut over => {
                            let l = futures_util::FutureExt::now_or_never(lines.next()).flatten()?;
                            Some((l, (lines, None)))
                        }
                    },
                    None => {
                        let l = futures_util::FutureExt::now_or_never(lines.next()).flatten()?;
                        Some((l, (lines, None)))
                    }
                }
            })
            .boxed(),
        )
    }

    /// Resolves once deployment `id`'s processes have stopped: it failed
    /// or was cancelled, or a newer deployment of its environment
    /// succeeded (superseded, or rolled back from).
    async fn stopped(&self, environment_id: Uuid, id: Uuid) {
        let over = |db: DatabaseConnection| async move {
            let d = deployments::Entity::find_by_id(id).one(&db).await?;
            if d.as_ref()
                .is_none_or(|d| matches!(d.status.as_str(), FAILED | "cancelled"))
            {
                return Ok::<_, Error>(true);
            }
            let newer = deployments::Entity::find()
                .filter(deployments::Column::EnvironmentId.eq(environment_id))
                .filter(deployments::Column::Status.eq(SUCCESS))
                .filter(deployments::Column::Id.gt(id))
                .one(&db)
                .await?;
            Ok(newer.is_some())
        };
        self.when(None, || {
            let over = over(self.db.clone());
            async move { matches!(over.await, Ok(true)).then_some(()) }
        })
        .await
    }

    /// Runs `check` until it answers, again each time a deployment or a
    /// resource changes (and each time `theirs` is woken: the runtime's
    /// changes, or its data services'), and at least every two seconds for
    /// what neither reports (another replica's deployments, a Kubernetes
    /// cluster). It listens before it checks, so that no change falls in
    /// between.
    pub(super) async fn when<T, F>(
        &self,
        theirs: Option<Arc<Notify>>,
        mut check: impl FnMut() -> F,
    ) -> T
    where
        F: std::future::Future<Output = Option<T>>,
    {
        loop {
            let ours = self.changes.clone().notified_owned();
            tokio::pin!(ours);
            ours.as_mut().enable();
            let mut theirs = theirs.clone().map(|n| Box::pin(n.notified_owned()));
            if let Some(t) = theirs.as_mut() {
                t.as_mut().enable();
            }
            if let Some(answer) = check().await {
                return answer;
            }
            let theirs = async {
                match theirs {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ours => {}
                _ = theirs => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// The environment whose logs are read, and which of its lines,
    /// checked against the caller's organisation.
    async fn log_source(
        &self,
        ctx: &Ctx,
        project: &str,
        args: &LogArgs<'_>,
    ) -> Result<(EnvironmentRef, LogFilter)> {
        let project = projects::resolve(&self.db, ctx, project).await?;
        let deployment_id = args
            .deployment
            .map(|d| parse_id("deploymentId", d))
            .transpose()?;
        let env = match deployment_id {
            Some(id) => {
                let d = deployments::Entity::find_by_id(id)
                    .filter(deployments::Column::ProjectId.eq(project.id))
                    .one(&self.db)
                    .await?
                    .ok_or_else(|| Error::not_found("deployment", id))?;
                envs::Entity::find_by_id(d.environment_id)
                    .one(&self.db)
                    .await?
                    .ok_or_else(|| Error::not_found("environment", d.environment_id))?
            }
            None => environments::select(&self.db, project.id, args.env_type, None).await?,
        };
        let service = match args.service.map(str::trim) {
            Some(name) => {
                crate::domain::validate::dns_label("service", name)?;
                let known = services::list(&self.db, project.id)
                    .await?
                    .iter()
                    .any(|s| s.name == name);
                // An image project without named services runs `web`.
                if !(known || name == "web" && project.docker_image.is_some()) {
                    return Err(Error::not_found("service", name));
                }
                Some(name.to_string())
            }
            None => None,
        };
        if args.filter.is_some_and(|f| f.chars().count() > 200) {
            return Err(Error::field("filter", "must be at most 200 characters"));
        }
        let mut filter = LogFilter {
            deployment_id,
            service,
            ..LogFilter::default()
        };
        filter.parse_text(args.filter);
        Ok((env_ref(&project, &env), filter))
    }

    /// The steps of a deployment so far, then each new one as it is
    /// recorded (by this server or another on the same store); ends after
    /// the last (`success`, `failed` or `cancelled`). A deployment that
    /// ended long ago gives its whole timeline, then ends.
    pub async fn events(
        &self,
        ctx: &Ctx,
        deployment: &str,
    ) -> Result<BoxStream<'static, deployment_events_rows::Model>> {
        let id = parse_id("deploymentId", deployment)?;
        let d = deployments::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::not_found("deployment", id))?;
        // Checked against the caller's organisation like its project.
        projects::resolve(&self.db, ctx, &d.project_id.to_string()).await?;
        let me = self.clone();
        // (last seq sent, ended)
        let batches = futures_util::stream::unfold((0, false), move |(last, ended)| {
            let me = me.clone();
            async move {
                if ended {
                    return None;
                }
                let batch = me
                    .when(None, || {
                        let me = me.clone();
                        async move { me.events_after(id, last).await.ok().flatten() }
                    })
                    .await;
                let last = batch.last().map_or(last, |e| e.seq);
                let ended = batch.is_empty()
                    || batch
                        .iter()
                        .any(|e| deployment_events::is_terminal(&e.step));
                Some((batch, (last, ended)))
            }
        });
        Ok(batches.flat_map(futures_util::stream::iter).boxed())
    }

    /// Events of deployment `id` after `last`; `None` while there are none
    /// yet, empty once the deployment is gone.
    async fn events_after(
        &self,
        id: Uuid,
        last: i32,
    ) -> Result<Option<Vec<deployment_events_rows::Model>>> {
        let new = deployment_events::after(&self.db, id, last).await?;
        if !new.is_empty() {
            return Ok(Some(new));
        }
        let Some(d) = deployments::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(Some(Vec::new()));
        };
        // Ended before its steps were recorded.
        if last == 0 && deployment_events::is_terminal(&d.status) {
            return Ok(Some(deployment_events::from_row(&d)));
        }
        Ok(None)
    }
}

/// Which log lines to read: every field optional.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogArgs<'a> {
    /// `production` by default.
    pub env_type: Option<&'a str>,
    pub service: Option<&'a str>,
    pub deployment: Option<&'a str>,
    /// A substring of the message, or `level:<level>`.
    pub filter: Option<&'a str>,
    pub tail: Option<i32>,
    /// Every kept line after this cursor instead of the last `tail`.
    pub after: Option<u64>,
}

/// Deployment history of a project, newest first.
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    project: &str,
    env_type: Option<&str>,
    limit: Option<i32>,
) -> Result<Vec<deployments::Model>> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Error::field("limit", "must be between 1 and 100"));
    }
    let project = projects::resolve(conn, ctx, project).await?;
    let mut q = deployments::Entity::find()
        .filter(deployments::Column::ProjectId.eq(project.id))
        .order_by_desc(deployments::Column::Id)
        .limit(limit as u64);
    if let Some(name) = env_type {
        let env = environments::select(conn, project.id, Some(name), None).await?;
        q = q.filter(deployments::Column::EnvironmentId.eq(env.id));
    }
    Ok(q.all(conn).await?)
}

/// The newest image built for a service's project.
pub async fn latest_image<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    service_id: &str,
) -> Result<String> {
    let id = parse_id("serviceId", service_id)?;
    let service = svcs::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("service", id))?;
    let project = projects::resolve(conn, ctx, &service.project_id.to_string()).await?;
    if let Some(image) = service.latest_image {
        return Ok(image);
    }
    deployments::Entity::find()
        .filter(deployments::Column::ProjectId.eq(project.id))
        .filter(deployments::Column::Status.eq(SUCCESS))
        .order_by_desc(deployments::Column::Id)
        .one(conn)
        .await?
        .and_then(|d| d.image)
        .ok_or_else(|| {
            Error::NotFound(format!("service '{}' has no built image yet", service.name))
        })
}

/// The ids of a project's deployments (of one environment, if given).
pub async fn ids_of<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    environment_id: Option<Uuid>,
) -> Result<Vec<Uuid>> {
    let mut q = deployments::Entity::find()
        .select_only()
        .column(deployments::Column::Id)
        .filter(deployments::Column::ProjectId.eq(project_id));
    if let Some(env) = environment_id {
        q = q.filter(deployments::Column::EnvironmentId.eq(env));
    }
    Ok(q.into_tuple().all(conn).await?)
}

/// Records a deletion: the job that removes what it leaves on the runtime,
/// and the audit event. Call it in the deleting transaction.
pub async fn record_deletion<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    teardown: &Teardown,
    action: &str,
    target: Target<'_>,
    detail: serde_json::Value,
) -> Result<()> {
    reconcile::enqueue(
        conn,
        NewJob {
            kind: "teardown",
            payload: serde_json::to_value(teardown).map_err(Error::internal)?,
            organization_id: Some(ctx.org_id()),
            deployment_id: None,
        },
    )
    .await?;
    audit::record(conn, ctx, action, target, Some(detail)).await
}

impl Deployer {
    /// Moves a deployment on, and tells the status watchers (of every
    /// server on the store).
    async fn set_status(
        &self,
        d: &deployments::Model,
        status: &str,
        error: Option<String>,
    ) -> Result<deployments::Model> {
        let saved = set_status(&self.db, d, status, error).await?;
        self.changed();
        Ok(saved)
    }

    /// Wakes the status and event watchers of this server, and of the
    /// others that share its PostgreSQL store.
    pub fn changed(&self) {
        self.changes.notify_waiters();
        if crate::store::is_postgres(&self.db) {
            let db = self.db.clone();
            tokio::spawn(async move { crate::store::announce(&db).await });
        }
    }
}

/// Saves a deployment's new status; a final one with its event, in one
/// transaction.
async fn set_status(
    db: &DatabaseConnection,
    d: &deployments::Model,
    status: &str,
    error: Option<String>,
) -> Result<deployments::Model> {
    let txn = db.begin().await?;
    let saved = save_status(&txn, d, status, error.clone()).await?;
    if deployment_events::is_terminal(status) {
        deployment_events::record(&txn, d.id, status, error).await?;
    }
    txn.commit().await?;
    Ok(saved)
}

async fn save_status<C: ConnectionTrait>(
    db: &C,
    d: &deployments::Model,
    status: &str,
    error: Option<String>,
) -> Result<deployments::Model> {
    let mut a = d.clone().into_active_model();
    let now = now();
    a.status = Set(status.into());
    if status == BUILDING || (status == DEPLOYING && d.started_at.is_none()) {
        a.started_at = Set(Some(d.started_at.unwrap_or(now)));
    }
    if status == SUCCESS || status == FAILED {
        a.finished_at = Set(Some(now));
        a.error = Set(error);
    }
    a.updated_at = Set(now);
    Ok(a.update(db).await?)
}

/// The services a release runs: the project's services with this
/// environment's overrides, plus process types the source declares.
async fn release_services(
    db: &DatabaseConnection,
    project: &proj::Model,
    env: &envs::Model,
    declared: &[ServiceSpec],
) -> Result<Vec<ServiceSpec>> {
    let txn = db.begin().await?;
    let existing = services::list(&txn, project.id).await?;
    for decl in declared {
        if !existing.iter().any(|s| s.name == decl.name) {
            let now = now();
            svcs::ActiveModel {
                id: Set(new_id()),
                project_id: Set(project.id),
                name: Set(decl.name.clone()),
                port: Set(decl.port.map(|_| project.port.unwrap_or(8080))),
                dockerfile_path: Set("Dockerfile".into()),
                replicas: Set(if decl.name == "web" { env.replicas } else { 1 }),
                resources: Set(None),
                status: Set(services::STATUS_IDLE.into()),
                latest_image: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(&txn)
            .await?;
        }
    }
    let rows = services::list(&txn, project.id).await?;
    let ids: Vec<Uuid> = rows.iter().map(|s| s.id).collect();
    let overrides = services::overrides_of(&txn, &ids).await?;
    let mut mounts = super::volumes::mounts_in(&txn, env.id).await?;
    txn.commit().await?;
    let mut out: Vec<ServiceSpec> = rows
        .into_iter()
        .map(|s| {
            let o = overrides
                .iter()
                .find(|o| o.service_id == s.id && o.environment_id == env.id);
            let port = o.and_then(|o| o.port).or(s.port);
            ServiceSpec {
                service_id: s.id,
                command: declared
                    .iter()
                    .find(|d| d.name == s.name)
                    .and_then(|d| d.command.clone()),
                name: s.name,
                port: port.and_then(|p| u16::try_from(p).ok()),
                replicas: o.and_then(|o| o.replicas).unwrap_or(s.replicas).max(0) as u32,
                resources: services::Resources::from_json(
                    &o.and_then(|o| o.resources.clone()).or(s.resources),
                ),
                volumes: mounts.remove(&s.id).unwrap_or_default(),
            }
        })
        .collect();
    if out.is_empty() && project.docker_image.is_some() {
        // An image project without named services runs one `web` service.
        out.push(ServiceSpec {
            service_id: Uuid::nil(),
            name: "web".into(),
            port: project.port.and_then(|p| u16::try_from(p).ok()),
            replicas: env.replicas.max(0) as u32,
            resources: None,
            command: None,
            volumes: Vec::new(),
        });
    }
    Ok(out)
}

impl Deployer {
    async fn run_deploy(&self, deployment_id: Uuid) -> Result<()> {
        let Some(mut d) = deployments::Entity::find_by_id(deployment_id)
            .one(&self.db)
            .await?
        else {
            return Ok(()); // The project was deleted meanwhile.
        };
        if matches!(d.status.as_str(), SUCCESS | FAILED | "cancelled") {
            return Ok(()); // Already finished: a resumed job must not redo it.
        }
        let project = proj::Entity::find_by_id(d.project_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::not_found("project", d.project_id))?;
        let env = envs::Entity::find_by_id(d.environment_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::not_found("environment", d.environment_id))?;
        let env_ref = env_ref(&project, &env);
        let sandbox_uid = self.sandbox_uid(project.id).await?;
        if let Some(image) = &d.image {
            self.check_release_owner(image, &project).await?;
        }
        self.logs.assign(env.id, project.organization_id);
        let (sink, rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
        let forward = self.forward_output(env.id, d.id, rx);
        let rolled_out = async {
            let mut declared = Vec::new();
            let build_needed = d.rollback_target_id.is_none() && project.git_repository.is_some();
            if build_needed {
                d = self.set_status(&d, BUILDING, None).await?;
                let out = self
                    .runtime
                    .build(
                        &BuildRequest {
                            deployment_id: d.id,
                            env: env_ref.clone(),
                            git_repository: project.git_repository.clone().unwrap_or_default(),
                            git_branch: d.git_branch.clone().unwrap_or_else(|| "main".into()),
                            git_commit: d.git_commit.clone(),
                            dockerfile_path: "Dockerfile".into(),
                            build_pack: project.build_pack.clone(),
                            sandbox_uid,
                        },
                        sink.clone(),
                    )
                    .await?;
                declared = out.declared_services;
                let mut a = d.clone().into_active_model();
                a.image = Set(Some(out.image));
                a.git_commit = Set(Some(out.commit));
                d = a.update(&self.db).await?;
            } else if d.image.is_none() {
                return Err(Error::Unprocessable(
                    "the project has neither gitRepository nor dockerImage to deploy".into(),
                ));
            }
            d = self.set_status(&d, DEPLOYING, None).await?;
            let release = Release {
                deployment_id: d.id,
                env: env_ref.clone(),
                image: d.image.clone().unwrap_or_default(),
                env_vars: open_vars(&self.keyring, d.env_snapshot.as_deref())?,
                services: release_services(&self.db, &project, &env, &declared).await?,
                sandbox_uid,
                restore: false,
            };
            self.runtime.provision(&env_ref, &release.env_vars).await?;
            self.runtime.deploy(&release, sink).await?;
            Ok::<_, Error>(d)
        }
        .await;
        // Every line and step of the attempt is recorded before its end is.
        let _ = forward.await;
        let d = rolled_out?;
        self.set_status(&d, SUCCESS, None).await?;
        svcs::Entity::update_many()
            .col_expr(
                svcs::Column::Status,
                sea_orm::sea_query::Expr::value("running"),
            )
            .col_expr(
                svcs::Column::LatestImage,
                sea_orm::sea_query::Expr::value(d.image.clone()),
            )
            .filter(svcs::Column::ProjectId.eq(project.id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records a deployment's output as it comes: each line in the
    /// environment's log, each step (a line that starts one) as an event.
    fn forward_output(
        &self,
        env_id: Uuid,
        deployment: Uuid,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<LogLine>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if let Some(step) = &line.step {
                    match deployment_events::record(
                        &me.db,
                        deployment,
                        step,
                        Some(line.msg.clone()),
                    )
                    .await
                    {
                        Ok(()) => me.changed(),
                        Err(e) => tracing::warn!(
                            error = e.message(),
                            "could not record a deployment step"
                        ),
                    }
                }
                me.logs.push(env_id, line);
            }
        })
    }

    async fn run_provision(&self, env_id: Uuid) -> Result<()> {
        let Some(env) = envs::Entity::find_by_id(env_id).one(&self.db).await? else {
            return Ok(());
        };
        let project = proj::Entity::find_by_id(env.project_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::not_found("project", env.project_id))?;
        let vars = env_vars::plaintext(&self.db, &self.keyring, env.id).await?;
        self.runtime
            .provision(&env_ref(&project, &env), &EnvVars(vars))
            .await?;
        let mut a = env.into_active_model();
        a.provisioned_at = Set(Some(now()));
        a.update(&self.db).await?;
        Ok(())
    }

    /// The project's sandbox uid, allocated on first use (local runtime only).
    async fn sandbox_uid(&self, project: Uuid) -> Result<Option<u32>> {
        if self.runtime.kind() != "local" {
            return Ok(None);
        }
        sandboxes::uid_for(&self.db, &self.sandbox_ids, sandboxes::PROJECT, project)
            .await
            .map(Some)
    }

    /// A `local:<deployment>` image must name a release of this very
    /// project; the answer is the same whether another project's exists.
    async fn check_release_owner(&self, image: &str, project: &proj::Model) -> Result<()> {
        let Some(id) = crate::runtime::local::release_deployment(image) else {
            return Ok(());
        };
        let owned = deployments::Entity::find_by_id(id)
            .filter(deployments::Column::ProjectId.eq(project.id))
            .one(&self.db)
            .await?
            .is_some();
        if owned {
            Ok(())
        } else {
            Err(Error::Unprocessable(format!(
                "'{image}' is not a release of this project"
            )))
        }
    }

    /// Brings back what was running before a restart: the newest successful
    /// deployment of every environment is rolled out again, a few at once.
    pub async fn restore(&self) -> Result<()> {
        let done = deployments::Entity::find()
            .filter(deployments::Column::Status.eq(SUCCESS))
            .order_by_desc(deployments::Column::Id)
            .all(&self.db)
            .await?;
        let mut seen = std::collections::HashSet::new();
        let latest: Vec<deployments::Model> = done
            .into_iter()
            .filter(|d| seen.insert(d.environment_id))
            .collect();
        futures_util::stream::iter(latest)
            .for_each_concurrent(4, |d| async move {
                if let Err(e) = self.restore_one(&d).await {
                    tracing::warn!(deployment.id = %d.id, error = e.message(), "could not restore a release");
                }
            })
            .await;
        Ok(())
    }

    async fn restore_one(&self, d: &deployments::Model) -> Result<()> {
        let (Some(project), Some(env)) = (
            proj::Entity::find_by_id(d.project_id).one(&self.db).await?,
            envs::Entity::find_by_id(d.environment_id)
                .one(&self.db)
                .await?,
        ) else {
            return Ok(());
        };
        let env_ref = env_ref(&project, &env);
        let release = Release {
            deployment_id: d.id,
            env: env_ref.clone(),
            image: d.image.clone().unwrap_or_default(),
            env_vars: open_vars(&self.keyring, d.env_snapshot.as_deref())?,
            services: release_services(&self.db, &project, &env, &[]).await?,
            sandbox_uid: self.sandbox_uid(project.id).await?,
            restore: true,
        };
        self.logs.assign(env.id, project.organization_id);
        let (sink, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            while let Some(mut line) = rx.recv().await {
                line.step = None; // The deployment's steps were recorded when it ran.
                logs.push(env.id, line);
            }
        });
        self.runtime.deploy(&release, sink).await
    }

    /// Every environment of the store with the deployment it serves.
    async fn live_environments(&self) -> Result<LiveEnvironments> {
        let read_at = std::time::Instant::now();
        let rows = envs::Entity::find()
            .find_also_related(proj::Entity)
            .all(&self.db)
            .await?;
        let serving: std::collections::HashSet<Uuid> = deployments::Entity::find()
            .select_only()
            .column(deployments::Column::EnvironmentId)
            .distinct()
            .filter(deployments::Column::Status.eq(SUCCESS))
            .into_tuple::<Uuid>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        Ok(LiveEnvironments {
            environments: rows
                .into_iter()
                .filter_map(|(e, p)| Some((env_ref(&p?, &e), serving.contains(&e.id))))
                .collect(),
            read_at,
        })
    }

    /// Brings the runtime's routing table in line with the store now.
    pub async fn refresh_routes(&self) -> Result<()> {
        let live = self.live_environments().await?;
        self.runtime.refresh_routes(&live).await
    }

    /// Asks for a routing refresh soon (after a domain change or a delete).
    pub fn routes_changed(&self) {
        self.refresh.notify_one();
    }

    /// Refreshes the routing table whenever asked, and every `every` in any
    /// case, so a table never stays stale (a delete made by another server
    /// on the same store reaches this one too).
    pub fn spawn_route_refresh(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = me.refresh.notified() => {}
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = me.refresh_routes().await {
                    tracing::warn!(error = e.message(), "refreshing the routing table failed");
                }
            }
        })
    }

    async fn run_teardown(&self, job: &jobs::Model) -> Result<()> {
        let t: Teardown = serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::bad_request(format!("job {} is not a teardown: {e}", job.id)))?;
        self.runtime.teardown(&t).await?;
        for env in &t.environments {
            self.logs.remove(env.environment_id);
        }
        if t.whole_project {
            sandboxes::free(&self.db, t.project_id).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for Deployer {
    async fn run(&self, job: &jobs::Model) -> Result<()> {
        let id = |key: &str| {
            job.payload[key]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| Error::bad_request(format!("job {} has no {key}", job.id)))
        };
        match job.kind.as_str() {
            "deploy" => self.run_deploy(id("deploymentId")?).await,
            "provision" => self.run_provision(id("environmentId")?).await,
            "teardown" => self.run_teardown(job).await,
            super::resources::PROVISION_JOB => {
                self.run_resource_provision(super::resources::provision_job(&job.payload)?)
                    .await
            }
            super::resources::DEPROVISION_JOB => {
                self.run_resource_deprovision(id("resourceId")?).await
            }
            other => Err(Error::bad_request(format!("unknown job kind {other}"))),
        }
    }

    async fn gave_up(&self, job: &jobs::Model, error: &str) {
        if job.kind.starts_with("resource.") {
            return self.resource_gave_up(job, error).await;
        }
        let Some(id) = job.deployment_id else { return };
        if let Ok(Some(d)) = deployments::Entity::find_by_id(id).one(&self.db).await
            && let Err(e) = self.set_status(&d, FAILED, Some(error.to_string())).await
        {
            tracing::error!(error = e.message(), "could not record a failed deployment");
        }
    }
}
