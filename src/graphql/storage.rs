//! Blob storage of project environments: queries and mutations. Resolvers
//! are thin; the rules live in `domain::storage`, the S3 endpoint in
//! `crate::blob`.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Json, Object, Result};
use serde_json::Value;

use super::domain_ctx;
use super::types::Timestamp;
use crate::domain::storage::{NewStorage, StorageView, Storages};
use crate::error::Error;

fn storages<'a>(ctx: &Context<'a>) -> Result<&'a Storages, Error> {
    ctx.data_opt::<Arc<Storages>>()
        .map(Arc::as_ref)
        .ok_or_else(|| Error::Unavailable("blob storage is not configured".into()))
}

/// A prefix of the platform's bucket with an S3 access key pair of its own.
pub struct Storage(pub StorageView);

#[Object]
impl Storage {
    async fn id(&self) -> ID {
        ID(self.0.row.id.to_string())
    }
    /// `primary` unless named otherwise; unique within its environment.
    async fn name(&self) -> &str {
        &self.0.row.name
    }
    /// The environment's name (`production`, `staging`, …).
    async fn env_type(&self) -> &str {
        &self.0.env_name
    }
    async fn environment_id(&self) -> ID {
        ID(self.0.row.environment_id.to_string())
    }
    async fn bucket(&self) -> &str {
        &self.0.row.bucket
    }
    /// Every key of this storage starts with it.
    async fn prefix(&self) -> &str {
        &self.0.row.prefix
    }
    async fn access_key_id(&self) -> &str {
        &self.0.row.access_key_id
    }
    /// Whether anonymous GET/HEAD of its objects is served at `publicUrl`.
    async fn public(&self) -> bool {
        self.0.row.public
    }
    /// `<endpoint>/<bucket>/<prefix>`: append an object's key past the prefix.
    async fn public_url(&self) -> &str {
        &self.0.row.public_url
    }
    /// The `BLOB_*` variables written into the environment; the
    /// application key only in the answer that created it, `***` after.
    async fn env_vars(&self) -> Json<Value> {
        Json(Value::Object(
            self.0
                .env_vars
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ))
    }
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.row.created_at)
    }
    async fn updated_at(&self) -> Timestamp {
        Timestamp(self.0.row.updated_at)
    }
}

#[derive(InputObject)]
pub struct CreateStorageInput {
    /// The environment's name: `production`, `staging`, `preview` or any
    /// other environment of the project.
    pub env_type: String,
    /// `primary` by default; a DNS label.
    pub name: Option<String>,
    /// Serve objects to anonymous GET/HEAD at `publicUrl` (default true).
    pub public: Option<bool>,
}

#[derive(InputObject)]
pub struct UpdateStorageInput {
    /// Serve objects to anonymous GET/HEAD at `publicUrl`.
    pub public: bool,
}

#[derive(Default)]
pub struct StorageQuery;

#[Object]
impl StorageQuery {
    /// A project's storages, oldest first, application keys masked.
    async fn storages(&self, ctx: &Context<'_>, project_id: String) -> Result<Vec<Storage>> {
        let list = storages(ctx)?.list(domain_ctx(ctx)?, &project_id).await?;
        Ok(list.into_iter().map(Storage).collect())
    }
}

#[derive(Default)]
pub struct StorageMutation;

#[Object]
impl StorageMutation {
    /// Provisions a storage with S3 credentials that work at once and
    /// writes them into the environment as managed secret env vars.
    async fn create_storage(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        input: CreateStorageInput,
    ) -> Result<Storage> {
        let view = storages(ctx)?
            .create(
                domain_ctx(ctx)?,
                &project_id,
                NewStorage {
                    env_type: input.env_type,
                    name: input.name,
                    public: input.public,
                },
            )
            .await?;
        Ok(Storage(view))
    }

    /// Makes a storage's objects public or private.
    async fn update_storage(
        &self,
        ctx: &Context<'_>,
        project_id: String,
        id: ID,
        input: UpdateStorageInput,
    ) -> Result<Storage> {
        let view = storages(ctx)?
            .set_public(domain_ctx(ctx)?, &project_id, &id, input.public)
            .await?;
        Ok(Storage(view))
    }

    /// Revokes a storage's key at once and removes its env vars; its
    /// objects stay.
    async fn delete_storage(&self, ctx: &Context<'_>, project_id: String, id: ID) -> Result<bool> {
        Ok(storages(ctx)?
            .delete(domain_ctx(ctx)?, &project_id, &id)
            .await?)
    }
}
