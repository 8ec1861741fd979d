//! Batch loaders for nested lists reached one parent at a time: every key
//! asked for while the request's resolvers run side by side is fetched by
//! one `WHERE … IN (…)` statement.
//!
//! A batch is closed by yielding to the scheduler, not by a timer: the
//! resolvers of sibling objects are polled in the same passes, and the
//! batch closes after a pass in which no key joined, so a lone key waits
//! two passes and no fixed delay.
//! Nothing is cached between batches, so a loader may serve a whole
//! websocket connection without returning stale rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::domain;
use crate::domain::listing::group;
use entity::{environments, service_environment_overrides, services};

/// Most scheduler passes a batch waits for late joiners; it closes after
/// the first pass in which none joined.
const MAX_PASSES: usize = 64;

/// Fetches the rows of many parents at once.
pub trait Fetch: Send + Sync + 'static {
    type Row: Clone + Send + Sync + 'static;
    /// The parent key of a row.
    fn key(row: &Self::Row) -> Uuid;
    fn fetch(
        db: DatabaseConnection,
        keys: Vec<Uuid>,
    ) -> impl Future<Output = crate::error::Result<Vec<Self::Row>>> + Send;
}

type Rows<R> = Result<Arc<HashMap<Uuid, Vec<R>>>, async_graphql::Error>;

struct Open<R> {
    keys: Arc<Mutex<Vec<Uuid>>>,
    done: Shared<BoxFuture<'static, Rows<R>>>,
}

/// A loader for one kind of child row.
pub struct Loader<F: Fetch> {
    db: DatabaseConnection,
    open: Arc<Mutex<Option<Open<F::Row>>>>,
}

impl<F: Fetch> Loader<F> {
    pub fn new(db: DatabaseConnection) -> Self {
        Loader {
            db,
            open: Arc::default(),
        }
    }

    /// The rows of `key`, in the order the fetch returns them.
    pub async fn load(&self, key: Uuid) -> Result<Vec<F::Row>, async_graphql::Error> {
        let done = {
            let mut open = self.open.lock().expect("lock");
            match open.as_ref() {
                Some(batch) => {
                    batch.keys.lock().expect("lock").push(key);
                    batch.done.clone()
                }
                None => {
                    let keys = Arc::new(Mutex::new(vec![key]));
                    let done =
                        Self::batch(self.db.clone(), Arc::downgrade(&self.open), keys.clone());
                    *open = Some(Open {
                        keys,
                        done: done.clone(),
                    });
                    done
                }
            }
        };
        let rows = done.await?;
        Ok(rows.get(&key).cloned().unwrap_or_default())
    }

    fn batch(
        db: DatabaseConnection,
        open: Weak<Mutex<Option<Open<F::Row>>>>,
        keys: Arc<Mutex<Vec<Uuid>>>,
    ) -> Shared<BoxFuture<'static, Rows<F::Row>>> {
        async move {
            // Wait while keys keep arriving: a large list's resolvers are
            // polled over several passes (the executor polls a bounded
            // number of futures per pass).
            let mut seen = 0;
            for _ in 0..MAX_PASSES {
                tokio::task::yield_now().await;
                let now = keys.lock().expect("lock").len();
                if now == seen {
                    break;
                }
                seen = now;
            }
            // Closed: later keys start the next batch.
            if let Some(open) = open.upgrade() {
                open.lock().expect("lock").take();
            }
            let mut keys = std::mem::take(&mut *keys.lock().expect("lock"));
            keys.sort_unstable();
            keys.dedup();
            let rows = F::fetch(db, keys).await?;
            Ok(Arc::new(group(rows, F::key)))
        }
        .boxed()
        .shared()
    }
}

macro_rules! fetch {
    ($(#[$doc:meta])* $name:ident, $row:ty, $fetch:path, $key:ident) => {
        $(#[$doc])*
        pub struct $name;

        impl Fetch for $name {
            type Row = $row;
            fn key(row: &$row) -> Uuid {
                row.$key
            }
            async fn fetch(db: DatabaseConnection, keys: Vec<Uuid>) -> crate::error::Result<Vec<$row>> {
                $fetch(&db, &keys).await
            }
        }
    };
}

fetch!(
    /// Environments by project id.
    EnvironmentsByProject,
    environments::Model,
    domain::projects::environments_of,
    project_id
);
fetch!(
    /// Services by project id.
    ServicesByProject,
    services::Model,
    domain::services::of_projects,
    project_id
);
fetch!(
    /// Per-environment overrides by service id.
    OverridesByService,
    service_environment_overrides::Model,
    domain::services::overrides_of,
    service_id
);

/// The loaders one request (or one websocket connection) uses.
pub struct Loaders {
    pub environments: Loader<EnvironmentsByProject>,
    pub services: Loader<ServicesByProject>,
    pub overrides: Loader<OverridesByService>,
}

impl Loaders {
    pub fn new(db: &DatabaseConnection) -> Self {
        Loaders {
            environments: Loader::new(db.clone()),
            services: Loader::new(db.clone()),
            overrides: Loader::new(db.clone()),
        }
    }
}
