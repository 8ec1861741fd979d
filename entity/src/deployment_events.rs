//! The steps of a deployment, in order.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "deployment_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub deployment_id: Uuid,
    /// 1, 2, … within the deployment.
    pub seq: i32,
    /// `queued`, `cloning`, `building`, `releasing`, `starting`,
    /// `health-checking`, `switching`, `stopping-old`, `success`, `failed`
    /// or `cancelled`.
    pub step: String,
    pub message: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
