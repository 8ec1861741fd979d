//! Blob storage (endpoints 42–44) and its S3-compatible endpoint, end to
//! end: credentials from the API driven by the real `boto3` client (put,
//! get, list, delete, multipart, presigned URLs), the access rules a
//! hostile tenant runs into, public URLs, revocation, and the env vars a
//! storage writes.

#[path = "storage/b2_mock.rs"]
mod b2_mock;
mod common;

use std::path::Path;
use std::process::Command;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sylphx::auth::Role;

/// Run before every script: a boto3 client for the credentials in the
/// environment, and `code(f)` that answers "ok" or the S3 error code.
const PRELUDE: &str = r#"
import json, os, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["ENDPOINT"],
    aws_access_key_id=os.environ["KEY_ID"],
    aws_secret_access_key=os.environ["SECRET"],
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
B = os.environ["BUCKET"]
P = os.environ["PREFIX"]
OTHER = os.environ.get("OTHER_PREFIX", "")

def code(f):
    try:
        f()
        return "ok"
    except ClientError as e:
        return e.response["Error"]["Code"]

out = {}
"#;

/// Runs `script` (after [`PRELUDE`]) with the credentials of `creds` (a
/// `POST /storage` answer's `envVars`); returns what it put in `out`.
fn boto(creds: &Value, other_prefix: &str, script: &str) -> Value {
    let python = common::python_with("boto3", "boto3", env!("CARGO_TARGET_TMPDIR"));
    let var = |k: &str| {
        creds[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} in {creds}"))
    };
    let out = Command::new(python)
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}\nprint(json.dumps(out))"))
        .env("ENDPOINT", var("BLOB_ENDPOINT"))
        .env("KEY_ID", var("BLOB_KEY_ID"))
        .env("SECRET", var("BLOB_APPLICATION_KEY"))
        .env("BUCKET", var("BLOB_BUCKET"))
        .env("PREFIX", var("BLOB_PREFIX"))
        .env("OTHER_PREFIX", other_prefix)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `POST /projects/:p/storage` answering 201; returns the answer.
async fn create(s: &TestServer, t: &str, project: &str, body: Value) -> Value {
    let (status, r) = s
        .post(&format!("/projects/{project}/storage"), t, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    r
}

/// Where the endpoint keeps the object `key` of the default bucket.
fn on_disk(s: &TestServer, key: &str) -> std::path::PathBuf {
    s.dir.path().join("blobs/sylphx-storage").join(key)
}

async fn storage_end_to_end(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.admin_token.clone();
    s.project(&t, "shop").await;

    let created = create(&s, &t, "shop", json!({ "envType": "production" })).await;
    let vars = &created["envVars"];
    let endpoint = vars["BLOB_ENDPOINT"].as_str().unwrap().to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{created}");
    assert_eq!(vars["BLOB_BUCKET"], "sylphx-storage");
    assert_eq!(vars["BLOB_PREFIX"], "default/shop/");
    let public_url = format!("{endpoint}/sylphx-storage/default/shop/");
    assert_eq!(created["publicUrl"], public_url.as_str());
    assert_eq!(vars["BLOB_PUBLIC_URL"], public_url.as_str());
    let secret = vars["BLOB_APPLICATION_KEY"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32 && secret != "***", "{created}");
    let key_id = vars["BLOB_KEY_ID"].as_str().unwrap().to_string();
    assert_eq!(vars.as_object().unwrap().len(), 6, "{created}");

    // A private storage of another environment, with its own prefix.
    let (status, _) = s
        .post(
            "/projects/shop/environments",
            &t,
            json!({ "name": "staging" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let staging = create(
        &s,
        &t,
        "shop",
        json!({ "envType": "staging", "public": false }),
    )
    .await;
    let staging_prefix = staging["envVars"]["BLOB_PREFIX"].as_str().unwrap();
    assert_eq!(staging_prefix, "default/shop~staging~primary/");

    // Put, get, head, list, copy, delete, a multipart upload of 5 MiB
    // parts, and a single PUT larger than the API's max_request_bytes.
    let r = boto(
        vars,
        staging_prefix,
        r#"
s3.put_object(Bucket=B, Key=P + "hello.txt", Body=b"hello blobs")
out["get"] = s3.get_object(Bucket=B, Key=P + "hello.txt")["Body"].read().decode()
out["head"] = s3.head_object(Bucket=B, Key=P + "hello.txt")["ContentLength"]
s3.put_object(Bucket=B, Key=P + "dir/a.txt", Body=b"a")
s3.copy_object(Bucket=B, Key=P + "dir/b.txt", CopySource={"Bucket": B, "Key": P + "dir/a.txt"})
listed = s3.list_objects_v2(Bucket=B, Prefix=P)
out["listed"] = sorted(o["Key"] for o in listed.get("Contents", []))
out["listed_v1"] = sorted(o["Key"] for o in s3.list_objects(Bucket=B, Prefix=P + "dir/").get("Contents", []))
s3.delete_object(Bucket=B, Key=P + "dir/b.txt")
s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": P + "dir/a.txt"}]})
out["after_delete"] = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=B, Prefix=P).get("Contents", []))

part1 = b"x" * (5 * 1024 * 1024)
part2 = b"y" * (1024 * 1024 + 7)
up = s3.create_multipart_upload(Bucket=B, Key=P + "big.bin")["UploadId"]
e1 = s3.upload_part(Bucket=B, Key=P + "big.bin", UploadId=up, PartNumber=1, Body=part1)["ETag"]
e2 = s3.upload_part(Bucket=B, Key=P + "big.bin", UploadId=up, PartNumber=2, Body=part2)["ETag"]
s3.complete_multipart_upload(Bucket=B, Key=P + "big.bin", UploadId=up,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
big = s3.get_object(Bucket=B, Key=P + "big.bin")["Body"].read()
out["multipart"] = [len(big), big == part1 + part2]

s3.put_object(Bucket=B, Key=P + "eight.bin", Body=b"z" * (8 * 1024 * 1024))
out["eight"] = s3.head_object(Bucket=B, Key=P + "eight.bin")["ContentLength"]
out["presigned"] = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": P + "hello.txt"}, ExpiresIn=300)
"#,
    );
    assert_eq!(r["get"], "hello blobs", "{r}");
    assert_eq!(r["head"], 11);
    assert_eq!(
        r["listed"],
        json!([
            "default/shop/dir/a.txt",
            "default/shop/dir/b.txt",
            "default/shop/hello.txt"
        ])
    );
    assert_eq!(
        r["listed_v1"],
        json!(["default/shop/dir/a.txt", "default/shop/dir/b.txt"])
    );
    assert_eq!(r["after_delete"], json!(["default/shop/hello.txt"]));
    assert_eq!(r["multipart"], json!([6 * 1024 * 1024 + 7, true]));
    assert_eq!(r["eight"], 8 * 1024 * 1024);
    assert_eq!(
        std::fs::read(on_disk(&s, "default/shop/hello.txt")).unwrap(),
        b"hello blobs"
    );

    // A presigned GET works for anyone holding the URL.
    let presigned = r["presigned"].as_str().unwrap();
    let resp = s.client().get(presigned).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "hello blobs");

    // Everything outside the key's prefix is AccessDenied.
    let r = boto(
        vars,
        staging_prefix,
        r#"
out["other_put"] = code(lambda: s3.put_object(Bucket=B, Key=OTHER + "x", Body=b"x"))
out["other_get"] = code(lambda: s3.get_object(Bucket=B, Key=OTHER + "x"))
out["other_list"] = code(lambda: s3.list_objects_v2(Bucket=B, Prefix=OTHER))
out["list_no_prefix"] = code(lambda: s3.list_objects_v2(Bucket=B))
out["list_short_prefix"] = code(lambda: s3.list_objects_v2(Bucket=B, Prefix="default/"))
out["dotdot"] = code(lambda: s3.put_object(Bucket=B, Key=P + "../shop~staging~primary/x", Body=b"x"))
out["copy_in"] = code(lambda: s3.copy_object(Bucket=B, Key=P + "stolen", CopySource={"Bucket": B, "Key": OTHER + "x"}))
out["copy_out"] = code(lambda: s3.copy_object(Bucket=B, Key=OTHER + "y", CopySource={"Bucket": B, "Key": P + "hello.txt"}))
out["delete_many"] = code(lambda: s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": P + "hello.txt"}, {"Key": OTHER + "x"}]}))
out["multipart_other"] = code(lambda: s3.create_multipart_upload(Bucket=B, Key=OTHER + "m"))
out["list_buckets"] = code(lambda: s3.list_buckets())
out["create_bucket"] = code(lambda: s3.create_bucket(Bucket="mine"))
out["delete_bucket"] = code(lambda: s3.delete_bucket(Bucket=B))
out["other_bucket"] = code(lambda: s3.put_object(Bucket="other", Key=P + "x", Body=b"x"))
out["acl"] = code(lambda: s3.put_object_acl(Bucket=B, Key=P + "hello.txt", ACL="public-read"))
out["policy"] = code(lambda: s3.put_bucket_policy(Bucket=B, Policy="{}"))
out["still_there"] = s3.get_object(Bucket=B, Key=P + "hello.txt")["Body"].read().decode()
"#,
    );
    for (op, outcome) in r.as_object().unwrap() {
        if op != "still_there" {
            assert_eq!(outcome, "AccessDenied", "{op}: {r}");
        }
    }
    assert_eq!(r["still_there"], "hello blobs");

    // The staging key is confined the same way, the other way round.
    let r = boto(
        &staging["envVars"],
        "default/shop/",
        r#"
s3.put_object(Bucket=B, Key=P + "s.txt", Body=b"staging")
out["own"] = s3.get_object(Bucket=B, Key=P + "s.txt")["Body"].read().decode()
out["prod"] = code(lambda: s3.get_object(Bucket=B, Key=OTHER + "hello.txt"))
out["prod_list"] = code(lambda: s3.list_objects_v2(Bucket=B, Prefix=OTHER))
"#,
    );
    assert_eq!(
        r,
        json!({ "own": "staging", "prod": "AccessDenied", "prod_list": "AccessDenied" })
    );

    // The public URL serves objects to anyone, read only; a private
    // storage's does not; listing is never served anonymously.
    let anon = s.client();
    let resp = anon
        .get(format!("{public_url}hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "hello blobs");
    let resp = anon
        .head(format!("{public_url}hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let staging_public = staging["publicUrl"].as_str().unwrap();
    let denied = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body = resp.text().await.unwrap();
        assert!(body.contains("AccessDenied"), "{body}");
    };
    denied(
        anon.get(format!("{staging_public}s.txt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    denied(
        anon.put(format!("{public_url}anon.txt"))
            .body("x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    denied(
        anon.delete(format!("{public_url}hello.txt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    for list in [
        format!("{endpoint}/sylphx-storage?prefix=default/shop/"),
        format!("{endpoint}/sylphx-storage?list-type=2&prefix=default/shop/"),
        format!("{endpoint}/"),
    ] {
        denied(anon.get(list).send().await.unwrap()).await;
    }

    // GraphQL turns the public storage private, and back.
    let id = created["id"].as_str().unwrap();
    let toggle = |public: bool| {
        let s = &s;
        let t = &t;
        async move {
            let r = s
                .graphql(
                    t,
                    "mutation($p: String!, $id: ID!, $public: Boolean!) { updateStorage(projectId: $p, id: $id, input: { public: $public }) { public } }",
                    json!({ "p": "shop", "id": id, "public": public }),
                )
                .await;
            assert_eq!(r["data"]["updateStorage"]["public"], public, "{r}");
        }
    };
    toggle(false).await;
    denied(
        anon.get(format!("{public_url}hello.txt"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    toggle(true).await;
    let resp = anon
        .get(format!("{public_url}hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The variables are in the environment, masked, and refuse hand edits.
    let (status, env_vars) = s
        .get("/projects/shop/env-vars?envType=production", &t)
        .await;
    assert_eq!(status, StatusCode::OK);
    let blob_vars: Vec<&Value> = env_vars
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["key"].as_str().unwrap().starts_with("BLOB_"))
        .collect();
    assert_eq!(blob_vars.len(), 6, "{env_vars}");
    for v in &blob_vars {
        assert_eq!(v["value"], "***", "{v}");
        assert_eq!(v["secret"], true, "{v}");
    }
    let (status, r) = s
        .post(
            "/projects/shop/env-vars",
            &t,
            json!({ "envType": "production", "vars": [{ "key": "BLOB_KEY_ID", "value": "mine" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{r}");
    assert!(r["error"].as_str().unwrap().contains("BLOB_KEY_ID"), "{r}");
    let r = s
        .graphql(
            &t,
            r#"mutation { deleteEnvVar(projectId: "shop", envType: "production", key: "BLOB_APPLICATION_KEY") { deleted } }"#,
            json!({}),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "CONFLICT", "{r}");

    // The list shows both storages, no secret.
    let (status, list) = s.get("/projects/shop/storage", &t).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], created["id"]);
    assert_eq!(list[0]["envType"], "production");
    assert_eq!(list[0]["prefix"], "default/shop/");
    assert_eq!(list[0]["accessKeyId"], key_id.as_str());
    assert_eq!(list[0]["envVars"]["BLOB_APPLICATION_KEY"], "***");
    assert_eq!(list[1]["public"], false);
    assert!(!Value::Array(list).to_string().contains(&secret));

    // A second storage of the same name in the same environment: 409.
    let (status, r) = s
        .post(
            "/projects/shop/storage",
            &t,
            json!({ "envType": "production", "name": "primary" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{r}");
    assert!(r["error"].as_str().unwrap().contains("name"), "{r}");
    // Another name writes variables of its own.
    let media = create(
        &s,
        &t,
        "shop",
        json!({ "envType": "production", "name": "media" }),
    )
    .await;
    assert_eq!(
        media["envVars"]["BLOB_MEDIA_PREFIX"],
        "default/shop~production~media/"
    );

    // Delete: the key is refused at once, the variables go, the blobs stay.
    let (status, body) = s
        .call(
            Method::DELETE,
            &format!("/projects/shop/storage/{id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let r = boto(
        vars,
        "",
        r#"
out["get"] = code(lambda: s3.get_object(Bucket=B, Key=P + "hello.txt"))
out["put"] = code(lambda: s3.put_object(Bucket=B, Key=P + "again.txt", Body=b"x"))
"#,
    );
    for op in ["get", "put"] {
        let code = r[op].as_str().unwrap();
        assert!(
            code == "InvalidAccessKeyId" || code == "AccessDenied",
            "{op}: {r}"
        );
    }
    assert!(
        s.client()
            .get(presigned)
            .send()
            .await
            .unwrap()
            .status()
            .is_client_error()
    );
    assert_eq!(
        std::fs::read(on_disk(&s, "default/shop/hello.txt")).unwrap(),
        b"hello blobs"
    );
    assert!(Path::new(&on_disk(&s, "default/shop/big.bin")).exists());
    let (_, env_vars) = s
        .get("/projects/shop/env-vars?envType=production", &t)
        .await;
    let keys: Vec<&str> = env_vars
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert!(!keys.contains(&"BLOB_KEY_ID"), "{env_vars}");
    assert!(keys.contains(&"BLOB_MEDIA_KEY_ID"), "{env_vars}");
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/shop/storage/{id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The staging key still works.
    let r = boto(
        &staging["envVars"],
        "",
        r#"out["own"] = s3.get_object(Bucket=B, Key=P + "s.txt")["Body"].read().decode()"#,
    );
    assert_eq!(r["own"], "staging");
}

async fn hostile_tenants_get_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sylphx.toml");
    std::fs::write(&config, "max_storages_per_organization = 2\n").unwrap();
    let s = TestServer::start_with_config(backend, Some(config)).await;
    let t = s.admin_token.clone();
    s.project(&t, "shop").await;
    let reader = s.token("default", Role::Read).await;
    let rival = s.token("rival", Role::Admin).await;

    // A read token lists but cannot create or delete.
    let (status, r) = s
        .post(
            "/projects/shop/storage",
            &reader,
            json!({ "envType": "production" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{r}");
    let (status, _) = s.get("/projects/shop/storage", &reader).await;
    assert_eq!(status, StatusCode::OK);
    let created = create(&s, &t, "shop", json!({ "envType": "production" })).await;
    let id = created["id"].as_str().unwrap();
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/shop/storage/{id}"),
            &reader,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Another organisation gets nothing: not the list, not a storage of
    // its own there, not a delete.
    let (status, r) = s.get("/projects/shop/storage", &rival).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{r}");
    let (status, _) = s
        .post(
            "/projects/shop/storage",
            &rival,
            json!({ "envType": "production" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/shop/storage/{id}"),
            &rival,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // … nor through its own project with our storage's id.
    s.project(&rival, "rival-app").await;
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/rival-app/storage/{id}"),
            &rival,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let rival_storage = create(&s, &rival, "rival-app", json!({ "envType": "production" })).await;
    assert_eq!(rival_storage["envVars"]["BLOB_PREFIX"], "rival/rival-app/");
    let r = boto(
        &rival_storage["envVars"],
        "default/shop/",
        r#"
out["get"] = code(lambda: s3.get_object(Bucket=B, Key=OTHER + "x"))
out["list"] = code(lambda: s3.list_objects_v2(Bucket=B, Prefix=OTHER))
"#,
    );
    assert_eq!(r, json!({ "get": "AccessDenied", "list": "AccessDenied" }));

    // Bad input names its field and changes nothing.
    for (body, field) in [
        (json!({}), "envType"),
        (json!({ "envType": "Prod uction" }), "envType"),
        (
            json!({ "envType": "production", "name": "Bad Name" }),
            "name",
        ),
        (
            json!({ "envType": "production", "public": "yes" }),
            "public",
        ),
        (json!({ "envType": "production", "bucket": "x" }), "bucket"),
    ] {
        let (status, r) = s.post("/projects/shop/storage", &t, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {r}");
        assert_eq!(r["details"]["field"], field, "{body}: {r}");
    }
    let (status, r) = s
        .post(
            "/projects/shop/storage",
            &t,
            json!({ "envType": "preview" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{r}");
    let (status, r) = s
        .call(Method::DELETE, "/projects/shop/storage/nope", &t, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{r}");
    assert_eq!(r["details"]["field"], "storageId");
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/shop/storage/{}", uuid::Uuid::now_v7()),
            &t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A forged key and a wrong secret are refused.
    let mut forged = created["envVars"].clone();
    forged["BLOB_KEY_ID"] = json!("SLXFORGEDKEY00000000");
    let mut wrong = created["envVars"].clone();
    wrong["BLOB_APPLICATION_KEY"] = json!("0".repeat(40));
    for creds in [&forged, &wrong] {
        let r = boto(
            creds,
            "",
            r#"out["put"] = code(lambda: s3.put_object(Bucket=B, Key=P + "x", Body=b"x"))"#,
        );
        assert!(
            [
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied"
            ]
            .contains(&r["put"].as_str().unwrap()),
            "{r}"
        );
    }

    // The quota holds per organisation: 2 here; the rival has its own.
    let (status, _) = s
        .post(
            "/projects/shop/environments",
            &t,
            json!({ "name": "staging" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    create(&s, &t, "shop", json!({ "envType": "staging" })).await;
    let (status, r) = s
        .post(
            "/projects/shop/storage",
            &t,
            json!({ "envType": "staging", "name": "more" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("max_storages_per_organization"),
        "{r}"
    );
    create(
        &s,
        &rival,
        "rival-app",
        json!({ "envType": "production", "name": "second" }),
    )
    .await;
    let (status, list) = s.get("/projects/shop/storage", &t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
}

async fn project_deletion_revokes_its_storage(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.admin_token.clone();
    s.project(&t, "gone").await;
    let created = create(&s, &t, "gone", json!({ "envType": "production" })).await;
    let r = boto(
        &created["envVars"],
        "",
        r#"
s3.put_object(Bucket=B, Key=P + "keep.txt", Body=b"kept")
out["get"] = s3.get_object(Bucket=B, Key=P + "keep.txt")["Body"].read().decode()
"#,
    );
    assert_eq!(r["get"], "kept");
    let (status, _) = s.call(Method::DELETE, "/projects/gone", &t, None).await;
    assert_eq!(status, StatusCode::OK);
    let r = boto(
        &created["envVars"],
        "",
        r#"out["get"] = code(lambda: s3.get_object(Bucket=B, Key=P + "keep.txt"))"#,
    );
    assert!(
        ["InvalidAccessKeyId", "AccessDenied"].contains(&r["get"].as_str().unwrap()),
        "{r}"
    );
    let public = created["publicUrl"].as_str().unwrap();
    let resp = s
        .client()
        .get(format!("{public}keep.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        std::fs::read(on_disk(&s, "default/gone/keep.txt")).unwrap(),
        b"kept"
    );
}

/// `kind: blob` through `/resources` is a storage of one environment:
/// listed in both places, its variables in that environment, gone from
/// both when deleted from either.
async fn blob_resources_are_storages(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.admin_token.clone();
    let p = s.project(&t, "media").await;
    let env_id = p["environments"][0]["id"].as_str().unwrap().to_string();
    // Without an environment, or with another organisation's, nothing is made.
    let (status, e) = s
        .post("/resources", &t, json!({"name": "Files", "kind": "blob"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("environmentId"),
        "{e}"
    );
    let other = s.token("other", Role::Write).await;
    let (status, e) = s
        .post(
            "/resources",
            &other,
            json!({"name": "Files", "kind": "blob", "environmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    let (status, e) = s
        .post(
            "/resources",
            &t,
            json!({"name": "Files", "kind": "blob", "provider": "b2", "environmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("provider"), "{e}");
    let (_, list) = s.get("/resources?kind=blob", &t).await;
    assert_eq!(list["data"], json!([]));

    let (status, r) = s
        .post(
            "/resources",
            &t,
            json!({"name": "Media Files", "kind": "blob", "environmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["provider"], "s3");
    assert_eq!(r["status"], "ready", "{r}");
    assert_eq!(r["reconcileStatus"], "synced", "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let (_, storages) = s.get("/projects/media/storage", &t).await;
    let listed = storages.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{storages}");
    assert_eq!(listed[0]["id"], id.as_str());
    let (_, vars) = s.get("/projects/media/env-vars", &t).await;
    let keys: Vec<&str> = vars
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"BLOB_MEDIA_FILES_KEY_ID"), "{vars}");
    assert!(keys.contains(&"BLOB_MEDIA_FILES_APPLICATION_KEY"), "{vars}");
    let (status, one) = s.get(&format!("/resources/{id}"), &t).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["kind"], "blob");
    assert!(
        one["message"].as_str().unwrap().contains("media-files"),
        "{one}"
    );
    let (_, m) = s.get(&format!("/resources/{id}/metrics"), &t).await;
    assert_eq!(m["available"], false, "{m}");
    let (status, e) = s
        .post(
            &format!("/resources/{id}/bindings"),
            &t,
            json!({"projectEnvironmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, e) = s.get(&format!("/resources/{id}/backups"), &t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");

    // Deleting the resource revokes the storage and removes its variables.
    let (status, _) = s
        .call(Method::DELETE, &format!("/resources/{id}"), &t, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, storages) = s.get("/projects/media/storage", &t).await;
    assert_eq!(storages, json!([]));
    let (_, vars) = s.get("/projects/media/env-vars", &t).await;
    assert_eq!(vars, json!([]));

    // Deleting the storage removes the resource.
    let (_, r) = s
        .post(
            "/resources",
            &t,
            json!({"name": "assets", "kind": "blob", "environmentId": env_id}),
        )
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/media/storage/{id}"),
            &t,
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let (status, _) = s.get(&format!("/resources/{id}"), &t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // And so does deleting the project.
    let (_, r) = s
        .post(
            "/resources",
            &t,
            json!({"name": "assets", "kind": "blob", "environmentId": env_id}),
        )
        .await;
    assert_eq!(r["status"], "ready", "{r}");
    let (status, _) = s.call(Method::DELETE, "/projects/media", &t, None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = s.get("/resources?kind=blob", &t).await;
    assert_eq!(list["data"], json!([]));
}

/// Waits (up to 30 s) until `done` holds, checking every 100 ms.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// With `blob_provider = "b2"`, each storage gets a key minted by B2 for
/// its prefix of the configured bucket; apps use B2's S3 endpoint with it;
/// deleting the storage (or its project) deletes the key at B2, even when
/// B2 was down at the time; the server's own key appears nowhere.
async fn b2_mints_a_key_per_storage(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let b2 = b2_mock::MockB2::start(work.path(), "sylphx-storage-prod", false).await;
    let key_file = work.path().join("b2.key");
    std::fs::write(&key_file, b2_mock::MASTER_KEY).unwrap();
    let config = work.path().join("sylphx.toml");
    std::fs::write(
        &config,
        format!(
            "blob_provider = \"b2\"\nb2_api_url = \"{}\"\nb2_key_id = \"{}\"\nb2_application_key_file = \"{}\"\nb2_bucket = \"sylphx-storage-prod\"\n",
            b2.api_url,
            b2_mock::MASTER_KEY_ID,
            key_file.display()
        ),
    )
    .unwrap();
    let s = TestServer::start_with_config(backend, Some(config)).await;
    let t = s.admin_token.clone();
    let shop = s.project(&t, "shop").await;
    let shop_env = shop["environments"][0]["id"].clone();
    let mut answers = Vec::new();

    // A private bucket: storages are private; asking for a public one is
    // a 400 naming `public`, and mints nothing.
    let (status, e) = s
        .post(
            "/projects/shop/storage",
            &t,
            json!({ "envType": "production", "public": true }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("public"), "{e}");
    assert_eq!(b2.minted(), 0);
    answers.push(e);

    let created = create(&s, &t, "shop", json!({ "envType": "production" })).await;
    let vars = &created["envVars"];
    assert_eq!(vars["BLOB_ENDPOINT"], b2.s3_url.as_str(), "{created}");
    assert_eq!(vars["BLOB_BUCKET"], "sylphx-storage-prod");
    assert_eq!(vars["BLOB_PREFIX"], "default/shop/");
    assert_eq!(created["public"], false, "{created}");
    let public = format!("{}/file/sylphx-storage-prod/default/shop/", b2.api_url);
    assert_eq!(created["publicUrl"], public.as_str());
    let key_id = vars["BLOB_KEY_ID"].as_str().unwrap().to_string();
    let keys = b2.keys();
    let minted = &keys[&key_id];
    assert_eq!(vars["BLOB_APPLICATION_KEY"], minted.secret.as_str());
    assert_eq!(minted.prefix, "default/shop/");
    assert_eq!(minted.bucket_id, b2_mock::BUCKET_ID);
    assert_eq!(
        minted.name,
        format!("slx-{}", created["id"].as_str().unwrap())
    );
    for c in ["listFiles", "readFiles", "writeFiles", "deleteFiles"] {
        assert!(minted.capabilities.iter().any(|m| m == c), "{minted:?}");
    }
    assert!(
        !minted.capabilities.iter().any(|c| c.contains("Keys")),
        "{minted:?}"
    );

    // The key works at B2's S3 endpoint, inside its prefix only.
    let other = create(
        &s,
        &t,
        "shop",
        json!({ "envType": "production", "name": "media" }),
    )
    .await;
    let r = boto(
        vars,
        "default/shop~production~media/",
        r#"
s3.put_object(Bucket=B, Key=P + "hello.txt", Body=b"hello b2")
out["get"] = s3.get_object(Bucket=B, Key=P + "hello.txt")["Body"].read().decode()
out["list"] = [o["Key"] for o in s3.list_objects_v2(Bucket=B, Prefix=P).get("Contents", [])]
out["other"] = code(lambda: s3.put_object(Bucket=B, Key=OTHER + "x", Body=b"x"))
out["all"] = code(lambda: s3.list_objects_v2(Bucket=B))
"#,
    );
    assert_eq!(r["get"], "hello b2", "{r}");
    assert_eq!(r["list"], json!(["default/shop/hello.txt"]), "{r}");
    assert_eq!(r["other"], "AccessDenied", "{r}");
    assert_eq!(r["all"], "AccessDenied", "{r}");

    // An expired account token is renewed; a variable set by hand makes
    // the POST a 409 and the key minted for it is deleted at B2.
    b2.expire_token();
    let (status, r) = s
        .post(
            "/projects/shop/env-vars",
            &t,
            json!({ "envType": "production", "vars": [{ "key": "BLOB_TAKEN_KEY_ID", "value": "mine" }] }),
        )
        .await;
    assert!(status.is_success(), "{r}");
    let before = b2.minted();
    let (status, e) = s
        .post(
            "/projects/shop/storage",
            &t,
            json!({ "envType": "production", "name": "taken" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(
        b2.minted(),
        before + 1,
        "the token was renewed and a key minted"
    );
    until("the unused key is deleted at B2", || b2.keys().len() == 2).await;
    answers.push(e);

    // A blob resource is a B2 storage; provider s3 is not served here.
    let (status, e) = s
        .post(
            "/resources",
            &t,
            json!({"name": "Files", "kind": "blob", "provider": "s3", "environmentId": shop_env}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("provider"), "{e}");
    let p = s.project(&t, "gone").await;
    let env_id = p["environments"][0]["id"].as_str().unwrap().to_string();
    let (status, res) = s
        .post(
            "/resources",
            &t,
            json!({"name": "Files", "kind": "blob", "environmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["provider"], "b2", "{res}");
    assert_eq!(b2.keys().len(), 3);
    answers.push(res);

    // B2 down: a new storage is a 503 and nothing is made.
    b2.set_down(true);
    let (status, e) = s
        .post(
            "/projects/shop/storage",
            &t,
            json!({ "envType": "production", "name": "later" }),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    answers.push(e);
    let (_, list) = s.get("/projects/shop/storage", &t).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // Deleting while B2 is down is done (204); the key is deleted at B2
    // once it answers again.
    let media_key = other["envVars"]["BLOB_MEDIA_KEY_ID"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/shop/storage/{}", other["id"].as_str().unwrap()),
            &t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(b2.keys().contains_key(&media_key));
    b2.set_down(false);
    until("the queued key is deleted at B2", || {
        !b2.keys().contains_key(&media_key)
    })
    .await;

    // Deleting a storage deletes its key before the answer; the blobs stay.
    let (status, list) = s.get("/projects/shop/storage", &t).await;
    assert_eq!(status, StatusCode::OK);
    answers.push(list);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/shop/storage/{}", created["id"].as_str().unwrap()),
            &t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!b2.keys().contains_key(&key_id));
    let r = boto(
        vars,
        "",
        r#"out["get"] = code(lambda: s3.get_object(Bucket=B, Key=P + "hello.txt"))"#,
    );
    assert_eq!(r["get"], "InvalidAccessKeyId", "{r}");
    assert_eq!(
        std::fs::read(b2.object("default/shop/hello.txt")).unwrap(),
        b"hello b2"
    );
    // A project's deletion deletes its resource's key.
    let (status, _) = s.call(Method::DELETE, "/projects/gone", &t, None).await;
    assert_eq!(status, StatusCode::OK);
    until("the project's keys are deleted at B2", || {
        b2.keys().is_empty()
    })
    .await;

    // The server's own key is in no answer.
    for a in answers {
        let text = a.to_string();
        assert!(!text.contains(b2_mock::MASTER_KEY), "{text}");
    }
}

backend_tests!(
    storage_end_to_end,
    hostile_tenants_get_nothing,
    project_deletion_revokes_its_storage,
    blob_resources_are_storages,
    b2_mints_a_key_per_storage,
);

/// A memory figure of this process from /proc (`VmRSS`: now, `VmHWM`:
/// the most so far), in bytes.
fn memory(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A tenant uploading far more than fits in a buffer: the server (in this
/// process) streams it to disk, so its memory grows by much less than the
/// upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_disk() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.admin_token.clone();
    s.project(&t, "big").await;
    let created = create(&s, &t, "big", json!({ "envType": "production" })).await;
    let file = s.dir.path().join("upload.bin");
    let size: u64 = 192 * 1024 * 1024;
    std::fs::File::create(&file).unwrap().set_len(size).unwrap();
    let before = memory("VmRSS:");
    let r = boto(
        &created["envVars"],
        "",
        &format!(
            r#"
with open({file:?}, "rb") as f:
    s3.put_object(Bucket=B, Key=P + "huge.bin", Body=f)
out["size"] = s3.head_object(Bucket=B, Key=P + "huge.bin")["ContentLength"]
"#,
            file = file.to_str().unwrap()
        ),
    );
    let grown = memory("VmHWM:").saturating_sub(before);
    assert_eq!(r["size"], size);
    assert_eq!(
        std::fs::metadata(on_disk(&s, "default/big/huge.bin"))
            .unwrap()
            .len(),
        size
    );
    assert!(
        grown < size / 2,
        "the server grew by {grown} bytes for a {size}-byte upload"
    );
}
