//! The project config store: plain key/value settings read through the API,
//! never injected as env vars.

use std::collections::HashSet;

use async_graphql::InputObject;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::{Ctx, new_id, now, projects, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use entity::config_entries;

#[derive(Debug, Clone, InputObject)]
pub struct ConfigEntryInput {
    pub key: String,
    pub value: String,
}

pub async fn list<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    project: &str,
) -> Result<Vec<config_entries::Model>> {
    let project = projects::resolve(conn, ctx, project).await?;
    Ok(config_entries::Entity::find()
        .filter(config_entries::Column::ProjectId.eq(project.id))
        .order_by_asc(config_entries::Column::Key)
        .all(conn)
        .await?)
}

async fn find<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    key: &str,
) -> Result<Option<config_entries::Model>> {
    Ok(config_entries::Entity::find()
        .filter(config_entries::Column::ProjectId.eq(project_id))
        .filter(config_entries::Column::Key.eq(key))
        .one(conn)
        .await?)
}

pub async fn get<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    project: &str,
    key: &str,
) -> Result<config_entries::Model> {
    validate::config_key("key", key)?;
    let project = projects::resolve(conn, ctx, project).await?;
    find(conn, project.id, key)
        .await?
        .ok_or_else(|| Error::not_found("config key", key))
}

/// Upserts entries, all or nothing; returns the project's whole config.
pub async fn set_many(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    entries: Vec<ConfigEntryInput>,
) -> Result<Vec<config_entries::Model>> {
    ctx.require(Role::Write)?;
    if entries.is_empty() {
        return Err(Error::field("entries", "must contain at least one entry"));
    }
    if entries.len() > validate::MAX_ENTRIES {
        return Err(Error::field(
            "entries",
            format!("at most {} entries per request", validate::MAX_ENTRIES),
        ));
    }
    let mut seen = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        validate::config_key(&format!("entries[{i}].key"), &e.key)?;
        validate::long_text(
            &format!("entries[{i}].value"),
            &e.value,
            validate::MAX_VALUE_CHARS,
        )?;
        if !seen.insert(e.key.as_str()) {
            return Err(Error::field(
                &format!("entries[{i}].key"),
                format!("'{}' appears twice", e.key),
            ));
        }
    }
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    for e in &entries {
        upsert(&txn, project.id, &e.key, &e.value).await?;
    }
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    audit::record(
        &txn,
        ctx,
        "config.set",
        Target::new("project", project.id).in_project(project.id),
        Some(json!({ "keys": keys })),
    )
    .await?;
    let all = config_entries::Entity::find()
        .filter(config_entries::Column::ProjectId.eq(project.id))
        .order_by_asc(config_entries::Column::Key)
        .all(&txn)
        .await?;
    txn.commit().await?;
    Ok(all)
}

async fn upsert<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    key: &str,
    value: &str,
) -> Result<config_entries::Model> {
    let now = now();
    Ok(match find(conn, project_id, key).await? {
        Some(row) => {
            let mut active = row.into_active_model();
            active.value = Set(value.to_string());
            active.updated_at = Set(now);
            active.update(conn).await?
        }
        None => {
            config_entries::ActiveModel {
                id: Set(new_id()),
                project_id: Set(project_id),
                key: Set(key.to_string()),
                value: Set(value.to_string()),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(conn)
            .await?
        }
    })
}

/// Upserts one entry.
pub async fn set_one(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    key: &str,
    value: &str,
) -> Result<config_entries::Model> {
    ctx.require(Role::Write)?;
    validate::config_key("key", key)?;
    validate::long_text("value", value, validate::MAX_VALUE_CHARS)?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let row = upsert(&txn, project.id, key, value).await?;
    audit::record(
        &txn,
        ctx,
        "config.set",
        Target::new("project", project.id).in_project(project.id),
        Some(json!({ "keys": [key] })),
    )
    .await?;
    txn.commit().await?;
    Ok(row)
}

pub async fn delete(db: &DatabaseConnection, ctx: &Ctx, project: &str, key: &str) -> Result<()> {
    ctx.require(Role::Write)?;
    validate::config_key("key", key)?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let res = config_entries::Entity::delete_many()
        .filter(config_entries::Column::ProjectId.eq(project.id))
        .filter(config_entries::Column::Key.eq(key))
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        return Err(Error::not_found("config key", key));
    }
    audit::record(
        &txn,
        ctx,
        "config.delete",
        Target::new("project", project.id).in_project(project.id),
        Some(json!({ "key": key })),
    )
    .await?;
    txn.commit().await?;
    Ok(())
}
