//! Stored responses for `Idempotency-Key` requests; unique by (organization_id, key).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique_key = "organization_key")]
    pub organization_id: Uuid,
    #[sea_orm(unique_key = "organization_key")]
    pub key: String,
    pub request_hash: String,
    /// `in_progress` | `done`.
    pub state: String,
    pub response_status: Option<i32>,
    #[sea_orm(column_type = "Text", nullable)]
    /// Sealed with the keyring.
    pub response_body: Option<String>,
    pub response_content_type: Option<String>,
    /// Who made the first request (`token:<key id>`, `user:<subject>`,
    /// `system`); only they may replay it. `None` on rows stored before
    /// answers were bound to their caller.
    pub principal: Option<String>,
    pub created_at: DateTimeUtc,
    #[sea_orm(indexed)]
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::organizations::Entity",
        from = "Column::OrganizationId",
        to = "super::organizations::Column::Id",
        on_delete = "Cascade"
    )]
    Organizations,
}

impl Related<super::organizations::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Organizations.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
