//! DataLoaders, built per request: each batch is one `WHERE … IN (…)` query,
//! so nested lists cost a constant number of statements.

use std::collections::HashMap;
use std::hash::Hash;

use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::domain;
use entity::{environments, service_environment_overrides, services};

/// Groups rows by a key, keeping their order.
fn group<K: Hash + Eq, V>(rows: Vec<V>, key: impl Fn(&V) -> K) -> HashMap<K, Vec<V>> {
    let mut map: HashMap<K, Vec<V>> = HashMap::new();
    for row in rows {
        map.entry(key(&row)).or_default().push(row);
    }
    map
}

macro_rules! loader {
    ($(#[$doc:meta])* $name:ident, $row:ty, $fetch:path, $key:ident) => {
        $(#[$doc])*
        pub struct $name(pub DatabaseConnection);

        impl async_graphql::dataloader::Loader<Uuid> for $name {
            type Value = Vec<$row>;
            type Error = async_graphql::Error;

            async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
                let rows = $fetch(&self.0, keys).await?;
                Ok(group(rows, |r| r.$key))
            }
        }
    };
}

loader!(
    /// Environments by project id.
    EnvironmentsByProject,
    environments::Model,
    domain::projects::environments_of,
    project_id
);
loader!(
    /// Services by project id.
    ServicesByProject,
    services::Model,
    domain::services::of_projects,
    project_id
);
loader!(
    /// Per-environment overrides by service id.
    OverridesByService,
    service_environment_overrides::Model,
    domain::services::overrides_of,
    service_id
);
