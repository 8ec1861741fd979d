//! Blob storage whose keys an upstream provider issues (Backblaze B2):
//! each storage records who issued its key (`provider`: `s3` for the
//! control plane's own endpoint, `b2`) and the S3 endpoint it was handed
//! (`endpoint`; empty for rows made before, which use the server's), and keys to be revoked at the
//! provider wait in `blob_key_revocations` until the provider confirms, so
//! that neither a deleted storage's key nor a key minted for a storage
//! whose creation failed outlives a crash or an outage of the provider.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Storage::Table)
                    .add_column(string(Storage::Provider).default("s3"))
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Storage::Table)
                    .add_column(string(Storage::Endpoint).default(""))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BlobKeyRevocations::Table)
                    .col(string(BlobKeyRevocations::AccessKeyId).primary_key())
                    .col(string(BlobKeyRevocations::Provider))
                    .col(timestamp_with_time_zone(BlobKeyRevocations::NotBefore))
                    .col(integer(BlobKeyRevocations::Attempts).default(0))
                    .col(text_null(BlobKeyRevocations::LastError))
                    .col(timestamp_with_time_zone(BlobKeyRevocations::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_blob_key_revocations_not_before")
                    .table(BlobKeyRevocations::Table)
                    .col(BlobKeyRevocations::NotBefore)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(BlobKeyRevocations::Table).to_owned())
            .await?;
        for column in [Storage::Endpoint, Storage::Provider] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Storage::Table)
                        .drop_column(column)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Storage {
    Table,
    Provider,
    Endpoint,
}

#[derive(DeriveIden)]
enum BlobKeyRevocations {
    Table,
    AccessKeyId,
    Provider,
    NotBefore,
    Attempts,
    LastError,
    CreatedAt,
}
