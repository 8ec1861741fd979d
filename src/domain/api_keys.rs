//! API keys: created and revoked by admins; the plaintext is shown once.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::{Ctx, new_id, now, validate};
use crate::auth::{Role, tokens};
use crate::error::{Error, Result};
use crate::secrets::SecretString;
use entity::api_keys;

/// What a new key should be.
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates a key in the caller's organisation; returns it with its plaintext.
pub async fn create(
    db: &DatabaseConnection,
    ctx: &Ctx,
    input: NewKey,
) -> Result<(api_keys::Model, SecretString)> {
    ctx.require(Role::Admin)?;
    let name = validate::text("name", &input.name, 100)?;
    if input.expires_at.is_some_and(|t| t <= now()) {
        return Err(Error::field("expiresAt", "must be in the future"));
    }
    let token = tokens::mint();
    let now = now();
    let txn = db.begin().await?;
    let key = api_keys::ActiveModel {
        id: Set(new_id()),
        organization_id: Set(ctx.org_id()),
        name: Set(name),
        role: Set(input.role.as_str().to_string()),
        token_hash: Set(token.hash),
        token_prefix: Set(token.display_prefix),
        expires_at: Set(input.expires_at),
        revoked_at: Set(None),
        last_used_at: Set(None),
        created_by: Set(Some(ctx.principal.actor.to_string())),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    audit::record(
        &txn,
        ctx,
        "api_key.create",
        Target::new("api_key", key.id),
        Some(json!({ "name": key.name, "role": key.role })),
    )
    .await?;
    txn.commit().await?;
    Ok((key, token.plaintext))
}

/// One page of the organisation's keys, oldest first, after `after` (admins only).
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    after: Option<Uuid>,
    limit: Option<u64>,
) -> Result<Vec<api_keys::Model>> {
    ctx.require(Role::Admin)?;
    let mut q = api_keys::Entity::find()
        .filter(api_keys::Column::OrganizationId.eq(ctx.org_id()))
        .order_by_asc(api_keys::Column::Id)
        .limit(limit);
    if let Some(a) = after {
        q = q.filter(api_keys::Column::Id.gt(a));
    }
    Ok(q.all(conn).await?)
}

/// Revokes a key; requests made with it fail from now on.
pub async fn revoke(db: &DatabaseConnection, ctx: &Ctx, id: Uuid) -> Result<api_keys::Model> {
    ctx.require(Role::Admin)?;
    let txn = db.begin().await?;
    let key = api_keys::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("API key", id))?;
    ctx.check_org(key.organization_id, "API key")?;
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    let mut active = key.into_active_model();
    let now = now();
    active.revoked_at = Set(Some(now));
    active.updated_at = Set(now);
    let key = active.update(&txn).await?;
    audit::record(
        &txn,
        ctx,
        "api_key.revoke",
        Target::new("api_key", id),
        None,
    )
    .await?;
    txn.commit().await?;
    Ok(key)
}
