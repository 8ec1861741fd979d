//! Env vars of an environment: encrypted at rest, secret ones write-only.
//! Setting them does not restart anything; a deploy applies them.

use std::collections::{BTreeMap, HashSet};

use async_graphql::InputObject;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::{Ctx, environments, new_id, now, projects, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::secrets::{Keyring, SecretString};
use entity::env_vars;

/// What every API shows instead of a secret value.
pub const MASK: &str = "***";

#[derive(Debug, Clone, InputObject)]
pub struct EnvVarInput {
    pub key: String,
    pub value: String,
    /// Secret values are masked in every response. Omitted: keeps the current flag.
    pub secret: Option<bool>,
}

/// An env var as clients may see it: secret values are already masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleVar {
    pub key: String,
    pub value: String,
    pub secret: bool,
    pub environment_id: Uuid,
}

fn visible(keyring: &Keyring, row: &env_vars::Model) -> Result<VisibleVar> {
    let value = if row.secret {
        MASK.to_string()
    } else {
        keyring.open(&row.value_ciphertext)?.expose().to_string()
    };
    Ok(VisibleVar {
        key: row.key.clone(),
        value,
        secret: row.secret,
        environment_id: row.environment_id,
    })
}

async fn rows<C: ConnectionTrait>(conn: &C, env_id: Uuid) -> Result<Vec<env_vars::Model>> {
    Ok(env_vars::Entity::find()
        .filter(env_vars::Column::EnvironmentId.eq(env_id))
        .order_by_asc(env_vars::Column::Key)
        .all(conn)
        .await?)
}

/// Lists an environment's vars (by `envId`, or by name via `envType`, production by default).
pub async fn list<C: ConnectionTrait>(
    conn: &C,
    keyring: &Keyring,
    ctx: &Ctx,
    project: &str,
    env_type: Option<&str>,
    env_id: Option<&str>,
) -> Result<Vec<VisibleVar>> {
    let project = projects::resolve(conn, ctx, project).await?;
    let env = environments::select(conn, project.id, env_type, env_id).await?;
    rows(conn, env.id)
        .await?
        .iter()
        .map(|r| visible(keyring, r))
        .collect()
}

/// Plaintext of every var of an environment, for runtimes only; never for an API response.
pub async fn plaintext<C: ConnectionTrait>(
    conn: &C,
    keyring: &Keyring,
    env_id: Uuid,
) -> Result<BTreeMap<String, SecretString>> {
    rows(conn, env_id)
        .await?
        .into_iter()
        .map(|r| Ok((r.key.clone(), keyring.open(&r.value_ciphertext)?)))
        .collect()
}

/// Upserts vars in one environment, all or nothing. Returns them, masked.
pub async fn set(
    db: &DatabaseConnection,
    keyring: &Keyring,
    ctx: &Ctx,
    project: &str,
    env_type: &str,
    vars: Vec<EnvVarInput>,
) -> Result<Vec<VisibleVar>> {
    ctx.require(Role::Write)?;
    if vars.is_empty() {
        return Err(Error::field("vars", "must contain at least one variable"));
    }
    if vars.len() > validate::MAX_ENTRIES {
        return Err(Error::field(
            "vars",
            format!("at most {} variables per request", validate::MAX_ENTRIES),
        ));
    }
    let mut seen = HashSet::new();
    for (i, v) in vars.iter().enumerate() {
        validate::env_key(&format!("vars[{i}].key"), &v.key)?;
        validate::long_text(
            &format!("vars[{i}].value"),
            &v.value,
            validate::MAX_VALUE_CHARS,
        )?;
        if !seen.insert(v.key.as_str()) {
            return Err(Error::field(
                &format!("vars[{i}].key"),
                format!("'{}' appears twice", v.key),
            ));
        }
    }
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let env = environments::select(&txn, project.id, Some(env_type), None).await?;
    let existing: BTreeMap<String, env_vars::Model> = rows(&txn, env.id)
        .await?
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
    let now = now();
    let mut out = Vec::with_capacity(vars.len());
    for v in &vars {
        let sealed = keyring.seal(&v.value)?;
        let row = match existing.get(&v.key) {
            Some(row) => {
                super::resources::bindings::refuse_managed(row)?;
                let secret = v.secret.unwrap_or(row.secret);
                let mut active = row.clone().into_active_model();
                active.value_ciphertext = Set(sealed);
                active.secret = Set(secret);
                active.updated_at = Set(now);
                active.update(&txn).await?
            }
            None => {
                env_vars::ActiveModel {
                    id: Set(new_id()),
                    environment_id: Set(env.id),
                    key: Set(v.key.clone()),
                    value_ciphertext: Set(sealed),
                    secret: Set(v.secret.unwrap_or(false)),
                    source: Set("user".into()),
                    binding_id: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(&txn)
                .await?
            }
        };
        out.push(visible(keyring, &row)?);
    }
    let keys: Vec<&str> = vars.iter().map(|v| v.key.as_str()).collect();
    audit::record(
        &txn,
        ctx,
        "env_vars.set",
        Target::new("environment", env.id).in_project(project.id),
        Some(json!({ "keys": keys })),
    )
    .await?;
    txn.commit().await?;
    Ok(out)
}

/// Removes one var; `false` when it did not exist.
pub async fn delete(
    db: &DatabaseConnection,
    ctx: &Ctx,
    project: &str,
    env_type: &str,
    key: &str,
) -> Result<bool> {
    ctx.require(Role::Write)?;
    validate::env_key("key", key)?;
    let txn = db.begin().await?;
    let project = projects::resolve(&txn, ctx, project).await?;
    let env = environments::select(&txn, project.id, Some(env_type), None).await?;
    if let Some(row) = env_vars::Entity::find()
        .filter(env_vars::Column::EnvironmentId.eq(env.id))
        .filter(env_vars::Column::Key.eq(key))
        .one(&txn)
        .await?
    {
        super::resources::bindings::refuse_managed(&row)?;
    }
    let res = env_vars::Entity::delete_many()
        .filter(env_vars::Column::EnvironmentId.eq(env.id))
        .filter(env_vars::Column::Key.eq(key))
        .exec(&txn)
        .await?;
    if res.rows_affected == 0 {
        return Err(Error::not_found("env var", key));
    }
    audit::record(
        &txn,
        ctx,
        "env_vars.delete",
        Target::new("environment", env.id).in_project(project.id),
        Some(json!({ "key": key })),
    )
    .await?;
    txn.commit().await?;
    Ok(true)
}
