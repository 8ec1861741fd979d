//! Initial schema: all 18 tables of the control plane, their foreign keys and indexes.
//!
//! Works on SQLite and PostgreSQL: UUIDs use `uuid()`, timestamps
//! `timestamp_with_time_zone()`, JSON plain `json()` (`json_text` on SQLite, `json` on PG).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A named foreign key `from_table.from_col -> to_table.id`.
fn fk(
    name: &str,
    from_table: impl IntoIden,
    from_col: impl IntoIden,
    to_table: impl IntoIden,
    to_col: impl IntoIden,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from_table, from_col)
        .to(to_table, to_col)
        .on_delete(on_delete)
        .take()
}

/// A named (optionally unique) index on `table (cols...)`.
fn index<T: IntoIden + 'static>(
    name: &str,
    table: T,
    cols: impl IntoIterator<Item = T>,
    unique: bool,
) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for col in cols {
        stmt.col(col);
    }
    if unique {
        stmt.unique();
    }
    stmt.take()
}

const CASCADE: ForeignKeyAction = ForeignKeyAction::Cascade;
const SET_NULL: ForeignKeyAction = ForeignKeyAction::SetNull;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // 1. organizations
        manager
            .create_table(
                Table::create()
                    .table(Organizations::Table)
                    .col(pk_uuid(Organizations::Id))
                    .col(string_uniq(Organizations::Slug))
                    .col(string(Organizations::Name))
                    .col(big_integer_null(Organizations::AiMonthlyBudgetCents))
                    .col(timestamp_with_time_zone(Organizations::CreatedAt))
                    .col(timestamp_with_time_zone(Organizations::UpdatedAt))
                    .take(),
            )
            .await?;

        // 2. api_keys
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(pk_uuid(ApiKeys::Id))
                    .col(uuid(ApiKeys::OrganizationId))
                    .col(string(ApiKeys::Name))
                    .col(string(ApiKeys::Role))
                    .col(string_uniq(ApiKeys::TokenHash))
                    .col(string(ApiKeys::TokenPrefix))
                    .col(timestamp_with_time_zone_null(ApiKeys::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::LastUsedAt))
                    .col(string_null(ApiKeys::CreatedBy))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone(ApiKeys::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_api_keys_organization_id",
                        ApiKeys::Table,
                        ApiKeys::OrganizationId,
                        Organizations::Table,
                        Organizations::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_api_keys_organization_id",
                ApiKeys::Table,
                [ApiKeys::OrganizationId],
                false,
            ))
            .await?;

        // 3. projects (slug unique across all organizations)
        manager
            .create_table(
                Table::create()
                    .table(Projects::Table)
                    .col(pk_uuid(Projects::Id))
                    .col(uuid(Projects::OrganizationId))
                    .col(string_uniq(Projects::Slug))
                    .col(string(Projects::Name))
                    .col(text_null(Projects::Description))
                    .col(boolean(Projects::IsActive).default(true))
                    .col(string_null(Projects::GitRepository))
                    .col(string_null(Projects::GitBranch))
                    .col(string_null(Projects::BuildPack))
                    .col(string_null(Projects::DockerImage))
                    .col(integer_null(Projects::Port))
                    .col(string_null(Projects::Domain))
                    .col(timestamp_with_time_zone(Projects::CreatedAt))
                    .col(timestamp_with_time_zone(Projects::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_projects_organization_id",
                        Projects::Table,
                        Projects::OrganizationId,
                        Organizations::Table,
                        Organizations::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_projects_organization_id",
                Projects::Table,
                [Projects::OrganizationId],
                false,
            ))
            .await?;

        // 4. environments
        manager
            .create_table(
                Table::create()
                    .table(Environments::Table)
                    .col(pk_uuid(Environments::Id))
                    .col(uuid(Environments::ProjectId))
                    .col(string(Environments::Name))
                    .col(string_null(Environments::Domain))
                    .col(integer(Environments::Replicas))
                    .col(timestamp_with_time_zone_null(Environments::ProvisionedAt))
                    .col(timestamp_with_time_zone(Environments::CreatedAt))
                    .col(timestamp_with_time_zone(Environments::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_environments_project_id",
                        Environments::Table,
                        Environments::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_environments_project_id_name",
                Environments::Table,
                [Environments::ProjectId, Environments::Name],
                true,
            ))
            .await?;

        // 5. services
        manager
            .create_table(
                Table::create()
                    .table(Services::Table)
                    .col(pk_uuid(Services::Id))
                    .col(uuid(Services::ProjectId))
                    .col(string(Services::Name))
                    .col(integer_null(Services::Port))
                    .col(string(Services::DockerfilePath))
                    .col(integer(Services::Replicas))
                    .col(json_null(Services::Resources))
                    .col(string(Services::Status))
                    .col(string_null(Services::LatestImage))
                    .col(timestamp_with_time_zone(Services::CreatedAt))
                    .col(timestamp_with_time_zone(Services::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_services_project_id",
                        Services::Table,
                        Services::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_services_project_id_name",
                Services::Table,
                [Services::ProjectId, Services::Name],
                true,
            ))
            .await?;

        // 6. service_environment_overrides
        manager
            .create_table(
                Table::create()
                    .table(ServiceEnvironmentOverrides::Table)
                    .col(pk_uuid(ServiceEnvironmentOverrides::Id))
                    .col(uuid(ServiceEnvironmentOverrides::ServiceId))
                    .col(uuid(ServiceEnvironmentOverrides::EnvironmentId))
                    .col(integer_null(ServiceEnvironmentOverrides::Replicas))
                    .col(integer_null(ServiceEnvironmentOverrides::Port))
                    .col(json_null(ServiceEnvironmentOverrides::Resources))
                    .col(string_null(ServiceEnvironmentOverrides::DockerImage))
                    .col(timestamp_with_time_zone(
                        ServiceEnvironmentOverrides::CreatedAt,
                    ))
                    .col(timestamp_with_time_zone(
                        ServiceEnvironmentOverrides::UpdatedAt,
                    ))
                    .foreign_key(&mut fk(
                        "fk_service_environment_overrides_service_id",
                        ServiceEnvironmentOverrides::Table,
                        ServiceEnvironmentOverrides::ServiceId,
                        Services::Table,
                        Services::Id,
                        CASCADE,
                    ))
                    .foreign_key(&mut fk(
                        "fk_service_environment_overrides_environment_id",
                        ServiceEnvironmentOverrides::Table,
                        ServiceEnvironmentOverrides::EnvironmentId,
                        Environments::Table,
                        Environments::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_service_environment_overrides_service_id_environment_id",
                ServiceEnvironmentOverrides::Table,
                [
                    ServiceEnvironmentOverrides::ServiceId,
                    ServiceEnvironmentOverrides::EnvironmentId,
                ],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_service_environment_overrides_environment_id",
                ServiceEnvironmentOverrides::Table,
                [ServiceEnvironmentOverrides::EnvironmentId],
                false,
            ))
            .await?;

        // 7. deployments
        manager
            .create_table(
                Table::create()
                    .table(Deployments::Table)
                    .col(pk_uuid(Deployments::Id))
                    .col(uuid(Deployments::ProjectId))
                    .col(uuid(Deployments::EnvironmentId))
                    .col(uuid_null(Deployments::ServiceId))
                    .col(string(Deployments::Status))
                    .col(string(Deployments::TriggeredBy))
                    .col(string_null(Deployments::GitBranch))
                    .col(string_null(Deployments::GitCommit))
                    .col(string_null(Deployments::Image))
                    .col(text_null(Deployments::EnvSnapshot))
                    .col(uuid_null(Deployments::RollbackTargetId))
                    .col(text_null(Deployments::Error))
                    .col(timestamp_with_time_zone_null(Deployments::StartedAt))
                    .col(timestamp_with_time_zone_null(Deployments::FinishedAt))
                    .col(timestamp_with_time_zone(Deployments::CreatedAt))
                    .col(timestamp_with_time_zone(Deployments::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_deployments_project_id",
                        Deployments::Table,
                        Deployments::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        CASCADE,
                    ))
                    .foreign_key(&mut fk(
                        "fk_deployments_environment_id",
                        Deployments::Table,
                        Deployments::EnvironmentId,
                        Environments::Table,
                        Environments::Id,
                        CASCADE,
                    ))
                    .foreign_key(&mut fk(
                        "fk_deployments_service_id",
                        Deployments::Table,
                        Deployments::ServiceId,
                        Services::Table,
                        Services::Id,
                        SET_NULL,
                    ))
                    .take(),
            )
            .await?;
        // Also serves lookups by project_id alone.
        manager
            .create_index(index(
                "idx_deployments_project_id_environment_id_created_at",
                Deployments::Table,
                [
                    Deployments::ProjectId,
                    Deployments::EnvironmentId,
                    Deployments::CreatedAt,
                ],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_deployments_environment_id",
                Deployments::Table,
                [Deployments::EnvironmentId],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_deployments_service_id",
                Deployments::Table,
                [Deployments::ServiceId],
                false,
            ))
            .await?;

        // 8. env_vars
        manager
            .create_table(
                Table::create()
                    .table(EnvVars::Table)
                    .col(pk_uuid(EnvVars::Id))
                    .col(uuid(EnvVars::EnvironmentId))
                    .col(string(EnvVars::Key))
                    .col(text(EnvVars::ValueCiphertext))
                    .col(boolean(EnvVars::Secret))
                    .col(string(EnvVars::Source).default("user"))
                    .col(uuid_null(EnvVars::BindingId))
                    .col(timestamp_with_time_zone(EnvVars::CreatedAt))
                    .col(timestamp_with_time_zone(EnvVars::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_env_vars_environment_id",
                        EnvVars::Table,
                        EnvVars::EnvironmentId,
                        Environments::Table,
                        Environments::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_env_vars_environment_id_key",
                EnvVars::Table,
                [EnvVars::EnvironmentId, EnvVars::Key],
                true,
            ))
            .await?;

        // 9. config_entries
        manager
            .create_table(
                Table::create()
                    .table(ConfigEntries::Table)
                    .col(pk_uuid(ConfigEntries::Id))
                    .col(uuid(ConfigEntries::ProjectId))
                    .col(string(ConfigEntries::Key))
                    .col(text(ConfigEntries::Value))
                    .col(timestamp_with_time_zone(ConfigEntries::CreatedAt))
                    .col(timestamp_with_time_zone(ConfigEntries::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_config_entries_project_id",
                        ConfigEntries::Table,
                        ConfigEntries::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_config_entries_project_id_key",
                ConfigEntries::Table,
                [ConfigEntries::ProjectId, ConfigEntries::Key],
                true,
            ))
            .await?;

        // 10. resources
        manager
            .create_table(
                Table::create()
                    .table(Resources::Table)
                    .col(pk_uuid(Resources::Id))
                    .col(uuid(Resources::OrganizationId))
                    .col(string(Resources::Name))
                    .col(string(Resources::Kind))
                    .col(string(Resources::Provider))
                    .col(json_null(Resources::Config))
                    .col(string(Resources::Status))
                    .col(string(Resources::ReconcileStatus))
                    .col(string_null(Resources::Tier))
                    .col(text_null(Resources::Message))
                    .col(text_null(Resources::ConnectionCiphertext))
                    .col(string_null(Resources::PublicHost))
                    .col(uuid_null(Resources::SourceResourceId))
                    .col(timestamp_with_time_zone(Resources::CreatedAt))
                    .col(timestamp_with_time_zone(Resources::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_resources_organization_id",
                        Resources::Table,
                        Resources::OrganizationId,
                        Organizations::Table,
                        Organizations::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_resources_organization_id",
                Resources::Table,
                [Resources::OrganizationId],
                false,
            ))
            .await?;

        // 11. resource_bindings
        manager
            .create_table(
                Table::create()
                    .table(ResourceBindings::Table)
                    .col(pk_uuid(ResourceBindings::Id))
                    .col(uuid(ResourceBindings::ResourceId))
                    .col(uuid(ResourceBindings::EnvironmentId))
                    .col(string(ResourceBindings::Role))
                    .col(timestamp_with_time_zone(ResourceBindings::CreatedAt))
                    .foreign_key(&mut fk(
                        "fk_resource_bindings_resource_id",
                        ResourceBindings::Table,
                        ResourceBindings::ResourceId,
                        Resources::Table,
                        Resources::Id,
                        CASCADE,
                    ))
                    .foreign_key(&mut fk(
                        "fk_resource_bindings_environment_id",
                        ResourceBindings::Table,
                        ResourceBindings::EnvironmentId,
                        Environments::Table,
                        Environments::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_resource_bindings_resource_id_environment_id_role",
                ResourceBindings::Table,
                [
                    ResourceBindings::ResourceId,
                    ResourceBindings::EnvironmentId,
                    ResourceBindings::Role,
                ],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_resource_bindings_environment_id",
                ResourceBindings::Table,
                [ResourceBindings::EnvironmentId],
                false,
            ))
            .await?;

        // 12. storage
        manager
            .create_table(
                Table::create()
                    .table(Storage::Table)
                    .col(pk_uuid(Storage::Id))
                    .col(uuid(Storage::ProjectId))
                    .col(uuid(Storage::EnvironmentId))
                    .col(string(Storage::Name))
                    .col(string(Storage::Bucket))
                    .col(string(Storage::Prefix))
                    .col(string(Storage::AccessKeyId))
                    .col(text(Storage::SecretCiphertext))
                    .col(string(Storage::PublicUrl))
                    .col(timestamp_with_time_zone_null(Storage::RevokedAt))
                    .col(timestamp_with_time_zone(Storage::CreatedAt))
                    .col(timestamp_with_time_zone(Storage::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_storage_project_id",
                        Storage::Table,
                        Storage::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        CASCADE,
                    ))
                    .foreign_key(&mut fk(
                        "fk_storage_environment_id",
                        Storage::Table,
                        Storage::EnvironmentId,
                        Environments::Table,
                        Environments::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_storage_project_id_environment_id_name",
                Storage::Table,
                [Storage::ProjectId, Storage::EnvironmentId, Storage::Name],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_storage_environment_id",
                Storage::Table,
                [Storage::EnvironmentId],
                false,
            ))
            .await?;

        // 13. volumes
        manager
            .create_table(
                Table::create()
                    .table(Volumes::Table)
                    .col(pk_uuid(Volumes::Id))
                    .col(uuid(Volumes::ProjectId))
                    .col(uuid_null(Volumes::EnvironmentId))
                    .col(uuid_null(Volumes::ServiceId))
                    .col(string(Volumes::Name))
                    .col(string(Volumes::MountPath))
                    .col(integer(Volumes::SizeGb))
                    .col(string(Volumes::Status))
                    .col(timestamp_with_time_zone(Volumes::CreatedAt))
                    .col(timestamp_with_time_zone(Volumes::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_volumes_project_id",
                        Volumes::Table,
                        Volumes::ProjectId,
                        Projects::Table,
                        Projects::Id,
                        CASCADE,
                    ))
                    .foreign_key(&mut fk(
                        "fk_volumes_environment_id",
                        Volumes::Table,
                        Volumes::EnvironmentId,
                        Environments::Table,
                        Environments::Id,
                        CASCADE,
                    ))
                    .foreign_key(&mut fk(
                        "fk_volumes_service_id",
                        Volumes::Table,
                        Volumes::ServiceId,
                        Services::Table,
                        Services::Id,
                        SET_NULL,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_volumes_project_id_name",
                Volumes::Table,
                [Volumes::ProjectId, Volumes::Name],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_volumes_environment_id",
                Volumes::Table,
                [Volumes::EnvironmentId],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_volumes_service_id",
                Volumes::Table,
                [Volumes::ServiceId],
                false,
            ))
            .await?;

        // 14. tcp_proxies (one per service; external ports are unique)
        manager
            .create_table(
                Table::create()
                    .table(TcpProxies::Table)
                    .col(pk_uuid(TcpProxies::Id))
                    .col(uuid_uniq(TcpProxies::ServiceId))
                    .col(boolean(TcpProxies::Enabled))
                    .col(integer_uniq(TcpProxies::ExternalPort))
                    .col(integer(TcpProxies::TargetPort))
                    .col(timestamp_with_time_zone(TcpProxies::CreatedAt))
                    .col(timestamp_with_time_zone(TcpProxies::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_tcp_proxies_service_id",
                        TcpProxies::Table,
                        TcpProxies::ServiceId,
                        Services::Table,
                        Services::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;

        // 15. tcp_allowlist_rules
        manager
            .create_table(
                Table::create()
                    .table(TcpAllowlistRules::Table)
                    .col(pk_uuid(TcpAllowlistRules::Id))
                    .col(uuid(TcpAllowlistRules::TcpProxyId))
                    .col(string(TcpAllowlistRules::Cidr))
                    .col(text_null(TcpAllowlistRules::Description))
                    .col(timestamp_with_time_zone(TcpAllowlistRules::CreatedAt))
                    .foreign_key(&mut fk(
                        "fk_tcp_allowlist_rules_tcp_proxy_id",
                        TcpAllowlistRules::Table,
                        TcpAllowlistRules::TcpProxyId,
                        TcpProxies::Table,
                        TcpProxies::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_tcp_allowlist_rules_tcp_proxy_id",
                TcpAllowlistRules::Table,
                [TcpAllowlistRules::TcpProxyId],
                false,
            ))
            .await?;

        // 16. idempotency_keys
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(pk_uuid(IdempotencyKeys::Id))
                    .col(uuid(IdempotencyKeys::OrganizationId))
                    .col(string(IdempotencyKeys::Key))
                    .col(string(IdempotencyKeys::RequestHash))
                    .col(string(IdempotencyKeys::State))
                    .col(integer_null(IdempotencyKeys::ResponseStatus))
                    .col(text_null(IdempotencyKeys::ResponseBody))
                    .col(string_null(IdempotencyKeys::ResponseContentType))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .col(timestamp_with_time_zone(IdempotencyKeys::ExpiresAt))
                    .foreign_key(&mut fk(
                        "fk_idempotency_keys_organization_id",
                        IdempotencyKeys::Table,
                        IdempotencyKeys::OrganizationId,
                        Organizations::Table,
                        Organizations::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "uq_idempotency_keys_organization_id_key",
                IdempotencyKeys::Table,
                [IdempotencyKeys::OrganizationId, IdempotencyKeys::Key],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_idempotency_keys_expires_at",
                IdempotencyKeys::Table,
                [IdempotencyKeys::ExpiresAt],
                false,
            ))
            .await?;

        // 17. audit_events (project_id has no FK: events outlive the project)
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(pk_uuid(AuditEvents::Id))
                    .col(uuid(AuditEvents::OrganizationId))
                    .col(uuid_null(AuditEvents::ProjectId))
                    .col(string(AuditEvents::ActorType))
                    .col(string(AuditEvents::ActorId))
                    .col(string(AuditEvents::Action))
                    .col(string(AuditEvents::TargetType))
                    .col(string_null(AuditEvents::TargetId))
                    .col(string_null(AuditEvents::RequestId))
                    .col(json_null(AuditEvents::Details))
                    .col(timestamp_with_time_zone(AuditEvents::CreatedAt))
                    .foreign_key(&mut fk(
                        "fk_audit_events_organization_id",
                        AuditEvents::Table,
                        AuditEvents::OrganizationId,
                        Organizations::Table,
                        Organizations::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        // Also serves lookups by organization_id alone.
        manager
            .create_index(index(
                "idx_audit_events_organization_id_created_at",
                AuditEvents::Table,
                [AuditEvents::OrganizationId, AuditEvents::CreatedAt],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_audit_events_project_id_created_at",
                AuditEvents::Table,
                [AuditEvents::ProjectId, AuditEvents::CreatedAt],
                false,
            ))
            .await?;

        // 18. jobs
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(pk_uuid(Jobs::Id))
                    .col(string(Jobs::Kind))
                    .col(json(Jobs::Payload))
                    .col(string(Jobs::Status))
                    .col(integer(Jobs::Attempts))
                    .col(integer(Jobs::MaxAttempts))
                    .col(timestamp_with_time_zone(Jobs::RunAt))
                    .col(string_null(Jobs::LockedBy))
                    .col(timestamp_with_time_zone_null(Jobs::LockedUntil))
                    .col(text_null(Jobs::LastError))
                    .col(uuid_null(Jobs::OrganizationId))
                    .col(uuid_null(Jobs::DeploymentId))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone(Jobs::UpdatedAt))
                    .foreign_key(&mut fk(
                        "fk_jobs_organization_id",
                        Jobs::Table,
                        Jobs::OrganizationId,
                        Organizations::Table,
                        Organizations::Id,
                        CASCADE,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_jobs_status_run_at",
                Jobs::Table,
                [Jobs::Status, Jobs::RunAt],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_jobs_organization_id",
                Jobs::Table,
                [Jobs::OrganizationId],
                false,
            ))
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Reverse FK order; indexes go with their tables.
        let tables: [DynIden; 18] = [
            Jobs::Table.into_iden(),
            AuditEvents::Table.into_iden(),
            IdempotencyKeys::Table.into_iden(),
            TcpAllowlistRules::Table.into_iden(),
            TcpProxies::Table.into_iden(),
            Volumes::Table.into_iden(),
            Storage::Table.into_iden(),
            ResourceBindings::Table.into_iden(),
            Resources::Table.into_iden(),
            ConfigEntries::Table.into_iden(),
            EnvVars::Table.into_iden(),
            Deployments::Table.into_iden(),
            ServiceEnvironmentOverrides::Table.into_iden(),
            Services::Table.into_iden(),
            Environments::Table.into_iden(),
            Projects::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            Organizations::Table.into_iden(),
        ];
        for table in tables {
            manager
                .drop_table(Table::drop().table(table).take())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
    Slug,
    Name,
    AiMonthlyBudgetCents,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    OrganizationId,
    Name,
    Role,
    TokenHash,
    TokenPrefix,
    ExpiresAt,
    RevokedAt,
    LastUsedAt,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Projects {
    Table,
    Id,
    OrganizationId,
    Slug,
    Name,
    Description,
    IsActive,
    GitRepository,
    GitBranch,
    BuildPack,
    DockerImage,
    Port,
    Domain,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Environments {
    Table,
    Id,
    ProjectId,
    Name,
    Domain,
    Replicas,
    ProvisionedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Services {
    Table,
    Id,
    ProjectId,
    Name,
    Port,
    DockerfilePath,
    Replicas,
    Resources,
    Status,
    LatestImage,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ServiceEnvironmentOverrides {
    Table,
    Id,
    ServiceId,
    EnvironmentId,
    Replicas,
    Port,
    Resources,
    DockerImage,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    Id,
    ProjectId,
    EnvironmentId,
    ServiceId,
    Status,
    TriggeredBy,
    GitBranch,
    GitCommit,
    Image,
    EnvSnapshot,
    RollbackTargetId,
    Error,
    StartedAt,
    FinishedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum EnvVars {
    Table,
    Id,
    EnvironmentId,
    Key,
    ValueCiphertext,
    Secret,
    Source,
    BindingId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ConfigEntries {
    Table,
    Id,
    ProjectId,
    Key,
    Value,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Resources {
    Table,
    Id,
    OrganizationId,
    Name,
    Kind,
    Provider,
    Config,
    Status,
    ReconcileStatus,
    Tier,
    Message,
    ConnectionCiphertext,
    PublicHost,
    SourceResourceId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ResourceBindings {
    Table,
    Id,
    ResourceId,
    EnvironmentId,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Storage {
    Table,
    Id,
    ProjectId,
    EnvironmentId,
    Name,
    Bucket,
    Prefix,
    AccessKeyId,
    SecretCiphertext,
    PublicUrl,
    RevokedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Volumes {
    Table,
    Id,
    ProjectId,
    EnvironmentId,
    ServiceId,
    Name,
    MountPath,
    SizeGb,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TcpProxies {
    Table,
    Id,
    ServiceId,
    Enabled,
    ExternalPort,
    TargetPort,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TcpAllowlistRules {
    Table,
    Id,
    TcpProxyId,
    Cidr,
    Description,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Id,
    OrganizationId,
    Key,
    RequestHash,
    State,
    ResponseStatus,
    ResponseBody,
    ResponseContentType,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OrganizationId,
    ProjectId,
    ActorType,
    ActorId,
    Action,
    TargetType,
    TargetId,
    RequestId,
    Details,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Kind,
    Payload,
    Status,
    Attempts,
    MaxAttempts,
    RunAt,
    LockedBy,
    LockedUntil,
    LastError,
    OrganizationId,
    DeploymentId,
    CreatedAt,
    UpdatedAt,
}
