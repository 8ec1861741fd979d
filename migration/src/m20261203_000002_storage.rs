//! What blob storage needs recorded beyond the initial table: whether
//! anonymous readers may fetch its objects (`public`), and the unique
//! indexes the S3 endpoint looks keys up by: one access key id names one
//! storage, and one prefix of a bucket belongs to one storage.

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
                    .add_column(boolean(Storage::Public).default(true))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_storage_access_key_id")
                    .table(Storage::Table)
                    .col(Storage::AccessKeyId)
                    .unique()
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_storage_bucket_prefix")
                    .table(Storage::Table)
                    .col(Storage::Bucket)
                    .col(Storage::Prefix)
                    .unique()
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in ["ux_storage_bucket_prefix", "ux_storage_access_key_id"] {
            manager
                .drop_index(Index::drop().name(name).table(Storage::Table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Storage::Table)
                    .drop_column(Storage::Public)
                    .take(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Storage {
    Table,
    Public,
    AccessKeyId,
    Bucket,
    Prefix,
}
