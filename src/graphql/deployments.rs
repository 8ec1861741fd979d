//! Deployments, live status and logs in GraphQL.

use async_graphql::{Context, ID, Object, Result, SimpleObject};

use super::types::Timestamp;
use super::{db, domain_ctx};
use crate::domain::deployments::{self, Deployer, LogArgs, Trigger};
use crate::error::Error;
use entity::deployments as rows;

fn deployer<'a>(ctx: &Context<'a>) -> Result<&'a Deployer, Error> {
    ctx.data_opt::<Deployer>()
        .ok_or_else(|| Error::Unavailable("no runtime is configured".into()))
}

pub struct Deployment(pub rows::Model);

#[Object]
impl Deployment {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// `queued`, `building`, `deploying`, `success`, `failed` or `cancelled`.
    async fn status(&self) -> &str {
        &self.0.status
    }
    async fn git_commit(&self) -> Option<&str> {
        self.0.git_commit.as_deref()
    }
    async fn git_branch(&self) -> Option<&str> {
        self.0.git_branch.as_deref()
    }
    /// `api`, `push` or `rollback`.
    async fn triggered_by(&self) -> &str {
        &self.0.triggered_by
    }
    async fn started_at(&self) -> Option<Timestamp> {
        self.0.started_at.map(Timestamp)
    }
    async fn finished_at(&self) -> Option<Timestamp> {
        self.0.finished_at.map(Timestamp)
    }
    async fn image(&self) -> Option<&str> {
        self.0.image.as_deref()
    }
    /// Why it failed; null unless `status` is `failed`.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn environment_id(&self) -> ID {
        ID(self.0.environment_id.to_string())
    }
    async fn rollback_target_id(&self) -> Option<ID> {
        self.0.rollback_target_id.map(|i| ID(i.to_string()))
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.created_at)
    }
}

#[derive(SimpleObject)]
pub struct Replicas {
    pub ready: i32,
    pub desired: i32,
}

#[derive(SimpleObject)]
pub struct ServiceRuntimeStatus {
    pub name: String,
    pub state: String,
    pub ready: i32,
    pub desired: i32,
    pub restarts: i32,
}

/// Live status of an environment, from the runtime.
#[derive(SimpleObject)]
pub struct ProjectStatus {
    /// `not_deployed`, `deploying` (a deployment of the environment is in
    /// flight), `running`, `degraded` (fewer ready than desired), `crashed`
    /// or `stopped`.
    pub status: String,
    pub environment: String,
    pub replicas: Replicas,
    pub services: Vec<ServiceRuntimeStatus>,
    /// The deployment in flight, else the newest that succeeded.
    pub deployment_id: Option<ID>,
}

impl ProjectStatus {
    fn new(
        environment: String,
        status: crate::runtime::EnvironmentStatus,
        deployment: Option<uuid::Uuid>,
    ) -> ProjectStatus {
        ProjectStatus {
            status: status.status.clone(),
            environment,
            replicas: Replicas {
                ready: n(status.ready()),
                desired: n(status.desired()),
            },
            services: status
                .services
                .into_iter()
                .map(|s| ServiceRuntimeStatus {
                    name: s.name,
                    state: s.state,
                    ready: n(s.ready),
                    desired: n(s.desired),
                    restarts: n(s.restarts),
                })
                .collect(),
            deployment_id: deployment.map(|d| ID(d.to_string())),
        }
    }
}

#[derive(SimpleObject)]
pub struct LogEntry {
    pub ts: Timestamp,
    /// Replica, `build`, `release` or `deploy`.
    pub source: String,
    /// `info` (stdout), `error` (stderr, failures) or `warning`.
    pub level: String,
    pub msg: String,
    pub deployment_id: Option<ID>,
    /// Where the line stands in its environment's history; `after` of the
    /// `logs` subscription (and SSE's `Last-Event-ID`) resumes after it.
    /// Null where the runtime numbers no lines (Kubernetes).
    pub cursor: Option<String>,
    /// `stdout`, `stderr`, `build`, `release` or `system` (the platform's
    /// own lines: rollout progress, exits, lagged notices).
    pub stream: String,
    /// The service whose process wrote the line.
    pub service: Option<String>,
    /// The replica (`web.1`, a pod name) that wrote the line.
    pub replica: Option<String>,
}

impl From<crate::runtime::LogLine> for LogEntry {
    fn from(l: crate::runtime::LogLine) -> Self {
        LogEntry {
            ts: Timestamp(l.ts),
            source: l.source,
            level: l.level,
            msg: l.msg,
            deployment_id: l.deployment_id.map(|d| ID(d.to_string())),
            cursor: (l.cursor != 0).then(|| l.cursor.to_string()),
            stream: l.stream,
            service: l.service,
            replica: l.replica,
        }
    }
}

/// One step of a deployment.
#[derive(SimpleObject)]
pub struct DeploymentEvent {
    pub deployment_id: ID,
    /// 1, 2, … in the order the steps happened.
    pub seq: i32,
    /// `queued`, `cloning`, `building`, `releasing`, `starting`,
    /// `health-checking`, `switching`, `stopping-old`, then `success`,
    /// `failed` or `cancelled`.
    pub step: String,
    /// What happened (for `failed`: why).
    pub message: Option<String>,
    pub at: Timestamp,
}

impl From<entity::deployment_events::Model> for DeploymentEvent {
    fn from(e: entity::deployment_events::Model) -> Self {
        DeploymentEvent {
            deployment_id: ID(e.deployment_id.to_string()),
            seq: e.seq,
            step: e.step,
            message: e.message,
            at: Timestamp(e.created_at),
        }
    }
}

/// Live streams over the websocket (`/graphql/ws`).
#[derive(Default)]
pub struct Subscription;

#[async_graphql::Subscription(name = "DeploymentSubscription")]
impl Subscription {
    /// The last `tail` log lines (0 to 1000, default 200) of an environment
    /// (`envType`, default `production`) or of one deployment, then each new
    /// line as it is captured. Without `deploymentId` it follows the
    /// environment across deploys and restarts: a new release's lines
    /// arrive on the same subscription. With `deploymentId` it completes
    /// once that deployment's processes have stopped (it failed, or a newer
    /// deployment of its environment succeeded). `after` (a line's `cursor`) sends
    /// every kept line after it instead of the last `tail`: a client that
    /// reconnects misses nothing and gets nothing twice, also across a
    /// server restart. `service` keeps one service's lines; `filter` keeps
    /// lines containing a text, or `level:error` (any level) lines of one
    /// level.
    #[allow(clippy::too_many_arguments)]
    async fn logs(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: Option<String>,
        service: Option<String>,
        deployment_id: Option<ID>,
        tail: Option<i32>,
        after: Option<String>,
        filter: Option<String>,
    ) -> Result<impl futures_util::Stream<Item = LogEntry> + use<>> {
        let after = after
            .map(|a| a.trim().parse::<u64>())
            .transpose()
            .map_err(|_| Error::field("after", "must be the cursor of a log line"))?;
        let args = LogArgs {
            env_type: env_type.as_deref(),
            service: service.as_deref(),
            deployment: deployment_id.as_ref().map(|d| d.as_str()),
            filter: filter.as_deref(),
            tail,
            after,
        };
        let lines = deployer(ctx)?
            .follow(domain_ctx(ctx)?, &project_id, &args)
            .await?;
        Ok(futures_util::StreamExt::map(lines, LogEntry::from))
    }

    /// The steps of a deployment already passed, then each new one as it
    /// happens (`queued`, `cloning`, `building`, `releasing`, `starting`,
    /// `health-checking`, `switching`, `stopping-old`, then `success`,
    /// `failed` or `cancelled`); completes after the last. A deployment
    /// that ended long ago gives its whole timeline, then completes.
    async fn deployment_events(
        &self,
        ctx: &Context<'_>,
        deployment_id: ID,
    ) -> Result<impl futures_util::Stream<Item = DeploymentEvent> + use<>> {
        let events = deployer(ctx)?
            .events(domain_ctx(ctx)?, &deployment_id)
            .await?;
        Ok(futures_util::StreamExt::map(events, DeploymentEvent::from))
    }

    /// The live status of an environment (production by default) now,
    /// then each time it changes: a deployment queued or moving on, a
    /// replica started, crashed or restarted.
    async fn project_status(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: Option<String>,
    ) -> Result<impl futures_util::Stream<Item = ProjectStatus> + use<>> {
        let deployer = deployer(ctx)?;
        let ctx = domain_ctx(ctx)?;
        let (env, _, _) = deployer
            .status(ctx, &project_id, env_type.as_deref())
            .await?;
        let changes = deployer
            .watch_status(ctx, &project_id, env_type.as_deref())
            .await?;
        Ok(futures_util::StreamExt::map(changes, move |(status, d)| {
            ProjectStatus::new(env.name.clone(), status, d)
        }))
    }
}

#[derive(SimpleObject)]
pub struct DeployResult {
    pub deployment_id: ID,
    /// Always `triggered`: the work happens in the background.
    pub status: String,
    pub environment: String,
}

#[derive(SimpleObject)]
pub struct RollbackResult {
    pub deployment_id: ID,
    /// Always `rolling-back`.
    pub status: String,
    pub target_deployment_id: ID,
}

#[derive(SimpleObject)]
pub struct ProvisionResult {
    pub environment_id: ID,
    /// Always `provisioning`.
    pub status: String,
    pub job_id: ID,
}

#[derive(SimpleObject)]
pub struct LatestImage {
    pub image: String,
}

fn n(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

#[derive(Default)]
pub struct DeploymentQuery;

#[Object]
impl DeploymentQuery {
    /// Deployment history, newest first (`limit` 20 by default, at most 100).
    async fn deployments(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: Option<String>,
        limit: Option<i32>,
    ) -> Result<Vec<Deployment>> {
        let rows = deployments::list(
            db(ctx),
            domain_ctx(ctx)?,
            &project_id,
            env_type.as_deref(),
            limit,
        )
        .await?;
        Ok(rows.into_iter().map(Deployment).collect())
    }

    /// Live status of an environment (production by default).
    async fn project_status(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: Option<String>,
    ) -> Result<ProjectStatus> {
        let (env, status, deployment) = deployer(ctx)?
            .status(domain_ctx(ctx)?, &project_id, env_type.as_deref())
            .await?;
        Ok(ProjectStatus::new(env.name, status, deployment))
    }

    /// The last log lines (`tail` 200 by default, at most 1000), of one
    /// deployment or service, or matching `filter` (a text, or
    /// `level:error`), if asked.
    #[allow(clippy::too_many_arguments)]
    async fn project_logs(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: Option<String>,
        tail: Option<i32>,
        deployment_id: Option<ID>,
        service: Option<String>,
        filter: Option<String>,
    ) -> Result<Vec<LogEntry>> {
        let args = LogArgs {
            env_type: env_type.as_deref(),
            service: service.as_deref(),
            deployment: deployment_id.as_ref().map(|d| d.as_str()),
            filter: filter.as_deref(),
            tail,
            after: None,
        };
        let lines = deployer(ctx)?
            .logs(domain_ctx(ctx)?, &project_id, &args)
            .await?;
        Ok(lines.into_iter().map(LogEntry::from).collect())
    }

    /// The newest image built for a service.
    async fn latest_image(&self, ctx: &Context<'_>, service_id: ID) -> Result<LatestImage> {
        Ok(LatestImage {
            image: deployments::latest_image(db(ctx), domain_ctx(ctx)?, &service_id).await?,
        })
    }
}

#[derive(Default)]
pub struct DeploymentMutation;

#[Object]
impl DeploymentMutation {
    /// Builds (git) or re-deploys (image) an environment with its current env vars.
    async fn deploy(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        env_type: Option<String>,
    ) -> Result<DeployResult> {
        let (d, env) = deployer(ctx)?
            .deploy(
                domain_ctx(ctx)?,
                &project_id,
                env_type.as_deref(),
                Trigger::Api,
                None,
            )
            .await?;
        Ok(DeployResult {
            deployment_id: ID(d.id.to_string()),
            status: "triggered".into(),
            environment: env.name,
        })
    }

    /// Restores an earlier successful deployment's image and env vars.
    async fn rollback(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        deployment_id: ID,
    ) -> Result<RollbackResult> {
        let d = deployer(ctx)?
            .rollback(domain_ctx(ctx)?, &project_id, &deployment_id)
            .await?;
        Ok(RollbackResult {
            deployment_id: ID(d.id.to_string()),
            status: "rolling-back".into(),
            target_deployment_id: deployment_id,
        })
    }

    /// Creates an environment's infrastructure (namespace, secrets, route).
    async fn provision_environment(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        environment_id: ID,
    ) -> Result<ProvisionResult> {
        let (env, job) = deployer(ctx)?
            .provision(domain_ctx(ctx)?, &project_id, &environment_id)
            .await?;
        Ok(ProvisionResult {
            environment_id: ID(env.id.to_string()),
            status: "provisioning".into(),
            job_id: ID(job.to_string()),
        })
    }
}
