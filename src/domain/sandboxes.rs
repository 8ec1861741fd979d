//! Sandbox users: the uid each project's code runs as on the local runtime,
//! allocated from the configured range on first use and recorded, so it is
//! never shared between projects; freed only once a deleted project's
//! teardown has removed everything that ran or was written as it.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::now;
use crate::error::{Error, Result};
use crate::settings::SandboxIds;
use entity::sandbox_users;

/// Owner kind of a project's sandbox user.
pub const PROJECT: &str = "project";

/// The uid recorded for `owner`, if any.
pub async fn uid_of<C: ConnectionTrait>(conn: &C, owner: Uuid) -> Result<Option<u32>> {
    Ok(sandbox_users::Entity::find()
        .filter(sandbox_users::Column::OwnerId.eq(owner))
        .one(conn)
        .await?
        .and_then(|u| u32::try_from(u.uid).ok()))
}

/// The uid of `owner`, allocating the lowest free one of `ids` the first
/// time. Concurrent callers (several servers on one store) agree: the uid
/// and the owner are both unique in the store, and a lost race reads the
/// winner's row or tries the next uid.
pub async fn uid_for<C: ConnectionTrait>(
    conn: &C,
    ids: &SandboxIds,
    kind: &str,
    owner: Uuid,
) -> Result<u32> {
    for _ in 0..16 {
        if let Some(uid) = uid_of(conn, owner).await? {
            return Ok(uid);
        }
        let taken: Vec<i64> = sandbox_users::Entity::find()
            .select_only()
            .column(sandbox_users::Column::Uid)
            .filter(sandbox_users::Column::Uid.between(ids.first_uid as i64, ids.last as i64))
            .order_by_asc(sandbox_users::Column::Uid)
            .into_tuple()
            .all(conn)
            .await?;
        let mut candidate = ids.first_uid as i64;
        for t in taken {
            if t != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate > ids.last as i64 {
            return Err(Error::Unavailable(
                "every sandbox uid of sandbox_ids is in use: widen the range".into(),
            ));
        }
        let inserted = sandbox_users::ActiveModel {
            uid: Set(candidate),
            owner_kind: Set(kind.to_string()),
            owner_id: Set(owner),
            created_at: Set(now()),
        }
        .insert(conn)
        .await;
        match inserted.map_err(Error::from) {
            Ok(row) => return Ok(row.uid as u32),
            Err(Error::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Unavailable(
        "could not allocate a sandbox uid: too many concurrent allocations".into(),
    ))
}

/// Frees `owner`'s uid (after its teardown).
pub async fn free<C: ConnectionTrait>(conn: &C, owner: Uuid) -> Result<()> {
    sandbox_users::Entity::delete_many()
        .filter(sandbox_users::Column::OwnerId.eq(owner))
        .exec(conn)
        .await?;
    Ok(())
}
