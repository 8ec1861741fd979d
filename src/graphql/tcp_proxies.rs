//! Public TCP proxies of services and their allowlists. Resolvers are thin;
//! the rules live in `domain::tcp_proxies`.

use async_graphql::{Context, ID, Object, Result, SimpleObject};

use super::domain_ctx;
use super::types::Timestamp;
use crate::domain::deployments::Deployer;
use crate::domain::tcp_proxies::ProxyView;
use crate::error::Error;

fn deployer<'a>(ctx: &Context<'a>) -> Result<&'a Deployer, Error> {
    ctx.data_opt::<Deployer>()
        .ok_or_else(|| Error::Unavailable("no runtime is configured".into()))
}

/// A service's TCP proxy: `enabled: false` with no ports when it has none.
#[derive(SimpleObject)]
pub struct TcpProxy {
    pub enabled: bool,
    /// The port clients connect to.
    pub external_port: Option<i32>,
    /// The service's port that connections reach.
    pub target_port: Option<i32>,
    /// CIDR blocks allowed to connect; empty: anyone.
    pub allowlist: Vec<String>,
}

impl From<ProxyView> for TcpProxy {
    fn from(v: ProxyView) -> Self {
        TcpProxy {
            enabled: v.enabled,
            external_port: v.external_port,
            target_port: v.target_port,
            allowlist: v.allowlist,
        }
    }
}

/// What enabling or changing a proxy answers.
#[derive(SimpleObject)]
pub struct TcpProxyChange {
    /// Whether this call created the proxy (it changed an existing one otherwise).
    pub created: bool,
    pub enabled: bool,
    pub external_port: Option<i32>,
    pub target_port: Option<i32>,
    pub allowlist: Vec<String>,
}

/// One allowlist rule.
#[derive(SimpleObject)]
pub struct TcpAllowlistRule {
    pub id: ID,
    /// Normalised CIDR block.
    pub cidr: String,
    pub description: Option<String>,
    pub created_at: Timestamp,
}

impl From<entity::tcp_allowlist_rules::Model> for TcpAllowlistRule {
    fn from(r: entity::tcp_allowlist_rules::Model) -> Self {
        TcpAllowlistRule {
            id: ID(r.id.to_string()),
            cidr: r.cidr,
            description: r.description,
            created_at: Timestamp(r.created_at),
        }
    }
}

/// `{rules: […]}`.
#[derive(SimpleObject)]
pub struct TcpAllowlist {
    pub rules: Vec<TcpAllowlistRule>,
}

#[derive(Default)]
pub struct TcpProxyQuery;

#[Object]
impl TcpProxyQuery {
    /// A service's TCP proxy.
    async fn tcp_proxy(&self, ctx: &Context<'_>, service_id: ID) -> Result<TcpProxy> {
        Ok(deployer(ctx)?
            .tcp_proxy(domain_ctx(ctx)?, &service_id)
            .await?
            .into())
    }

    /// The IP allowlist of a service's TCP proxy.
    async fn tcp_proxy_allowlist(&self, ctx: &Context<'_>, service_id: ID) -> Result<TcpAllowlist> {
        let rules = deployer(ctx)?
            .tcp_allowlist(domain_ctx(ctx)?, &service_id)
            .await?;
        Ok(TcpAllowlist {
            rules: rules.into_iter().map(Into::into).collect(),
        })
    }
}

#[derive(Default)]
pub struct TcpProxyMutation;

#[Object]
impl TcpProxyMutation {
    /// Exposes a service's `targetPort` on `externalPort`, or changes the ports.
    async fn enable_tcp_proxy(
        &self,
        ctx: &Context<'_>,
        service_id: ID,
        external_port: i32,
        target_port: i32,
    ) -> Result<TcpProxyChange> {
        let (v, created) = deployer(ctx)?
            .enable_tcp_proxy(domain_ctx(ctx)?, &service_id, external_port, target_port)
            .await?;
        Ok(TcpProxyChange {
            created,
            enabled: v.enabled,
            external_port: v.external_port,
            target_port: v.target_port,
            allowlist: v.allowlist,
        })
    }

    /// Disables a service's TCP proxy; it keeps its external port unless
    /// `permanent`.
    async fn disable_tcp_proxy(
        &self,
        ctx: &Context<'_>,
        service_id: ID,
        permanent: Option<bool>,
    ) -> Result<TcpProxy> {
        Ok(deployer(ctx)?
            .disable_tcp_proxy(domain_ctx(ctx)?, &service_id, permanent.unwrap_or(false))
            .await?
            .into())
    }

    /// Admits connections from one more CIDR block.
    async fn add_tcp_allowlist_rule(
        &self,
        ctx: &Context<'_>,
        service_id: ID,
        cidr: String,
        description: Option<String>,
    ) -> Result<TcpAllowlistRule> {
        Ok(deployer(ctx)?
            .add_tcp_allowlist_rule(domain_ctx(ctx)?, &service_id, &cidr, description)
            .await?
            .into())
    }

    /// Removes an allowlist rule.
    async fn remove_tcp_allowlist_rule(
        &self,
        ctx: &Context<'_>,
        service_id: ID,
        rule_id: ID,
    ) -> Result<bool> {
        Ok(deployer(ctx)?
            .remove_tcp_allowlist_rule(domain_ctx(ctx)?, &service_id, &rule_id)
            .await?)
    }
}
