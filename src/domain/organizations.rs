//! Organisations: the tenant boundary. Every other resource belongs to one.

use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::{new_id, now, validate};
use crate::error::{Error, Result};
use entity::organizations;

pub async fn get<C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<organizations::Model> {
    organizations::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("organisation", id))
}

pub async fn find_by_slug<C: ConnectionTrait>(
    conn: &C,
    slug: &str,
) -> Result<Option<organizations::Model>> {
    Ok(organizations::Entity::find()
        .filter(organizations::Column::Slug.eq(slug))
        .one(conn)
        .await?)
}

/// Returns the organisation with `slug`, creating it if missing.
pub async fn ensure<C: ConnectionTrait>(conn: &C, slug: &str) -> Result<organizations::Model> {
    validate::dns_label("org", slug)?;
    if let Some(org) = find_by_slug(conn, slug).await? {
        return Ok(org);
    }
    let now = now();
    Ok(organizations::ActiveModel {
        id: Set(new_id()),
        slug: Set(slug.to_string()),
        name: Set(slug.to_string()),
        ai_monthly_budget_cents: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await?)
}

/// Whether the store has no organisation yet (first start).
pub async fn is_empty<C: ConnectionTrait>(conn: &C) -> Result<bool> {
    Ok(organizations::Entity::find().one(conn).await?.is_none())
}

/// Makes the organisation's creations take turns until the transaction
/// `conn` ends, so that two at once cannot both pass a quota: a row lock on
/// a shared PostgreSQL store (SQLite has one writer anyway).
pub async fn take_turns<C: ConnectionTrait>(conn: &C, id: Uuid) -> Result<()> {
    if conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        conn.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT id FROM organizations WHERE id = $1 FOR UPDATE",
            [id.into()],
        ))
        .await?;
    }
    Ok(())
}
