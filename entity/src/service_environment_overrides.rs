//! Per-environment overrides of a service's settings; unique by (service_id, environment_id).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "service_environment_overrides")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique_key = "service_environment")]
    pub service_id: Uuid,
    #[sea_orm(unique_key = "service_environment", indexed)]
    pub environment_id: Uuid,
    pub replicas: Option<i32>,
    pub port: Option<i32>,
    #[sea_orm(column_type = "Json", nullable)]
    pub resources: Option<Json>,
    pub docker_image: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::services::Entity",
        from = "Column::ServiceId",
        to = "super::services::Column::Id",
        on_delete = "Cascade"
    )]
    Services,
    #[sea_orm(
        belongs_to = "super::environments::Entity",
        from = "Column::EnvironmentId",
        to = "super::environments::Column::Id",
        on_delete = "Cascade"
    )]
    Environments,
}

impl Related<super::services::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Services.def()
    }
}

impl Related<super::environments::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Environments.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
