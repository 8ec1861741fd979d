//! Who signed an S3 request: the secret of an access key, read from the
//! store on every request (no cache), so that a deleted storage's key is
//! refused from the very next request, by every server on the store.

use std::sync::Arc;

use s3s::S3Result;
use s3s::auth::{S3Auth, SecretKey};

use crate::domain::storage::Storages;

/// Looks access keys up among the live storages.
pub struct StoreAuth {
    storages: Arc<Storages>,
}

impl StoreAuth {
    pub fn new(storages: Arc<Storages>) -> StoreAuth {
        StoreAuth { storages }
    }
}

/// An S3 error for a store that failed; the detail goes to the log only.
pub(crate) fn unavailable(e: &crate::Error) -> s3s::S3Error {
    tracing::warn!(error = e.message(), "S3 endpoint: the store failed");
    s3s::s3_error!(ServiceUnavailable, "the store cannot be reached; retry")
}

#[async_trait::async_trait]
impl S3Auth for StoreAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.storages.grant(access_key).await {
            Ok(Some(grant)) => Ok(SecretKey::from(grant.secret.expose())),
            Ok(None) => Err(s3s::s3_error!(
                InvalidAccessKeyId,
                "the access key does not exist or was revoked"
            )),
            Err(e) => Err(unavailable(&e)),
        }
    }
}
