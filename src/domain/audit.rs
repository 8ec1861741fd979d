//! The audit log: who did what to which resource, and in which request.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde_json::Value;
use uuid::Uuid;

use super::{Ctx, new_id, now};
use crate::error::Result;
use entity::audit_events;

/// What an audit event is about.
pub struct Target<'a> {
    pub kind: &'a str,
    pub id: Option<String>,
    pub project_id: Option<Uuid>,
}

impl<'a> Target<'a> {
    pub fn new(kind: &'a str, id: impl ToString) -> Self {
        Target {
            kind,
            id: Some(id.to_string()),
            project_id: None,
        }
    }

    pub fn in_project(mut self, project_id: Uuid) -> Self {
        self.project_id = Some(project_id);
        self
    }
}

/// Records one event; call it inside the transaction that made the change.
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    action: &str,
    target: Target<'_>,
    details: Option<Value>,
) -> Result<()> {
    audit_events::ActiveModel {
        id: Set(new_id()),
        organization_id: Set(ctx.org_id()),
        project_id: Set(target.project_id),
        actor_type: Set(ctx.principal.actor.kind().to_string()),
        actor_id: Set(ctx.principal.actor.id()),
        action: Set(action.to_string()),
        target_type: Set(target.kind.to_string()),
        target_id: Set(target.id),
        request_id: Set(ctx.request_id.clone()),
        details: Set(details),
        created_at: Set(now()),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// One page of the organisation's events, newest first, after the `before` cursor.
pub async fn page<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    project_id: Option<Uuid>,
    before: Option<Uuid>,
    limit: Option<u64>,
) -> Result<Vec<audit_events::Model>> {
    let mut q = audit_events::Entity::find()
        .filter(audit_events::Column::OrganizationId.eq(ctx.org_id()))
        .order_by_desc(audit_events::Column::Id)
        .limit(limit);
    if let Some(p) = project_id {
        q = q.filter(audit_events::Column::ProjectId.eq(p));
    }
    if let Some(b) = before {
        q = q.filter(audit_events::Column::Id.lt(b));
    }
    Ok(q.all(conn).await?)
}
