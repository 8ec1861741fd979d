//! Persistent volumes of a project: queries and mutations. Resolvers are
//! thin; the rules live in `domain::volumes`.

use async_graphql::{Context, ID, Object, Result};

use super::domain_ctx;
use super::types::Timestamp;
use crate::domain::deployments::Deployer;
use crate::domain::volumes::{CreateVolumeInput, View};
use crate::error::Error;

fn deployer<'a>(ctx: &Context<'a>) -> Result<&'a Deployer, Error> {
    ctx.data_opt::<Deployer>()
        .ok_or_else(|| Error::Unavailable("no runtime is configured".into()))
}

/// A persistent volume of a project's service.
pub struct Volume(pub View);

#[Object]
impl Volume {
    async fn id(&self) -> ID {
        ID(self.0.row.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.row.name
    }
    /// Where the service's replicas see it.
    async fn mount_path(&self) -> &str {
        &self.0.row.mount_path
    }
    async fn size_gb(&self) -> i32 {
        self.0.row.size_gb
    }
    /// `pending` until a running release of its service mounts it, then
    /// `bound`.
    async fn status(&self) -> &str {
        self.0.status()
    }
    /// The service that mounts it (null once that service is deleted).
    async fn service(&self) -> Option<&str> {
        self.0.service.as_deref()
    }
    async fn service_id(&self) -> Option<ID> {
        self.0.row.service_id.map(|i| ID(i.to_string()))
    }
    /// The environment's name (`production`, …).
    async fn environment(&self) -> &str {
        &self.0.environment
    }
    async fn environment_id(&self) -> Option<ID> {
        self.0.row.environment_id.map(|i| ID(i.to_string()))
    }
    /// Bytes in use, where the runtime measures them.
    async fn used_bytes(&self) -> Option<i64> {
        self.0
            .state
            .used_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
    }
    /// What the runtime has to say about it (e.g. that its size is not
    /// enforced on this machine).
    async fn message(&self) -> Option<&str> {
        self.0.state.message.as_deref()
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.row.created_at)
    }
    async fn updated_at(&self) -> Timestamp {
        Timestamp(self.0.row.updated_at)
    }
}

#[derive(Default)]
pub struct VolumeQuery;

#[Object]
impl VolumeQuery {
    /// A project's persistent volumes, oldest first.
    async fn volumes(&self, ctx: &Context<'_>, project_id: String) -> Result<Vec<Volume>> {
        let list = deployer(ctx)?
            .list_volumes(domain_ctx(ctx)?, &project_id)
            .await?;
        Ok(list.into_iter().map(Volume).collect())
    }

    /// One volume of a project.
    async fn volume(&self, ctx: &Context<'_>, project_id: String, id: ID) -> Result<Volume> {
        Ok(Volume(
            deployer(ctx)?
                .volume(domain_ctx(ctx)?, &project_id, &id)
                .await?,
        ))
    }
}

#[derive(Default)]
pub struct VolumeMutation;

#[Object]
impl VolumeMutation {
    /// Creates a volume for a service; the next deploy of the service
    /// mounts it.
    async fn create_volume(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        input: CreateVolumeInput,
    ) -> Result<Volume> {
        Ok(Volume(
            deployer(ctx)?
                .create_volume(domain_ctx(ctx)?, &project_id, input)
                .await?,
        ))
    }

    /// Deletes a volume and all its data, for good.
    async fn delete_volume(&self, ctx: &Context<'_>, project_id: String, id: ID) -> Result<bool> {
        deployer(ctx)?
            .delete_volume(domain_ctx(ctx)?, &project_id, &id)
            .await?;
        Ok(true)
    }
}
