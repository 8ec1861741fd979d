//! Keys issued by an upstream blob provider that are to be revoked there:
//! a deleted storage's key (at once), or a key minted for a storage whose
//! creation may not have committed (after `not_before`, unless a storage
//! holds it by then). A row goes once the provider confirms.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "blob_key_revocations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub access_key_id: String,
    pub provider: String,
    #[sea_orm(indexed)]
    pub not_before: DateTimeUtc,
    pub attempts: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
