//! A domain serves one environment: a unique index on the lower-cased
//! domain of `environments`, so that concurrent writes cannot both take one.
//! NULLs (no domain) do not collide.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // A store written before this index may hold a domain twice (two
        // requests that raced); say which one instead of failing on the index.
        let shared = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT lower(domain) AS domain FROM environments \
                 WHERE domain IS NOT NULL GROUP BY lower(domain) HAVING COUNT(*) > 1",
            ))
            .await?;
        if let Some(row) = shared {
            let domain: String = row.try_get("", "domain")?;
            return Err(DbErr::Migration(format!(
                "several environments have the domain '{domain}'; \
                 clear it on all but one, then migrate again"
            )));
        }
        db.execute_unprepared(
            "CREATE UNIQUE INDEX uq_environments_domain_lower ON environments (lower(domain))",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX uq_environments_domain_lower")
            .await?;
        Ok(())
    }
}
