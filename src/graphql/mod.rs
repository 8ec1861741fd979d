//! The GraphQL core: schema assembly, per-request data and the helpers
//! resolvers use to reach the domain.

pub mod ai;
pub mod deployments;
pub mod executor;
pub mod http;
pub mod live;
pub mod loaders;
pub mod mutation;
pub mod order;
pub mod plan;
pub mod query;
pub mod resources;
pub mod size;
pub mod storage;
pub mod tcp_proxies;
pub mod types;
pub mod volumes;
pub mod ws;

use std::sync::Arc;

use async_graphql::{Context, Schema, ValidationMode};
use sea_orm::DatabaseConnection;

use crate::auth::tokens::TokenAuthenticator;
use crate::domain::Ctx;
use crate::error::Error;
use crate::secrets::Keyring;
use loaders::Loaders;

pub use executor::Core;
pub use mutation::MutationRoot;
pub use query::QueryRoot;

/// Every query field: each resource group contributes its own object.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Query")]
pub struct Query(
    QueryRoot,
    deployments::DeploymentQuery,
    resources::ResourceQuery,
    storage::StorageQuery,
    tcp_proxies::TcpProxyQuery,
    volumes::VolumeQuery,
    ai::AiQuery,
);

/// Every mutation field.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct Mutation(
    MutationRoot,
    deployments::DeploymentMutation,
    resources::ResourceMutation,
    storage::StorageMutation,
    tcp_proxies::TcpProxyMutation,
    volumes::VolumeMutation,
    ai::AiMutation,
);

/// Every subscription field.
#[derive(async_graphql::MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct Subscription(deployments::Subscription, resources::ResourceSubscription);

/// The executable schema.
pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Deepest selection accepted (GraphiQL's introspection query needs 13).
pub const MAX_DEPTH: usize = 16;
/// Most expensive query accepted; lists count as their page size.
pub const MAX_COMPLEXITY: usize = 50_000;

/// What the resolvers share.
pub struct Shared {
    pub db: DatabaseConnection,
    /// The list pages' reads.
    pub reads: crate::store::Reads,
    pub keyring: Arc<Keyring>,
    pub deployer: crate::domain::deployments::Deployer,
    pub ai: Arc<crate::ai::Gateway>,
    pub tokens: TokenAuthenticator,
    pub storages: Arc<crate::domain::storage::Storages>,
}

/// Builds the schema with its shared data, in both validation modes.
pub fn build(shared: Shared) -> Core {
    let schema = |mode| {
        Schema::build(
            Query::default(),
            Mutation::default(),
            Subscription::default(),
        )
        .data(shared.db.clone())
        .data(shared.reads.clone())
        .data(shared.keyring.clone())
        .data(shared.deployer.clone())
        .data(shared.ai.clone())
        .data(shared.tokens.clone())
        .data(shared.storages.clone())
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .validation_mode(mode)
        .finish()
    };
    Core::new(
        schema(ValidationMode::Strict),
        schema(ValidationMode::Fast),
        Some(shared.deployer.clone()),
    )
}

/// The schema without data, for exporting its SDL.
pub fn sdl() -> String {
    bare().sdl()
}

/// The schema without data (for export and introspection).
pub fn bare() -> AppSchema {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .finish()
}

/// Attaches what one request needs: the caller and its batch loaders, so
/// batches never cross requests or organisations.
pub fn with_request_data(
    req: async_graphql::Request,
    db: &DatabaseConnection,
    ctx: Ctx,
) -> async_graphql::Request {
    req.data(ctx).data(Loaders::new(db))
}

/// The same data for a websocket connection (one principal, many
/// operations; the loaders cache nothing between batches).
pub fn connection_data(db: &DatabaseConnection, ctx: Ctx) -> async_graphql::Data {
    let mut data = async_graphql::Data::default();
    data.insert(ctx);
    data.insert(Loaders::new(db));
    data
}

pub(crate) fn db<'a>(ctx: &Context<'a>) -> &'a DatabaseConnection {
    ctx.data_unchecked::<DatabaseConnection>()
}

pub(crate) fn keyring<'a>(ctx: &Context<'a>) -> &'a Keyring {
    ctx.data_unchecked::<Arc<Keyring>>()
}

pub(crate) fn domain_ctx<'a>(ctx: &Context<'a>) -> Result<&'a Ctx, Error> {
    ctx.data_opt::<Ctx>()
        .ok_or_else(|| Error::Unauthenticated("missing credentials".into()))
}
