//! Database migrations of the Sylphx control plane (SQLite and PostgreSQL).

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_initial;
mod m20261128_000002_ai_usage;
mod m20261130_000001_environment_domains;
mod m20261130_000002_sandbox_users;
mod m20261201_000001_api_hardening;
mod m20261201_000002_deployment_events;
mod m20261202_000001_resource_instances;
mod m20261203_000002_storage;
mod m20261204_000001_list_order;
mod m20261205_000001_blob_keys;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_initial::Migration),
            Box::new(m20261128_000002_ai_usage::Migration),
            Box::new(m20261130_000001_environment_domains::Migration),
            Box::new(m20261130_000002_sandbox_users::Migration),
            Box::new(m20261201_000001_api_hardening::Migration),
            Box::new(m20261201_000002_deployment_events::Migration),
            Box::new(m20261202_000001_resource_instances::Migration),
            Box::new(m20261203_000002_storage::Migration),
            Box::new(m20261204_000001_list_order::Migration),
            Box::new(m20261205_000001_blob_keys::Migration),
        ]
    }
}
