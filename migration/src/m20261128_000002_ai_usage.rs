//! AI gateway usage: tokens, requests and cost per organisation, API token,
//! model and day. One row per key and day, incremented in place by the
//! gateway's batched writer, so the table grows with days, not requests.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AiUsage::Table)
                    .col(pk_uuid(AiUsage::Id))
                    .col(uuid(AiUsage::OrganizationId))
                    // No foreign key: usage outlives a deleted token, for billing.
                    .col(uuid(AiUsage::ApiKeyId))
                    .col(string(AiUsage::Model))
                    .col(date(AiUsage::Day))
                    .col(big_integer(AiUsage::Requests).default(0))
                    .col(big_integer(AiUsage::PromptTokens).default(0))
                    .col(big_integer(AiUsage::CompletionTokens).default(0))
                    .col(big_integer(AiUsage::CostMicroUsd).default(0))
                    .col(timestamp_with_time_zone(AiUsage::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_ai_usage_organization_id")
                            .from(AiUsage::Table, AiUsage::OrganizationId)
                            .to(Organizations::Table, Organizations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        // The upsert's conflict target, and the (organisation, day range) reads.
        manager
            .create_index(
                Index::create()
                    .name("idx_ai_usage_key")
                    .table(AiUsage::Table)
                    .col(AiUsage::OrganizationId)
                    .col(AiUsage::Day)
                    .col(AiUsage::Model)
                    .col(AiUsage::ApiKeyId)
                    .unique()
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AiUsage::Table).take())
            .await
    }
}

#[derive(DeriveIden)]
enum AiUsage {
    Table,
    Id,
    OrganizationId,
    ApiKeyId,
    Model,
    Day,
    Requests,
    PromptTokens,
    CompletionTokens,
    CostMicroUsd,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
}
