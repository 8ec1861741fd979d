//! Indexes in the order lists are read: an organisation's projects by id
//! (a page is an index range that stops at its last row, where before the
//! store read every project of the organisation and sorted them), and a
//! project's environments and services by id (its nested lists come out
//! of the index already in order, with no sort per project).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (name, table, columns) of each index.
const INDEXES: [(&str, &str, [&str; 2]); 3] = [
    (
        "idx_projects_organization_id_id",
        "projects",
        ["organization_id", "id"],
    ),
    (
        "idx_environments_project_id_id",
        "environments",
        ["project_id", "id"],
    ),
    (
        "idx_services_project_id_id",
        "services",
        ["project_id", "id"],
    ),
];

/// The index the first one replaces (its leading column).
const REPLACED: (&str, &str, &str) = (
    "idx_projects_organization_id",
    "projects",
    "organization_id",
);

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, columns) in INDEXES {
            let mut index = Index::create();
            index.name(name).table(Alias::new(table));
            for c in columns {
                index.col(Alias::new(c));
            }
            manager.create_index(index.take()).await?;
        }
        let (name, table, _) = REPLACED;
        manager
            .drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let (name, table, column) = REPLACED;
        manager
            .create_index(
                Index::create()
                    .name(name)
                    .table(Alias::new(table))
                    .col(Alias::new(column))
                    .take(),
            )
            .await?;
        for (name, table, _) in INDEXES {
            manager
                .drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}
