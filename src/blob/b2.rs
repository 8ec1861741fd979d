//! Backblaze B2 as the blob provider: the server holds one key able to
//! mint keys (`writeKeys`, `deleteKeys`, `listBuckets`) and one bucket;
//! each storage gets a key of its own from `b2_create_key`, limited to
//! that bucket and to the storage's prefix (`namePrefix`), and apps talk
//! to B2's S3-compatible endpoint with it. Deleting a storage deletes its
//! key (`b2_delete_key`). The server's key never leaves this module: it is
//! sent only in the `Authorization` header of `b2_authorize_account`, and
//! the account token it buys only to B2's API.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Mutex, OnceCell};

use crate::domain::storage::{Upstream, UpstreamBucket};
use crate::error::{Error, Result};
use crate::secrets::SecretString;

/// B2's API host when `b2_api_url` is not set.
pub const DEFAULT_API_URL: &str = "https://api.backblazeb2.com";

/// What a storage's key may do: its own files, and the bucket's metadata
/// that S3 clients ask for (HeadBucket, GetBucketLocation).
const CAPABILITIES: [&str; 5] = [
    "listBuckets",
    "listFiles",
    "readFiles",
    "writeFiles",
    "deleteFiles",
];

/// How long one call to B2 may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The `b2_*` settings.
#[derive(Clone)]
pub struct B2Settings {
    pub api_url: String,
    pub key_id: String,
    pub application_key: SecretString,
    pub bucket: String,
    /// Where the bucket's objects are served publicly (a CDN in front of
    /// it); B2's own download URL when absent.
    pub public_url: Option<String>,
}

impl fmt::Debug for B2Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("B2Settings")
            .field("api_url", &self.api_url)
            .field("key_id", &self.key_id)
            .field("bucket", &self.bucket)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// An account token and the URLs that go with it.
struct Session {
    account_id: String,
    api_url: String,
    download_url: String,
    s3_api_url: String,
    token: SecretString,
}

/// A B2 account seen through the server's key.
pub struct B2 {
    http: reqwest::Client,
    settings: B2Settings,
    session: Mutex<Option<std::sync::Arc<Session>>>,
    bucket: OnceCell<UpstreamBucket>,
}

impl fmt::Debug for B2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("B2")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn unreachable(e: reqwest::Error) -> Error {
    // reqwest's text names the URL, never a header: no secret in it.
    Error::Unavailable(format!(
        "the blob provider (B2) cannot be reached: {}; retry",
        e.without_url()
    ))
}

/// B2's answer to `call` when it is a success; its error `code` otherwise.
fn succeeded(call: &str, (status, body): (StatusCode, Value)) -> Result<Value> {
    if status.is_success() {
        return Ok(body);
    }
    Err(refused(call, status, &body))
}

fn refused(call: &str, status: StatusCode, body: &Value) -> Error {
    Error::Unavailable(format!(
        "the blob provider (B2) refused {call}: {} {}",
        status.as_u16(),
        body["code"].as_str().unwrap_or_default()
    ))
}

impl B2 {
    pub fn new(settings: B2Settings) -> Result<B2> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(Error::internal)?;
        Ok(B2 {
            http,
            settings,
            session: Mutex::new(None),
            bucket: OnceCell::new(),
        })
    }

    /// The current session, authorizing when there is none.
    async fn session(&self) -> Result<std::sync::Arc<Session>> {
        let mut held = self.session.lock().await;
        if let Some(s) = held.as_ref() {
            return Ok(s.clone());
        }
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.settings.key_id,
            self.settings.application_key.expose()
        ));
        let answer = self
            .http
            .get(format!(
                "{}/b2api/v3/b2_authorize_account",
                self.settings.api_url
            ))
            .header("Authorization", format!("Basic {basic}"))
            .send()
            .await
            .map_err(unreachable)?;
        let status = answer.status();
        let body = answer.json().await.unwrap_or(Value::Null);
        let body = succeeded("this server's key (b2_key_id)", (status, body))?;
        let api = &body["apiInfo"]["storageApi"];
        let text = |v: &Value, what: &str| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                Error::Unavailable(format!(
                    "the blob provider (B2) answered b2_authorize_account without {what}"
                ))
            })
        };
        let session = std::sync::Arc::new(Session {
            account_id: text(&body["accountId"], "accountId")?,
            api_url: text(&api["apiUrl"], "apiUrl")?,
            download_url: text(&api["downloadUrl"], "downloadUrl")?,
            s3_api_url: text(&api["s3ApiUrl"], "s3ApiUrl")?,
            token: SecretString::new(text(&body["authorizationToken"], "authorizationToken")?),
        });
        *held = Some(session.clone());
        Ok(session)
    }

    /// Calls `b2_<call>` with the body `body` makes of the account id; a
    /// token that expired is renewed once.
    async fn call(&self, call: &str, body: impl Fn(&str) -> Value) -> Result<(StatusCode, Value)> {
        for attempt in 0..2 {
            let session = self.session().await?;
            let body = body(&session.account_id);
            let answer = self
                .http
                .post(format!("{}/b2api/v3/b2_{call}", session.api_url))
                .header("Authorization", session.token.expose())
                .json(&body)
                .send()
                .await
                .map_err(unreachable)?;
            let status = answer.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                let mut held = self.session.lock().await;
                if held
                    .as_ref()
                    .is_some_and(|s| std::sync::Arc::ptr_eq(s, &session))
                {
                    *held = None;
                }
                continue;
            }
            let value: Value = answer.json().await.unwrap_or(Value::Null);
            return Ok((status, value));
        }
        Err(Error::Unavailable(
            "the blob provider (B2) refused this server's renewed token".into(),
        ))
    }

    async fn find_bucket(&self) -> Result<UpstreamBucket> {
        let name = &self.settings.bucket;
        let answer = self
            .call(
                "list_buckets",
                |account| json!({ "accountId": account, "bucketName": name }),
            )
            .await?;
        let body = succeeded("b2_list_buckets", answer)?;
        let found = body["buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["bucketName"].as_str() == Some(name.as_str()))
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "the blob provider (B2) has no bucket '{name}' for this server's key (b2_bucket)"
                ))
            })?;
        let session = self.session().await?;
        let public = found["bucketType"].as_str() == Some("allPublic");
        let public_base = match &self.settings.public_url {
            Some(u) => u.clone(),
            None => format!("{}/file/{name}", session.download_url),
        };
        Ok(UpstreamBucket {
            id: found["bucketId"].as_str().unwrap_or_default().to_string(),
            name: name.clone(),
            endpoint: session.s3_api_url.clone(),
            public: public || self.settings.public_url.is_some(),
            public_base,
        })
    }
}

#[async_trait::async_trait]
impl Upstream for B2 {
    fn name(&self) -> &'static str {
        "b2"
    }

    async fn bucket(&self) -> Result<UpstreamBucket> {
        self.bucket
            .get_or_try_init(|| self.find_bucket())
            .await
            .cloned()
    }

    async fn mint(&self, key_name: &str, prefix: &str) -> Result<(String, SecretString)> {
        let bucket = self.bucket().await?;
        let answer = self
            .call("create_key", |account| {
                json!({
                    "accountId": account,
                    "capabilities": CAPABILITIES,
                    "keyName": key_name,
                    "bucketId": bucket.id,
                    "namePrefix": prefix,
                })
            })
            .await?;
        let body = succeeded("b2_create_key", answer)?;
        match (
            body["applicationKeyId"].as_str(),
            body["applicationKey"].as_str(),
        ) {
            (Some(id), Some(key)) => Ok((id.to_string(), SecretString::new(key.to_string()))),
            _ => Err(Error::Unavailable(
                "the blob provider (B2) answered b2_create_key without a key".into(),
            )),
        }
    }

    async fn revoke(&self, key_id: &str) -> Result<()> {
        let (status, body) = self
            .call("delete_key", |_| json!({ "applicationKeyId": key_id }))
            .await?;
        // B2 answers 400 for a key it does not have: already gone.
        if status.is_success()
            || status == StatusCode::BAD_REQUEST
            || status == StatusCode::NOT_FOUND
        {
            return Ok(());
        }
        Err(refused("b2_delete_key", status, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret() {
        let settings = B2Settings {
            api_url: DEFAULT_API_URL.into(),
            key_id: "0010000key".into(),
            application_key: SecretString::new("K001topsecret".to_string()),
            bucket: "b".into(),
            public_url: None,
        };
        let b2 = B2::new(settings.clone()).unwrap();
        for text in [format!("{settings:?}"), format!("{b2:?}")] {
            assert!(!text.contains("topsecret"), "{text}");
            assert!(text.contains("0010000key"), "{text}");
        }
    }
}
