//! Domain services: the rules of each resource group and its store access.
//! Nothing here knows about HTTP or GraphQL.

pub mod api_keys;
pub mod audit;
pub mod config_entries;
pub mod deployment_events;
pub mod deployments;
pub mod env_vars;
pub mod environments;
pub mod listing;
pub mod organizations;
pub mod projects;
pub mod resources;
pub mod sandboxes;
pub mod services;
pub mod storage;
pub mod tcp_proxies;
pub mod validate;
pub mod volumes;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::error::{Error, Result};

/// Who is acting, and for which request: passed to every domain call.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub principal: Principal,
    pub request_id: Option<String>,
}

impl Ctx {
    pub fn org_id(&self) -> Uuid {
        self.principal.org_id
    }

    /// Refuses the call unless the principal has at least `role`.
    pub fn require(&self, role: Role) -> Result<()> {
        if self.principal.role >= role {
            Ok(())
        } else {
            Err(Error::Forbidden(match role {
                Role::Admin => "this action requires an admin token".into(),
                _ => "this token is read-only".into(),
            }))
        }
    }

    /// Refuses access to another organisation's resource.
    pub fn check_org(&self, org_id: Uuid, what: &str) -> Result<()> {
        if org_id == self.principal.org_id {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this {what} belongs to another organisation"
            )))
        }
    }
}

/// The current time at the precision every store keeps (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A new time-ordered id.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// Parses a UUID argument, naming the field on failure.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid> {
    Uuid::parse_str(value.trim()).map_err(|_| Error::field(field, "must be a UUID"))
}

/// Applies one clearable field of a partial update: a value is checked and
/// set, `null` clears the column, an absent field leaves it alone.
pub fn patch<T, V>(
    column: &mut sea_orm::ActiveValue<Option<V>>,
    value: &async_graphql::MaybeUndefined<T>,
    check: impl FnOnce(&T) -> Result<V>,
) -> Result<()>
where
    Option<V>: Into<sea_orm::Value>,
{
    use async_graphql::MaybeUndefined;
    match value {
        MaybeUndefined::Value(v) => *column = sea_orm::Set(Some(check(v)?)),
        MaybeUndefined::Null => *column = sea_orm::Set(None),
        MaybeUndefined::Undefined => {}
    }
    Ok(())
}
