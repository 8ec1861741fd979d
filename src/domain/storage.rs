//! Blob storage of project environments: each storage is a prefix of the
//! platform's one bucket with an access key pair of its own, served by the
//! S3-compatible endpoint (`crate::blob`). Creating one writes its `BLOB_*`
//! variables into the environment as managed secret env vars (hand edits of
//! them are refused); deleting one revokes its key at once, removes those
//! variables and keeps the blobs.
//!
//! Prefixes: the production environment's `primary` storage has
//! `<org-slug>/<project-slug>/`, every other one
//! `<org-slug>/<project-slug>~<environment>~<name>/`. Slugs, environment
//! and storage names are DNS labels (no `/`, no `~`), so every prefix is
//! `<org>/<one segment>/` with a segment that names exactly one (project,
//! environment, name): no prefix is a prefix of another storage's, and a
//! key confined to its prefix cannot reach another storage's objects.
//!
//! The keys come from the control plane's own S3 endpoint (provider `s3`)
//! or from an [`Upstream`] provider that mints a key per storage, limited
//! to the storage's prefix of its bucket (provider `b2`). A deleted
//! storage's upstream key is queued in `blob_key_revocations` in the same
//! transaction and revoked there until the provider confirms.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, RelationTrait, Set,
    SqlErr, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Target};
use super::env_vars::MASK;
use super::{Ctx, environments, new_id, now, organizations, parse_id, projects, validate};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::secrets::{Keyring, SecretString, random_hex};
use entity::{
    blob_key_revocations as revocations, env_vars, environments as envs, projects as proj, storage,
};

/// Where env vars written by a storage come from (`env_vars.source`; the
/// storage's id is their `binding_id`).
pub const SOURCE: &str = "storage";

/// The resource kind that is a storage seen through `/resources`.
pub const BLOB_KIND: &str = "blob";

/// The provider of keys the control plane's own S3 endpoint checks.
pub const OWN_PROVIDER: &str = "s3";

/// How long a failed revocation waits before the next attempt, at most.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The bucket of an upstream provider, as its storages hand it out.
#[derive(Debug, Clone)]
pub struct UpstreamBucket {
    /// The provider's id of the bucket.
    pub id: String,
    pub name: String,
    /// The provider's S3-compatible endpoint (`BLOB_ENDPOINT`).
    pub endpoint: String,
    /// Whether the bucket serves its objects to anyone: the provider's
    /// buckets are public or private as a whole.
    pub public: bool,
    /// The base of public URLs: `<public_base>/<prefix>`.
    pub public_base: String,
}

/// A blob provider that issues each storage a key of its own, limited to
/// the storage's prefix of one bucket.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Its provider name (`b2`).
    fn name(&self) -> &'static str;
    /// The bucket storages are prefixes of.
    async fn bucket(&self) -> Result<UpstreamBucket>;
    /// A new key named `key_name` for the objects under `prefix`: its id
    /// and its secret.
    async fn mint(&self, key_name: &str, prefix: &str) -> Result<(String, SecretString)>;
    /// Deletes a key; a key the provider does not have is gone already.
    async fn revoke(&self, key_id: &str) -> Result<()>;
}

/// The name a storage gets when none is given.
pub const DEFAULT_NAME: &str = "primary";

/// The variables a storage writes, in this order; a storage not named
/// `primary` writes `BLOB_<NAME>_…` instead of `BLOB_…`.
const VARS: [&str; 6] = [
    "ENDPOINT",
    "BUCKET",
    "PREFIX",
    "KEY_ID",
    "APPLICATION_KEY",
    "PUBLIC_URL",
];

/// What `POST /projects/:id/storage` asks for.
#[derive(Debug, Clone)]
pub struct NewStorage {
    pub env_type: String,
    pub name: Option<String>,
    /// Whether anonymous GET/HEAD of its objects is served (default true).
    pub public: Option<bool>,
}

/// A storage as the API shows it: `env_vars` holds the application key
/// only right after creation, `***` otherwise.
#[derive(Clone)]
pub struct StorageView {
    pub row: storage::Model,
    pub env_name: String,
    pub env_vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for StorageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageView")
            .field("id", &self.row.id)
            .field("prefix", &self.row.prefix)
            .finish_non_exhaustive()
    }
}

/// What the S3 endpoint may do for one access key.
#[derive(Clone)]
pub struct Grant {
    pub storage_id: Uuid,
    pub bucket: String,
    pub prefix: String,
    pub secret: SecretString,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("storage_id", &self.storage_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The storages of every project: their rules and store queries, with the
/// settings of the S3 endpoint that serves them.
pub struct Storages {
    db: DatabaseConnection,
    keyring: std::sync::Arc<Keyring>,
    bucket: String,
    quota: u64,
    upstream: Option<Arc<dyn Upstream>>,
    configured_url: Option<String>,
    /// The endpoint's base URL, known once its listener is bound.
    endpoint: OnceLock<String>,
    bound: OnceLock<std::net::SocketAddr>,
}

impl std::fmt::Debug for Storages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storages")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint.get())
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// The name of a storage's variable `var` (`BLOB_ENDPOINT`, or
/// `BLOB_MEDIA_ENDPOINT` for a storage named `media`).
fn var_name(storage_name: &str, var: &str) -> String {
    if storage_name == DEFAULT_NAME {
        format!("BLOB_{var}")
    } else {
        format!(
            "BLOB_{}_{var}",
            storage_name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// The prefix of a storage (see the module's documentation).
pub fn prefix_of(org: &str, project: &str, env: &str, name: &str) -> String {
    if env == environments::PRODUCTION && name == DEFAULT_NAME {
        format!("{org}/{project}/")
    } else {
        format!("{org}/{project}~{env}~{name}/")
    }
}

/// Whether `key` is an object key inside `prefix` that names nothing
/// outside it once the filesystem reads it: longer than the prefix, and no
/// `.` or `..` segment.
pub fn key_within(prefix: &str, key: &str) -> bool {
    key.len() > prefix.len()
        && key.starts_with(prefix)
        && !key.contains('\0')
        && key.split('/').all(|s| s != ".." && s != ".")
}

/// Where a new storage goes (see [`Storages::place`]).
struct Place {
    provider: &'static str,
    endpoint: String,
    bucket: String,
    public_base: String,
    public: bool,
}

/// Revokes an upstream key of a storage that was not made, in the
/// background, a few times; the key was never shown to anyone, so one
/// that stays (the provider unreachable throughout) is clutter in the
/// provider's account, named `slx-<storage id>`, not a way in.
fn spawn_revocation(upstream: Arc<dyn Upstream>, key_id: String) {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        for _ in 0..6 {
            match upstream.revoke(&key_id).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    key_id,
                    error = e.message(),
                    "revoking an unused blob key failed; retrying"
                ),
            }
            tokio::time::sleep(wait).await;
            wait *= 4;
        }
        tracing::error!(
            key_id,
            "an unused blob key could not be revoked at the provider: delete it by hand"
        );
    });
}

fn name_taken(name: &str, env: &str) -> Error {
    Error::Conflict(format!(
        "name: environment '{env}' already has a storage named '{name}'"
    ))
}

impl Storages {
    pub fn new(
        db: DatabaseConnection,
        keyring: std::sync::Arc<Keyring>,
        bucket: String,
        quota: u64,
        public_url: Option<String>,
        upstream: Option<Arc<dyn Upstream>>,
    ) -> Storages {
        Storages {
            db,
            keyring,
            bucket,
            quota,
            upstream,
            configured_url: public_url,
            endpoint: OnceLock::new(),
            bound: OnceLock::new(),
        }
    }

    /// The bucket of the control plane's own S3 endpoint.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Who issues new storages' keys: `s3` (this server's endpoint) or
    /// the upstream provider's name.
    pub fn provider(&self) -> &'static str {
        self.upstream.as_ref().map_or(OWN_PROVIDER, |u| u.name())
    }

    /// Whether this server serves the S3 API itself (no upstream).
    pub fn serves_s3(&self) -> bool {
        self.upstream.is_none()
    }

    /// Records where the S3 endpoint listens: its base URL is
    /// `s3_public_url`, else `http://<bound address>`.
    pub fn set_bound(&self, addr: std::net::SocketAddr) {
        let url = self
            .configured_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let _ = self.endpoint.set(url);
        let _ = self.bound.set(addr);
    }

    /// Where the S3 endpoint listens, once it does.
    pub fn bound(&self) -> Option<std::net::SocketAddr> {
        self.bound.get().copied()
    }

    /// The S3 endpoint's base URL (`BLOB_ENDPOINT`).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.get().map(String::as_str)
    }

    fn vars(&self, row: &storage::Model, secret: Option<&str>) -> BTreeMap<String, String> {
        VARS.iter()
            .map(|var| {
                let value = match *var {
                    "ENDPOINT" if row.endpoint.is_empty() => {
                        self.endpoint().unwrap_or_default().to_string()
                    }
                    "ENDPOINT" => row.endpoint.clone(),
                    "BUCKET" => row.bucket.clone(),
                    "PREFIX" => row.prefix.clone(),
                    "KEY_ID" => row.access_key_id.clone(),
                    "APPLICATION_KEY" => secret.unwrap_or(MASK).to_string(),
                    _ => row.public_url.clone(),
                };
                (var_name(&row.name, var), value)
            })
            .collect()
    }

    fn view(&self, row: storage::Model, env_name: String, secret: Option<&str>) -> StorageView {
        let env_vars = self.vars(&row, secret);
        StorageView {
            row,
            env_name,
            env_vars,
        }
    }

    /// The storages of a project, oldest first, application keys masked.
    pub async fn list(&self, ctx: &Ctx, project: &str) -> Result<Vec<StorageView>> {
        let project = projects::resolve(&self.db, ctx, project).await?;
        let rows = storage::Entity::find()
            .filter(storage::Column::ProjectId.eq(project.id))
            .find_also_related(envs::Entity)
            .order_by_asc(storage::Column::CreatedAt)
            .order_by_asc(storage::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(row, env)| {
                let env_name = env.map(|e| e.name).unwrap_or_default();
                self.view(row, env_name, None)
            })
            .collect())
    }

    /// Creates a storage with a new key pair and writes its variables into
    /// the environment. The answer holds the application key, once.
    #[tracing::instrument(skip_all, fields(project = %project))]
    pub async fn create(&self, ctx: &Ctx, project: &str, input: NewStorage) -> Result<StorageView> {
        ctx.require(Role::Write)?;
        let name = input
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAME)
            .to_string();
        validate::dns_label("name", &name)?;
        let txn = self.db.begin().await?;
        let project = projects::resolve(&txn, ctx, project).await?;
        let env = environments::select(&txn, project.id, Some(&input.env_type), None).await?;
        let view = self
            .create_in(&txn, ctx, &project, &env, &name, input.public, new_id())
            .await?;
        txn.commit().await?;
        Ok(view)
    }

    /// Creates storage `id` named `name` (a DNS label) of `env` within the
    /// caller's transaction: checks the quota and the name, writes its
    /// variables. A `kind: blob` resource is one, under the same id.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_in<C: ConnectionTrait>(
        &self,
        txn: &C,
        ctx: &Ctx,
        project: &proj::Model,
        env: &envs::Model,
        name: &str,
        public: Option<bool>,
        id: Uuid,
    ) -> Result<StorageView> {
        let name = name.to_string();
        let place = self.place(public).await?;
        super::organizations::take_turns(txn, ctx.org_id()).await?;
        let held = storage::Entity::find()
            .join(
                sea_orm::JoinType::InnerJoin,
                storage::Relation::Projects.def(),
            )
            .filter(proj::Column::OrganizationId.eq(ctx.org_id()))
            .count(txn)
            .await?;
        if held >= self.quota {
            return Err(Error::Forbidden(format!(
                "the organisation has {held} storages, the most it may have (max_storages_per_organization): delete one first"
            )));
        }
        let taken = storage::Entity::find()
            .filter(storage::Column::ProjectId.eq(project.id))
            .filter(storage::Column::EnvironmentId.eq(env.id))
            .filter(storage::Column::Name.eq(name.as_str()))
            .one(txn)
            .await?
            .is_some();
        if taken {
            return Err(name_taken(&name, &env.name));
        }
        let org = organizations::get(txn, ctx.org_id()).await?;
        let prefix = prefix_of(&org.slug, &project.slug, &env.name, &name);
        let (access_key_id, secret) = match &self.upstream {
            Some(upstream) => upstream.mint(&format!("slx-{id}"), &prefix).await?,
            None => (
                format!("SLX{}", random_hex(10).to_ascii_uppercase()),
                SecretString::new(random_hex(20)),
            ),
        };
        let made = self
            .insert_in(
                txn,
                ctx,
                project,
                env,
                &name,
                &place,
                &prefix,
                id,
                (&access_key_id, &secret),
            )
            .await;
        if made.is_err()
            && let Some(upstream) = &self.upstream
        {
            // The storage was not made: its key must not outlive it.
            spawn_revocation(upstream.clone(), access_key_id);
        }
        made
    }

    /// Where new storages go: the bucket, its endpoint, the base of public
    /// URLs, and whether `public` (the caller's wish) is what it will be.
    async fn place(&self, public: Option<bool>) -> Result<Place> {
        match &self.upstream {
            Some(upstream) => {
                let bucket = upstream.bucket().await?;
                if let Some(want) = public
                    && want != bucket.public
                {
                    let (is, other) = if bucket.public {
                        ("public", "private")
                    } else {
                        ("private", "public")
                    };
                    return Err(Error::field(
                        "public",
                        format!(
                            "this server's {} bucket '{}' is {is} as a whole: its storages cannot be {other}",
                            upstream.name(),
                            bucket.name
                        ),
                    ));
                }
                Ok(Place {
                    provider: upstream.name(),
                    endpoint: bucket.endpoint,
                    bucket: bucket.name,
                    public_base: bucket.public_base,
                    public: bucket.public,
                })
            }
            None => {
                let Some(endpoint) = self.endpoint() else {
                    return Err(Error::Unavailable(
                        "the S3 endpoint of this server is not running".into(),
                    ));
                };
                Ok(Place {
                    provider: OWN_PROVIDER,
                    endpoint: endpoint.to_string(),
                    bucket: self.bucket.clone(),
                    public_base: format!("{endpoint}/{}", self.bucket),
                    public: public.unwrap_or(true),
                })
            }
        }
    }

    /// Writes storage `id` with its key, and its variables.
    #[allow(clippy::too_many_arguments)]
    async fn insert_in<C: ConnectionTrait>(
        &self,
        txn: &C,
        ctx: &Ctx,
        project: &proj::Model,
        env: &envs::Model,
        name: &str,
        place: &Place,
        prefix: &str,
        id: Uuid,
        (access_key_id, secret): (&str, &SecretString),
    ) -> Result<StorageView> {
        let name = name.to_string();
        let now = now();
        let row = storage::ActiveModel {
            id: Set(id),
            project_id: Set(project.id),
            environment_id: Set(env.id),
            name: Set(name.clone()),
            bucket: Set(place.bucket.clone()),
            prefix: Set(prefix.to_string()),
            access_key_id: Set(access_key_id.to_string()),
            secret_ciphertext: Set(self.keyring.seal(secret.expose())?),
            public_url: Set(format!("{}/{prefix}", place.public_base)),
            public: Set(place.public),
            revoked_at: Set(None),
            provider: Set(place.provider.to_string()),
            endpoint: Set(place.endpoint.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(txn)
        .await
        .map_err(|e| match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => name_taken(&name, &env.name),
            _ => e.into(),
        })?;
        let view = self.view(row, env.name.clone(), Some(secret.expose()));
        for (key, value) in &view.env_vars {
            let existing = env_vars::Entity::find()
                .filter(env_vars::Column::EnvironmentId.eq(env.id))
                .filter(env_vars::Column::Key.eq(key.as_str()))
                .one(txn)
                .await?;
            if let Some(e) = existing {
                let owner = match (e.source.as_str(), e.binding_id) {
                    (SOURCE, Some(s)) => format!("it is managed by storage {s}"),
                    (_, Some(b)) => format!("it is managed by resource binding {b}"),
                    (_, None) => "it was set by hand: delete it first".into(),
                };
                return Err(Error::Conflict(format!(
                    "the environment already has {key}: {owner}"
                )));
            }
            env_vars::ActiveModel {
                id: Set(new_id()),
                environment_id: Set(env.id),
                key: Set(key.clone()),
                value_ciphertext: Set(self.keyring.seal(value)?),
                secret: Set(true),
                source: Set(SOURCE.into()),
                binding_id: Set(Some(view.row.id)),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(txn)
            .await?;
        }
        audit::record(
            txn,
            ctx,
            "storage.create",
            Target::new("storage", view.row.id).in_project(project.id),
            Some(json!({ "environmentId": env.id, "name": name, "prefix": prefix })),
        )
        .await?;
        Ok(view)
    }

    /// A storage of a project of the caller's organisation.
    async fn find<C: ConnectionTrait>(
        conn: &C,
        ctx: &Ctx,
        project: &str,
        id: &str,
    ) -> Result<(storage::Model, proj::Model)> {
        let id = parse_id("storageId", id)?;
        let project = projects::resolve(conn, ctx, project).await?;
        let row = storage::Entity::find_by_id(id)
            .filter(storage::Column::ProjectId.eq(project.id))
            .one(conn)
            .await?
            .ok_or_else(|| Error::not_found("storage", id))?;
        Ok((row, project))
    }

    /// Deletes a storage: its key is refused from the next S3 request on
    /// (the endpoint reads keys from the store on every request), the
    /// variables it wrote are removed, its objects stay.
    #[tracing::instrument(skip_all, fields(project = %project))]
    pub async fn delete(&self, ctx: &Ctx, project: &str, id: &str) -> Result<bool> {
        ctx.require(Role::Write)?;
        let txn = self.db.begin().await?;
        let (row, project) = Self::find(&txn, ctx, project, id).await?;
        remove(&txn, &[row.id]).await?;
        audit::record(
            &txn,
            ctx,
            "storage.delete",
            Target::new("storage", row.id).in_project(project.id),
            Some(json!({ "prefix": row.prefix })),
        )
        .await?;
        txn.commit().await?;
        // Its upstream key is revoked before the answer (by the sweep later
        // if the provider cannot be reached now); other queued keys are
        // the sweep's.
        if let Some(upstream) = &self.upstream
            && row.provider == upstream.name()
            && let Err(e) = self
                .revoke_queued(upstream.as_ref(), row.access_key_id)
                .await
        {
            tracing::warn!(
                error = e.message(),
                "revoking a blob key failed; the sweep retries"
            );
        }
        Ok(true)
    }

    /// Revokes the queued upstream keys that are due; a failure waits
    /// longer each time. Returns how many were revoked.
    pub async fn sweep(&self) -> Result<usize> {
        let Some(upstream) = &self.upstream else {
            return Ok(0);
        };
        let due = revocations::Entity::find()
            .filter(revocations::Column::Provider.eq(upstream.name()))
            .filter(revocations::Column::NotBefore.lte(now()))
            .order_by_asc(revocations::Column::NotBefore)
            .limit(100)
            .all(&self.db)
            .await?;
        let mut done = 0;
        for row in due {
            if self.settle(upstream.as_ref(), row).await? {
                done += 1;
            }
        }
        Ok(done)
    }

    /// Revokes the queued key `key_id` now, if it is still queued.
    async fn revoke_queued(&self, upstream: &dyn Upstream, key_id: String) -> Result<()> {
        if let Some(row) = revocations::Entity::find_by_id(key_id)
            .one(&self.db)
            .await?
        {
            self.settle(upstream, row).await?;
        }
        Ok(())
    }

    /// Revokes one queued key: its row goes once the provider confirms;
    /// a failure is recorded and waits longer each time. True when revoked.
    async fn settle(&self, upstream: &dyn Upstream, row: revocations::Model) -> Result<bool> {
        match upstream.revoke(&row.access_key_id).await {
            Ok(()) => {
                revocations::Entity::delete_by_id(row.access_key_id)
                    .exec(&self.db)
                    .await?;
                Ok(true)
            }
            Err(e) => {
                let attempts = row.attempts.saturating_add(1);
                let wait = Duration::from_secs(1u64 << attempts.clamp(0, 9) as u32).min(RETRY_CAP);
                tracing::warn!(
                    key_id = row.access_key_id,
                    attempts,
                    error = e.message(),
                    "revoking a blob key failed; retrying"
                );
                let mut active = row.into_active_model();
                active.attempts = Set(attempts);
                active.last_error = Set(Some(e.message().to_string()));
                active.not_before =
                    Set(now() + chrono::TimeDelta::from_std(wait).unwrap_or_default());
                active.update(&self.db).await?;
                Ok(false)
            }
        }
    }

    /// Looks the upstream provider's bucket up once at start-up, so that a
    /// wrong key or bucket shows in the log before the first storage is
    /// asked for (creating one says the same, with a 503).
    pub fn spawn_upstream_check(self: &Arc<Self>) {
        let Some(upstream) = self.upstream.clone() else {
            return;
        };
        tokio::spawn(async move {
            match upstream.bucket().await {
                Ok(b) => tracing::info!(
                    provider = upstream.name(),
                    bucket = b.name,
                    endpoint = b.endpoint,
                    public = b.public,
                    "blob storage keys are minted upstream"
                ),
                Err(e) => tracing::warn!(
                    provider = upstream.name(),
                    error = e.message(),
                    "the blob provider cannot be used yet: new storages are refused with 503 until it answers"
                ),
            }
        });
    }

    /// Sweeps the revocation queue every `every` while the server runs
    /// (deletions of projects and environments queue their keys).
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        if self.upstream.is_none() {
            return;
        }
        let storages = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = storages.sweep().await {
                    tracing::warn!(
                        error = e.message(),
                        "the blob key revocation queue could not be read"
                    );
                }
            }
        });
    }

    /// Makes a storage's objects readable by anyone (or not) at its public URL.
    pub async fn set_public(
        &self,
        ctx: &Ctx,
        project: &str,
        id: &str,
        public: bool,
    ) -> Result<StorageView> {
        ctx.require(Role::Write)?;
        let txn = self.db.begin().await?;
        let (row, project) = Self::find(&txn, ctx, project, id).await?;
        let env = envs::Entity::find_by_id(row.environment_id)
            .one(&txn)
            .await?
            .ok_or_else(|| Error::not_found("storage", row.id))?;
        let mut active = row.into_active_model();
        active.public = Set(public);
        active.updated_at = Set(now());
        let row = active.update(&txn).await?;
        audit::record(
            &txn,
            ctx,
            "storage.update",
            Target::new("storage", row.id).in_project(project.id),
            Some(json!({ "public": public })),
        )
        .await?;
        txn.commit().await?;
        Ok(self.view(row, env.name, None))
    }

    /// What the holder of `access_key_id` may do; `None` for an unknown or
    /// revoked key.
    pub async fn grant(&self, access_key_id: &str) -> Result<Option<Grant>> {
        let Some(row) = storage::Entity::find()
            .filter(storage::Column::AccessKeyId.eq(access_key_id))
            .filter(storage::Column::Provider.eq(OWN_PROVIDER))
            .filter(storage::Column::RevokedAt.is_null())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Grant {
            storage_id: row.id,
            secret: self.keyring.open(&row.secret_ciphertext)?,
            bucket: row.bucket,
            prefix: row.prefix,
        }))
    }

    /// Whether `key` of `bucket` lies in a public storage's prefix. Only
    /// the key's own `/`-ended prefixes can be a storage's prefix.
    pub async fn public_object(&self, bucket: &str, key: &str) -> Result<bool> {
        let candidates: Vec<&str> = key
            .match_indices('/')
            .map(|(i, _)| &key[..=i])
            .filter(|p| key_within(p, key))
            .collect();
        if candidates.is_empty() {
            return Ok(false);
        }
        let found = storage::Entity::find()
            .select_only()
            .column(storage::Column::Public)
            .filter(storage::Column::Bucket.eq(bucket))
            .filter(storage::Column::Prefix.is_in(candidates))
            .filter(storage::Column::Provider.eq(OWN_PROVIDER))
            .filter(storage::Column::RevokedAt.is_null())
            .into_tuple::<bool>()
            .one(&self.db)
            .await?;
        Ok(found == Some(true))
    }
}

/// Removes storages and exactly the variables they wrote; their keys are
/// refused from then on.
pub async fn remove<C: ConnectionTrait>(conn: &C, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    // Keys an upstream provider issued are revoked there: queued with the
    // deletion, so that neither a crash nor an outage loses one.
    let upstream: Vec<(String, String)> = storage::Entity::find()
        .select_only()
        .column(storage::Column::AccessKeyId)
        .column(storage::Column::Provider)
        .filter(storage::Column::Id.is_in(ids.iter().copied()))
        .filter(storage::Column::Provider.ne(OWN_PROVIDER))
        .into_tuple()
        .all(conn)
        .await?;
    let at = now();
    for (access_key_id, provider) in upstream {
        revocations::ActiveModel {
            access_key_id: Set(access_key_id),
            provider: Set(provider),
            not_before: Set(at),
            attempts: Set(0),
            last_error: Set(None),
            created_at: Set(at),
        }
        .insert(conn)
        .await?;
    }
    env_vars::Entity::delete_many()
        .filter(env_vars::Column::Source.eq(SOURCE))
        .filter(env_vars::Column::BindingId.is_in(ids.iter().copied()))
        .exec(conn)
        .await?;
    storage::Entity::delete_many()
        .filter(storage::Column::Id.is_in(ids.iter().copied()))
        .exec(conn)
        .await?;
    // A `kind: blob` resource is its storage: it goes with it.
    entity::resources::Entity::delete_many()
        .filter(entity::resources::Column::Id.is_in(ids.iter().copied()))
        .filter(entity::resources::Column::Kind.eq(BLOB_KIND))
        .exec(conn)
        .await?;
    Ok(())
}

/// Revokes every storage of a project, or of one of its environments
/// (it is being deleted); the objects stay in the bucket.
pub async fn revoke_all<C: ConnectionTrait>(
    conn: &C,
    project_id: Uuid,
    environment_id: Option<Uuid>,
) -> Result<()> {
    let mut q = storage::Entity::find()
        .select_only()
        .column(storage::Column::Id)
        .filter(storage::Column::ProjectId.eq(project_id));
    if let Some(env) = environment_id {
        q = q.filter(storage::Column::EnvironmentId.eq(env));
    }
    let ids: Vec<Uuid> = q.into_tuple().all(conn).await?;
    remove(conn, &ids).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prefix_is_a_prefix_of_another() {
        let names = ["a", "a-b", "b", "production", "primary", "staging", "a1"];
        let mut prefixes = Vec::new();
        for org in ["o", "o-a"] {
            for project in names {
                for env in names {
                    for name in names {
                        prefixes.push(prefix_of(org, project, env, name));
                    }
                }
            }
        }
        prefixes.sort();
        prefixes.dedup();
        for a in &prefixes {
            for b in &prefixes {
                assert!(
                    a == b || !b.starts_with(a.as_str()),
                    "{a} is a prefix of {b}"
                );
            }
        }
        assert_eq!(
            prefix_of("org", "my-app", "production", "primary"),
            "org/my-app/"
        );
    }

    #[test]
    fn keys_stay_inside_their_prefix() {
        let p = "org/app/";
        assert!(key_within(p, "org/app/a.txt"));
        assert!(key_within(p, "org/app/dir/b"));
        assert!(!key_within(p, "org/app/"));
        assert!(!key_within(p, "org/app2/x"));
        assert!(!key_within(p, "org/app/../app2/x"));
        assert!(!key_within(p, "org/app/./x"));
        assert!(!key_within(p, "org/apx"));
    }

    #[test]
    fn variables_of_other_names_carry_the_name() {
        assert_eq!(var_name("primary", "KEY_ID"), "BLOB_KEY_ID");
        assert_eq!(var_name("user-media", "KEY_ID"), "BLOB_USER_MEDIA_KEY_ID");
    }
}
