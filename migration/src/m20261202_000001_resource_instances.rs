//! What a managed data service needs recorded: the port it listens on
//! (local runtime; unique, so two resources never share one), and the
//! environment a branch was made for.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Resources::Table)
                    .add_column(integer_null(Resources::Port))
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Resources::Table)
                    .add_column(string_null(Resources::BranchEnv))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_resources_port")
                    .table(Resources::Table)
                    .col(Resources::Port)
                    .unique()
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ux_resources_port")
                    .table(Resources::Table)
                    .to_owned(),
            )
            .await?;
        for col in [Resources::BranchEnv, Resources::Port] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Resources::Table)
                        .drop_column(col)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Resources {
    Table,
    Port,
    BranchEnv,
}
