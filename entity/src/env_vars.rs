//! Environment variables of an environment; values are stored encrypted. Unique by (environment_id, key).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "env_vars")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique_key = "environment_key")]
    pub environment_id: Uuid,
    #[sea_orm(unique_key = "environment_key")]
    pub key: String,
    #[sea_orm(column_type = "Text")]
    pub value_ciphertext: String,
    pub secret: bool,
    /// `user` by default; other values name the origin (e.g. a resource binding).
    #[sea_orm(default_value = "user")]
    pub source: String,
    /// The resource binding that produced this variable (no foreign key).
    pub binding_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::environments::Entity",
        from = "Column::EnvironmentId",
        to = "super::environments::Column::Id",
        on_delete = "Cascade"
    )]
    Environments,
}

impl Related<super::environments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Environments.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
