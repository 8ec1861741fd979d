//! The S3-compatible blob endpoint: its own listener beside the API,
//! path-style (`/<bucket>/<key>`), served by the `s3s` protocol library over
//! its filesystem backend (`s3s-fs`, objects under `<data-dir>/blobs/`).
//! Signatures (SigV4, presigned URLs) are verified by `s3s` with the
//! secret [`auth::StoreAuth`] reads from the store; [`access::Rules`] keep
//! each key inside its storage's prefix and serve public objects to
//! anonymous GET/HEAD. Bodies stream to and from disk: nothing buffers a
//! whole upload, and this listener is not bound by `max_request_bytes`.

pub mod access;
pub mod auth;
pub mod b2;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use s3s::config::{S3Config, StaticConfigProvider};
use s3s::service::S3ServiceBuilder;

use crate::domain::storage::Storages;
use crate::error::{Error, Result};

/// The default bucket every storage is a prefix of.
pub const DEFAULT_BUCKET: &str = "sylphx-storage";
/// Where the endpoint listens by default.
pub const DEFAULT_LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9000);

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest XML body read whole (DeleteObjects of 1000 keys,
/// CompleteMultipartUpload of 10000 parts fit).
const MAX_XML_BODY: usize = 4 * 1024 * 1024;
/// Browser form uploads (POST Object) would be buffered whole by the
/// library before any access check: none is accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The endpoint's settings (`s3_listen`, `s3_public_url`, `s3_bucket`,
/// `max_storages_per_organization`), and the upstream provider's when
/// keys come from one (`blob_provider = "b2"`, `b2_*`).
#[derive(Debug, Clone)]
pub struct BlobConfig {
    pub upstream: Option<b2::B2Settings>,
    pub listen: SocketAddr,
    /// The base URL clients are given (`BLOB_ENDPOINT`); `http://<bound
    /// address>` when absent.
    pub public_url: Option<String>,
    pub bucket: String,
    /// Storages one organisation may have at once.
    pub max_storages_per_organization: u64,
}

impl BlobConfig {
    /// Checks and completes the settings.
    pub fn new(
        upstream: Option<b2::B2Settings>,
        listen: Option<SocketAddr>,
        public_url: Option<String>,
        bucket: Option<String>,
        max_storages_per_organization: u64,
    ) -> Result<BlobConfig> {
        let bucket = bucket.unwrap_or_else(|| DEFAULT_BUCKET.into());
        let bucket_ok = (3..=63).contains(&bucket.len())
            && crate::domain::validate::dns_label("s3_bucket", &bucket).is_ok();
        if !bucket_ok {
            return Err(Error::bad_request(format!(
                "s3_bucket must be 3-63 lowercase letters, digits or '-', not '{bucket}'"
            )));
        }
        let public_url = public_url
            .map(|u| http_url("s3_public_url", &u))
            .transpose()?;
        let upstream = match upstream {
            Some(mut b2) => {
                b2.api_url = http_url("b2_api_url", &b2.api_url)?;
                b2.public_url = b2
                    .public_url
                    .map(|u| http_url("b2_public_url", &u))
                    .transpose()?;
                Some(b2)
            }
            None => None,
        };
        Ok(BlobConfig {
            upstream,
            listen: listen.unwrap_or_else(|| SocketAddr::from(DEFAULT_LISTEN)),
            public_url,
            bucket,
            max_storages_per_organization,
        })
    }
}

/// `url` without a trailing `/`, when it is an http(s) URL.
fn http_url(key: &str, url: &str) -> Result<String> {
    let u = url.trim().trim_end_matches('/').to_string();
    let ok = u
        .split_once("://")
        .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && !rest.is_empty());
    if !ok {
        return Err(Error::bad_request(format!(
            "{key} must be an http:// or https:// URL, not '{u}'"
        )));
    }
    Ok(u)
}

/// Binds the endpoint and serves it in the background; returns the bound
/// address (which the storages then hand out as `BLOB_ENDPOINT`).
pub async fn serve(
    storages: Arc<Storages>,
    listen: SocketAddr,
    data_dir: &Path,
) -> Result<SocketAddr> {
    let root = data_dir.join("blobs");
    let bucket_dir = root.join(storages.bucket());
    std::fs::create_dir_all(&bucket_dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", bucket_dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700));
    }
    let fs = s3s_fs::FileSystem::new(&root)
        .map_err(|e| Error::internal(format!("cannot open {}: {e:?}", root.display())))?;
    let mut config = S3Config::default();
    config.xml_max_body_size = MAX_XML_BODY;
    config.post_object_max_file_size = 0;
    config.form_max_field_size = MAX_FORM_BYTES;
    config.form_max_fields_size = MAX_FORM_BYTES;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_config(Arc::new(StaticConfigProvider::new(Arc::new(config))));
    builder.set_auth(auth::StoreAuth::new(storages.clone()));
    builder.set_access(access::Rules::new(storages.clone()));
    let service = builder.build();

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {listen} (s3_listen): {e}")))?;
    let bound = listener.local_addr().map_err(Error::internal)?;
    storages.set_bound(bound);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "S3 endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let mut conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                conn.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let _ = conn.serve_connection(TokioIo::new(stream), service).await;
                drop(permit);
            });
        }
    });
    tracing::info!(addr = %bound, bucket = storages.bucket(), "S3 endpoint listening");
    Ok(bound)
}
