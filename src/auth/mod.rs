//! Principals from API tokens and session cookies, roles and org scoping.

pub mod session;
pub mod tokens;

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a principal may do, in increasing order of power.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    async_graphql::Enum,
)]
#[serde(rename_all = "lowercase")]
#[graphql(rename_items = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Who is behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An API key, by id.
    Token(Uuid),
    /// A dashboard user, by the session's `sub` claim.
    User(String),
    /// The server itself or its CLI.
    System,
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::Token(_) => "token",
            Actor::User(_) => "user",
            Actor::System => "system",
        }
    }

    pub fn id(&self) -> String {
        match self {
            Actor::Token(id) => id.to_string(),
            Actor::User(sub) => sub.clone(),
            Actor::System => "system".into(),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.id())
    }
}

/// An authenticated caller: one organisation, one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub org_id: Uuid,
    pub role: Role,
    pub actor: Actor,
}
