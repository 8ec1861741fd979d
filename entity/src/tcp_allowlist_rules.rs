//! Source CIDRs allowed to reach a TCP proxy.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "tcp_allowlist_rules")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(indexed)]
    pub tcp_proxy_id: Uuid,
    pub cidr: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::tcp_proxies::Entity",
        from = "Column::TcpProxyId",
        to = "super::tcp_proxies::Column::Id",
        on_delete = "Cascade"
    )]
    TcpProxies,
}

impl Related<super::tcp_proxies::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::TcpProxies.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
