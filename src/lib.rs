//! The Sylphx control plane: a GraphQL core over a sea-orm store, with a
//! REST layer generated from a declarative route table.

pub mod ai;
pub mod auth;
pub mod blob;
pub mod config;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod idempotency;
pub mod listen;
pub mod playground;
pub mod ratelimit;
pub mod reconcile;
pub mod rejections;
pub mod rest;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod state;
pub mod store;
pub mod streams;
pub mod webhooks;

pub use error::{Error, Result};
