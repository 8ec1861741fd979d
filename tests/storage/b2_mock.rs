//! A stand-in for Backblaze B2 (the real one cannot be reached from a
//! test): the native API calls the server makes (`b2_authorize_account`,
//! `b2_list_buckets`, `b2_create_key`, `b2_delete_key`, v3 shapes, tokens
//! checked, 401 for an expired token), and B2's S3-compatible API for the
//! keys it minted, served by `s3s` over a directory, each key confined to
//! its bucket and `namePrefix` as B2 confines it (`AccessDenied` outside,
//! `InvalidAccessKeyId` for a deleted key).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{ListObjectsInput, ListObjectsV2Input};
use s3s::path::S3Path;
use s3s::service::S3ServiceBuilder;
use s3s::{S3Request, S3Result, s3_error};
use serde_json::{Value, json};

pub const ACCOUNT: &str = "acct0001";
pub const MASTER_KEY_ID: &str = "0010000master0000000000001";
pub const MASTER_KEY: &str = "K001masterSecretNeverShownToAnyTenant00";
pub const BUCKET_ID: &str = "b2bucket0000000000000001";

/// A key B2 minted.
#[derive(Clone, Debug)]
pub struct Key {
    pub secret: String,
    pub name: String,
    pub bucket_id: String,
    pub prefix: String,
    pub capabilities: Vec<String>,
}

#[derive(Default)]
struct Inner {
    token: String,
    keys: HashMap<String, Key>,
    down: bool,
    minted: u64,
}

/// The running stand-in.
#[derive(Clone)]
pub struct MockB2 {
    inner: Arc<Mutex<Inner>>,
    bucket: String,
    public: bool,
    pub api_url: String,
    pub s3_url: String,
    pub dir: PathBuf,
}

fn failure(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({ "status": status.as_u16(), "code": code, "message": code })),
    )
        .into_response()
}

impl MockB2 {
    /// Starts both APIs on loopback; objects live under `dir`.
    pub async fn start(dir: &Path, bucket: &str, public: bool) -> MockB2 {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s3 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let root = dir.join("b2");
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let mock = MockB2 {
            inner: Arc::default(),
            bucket: bucket.to_string(),
            public,
            api_url: format!("http://{}", api.local_addr().unwrap()),
            s3_url: format!("http://{}", s3.local_addr().unwrap()),
            dir: root.clone(),
        };
        let app = Router::new()
            .route("/b2api/v3/b2_authorize_account", get(authorize))
            .route("/b2api/v3/b2_list_buckets", post(list_buckets))
            .route("/b2api/v3/b2_create_key", post(create_key))
            .route("/b2api/v3/b2_delete_key", post(delete_key))
            .with_state(mock.clone());
        tokio::spawn(async move { axum::serve(api, app).await.unwrap() });
        serve_s3(s3, &root, mock.clone());
        mock
    }

    /// The keys B2 holds now.
    pub fn keys(&self) -> HashMap<String, Key> {
        self.inner.lock().unwrap().keys.clone()
    }

    /// How many keys were ever minted.
    pub fn minted(&self) -> u64 {
        self.inner.lock().unwrap().minted
    }

    /// Makes every native API call answer 503 (or answer again).
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    /// Ends the current account token: the next call with it gets 401.
    pub fn expire_token(&self) {
        self.inner.lock().unwrap().token = "expired".into();
    }

    /// Where an object of the bucket is stored.
    pub fn object(&self, key: &str) -> PathBuf {
        self.dir.join(&self.bucket).join(key)
    }

    /// The account token a call must carry: the error answer when it is
    /// not there.
    fn refuse(&self, headers: &HeaderMap, body: Option<&Value>) -> Option<Response> {
        let inner = self.inner.lock().unwrap();
        if inner.down {
            return Some(failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
            ));
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if inner.token.is_empty() || token != inner.token {
            return Some(failure(StatusCode::UNAUTHORIZED, "expired_auth_token"));
        }
        if let Some(body) = body
            && body["accountId"] != ACCOUNT
        {
            return Some(failure(StatusCode::UNAUTHORIZED, "unauthorized"));
        }
        None
    }
}

async fn authorize(State(m): State<MockB2>, headers: HeaderMap) -> Response {
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{MASTER_KEY_ID}:{MASTER_KEY}"));
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut inner = m.inner.lock().unwrap();
    if inner.down {
        return failure(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
    }
    if given != format!("Basic {expected}") {
        return failure(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    inner.token = format!("4_token{}", uuid::Uuid::new_v4().simple());
    Json(json!({
        "accountId": ACCOUNT,
        "authorizationToken": inner.token,
        "applicationKeyExpirationTimestamp": null,
        "apiInfo": { "storageApi": {
            "absoluteMinimumPartSize": 5000000,
            "apiUrl": m.api_url,
            "downloadUrl": m.api_url,
            "recommendedPartSize": 100000000,
            "s3ApiUrl": m.s3_url,
            "bucketId": null, "bucketName": null, "namePrefix": null,
            "capabilities": ["listKeys", "writeKeys", "deleteKeys", "listBuckets", "listFiles", "readFiles", "writeFiles", "deleteFiles"],
            "infoType": "storageApi"
        }}
    }))
    .into_response()
}

async fn list_buckets(
    State(m): State<MockB2>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = m.refuse(&headers, Some(&body)) {
        return r;
    }
    let mut buckets = vec![json!({
        "accountId": ACCOUNT,
        "bucketId": BUCKET_ID,
        "bucketName": m.bucket,
        "bucketType": if m.public { "allPublic" } else { "allPrivate" },
    })];
    if let Some(name) = body["bucketName"].as_str() {
        buckets.retain(|b| b["bucketName"] == name);
    }
    Json(json!({ "buckets": buckets })).into_response()
}

async fn create_key(
    State(m): State<MockB2>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = m.refuse(&headers, Some(&body)) {
        return r;
    }
    let name = body["keyName"].as_str().unwrap_or_default();
    let name_ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let capabilities: Vec<String> = body["capabilities"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !name_ok || capabilities.is_empty() || body["bucketId"] != BUCKET_ID {
        return failure(StatusCode::BAD_REQUEST, "bad_request");
    }
    let id = format!("001{}", &uuid::Uuid::new_v4().simple().to_string()[..22]);
    let key = Key {
        secret: format!("K001{}", uuid::Uuid::new_v4().simple()),
        name: name.to_string(),
        bucket_id: BUCKET_ID.into(),
        prefix: body["namePrefix"].as_str().unwrap_or_default().to_string(),
        capabilities: capabilities.clone(),
    };
    let mut inner = m.inner.lock().unwrap();
    inner.minted += 1;
    inner.keys.insert(id.clone(), key.clone());
    Json(json!({
        "accountId": ACCOUNT,
        "applicationKeyId": id,
        "applicationKey": key.secret,
        "keyName": key.name,
        "capabilities": capabilities,
        "bucketId": key.bucket_id,
        "namePrefix": key.prefix,
        "expirationTimestamp": null,
        "options": ["s3"]
    }))
    .into_response()
}

async fn delete_key(
    State(m): State<MockB2>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = m.refuse(&headers, None) {
        return r;
    }
    let id = body["applicationKeyId"].as_str().unwrap_or_default();
    match m.inner.lock().unwrap().keys.remove(id) {
        Some(k) => Json(json!({
            "accountId": ACCOUNT, "applicationKeyId": id, "keyName": k.name,
            "bucketId": k.bucket_id, "namePrefix": k.prefix, "capabilities": k.capabilities
        }))
        .into_response(),
        None => failure(StatusCode::BAD_REQUEST, "bad_request"),
    }
}

/// B2's S3 API: minted keys only, each inside its prefix of the bucket.
struct Keys(MockB2);

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.inner.lock().unwrap().keys.get(access_key) {
            Some(k) => Ok(SecretKey::from(k.secret.clone())),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// The prefix `check` found for the request's key.
#[derive(Clone)]
struct Confined(String);

fn inside<T>(req: &S3Request<T>, prefix: Option<&str>) -> S3Result<()> {
    let Some(Confined(own)) = req.extensions.get::<Confined>() else {
        return Err(s3_error!(AccessDenied));
    };
    match prefix {
        Some(p) if p.starts_with(own.as_str()) => Ok(()),
        _ => Err(s3_error!(AccessDenied)),
    }
}

#[async_trait::async_trait]
impl S3Access for Keys {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(AccessDenied));
        };
        let Some(key) = self
            .0
            .inner
            .lock()
            .unwrap()
            .keys
            .get(&credentials.access_key)
            .cloned()
        else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        let allowed = match cx.s3_path() {
            S3Path::Object {
                bucket,
                key: object,
            } => **bucket == *self.0.bucket && object.starts_with(key.prefix.as_str()),
            S3Path::Bucket { bucket } => **bucket == *self.0.bucket,
            S3Path::Root => false,
        };
        if !allowed {
            return Err(s3_error!(AccessDenied));
        }
        cx.extensions_mut().insert(Confined(key.prefix));
        Ok(())
    }

    async fn list_objects(&self, req: &mut S3Request<ListObjectsInput>) -> S3Result<()> {
        let prefix = req.input.prefix.clone();
        inside(req, prefix.as_deref())
    }

    async fn list_objects_v2(&self, req: &mut S3Request<ListObjectsV2Input>) -> S3Result<()> {
        let prefix = req.input.prefix.clone();
        inside(req, prefix.as_deref())
    }
}

fn serve_s3(listener: tokio::net::TcpListener, root: &Path, mock: MockB2) {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(Keys(mock.clone()));
    builder.set_access(Keys(mock));
    let service = builder.build();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)): std::io::Result<(tokio::net::TcpStream, SocketAddr)> =
                listener.accept().await
            else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = conn.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}
