//! Public TCP proxies of services (to expose a database or any non-HTTP
//! port) and their IP allowlists. A service has at most one proxy, into its
//! project's production environment. An external port belongs to one
//! service as long as its row exists: enabled, or disabled and keeping the
//! port until a permanent delete frees it.
//!
//! Every change is made real by the runtime before it is committed, so a
//! port the machine cannot give is refused at once, and an allowlist change
//! applies to the next connection.

use ipnet::IpNet;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr,
    TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::deployments::{Deployer, env_ref};
use super::{Ctx, environments, new_id, now, parse_id, projects, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::runtime::TcpProxySpec;
use entity::{
    projects as proj, services as svcs, tcp_allowlist_rules as rules, tcp_proxies as proxies,
};

/// Allowlist rules one proxy may have.
pub const MAX_RULES: u64 = 100;

/// The longest rule description.
const MAX_DESCRIPTION: usize = 500;

/// A service's proxy as the API shows it; a service without one shows
/// `enabled: false`, no ports and an empty allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyView {
    pub enabled: bool,
    pub external_port: Option<i32>,
    pub target_port: Option<i32>,
    /// The allowlist's CIDR blocks, oldest rule first.
    pub allowlist: Vec<String>,
}

impl ProxyView {
    fn of(row: Option<&proxies::Model>, rules: &[rules::Model]) -> ProxyView {
        match row {
            None => ProxyView::default(),
            Some(p) => ProxyView {
                enabled: p.enabled,
                external_port: Some(p.external_port),
                target_port: Some(p.target_port),
                allowlist: rules.iter().map(|r| r.cidr.clone()).collect(),
            },
        }
    }
}

/// Reads a CIDR block (`203.0.113.0/24`, `2001:db8::/32`; a bare address
/// is its own block) and normalises it: host bits cleared, IPv6 compressed.
pub fn parse_cidr(field: &str, value: &str) -> Result<IpNet> {
    let v = value.trim();
    let net = if v.contains('/') {
        v.parse::<IpNet>().ok()
    } else {
        v.parse::<std::net::IpAddr>().ok().map(IpNet::from)
    };
    net.map(|n| n.trunc()).ok_or_else(|| {
        Error::field(
            field,
            "must be an IPv4 or IPv6 CIDR block, e.g. 203.0.113.0/24 or 2001:db8::/32",
        )
    })
}

/// A service of the caller's organisation, and its project.
async fn service_of<C: ConnectionTrait>(
    conn: &C,
    ctx: &Ctx,
    service_id: &str,
) -> Result<(svcs::Model, proj::Model)> {
    let id = parse_id("serviceId", service_id)?;
    let service = svcs::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("service", id))?;
    let project = projects::resolve(conn, ctx, &service.project_id.to_string()).await?;
    Ok((service, project))
}

async fn proxy_of<C: ConnectionTrait>(
    conn: &C,
    service_id: Uuid,
) -> Result<Option<proxies::Model>> {
    Ok(proxies::Entity::find()
        .filter(proxies::Column::ServiceId.eq(service_id))
        .one(conn)
        .await?)
}

async fn rules_of<C: ConnectionTrait>(conn: &C, proxy_id: Uuid) -> Result<Vec<rules::Model>> {
    Ok(rules::Entity::find()
        .filter(rules::Column::TcpProxyId.eq(proxy_id))
        .order_by_asc(rules::Column::CreatedAt)
        .order_by_asc(rules::Column::Id)
        .all(conn)
        .await?)
}

fn no_proxy(service: &svcs::Model) -> Error {
    Error::NotFound(format!(
        "service '{}' has no TCP proxy: enable one with POST /services/{}/tcp-proxy first",
        service.name, service.id
    ))
}

/// Proxies of the organisation's services, enabled or keeping their port.
async fn held_by<C: ConnectionTrait>(conn: &C, org: Uuid) -> Result<u64> {
    let projects: Vec<Uuid> = proj::Entity::find()
        .filter(proj::Column::OrganizationId.eq(org))
        .select_only()
        .column(proj::Column::Id)
        .into_tuple()
        .all(conn)
        .await?;
    let services: Vec<Uuid> = svcs::Entity::find()
        .filter(svcs::Column::ProjectId.is_in(projects))
        .select_only()
        .column(svcs::Column::Id)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(proxies::Entity::find()
        .filter(proxies::Column::ServiceId.is_in(services))
        .count(conn)
        .await?)
}

fn port_taken(port: i32) -> Error {
    Error::Conflict(format!(
        "externalPort: port {port} is taken by another service's TCP proxy"
    ))
}

impl Deployer {
    /// What the runtime makes of `proxy`: its project's production
    /// environment, the service and the allowlist.
    async fn tcp_spec<C: ConnectionTrait>(
        &self,
        conn: &C,
        project: &proj::Model,
        service: &svcs::Model,
        proxy: &proxies::Model,
        rules: &[rules::Model],
    ) -> Result<TcpProxySpec> {
        let env = environments::by_name(conn, project.id, environments::PRODUCTION)
            .await?
            .ok_or_else(|| Error::not_found("environment", environments::PRODUCTION))?;
        let port = |p: i32| u16::try_from(p).map_err(Error::internal);
        Ok(TcpProxySpec {
            env: env_ref(project, &env),
            service_id: service.id,
            service_name: service.name.clone(),
            external_port: port(proxy.external_port)?,
            target_port: port(proxy.target_port)?,
            allowlist: rules
                .iter()
                .filter_map(|r| parse_cidr("cidr", &r.cidr).ok())
                .collect(),
        })
    }

    /// Makes an enabled proxy's changed allowlist real, before `txn` commits.
    async fn reapply(
        &self,
        txn: &DatabaseTransaction,
        project: &proj::Model,
        service: &svcs::Model,
        proxy: &proxies::Model,
    ) -> Result<()> {
        if !proxy.enabled {
            return Ok(());
        }
        let rules = rules_of(txn, proxy.id).await?;
        let spec = self.tcp_spec(txn, project, service, proxy, &rules).await?;
        self.runtime.apply_tcp_proxy(&spec).await
    }

    /// A service's TCP proxy.
    pub async fn tcp_proxy(&self, ctx: &Ctx, service_id: &str) -> Result<ProxyView> {
        let (service, _) = service_of(&self.db, ctx, service_id).await?;
        let proxy = proxy_of(&self.db, service.id).await?;
        let rules = match &proxy {
            Some(p) => rules_of(&self.db, p.id).await?,
            None => Vec::new(),
        };
        Ok(ProxyView::of(proxy.as_ref(), &rules))
    }

    /// Enables a service's proxy on `external_port`, or changes its ports;
    /// `true` with the view when this created it.
    pub async fn enable_tcp_proxy(
        &self,
        ctx: &Ctx,
        service_id: &str,
        external_port: i32,
        target_port: i32,
    ) -> Result<(ProxyView, bool)> {
        ctx.require(Role::Write)?;
        let range = self.tcp_proxy.ports;
        if !range.contains(i64::from(external_port)) {
            return Err(Error::field(
                "externalPort",
                format!("must be between {} and {}", range.first, range.last),
            ));
        }
        validate::port("targetPort", target_port)?;
        let txn = self.db.begin().await?;
        let (service, project) = service_of(&txn, ctx, service_id).await?;
        super::organizations::take_turns(&txn, ctx.org_id()).await?;
        let existing = proxy_of(&txn, service.id).await?;
        let taken = proxies::Entity::find()
            .filter(proxies::Column::ExternalPort.eq(external_port))
            .filter(proxies::Column::ServiceId.ne(service.id))
            .one(&txn)
            .await?
            .is_some();
        if taken {
            return Err(port_taken(external_port));
        }
        let quota = self.tcp_proxy.max_per_organization;
        if existing.is_none() {
            let held = held_by(&txn, ctx.org_id()).await?;
            if held >= quota {
                return Err(Error::Forbidden(format!(
                    "the organisation has {held} TCP proxies, the most it may have (max_tcp_proxies_per_organization): delete one permanently first"
                )));
            }
        }
        let now = now();
        let created = existing.is_none();
        let previous = existing.clone();
        let row = match existing {
            Some(p) => {
                let mut a = p.into_active_model();
                a.enabled = Set(true);
                a.external_port = Set(external_port);
                a.target_port = Set(target_port);
                a.updated_at = Set(now);
                a.update(&txn).await
            }
            None => {
                proxies::ActiveModel {
                    id: Set(new_id()),
                    service_id: Set(service.id),
                    enabled: Set(true),
                    external_port: Set(external_port),
                    target_port: Set(target_port),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(&txn)
                .await
            }
        }
        // Another service took the port meanwhile.
        .map_err(|e| match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => port_taken(external_port),
            _ => e.into(),
        })?;
        let rules = rules_of(&txn, row.id).await?;
        let spec = self
            .tcp_spec(&txn, &project, &service, &row, &rules)
            .await?;
        self.runtime.apply_tcp_proxy(&spec).await?;
        audit::record(
            &txn,
            ctx,
            "tcp_proxy.enable",
            Target::new("service", service.id).in_project(project.id),
            Some(json!({ "externalPort": external_port, "targetPort": target_port })),
        )
        .await?;
        if let Err(e) = txn.commit().await {
            // What the store does not hold must not serve.
            let undone = match previous.filter(|p| p.enabled) {
                Some(p) => {
                    let before = self
                        .tcp_spec(&self.db, &project, &service, &p, &rules)
                        .await?;
                    self.runtime.apply_tcp_proxy(&before).await
                }
                None => self.runtime.remove_tcp_proxy(&spec).await,
            };
            if let Err(u) = undone {
                tracing::warn!(service.id = %service.id, error = u.message(), "could not undo a TCP proxy change");
            }
            return Err(e.into());
        }
        Ok((ProxyView::of(Some(&row), &rules), created))
    }

    /// Disables a service's proxy; it keeps its port (and allowlist)
    /// unless `permanent`, which deletes it and frees the port.
    pub async fn disable_tcp_proxy(
        &self,
        ctx: &Ctx,
        service_id: &str,
        permanent: bool,
    ) -> Result<ProxyView> {
        ctx.require(Role::Write)?;
        let txn = self.db.begin().await?;
        let (service, project) = service_of(&txn, ctx, service_id).await?;
        let proxy = proxy_of(&txn, service.id)
            .await?
            .ok_or_else(|| no_proxy(&service))?;
        let rules = rules_of(&txn, proxy.id).await?;
        let spec = self
            .tcp_spec(&txn, &project, &service, &proxy, &rules)
            .await?;
        let view = if permanent {
            rules::Entity::delete_many()
                .filter(rules::Column::TcpProxyId.eq(proxy.id))
                .exec(&txn)
                .await?;
            proxies::Entity::delete_by_id(proxy.id).exec(&txn).await?;
            ProxyView::default()
        } else {
            let mut a = proxy.clone().into_active_model();
            a.enabled = Set(false);
            a.updated_at = Set(now());
            ProxyView::of(Some(&a.update(&txn).await?), &rules)
        };
        if proxy.enabled {
            self.runtime.remove_tcp_proxy(&spec).await?;
        }
        audit::record(
            &txn,
            ctx,
            "tcp_proxy.disable",
            Target::new("service", service.id).in_project(project.id),
            Some(json!({ "externalPort": proxy.external_port, "permanent": permanent })),
        )
        .await?;
        txn.commit().await?;
        Ok(view)
    }

    /// The allowlist of a service's proxy, oldest rule first (empty
    /// without a proxy).
    pub async fn tcp_allowlist(&self, ctx: &Ctx, service_id: &str) -> Result<Vec<rules::Model>> {
        let (service, _) = service_of(&self.db, ctx, service_id).await?;
        match proxy_of(&self.db, service.id).await? {
            Some(p) => rules_of(&self.db, p.id).await,
            None => Ok(Vec::new()),
        }
    }

    /// Admits connections from one more CIDR block.
    pub async fn add_tcp_allowlist_rule(
        &self,
        ctx: &Ctx,
        service_id: &str,
        cidr: &str,
        description: Option<String>,
    ) -> Result<rules::Model> {
        ctx.require(Role::Write)?;
        let cidr = parse_cidr("cidr", cidr)?.to_string();
        let description = match description.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(d) => {
                validate::long_text("description", d, MAX_DESCRIPTION)?;
                Some(d.to_string())
            }
        };
        let txn = self.db.begin().await?;
        let (service, project) = service_of(&txn, ctx, service_id).await?;
        let proxy = proxy_of(&txn, service.id)
            .await?
            .ok_or_else(|| no_proxy(&service))?;
        let rules = rules_of(&txn, proxy.id).await?;
        if rules.iter().any(|r| r.cidr == cidr) {
            return Err(Error::Conflict(format!(
                "cidr: {cidr} is already on the allowlist"
            )));
        }
        if rules.len() as u64 >= MAX_RULES {
            return Err(Error::Forbidden(format!(
                "the allowlist has {MAX_RULES} rules, the most a TCP proxy may have: remove one first"
            )));
        }
        let rule = rules::ActiveModel {
            id: Set(new_id()),
            tcp_proxy_id: Set(proxy.id),
            cidr: Set(cidr.clone()),
            description: Set(description),
            created_at: Set(now()),
        }
        .insert(&txn)
        .await?;
        self.reapply(&txn, &project, &service, &proxy).await?;
        audit::record(
            &txn,
            ctx,
            "tcp_proxy.allowlist.add",
            Target::new("service", service.id).in_project(project.id),
            Some(json!({ "cidr": cidr })),
        )
        .await?;
        txn.commit().await?;
        Ok(rule)
    }

    /// Removes one allowlist rule.
    pub async fn remove_tcp_allowlist_rule(
        &self,
        ctx: &Ctx,
        service_id: &str,
        rule_id: &str,
    ) -> Result<bool> {
        ctx.require(Role::Write)?;
        let rule_id = parse_id("ruleId", rule_id)?;
        let txn = self.db.begin().await?;
        let (service, project) = service_of(&txn, ctx, service_id).await?;
        let proxy = proxy_of(&txn, service.id)
            .await?
            .ok_or_else(|| no_proxy(&service))?;
        let rule = rules::Entity::find_by_id(rule_id)
            .filter(rules::Column::TcpProxyId.eq(proxy.id))
            .one(&txn)
            .await?
            .ok_or_else(|| Error::not_found("allowlist rule", rule_id))?;
        rules::Entity::delete_by_id(rule.id).exec(&txn).await?;
        self.reapply(&txn, &project, &service, &proxy).await?;
        audit::record(
            &txn,
            ctx,
            "tcp_proxy.allowlist.remove",
            Target::new("service", service.id).in_project(project.id),
            Some(json!({ "cidr": rule.cidr })),
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// After a restart of the server: every enabled proxy listens again
    /// (local runtime; a cluster's NodePorts outlive the server).
    pub async fn restore_tcp_proxies(&self) -> Result<()> {
        if self.runtime.kind() != "local" {
            return Ok(());
        }
        let rows = proxies::Entity::find()
            .filter(proxies::Column::Enabled.eq(true))
            .all(&self.db)
            .await?;
        for proxy in rows {
            let restored = async {
                let service = svcs::Entity::find_by_id(proxy.service_id)
                    .one(&self.db)
                    .await?
                    .ok_or_else(|| Error::not_found("service", proxy.service_id))?;
                let project = proj::Entity::find_by_id(service.project_id)
                    .one(&self.db)
                    .await?
                    .ok_or_else(|| Error::not_found("project", service.project_id))?;
                let rules = rules_of(&self.db, proxy.id).await?;
                let spec = self
                    .tcp_spec(&self.db, &project, &service, &proxy, &rules)
                    .await?;
                self.runtime.apply_tcp_proxy(&spec).await
            };
            if let Err(e) = restored.await {
                tracing::warn!(service.id = %proxy.service_id, port = proxy.external_port, error = e.message(), "could not open a TCP proxy again");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

    #[test]
    fn cidrs_are_validated_and_normalised() {
        let ok = |s: &str| parse_cidr("cidr", s).unwrap().to_string();
        assert_eq!(ok("203.0.113.7/24"), "203.0.113.0/24");
        assert_eq!(ok(" 10.0.0.0/8 "), "10.0.0.0/8");
        assert_eq!(ok("198.51.100.4"), "198.51.100.4/32");
        assert_eq!(ok("2001:DB8:0:0::1/32"), "2001:db8::/32");
        assert_eq!(ok("::1"), "::1/128");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        for bad in [
            "",
            "10.0.0.0/33",
            "2001:db8::/129",
            "300.1.1.1/8",
            "10.0.0/8",
            "example.com/24",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            let err = parse_cidr("cidr", bad).unwrap_err();
            assert_eq!(err.code(), "BAD_REQUEST", "{bad}");
            assert!(err.message().starts_with("cidr:"), "{bad}");
        }
    }
}
