//! Managed resources (databases, caches, ...) owned by an organization.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "resources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(indexed)]
    pub organization_id: Uuid,
    pub name: String,
    pub kind: String,
    pub provider: String,
    #[sea_orm(column_type = "Json", nullable)]
    pub config: Option<Json>,
    pub status: String,
    pub reconcile_status: String,
    pub tier: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub message: Option<String>,
    /// Encrypted connection details.
    #[sea_orm(column_type = "Text", nullable)]
    pub connection_ciphertext: Option<String>,
    pub public_host: Option<String>,
    /// The resource this one was cloned/forked from (no foreign key).
    pub source_resource_id: Option<Uuid>,
    /// The port it listens on (local runtime), unique.
    #[sea_orm(unique)]
    pub port: Option<i32>,
    /// The environment a branch was made for (`staging` by default).
    pub branch_env: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
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
