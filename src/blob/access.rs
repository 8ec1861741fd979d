//! What a request may touch. Deny by default: a signed request may run the
//! listed object operations on keys inside its storage's prefix of its
//! bucket (copies: the source too), list only with a `prefix` inside it,
//! and delete several objects only when every key is inside it. Anonymous
//! requests may only GET or HEAD an object of a public storage. Anything
//! else (other prefixes or buckets, ListBuckets, bucket creation or
//! deletion, ACLs, policies) is `AccessDenied`.

use std::sync::Arc;

use s3s::access::{S3Access, S3AccessContext};
use s3s::dto::{
    CopyObjectInput, CopySource, DeleteObjectsInput, ListObjectsInput, ListObjectsV2Input,
    UploadPartCopyInput,
};
use s3s::path::S3Path;
use s3s::{S3Request, S3Result, s3_error};

use crate::domain::storage::{Grant, Storages, key_within};

/// Operations on one object, allowed inside the key's prefix. (ListParts
/// is not among them: the backend does not check who started the upload.)
const OBJECT_OPS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "PutObject",
    "DeleteObject",
    "CopyObject",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
];

/// Operations on the bucket, allowed on the key's own bucket; the listing
/// and multi-delete ones are checked further once their input is read.
const BUCKET_OPS: &[&str] = &[
    "ListObjects",
    "ListObjectsV2",
    "DeleteObjects",
    "HeadBucket",
    "GetBucketLocation",
];

/// Operations an anonymous reader may run on a public object.
const PUBLIC_OPS: &[&str] = &["GetObject", "HeadObject"];

fn denied() -> s3s::S3Error {
    s3_error!(AccessDenied, "Access Denied")
}

/// The access rules, with the store to read grants from.
pub struct Rules {
    storages: Arc<Storages>,
}

impl Rules {
    pub fn new(storages: Arc<Storages>) -> Rules {
        Rules { storages }
    }
}

/// The grant `check` found for this request.
fn grant_of<T>(req: &S3Request<T>) -> S3Result<&Grant> {
    req.extensions.get::<Grant>().ok_or_else(denied)
}

/// A `prefix` of a listing must lie inside the grant's.
fn check_list_prefix(grant: &Grant, prefix: Option<&str>) -> S3Result<()> {
    match prefix {
        Some(p) if p.starts_with(grant.prefix.as_str()) => Ok(()),
        _ => Err(s3_error!(
            AccessDenied,
            "list with a prefix inside {}",
            grant.prefix
        )),
    }
}

fn check_copy_source(grant: &Grant, source: &CopySource) -> S3Result<()> {
    match source {
        CopySource::Bucket { bucket, key, .. }
            if **bucket == *grant.bucket && key_within(&grant.prefix, key) =>
        {
            Ok(())
        }
        _ => Err(denied()),
    }
}

#[async_trait::async_trait]
impl S3Access for Rules {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name();
        let Some(credentials) = cx.credentials() else {
            // Anonymous: a public object, read only.
            let S3Path::Object { bucket, key } = cx.s3_path() else {
                return Err(denied());
            };
            if !PUBLIC_OPS.contains(&op) || **bucket != *self.storages.bucket() {
                return Err(denied());
            }
            return match self.storages.public_object(bucket, key).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(denied()),
                Err(e) => Err(super::auth::unavailable(&e)),
            };
        };
        let grant = match self.storages.grant(&credentials.access_key).await {
            Ok(Some(g)) => g,
            // Revoked between the signature check and now.
            Ok(None) => return Err(s3_error!(InvalidAccessKeyId)),
            Err(e) => return Err(super::auth::unavailable(&e)),
        };
        let allowed = match cx.s3_path() {
            S3Path::Object { bucket, key } => {
                OBJECT_OPS.contains(&op)
                    && **bucket == *grant.bucket
                    && key_within(&grant.prefix, key)
            }
            S3Path::Bucket { bucket } => BUCKET_OPS.contains(&op) && **bucket == *grant.bucket,
            S3Path::Root => false,
        };
        if !allowed {
            return Err(denied());
        }
        cx.extensions_mut().insert(grant);
        Ok(())
    }

    async fn list_objects(&self, req: &mut S3Request<ListObjectsInput>) -> S3Result<()> {
        check_list_prefix(grant_of(req)?, req.input.prefix.as_deref())
    }

    async fn list_objects_v2(&self, req: &mut S3Request<ListObjectsV2Input>) -> S3Result<()> {
        check_list_prefix(grant_of(req)?, req.input.prefix.as_deref())
    }

    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        let grant = grant_of(req)?;
        let inside = req
            .input
            .delete
            .objects
            .iter()
            .all(|o| key_within(&grant.prefix, &o.key));
        if inside { Ok(()) } else { Err(denied()) }
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        check_copy_source(grant_of(req)?, &req.input.copy_source)
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        check_copy_source(grant_of(req)?, &req.input.copy_source)
    }
}
