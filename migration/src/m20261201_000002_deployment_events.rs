//! The steps a deployment went through (queued, cloning, building, …,
//! success / failed / cancelled), in order, for `deploymentEvents`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeploymentEvents::Table)
                    .col(uuid(DeploymentEvents::Id).primary_key())
                    .col(uuid(DeploymentEvents::DeploymentId))
                    .col(integer(DeploymentEvents::Seq))
                    .col(string(DeploymentEvents::Step))
                    .col(text_null(DeploymentEvents::Message))
                    .col(timestamp_with_time_zone(DeploymentEvents::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_deployment_events_deployment")
                            .from(DeploymentEvents::Table, DeploymentEvents::DeploymentId)
                            .to(Deployments::Table, Deployments::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_deployment_events_seq")
                    .table(DeploymentEvents::Table)
                    .col(DeploymentEvents::DeploymentId)
                    .col(DeploymentEvents::Seq)
                    .unique()
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(DeploymentEvents::Table).take())
            .await
    }
}

#[derive(DeriveIden)]
enum DeploymentEvents {
    Table,
    Id,
    DeploymentId,
    Seq,
    Step,
    Message,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    Id,
}
