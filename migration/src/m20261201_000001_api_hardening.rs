//! Idempotency keys belong to the caller that first used them, and their
//! stored answers are sealed with the keyring (they may hold a new token);
//! GitHub webhook deliveries are remembered by their delivery id.
//!
//! Answers stored before this migration were plaintext and belong to no
//! caller: their bodies are cleared, and a request that repeats one of
//! their keys is refused rather than replayed.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyKeys::Table)
                    .add_column(string_null(IdempotencyKeys::Principal))
                    .take(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared("UPDATE idempotency_keys SET response_body = NULL")
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(string(WebhookDeliveries::DeliveryId).primary_key())
                    .col(timestamp_with_time_zone(WebhookDeliveries::ReceivedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_deliveries_received_at")
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::ReceivedAt)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookDeliveries::Table).take())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyKeys::Table)
                    .drop_column(IdempotencyKeys::Principal)
                    .take(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Principal,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    DeliveryId,
    ReceivedAt,
}
