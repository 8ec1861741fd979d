//! The steps a deployment went through, in order: `queued`, then the
//! runtime's (`cloning`, `building`, `releasing`, `starting`,
//! `health-checking`, `switching`, `stopping-old`), then `success`,
//! `failed` or `cancelled`. A terminal step is written in the same
//! transaction as the deployment's final status, so a deployment that has
//! ended always has its last event.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::{new_id, now};
use crate::error::Result;
use entity::deployment_events as events;
use entity::deployments;

pub const QUEUED: &str = "queued";
pub const CANCELLED: &str = "cancelled";

/// Whether `step` ends a deployment.
pub fn is_terminal(step: &str) -> bool {
    matches!(step, "success" | "failed" | CANCELLED)
}

/// Appends step `step` to deployment `deployment`'s events.
pub async fn record<C: ConnectionTrait>(
    conn: &C,
    deployment: Uuid,
    step: &str,
    message: Option<String>,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        let last: Option<Option<i32>> = events::Entity::find()
            .select_only()
            .column_as(events::Column::Seq.max(), "last")
            .filter(events::Column::DeploymentId.eq(deployment))
            .into_tuple()
            .one(conn)
            .await?;
        let inserted = events::ActiveModel {
            id: Set(new_id()),
            deployment_id: Set(deployment),
            seq: Set(last.flatten().unwrap_or(0) + 1),
            step: Set(step.into()),
            message: Set(message.clone()),
            created_at: Set(now()),
        }
        .insert(conn)
        .await;
        match inserted {
            Ok(_) => return Ok(()),
            // Another writer took the number: take the next.
            Err(_) if attempt < 3 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Events of a deployment after `seq`, in order.
pub async fn after<C: ConnectionTrait>(
    conn: &C,
    deployment: Uuid,
    seq: i32,
) -> Result<Vec<events::Model>> {
    Ok(events::Entity::find()
        .filter(events::Column::DeploymentId.eq(deployment))
        .filter(events::Column::Seq.gt(seq))
        .order_by_asc(events::Column::Seq)
        .all(conn)
        .await?)
}

/// The timeline of a deployment that ended before events were recorded:
/// queued when it was created, its end when it finished.
pub fn from_row(d: &deployments::Model) -> Vec<events::Model> {
    let event = |seq, step: &str, message, at| events::Model {
        id: Uuid::nil(),
        deployment_id: d.id,
        seq,
        step: step.into(),
        message,
        created_at: at,
    };
    vec![
        event(1, QUEUED, None, d.created_at),
        event(
            2,
            &d.status,
            d.error.clone(),
            d.finished_at.unwrap_or(d.updated_at),
        ),
    ]
}
