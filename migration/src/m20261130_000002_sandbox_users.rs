//! The local runtime's sandbox users: one uid per project (later, per
//! managed resource), never shared, never reused while its owner's files or
//! processes may exist. No foreign key: a deleted project's row stays until
//! its teardown has removed what ran and what was written as that uid.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SandboxUsers::Table)
                    .col(big_integer(SandboxUsers::Uid).primary_key())
                    .col(string(SandboxUsers::OwnerKind))
                    .col(uuid(SandboxUsers::OwnerId).unique_key())
                    .col(timestamp_with_time_zone(SandboxUsers::CreatedAt))
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SandboxUsers::Table).take())
            .await
    }
}

#[derive(DeriveIden)]
enum SandboxUsers {
    Table,
    Uid,
    OwnerKind,
    OwnerId,
    CreatedAt,
}
