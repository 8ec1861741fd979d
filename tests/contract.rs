//! The committed schema files match the code, and the route table (with
//! the AI gateway's own handlers) covers the contract's endpoints.

mod common;

use common::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::Value;

const SDL: &str = include_str!("../schema/schema.graphql");
const OPENAPI: &str = include_str!("../schema/openapi.json");

/// (endpoint number, method, path, success status) served so far.
const CONTRACT: &[(u32, &str, &str, u16)] = &[
    (1, "GET", "/projects", 200),
    (2, "POST", "/projects", 201),
    (3, "GET", "/projects/{id}", 200),
    (4, "PATCH", "/projects/{id}", 200),
    (4, "PUT", "/projects/{id}", 200),
    (5, "DELETE", "/projects/{id}", 200),
    (6, "GET", "/projects/{id}/status", 200),
    (7, "GET", "/projects/{id}/logs", 200),
    (8, "POST", "/projects/{id}/deploy", 202),
    (9, "POST", "/projects/{id}/rollback", 202),
    (10, "GET", "/projects/{id}/deployments", 200),
    (11, "GET", "/projects/{id}/env-vars", 200),
    (12, "POST", "/projects/{id}/env-vars", 200),
    (13, "GET", "/projects/{id}/environments", 200),
    (14, "POST", "/projects/{id}/environments", 201),
    (15, "GET", "/projects/{id}/environments/{envId}", 200),
    (16, "PATCH", "/projects/{id}/environments/{envId}", 200),
    (16, "PUT", "/projects/{id}/environments/{envId}", 200),
    (
        17,
        "POST",
        "/projects/{id}/environments/{envId}/provision",
        202,
    ),
    (18, "GET", "/projects/{id}/services", 200),
    (19, "POST", "/projects/{id}/services", 201),
    (20, "GET", "/projects/{id}/services/{name}", 200),
    (21, "PATCH", "/projects/{id}/services/{name}", 200),
    (21, "PUT", "/projects/{id}/services/{name}", 200),
    (
        22,
        "PATCH",
        "/projects/{id}/services/{name}/environments/{envId}",
        200,
    ),
    (
        22,
        "PUT",
        "/projects/{id}/services/{name}/environments/{envId}",
        200,
    ),
    (23, "GET", "/services/{serviceId}/latest-image", 200),
    (24, "GET", "/services/{serviceId}/tcp-proxy", 200),
    (25, "POST", "/services/{serviceId}/tcp-proxy", 201),
    (26, "DELETE", "/services/{serviceId}/tcp-proxy", 200),
    (27, "GET", "/services/{serviceId}/tcp-proxy/allowlist", 200),
    (28, "POST", "/services/{serviceId}/tcp-proxy/allowlist", 201),
    (
        29,
        "DELETE",
        "/services/{serviceId}/tcp-proxy/allowlist/{ruleId}",
        204,
    ),
    (30, "GET", "/resources", 200),
    (31, "POST", "/resources", 202),
    (32, "GET", "/resources/{resourceId}", 200),
    (33, "PATCH", "/resources/{resourceId}", 200),
    (33, "PUT", "/resources/{resourceId}", 200),
    (34, "DELETE", "/resources/{resourceId}", 204),
    (35, "GET", "/resources/{resourceId}/metrics", 200),
    (36, "GET", "/resources/{resourceId}/backups", 200),
    (37, "POST", "/resources/{resourceId}/restore", 202),
    (38, "POST", "/resources/{resourceId}/branch", 201),
    (39, "GET", "/resources/{resourceId}/bindings", 200),
    (40, "POST", "/resources/{resourceId}/bindings", 201),
    (
        41,
        "DELETE",
        "/resources/{resourceId}/bindings/{bindingId}",
        204,
    ),
    (42, "GET", "/projects/{id}/storage", 200),
    (43, "POST", "/projects/{id}/storage", 201),
    (44, "DELETE", "/projects/{id}/storage/{storageId}", 204),
    (45, "GET", "/projects/{id}/volumes", 200),
    (46, "POST", "/projects/{id}/volumes", 201),
    (47, "GET", "/projects/{id}/volumes/{volId}", 200),
    (48, "DELETE", "/projects/{id}/volumes/{volId}", 204),
    (49, "GET", "/projects/{id}/config", 200),
    (50, "POST", "/projects/{id}/config", 200),
    (50, "PUT", "/projects/{id}/config", 200),
    (51, "GET", "/projects/{id}/config/{key}", 200),
    (52, "PUT", "/projects/{id}/config/{key}", 200),
    (53, "DELETE", "/projects/{id}/config/{key}", 200),
    // The AI gateway: axum handlers in OpenAI's wire format, not table rows.
    (54, "POST", "/chat/completions", 200),
    (55, "POST", "/embeddings", 200),
    (56, "GET", "/models", 200),
    // Public health: axum handlers too.
    (57, "GET", "/health/status", 200),
    (58, "GET", "/health/runners", 200),
];

#[tokio::test]
async fn committed_schema_matches_export() {
    let (sdl, openapi) = sylphx::rest::export().await.expect("export");
    assert!(
        sdl == SDL,
        "schema/schema.graphql is stale: run `cargo run -- schema export` and commit the result"
    );
    assert!(
        openapi == OPENAPI,
        "schema/openapi.json is stale: run `cargo run -- schema export` and commit the result"
    );
}

#[tokio::test]
async fn served_openapi_matches_committed() {
    let s = TestServer::start(Backend::Sqlite).await;
    let resp = s
        .client()
        .get(s.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let served: Value = resp.json().await.unwrap();
    let committed: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(served, committed);
}

#[tokio::test]
async fn route_table_covers_the_contract() {
    let openapi: Value = serde_json::from_str(OPENAPI).unwrap();
    let paths = openapi["paths"].as_object().unwrap();
    for &(n, method, path, status) in CONTRACT {
        let op = &paths
            .get(path)
            .unwrap_or_else(|| panic!("endpoint {n}: {path} is not served"))[method.to_lowercase()];
        assert!(
            op.is_object(),
            "endpoint {n}: {method} {path} is not served"
        );
        assert_eq!(op["x-contract-endpoint"], n, "{method} {path}");
        assert!(
            op["responses"][status.to_string()].is_object(),
            "endpoint {n}: {method} {path} should answer {status}"
        );
    }
    // Nothing is served that the contract does not name, but for the
    // platform's own rate-limit standing and webhook.
    let mut others = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("x-contract-endpoint").is_none() {
                others.push(format!("{method} {path}"));
            }
        }
    }
    assert_eq!(others, ["get /rate-limit", "post /webhooks/github"]);
    let served: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(served, CONTRACT.len() + others.len());

    // And the live router answers each one (not 404/405).
    let s = TestServer::start(Backend::Sqlite).await;
    let p = s.project(&s.admin_token, "cover").await;
    let id = p["id"].as_str().unwrap();
    let env = p["environments"][0]["id"].as_str().unwrap();
    for &(n, method, path, _) in CONTRACT {
        let url = path
            .replace("{id}", id)
            .replace("{envId}", env)
            .replace("{name}", "web")
            .replace("{key}", "k")
            .replace("{serviceId}", &uuid::Uuid::now_v7().to_string());
        let resp = s
            .api(method.parse().unwrap(), &url, &s.admin_token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "endpoint {n}");
        assert!(
            status != StatusCode::NOT_FOUND || body["error"] != "no such endpoint",
            "endpoint {n}: {method} {url} is not routed"
        );
    }
}
