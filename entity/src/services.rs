//! Services (deployable units) of a project; unique by (project_id, name).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "services")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique_key = "project_name")]
    pub project_id: Uuid,
    #[sea_orm(unique_key = "project_name")]
    pub name: String,
    pub port: Option<i32>,
    pub dockerfile_path: String,
    pub replicas: i32,
    #[sea_orm(column_type = "Json", nullable)]
    pub resources: Option<Json>,
    pub status: String,
    pub latest_image: Option<String>,
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
    #[sea_orm(has_many = "super::service_environment_overrides::Entity")]
    ServiceEnvironmentOverrides,
}

impl Related<super::projects::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Projects.def()
    }
}

impl Related<super::service_environment_overrides::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ServiceEnvironmentOverrides.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
