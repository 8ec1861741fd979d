//! Object-storage credentials of a project environment; unique by (project_id, environment_id, name).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "storage")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique_key = "project_environment_name")]
    pub project_id: Uuid,
    #[sea_orm(unique_key = "project_environment_name", indexed)]
    pub environment_id: Uuid,
    #[sea_orm(unique_key = "project_environment_name")]
    pub name: String,
    pub bucket: String,
    pub prefix: String,
    pub access_key_id: String,
    #[sea_orm(column_type = "Text")]
    pub secret_ciphertext: String,
    pub public_url: String,
    /// Anonymous GET/HEAD of its objects is served (added by m20261203_000002).
    #[sea_orm(default_value = true)]
    pub public: bool,
    pub revoked_at: Option<DateTimeUtc>,
    /// Who issued its key: `s3` (the control plane's endpoint) or `b2`
    /// (added by m20261205_000001).
    #[sea_orm(default_value = "s3")]
    pub provider: String,
    /// The S3 endpoint its key works at (`BLOB_ENDPOINT`); empty for rows
    /// made before m20261205_000001 (the server's own endpoint).
    #[sea_orm(default_value = "")]
    pub endpoint: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::projects::Entity",
        from = "Column::ProjectId",
        to = "super::projects::Column::Id",
        on_delete = "Cascade"
    )]
    Projects,
    #[sea_orm(
        belongs_to = "super::environments::Entity",
        from = "Column::EnvironmentId",
        to = "super::environments::Column::Id",
        on_delete = "Cascade"
    )]
    Environments,
}

impl Related<super::projects::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Projects.def()
    }
}

impl Related<super::environments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Environments.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
