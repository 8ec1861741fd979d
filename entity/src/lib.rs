//! SeaORM entities of the Sylphx control plane, one module per table.
//!
//! The schema itself is created by the `migration` crate; keep both in sync.

pub mod ai_usage;
pub mod api_keys;
pub mod audit_events;
pub mod blob_key_revocations;
pub mod config_entries;
pub mod deployment_events;
pub mod deployments;
pub mod env_vars;
pub mod environments;
pub mod idempotency_keys;
pub mod jobs;
pub mod organizations;
pub mod projects;
pub mod resource_bindings;
pub mod resources;
pub mod sandbox_users;
pub mod service_environment_overrides;
pub mod services;
pub mod storage;
pub mod tcp_allowlist_rules;
pub mod tcp_proxies;
pub mod volumes;
pub mod webhook_deliveries;

pub mod prelude {
    //! `Entity` types of every table, under the table's name in CamelCase.

    pub use super::ai_usage::Entity as AiUsage;
    pub use super::api_keys::Entity as ApiKeys;
    pub use super::audit_events::Entity as AuditEvents;
    pub use super::blob_key_revocations::Entity as BlobKeyRevocations;
    pub use super::config_entries::Entity as ConfigEntries;
    pub use super::deployment_events::Entity as DeploymentEvents;
    pub use super::deployments::Entity as Deployments;
    pub use super::env_vars::Entity as EnvVars;
    pub use super::environments::Entity as Environments;
    pub use super::idempotency_keys::Entity as IdempotencyKeys;
    pub use super::jobs::Entity as Jobs;
    pub use super::organizations::Entity as Organizations;
    pub use super::projects::Entity as Projects;
    pub use super::resource_bindings::Entity as ResourceBindings;
    pub use super::resources::Entity as Resources;
    pub use super::sandbox_users::Entity as SandboxUsers;
    pub use super::service_environment_overrides::Entity as ServiceEnvironmentOverrides;
    pub use super::services::Entity as Services;
    pub use super::storage::Entity as Storage;
    pub use super::tcp_allowlist_rules::Entity as TcpAllowlistRules;
    pub use super::tcp_proxies::Entity as TcpProxies;
    pub use super::volumes::Entity as Volumes;
    pub use super::webhook_deliveries::Entity as WebhookDeliveries;
}
