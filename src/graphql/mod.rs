//! The GraphQL core: schema assembly, per-request data and the helpers
//! resolvers use to reach the domain.

pub mod ai;
pub mod deployments;
pub mod loaders;
pub mod mutation;
pub mod query;
pub mod types;

use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, EmptySubscription, Schema};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::domain::Ctx;
use crate::error::Error;
use crate::secrets::Keyring;
use loaders::{EnvironmentsByProject, OverridesByService, ServicesByProject};

pub use mutation::MutationRoot;
pub use query::QueryRoot;

/// Every query field: each resource group contributes its own object.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Query")]
pub struct Query(QueryRoot, deployments::DeploymentQuery, ai::AiQuery);

/// Every mutation field.
#[derive(async_graphql::MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct Mutation(
    MutationRoot,
    deployments::DeploymentMutation,
    ai::AiMutation,
);

/// The executable schema.
pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// Deepest selection accepted (GraphiQL's introspection query needs 13).
pub const MAX_DEPTH: usize = 16;
/// Most expensive query accepted; lists count as their page size.
pub const MAX_COMPLEXITY: usize = 50_000;

/// Builds the schema with its shared data.
pub fn build(
    db: DatabaseConnection,
    keyring: Arc<Keyring>,
    deployer: crate::domain::deployments::Deployer,
    ai: Arc<crate::ai::Gateway>,
) -> AppSchema {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .data(db)
        .data(keyring)
        .data(deployer)
        .data(ai)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// The schema without data, for exporting its SDL.
pub fn sdl() -> String {
    bare().sdl()
}

/// The schema without data (for export and introspection).
pub fn bare() -> AppSchema {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription).finish()
}

/// Attaches what one request needs: the caller and fresh DataLoaders, so
/// batches and caches never cross requests or organisations.
pub fn with_request_data(
    req: async_graphql::Request,
    db: &DatabaseConnection,
    ctx: Ctx,
) -> async_graphql::Request {
    req.data(ctx)
        .data(loader(EnvironmentsByProject(db.clone())))
        .data(loader(ServicesByProject(db.clone())))
        .data(loader(OverridesByService(db.clone())))
}

/// The same data for a websocket connection (one principal, many operations).
pub fn connection_data(db: &DatabaseConnection, ctx: Ctx) -> async_graphql::Data {
    let mut data = async_graphql::Data::default();
    data.insert(ctx);
    data.insert(loader(EnvironmentsByProject(db.clone())));
    data.insert(loader(ServicesByProject(db.clone())));
    data.insert(loader(OverridesByService(db.clone())));
    data
}

fn loader<L: Loader<Uuid>>(l: L) -> DataLoader<L> {
    // A short window: enough for sibling resolvers to join one batch.
    DataLoader::new(l, tokio::spawn).delay(Duration::from_millis(1))
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
