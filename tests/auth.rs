//! Authentication and authorisation over real HTTP: API tokens, session
//! cookies, read-only tokens and organisation isolation on every route of
//! the table.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Backend, TestServer};
use reqwest::{Method, RequestBuilder, StatusCode, header};
use sea_orm::{ActiveModelTrait, Set};
use serde_json::{Map, Value, json};
use sylphx::auth::Role;
use sylphx::auth::session::{Claims, SessionKeys};
use sylphx::rest::table::Route;
use sylphx::secrets::SecretString;

const MISSING: &str = "missing credentials: send Authorization: Bearer slx_cli_…";
const NOT_BEARER: &str = "malformed Authorization header: expected Bearer";
const MALFORMED: &str = "malformed API token";
const UNKNOWN: &str = "invalid API token";
const REVOKED: &str = "this API token was revoked";
const EXPIRED: &str = "this API token has expired";
const READ_ONLY: &str = "this token is read-only";
const ADMIN_ONLY: &str = "this action requires an admin token";

// ── helpers ───────────────────────────────────────────────────────────────

/// Extra request headers, as (name, value).
type Headers = Vec<(&'static str, String)>;

/// Sends and returns status, the `WWW-Authenticate` header and the JSON body.
async fn send_full(req: RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let www = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, www, body)
}

fn rest_error(message: &str) -> Value {
    json!({ "error": message, "details": null })
}

fn graphql_unauthenticated(message: &str) -> Value {
    json!({ "errors": [{ "message": message, "extensions": { "code": "UNAUTHENTICATED" } }] })
}

/// The first error of a GraphQL response, as (code, message).
fn gql_error(resp: &Value) -> (String, String) {
    let err = &resp["errors"][0];
    (
        err["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {resp}"))
            .to_string(),
        err["message"].as_str().unwrap().to_string(),
    )
}

/// A GraphQL request with arbitrary headers (or none).
fn graphql_request(s: &TestServer, headers: &[(&str, String)], query: &str) -> RequestBuilder {
    let mut req = s
        .client()
        .post(s.url("/graphql"))
        // As a browser on the dashboard's own origin sends it.
        .header("origin", &s.base)
        .json(&json!({ "query": query }));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req
}

fn rest_request(
    s: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
) -> RequestBuilder {
    let mut req = s
        .client()
        .request(method, format!("{}/api/v1{path}", s.base))
        // As a browser on the dashboard's own origin sends it.
        .header("origin", &s.base);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req
}

/// Inserts an admin key of the `default` organisation straight into the
/// store and returns its plaintext token.
async fn insert_key(s: &TestServer, expires_at: DateTime<Utc>) -> String {
    let org = sylphx::domain::organizations::find_by_slug(s.app.db(), "default")
        .await
        .unwrap()
        .expect("default org");
    let minted = sylphx::auth::tokens::mint();
    assert_eq!(
        minted.hash,
        sylphx::secrets::sha256_hex(minted.plaintext.expose().as_bytes())
    );
    let created = Utc::now() - chrono::Duration::hours(2);
    entity::api_keys::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        organization_id: Set(org.id),
        name: Set("inserted".into()),
        role: Set("admin".into()),
        token_hash: Set(minted.hash.clone()),
        token_prefix: Set(minted.display_prefix.clone()),
        expires_at: Set(Some(expires_at)),
        revoked_at: Set(None),
        last_used_at: Set(None),
        created_by: Set(None),
        created_at: Set(created),
        updated_at: Set(created),
    }
    .insert(s.app.db())
    .await
    .expect("insert api key");
    minted.plaintext.expose().to_string()
}

async fn org_id(s: &TestServer, token: &str) -> uuid::Uuid {
    let resp = s.graphql(token, "{ organization { id } }", json!({})).await;
    let id = resp["data"]["organization"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{resp}"));
    uuid::Uuid::parse_str(id).unwrap()
}

fn now_secs() -> u64 {
    Utc::now().timestamp() as u64
}

fn session(keys: &SessionKeys, org: uuid::Uuid, role: Role, exp: u64) -> String {
    keys.issue(&Claims {
        sub: "user-1".into(),
        org,
        role,
        exp,
    })
    .unwrap()
}

fn cookie(jwt: &str) -> Headers {
    vec![("cookie", format!("slx_session={jwt}"))]
}

/// A project with one of everything, created by its owner.
struct Fixture {
    id: String,
    slug: String,
    env_id: String,
    service_id: String,
    /// A ready PostgreSQL database bound to the production environment.
    resource_id: String,
    binding_id: String,
    /// The web service's TCP proxy: its port and one allowlist rule.
    proxy_port: u16,
    rule_id: String,
    /// A blob storage and a volume of the project.
    storage_id: String,
    volume_id: String,
}

const SERVICE: &str = "web";
/// Routes that answer 404 until the seeded project has been built and
/// deployed (latest image; rollback to a deployment that does not exist).
const NOT_YET_BUILT: [u32; 2] = [9, 23];
const CONFIG_KEY: &str = "FEATURE_X";

async fn seed(s: &TestServer, token: &str) -> Fixture {
    // A source, so that it can be deployed.
    let (status, p) = s
        .post(
            "/projects",
            token,
            json!({"name": "p", "slug": "p", "dockerImage": "registry.example/p:1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let env_id = p["environments"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(p["environments"][0]["name"], "production");
    let (status, body) = s
        .post(
            &format!("/projects/{id}/env-vars"),
            token,
            json!({"envType": "production", "vars": [
                {"key": "API_SECRET", "value": "hidden-value-123", "secret": true},
                {"key": "LOG_LEVEL", "value": "debug", "secret": false},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s
        .post(
            &format!("/projects/{id}/services"),
            token,
            json!({"name": SERVICE, "port": 8080}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let service_id = body["id"].as_str().unwrap().to_string();
    let (status, body) = s
        .call(
            Method::PUT,
            &format!("/projects/{id}/config/{CONFIG_KEY}"),
            token,
            Some(json!({"value": "on"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s
        .post(
            "/resources",
            token,
            json!({"name": "db", "kind": "database"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let resource_id = body["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (_, r) = s.get(&format!("/resources/{resource_id}"), token).await;
        if r["status"] == "ready" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = s
        .post(
            &format!("/resources/{resource_id}/bindings"),
            token,
            json!({"projectEnvironmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let binding_id = body["id"].as_str().unwrap().to_string();
    // A TCP proxy on a port of the range that nothing else holds (other
    // tests take ports too: a 409 moves on to the next).
    let mut proxy_port = 30000 + (std::process::id() % 20000) as u16;
    loop {
        let (status, body) = s
            .post(
                &format!("/services/{service_id}/tcp-proxy"),
                token,
                json!({"externalPort": proxy_port, "targetPort": 8080}),
            )
            .await;
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        proxy_port += 1;
    }
    let (status, body) = s
        .post(
            &format!("/services/{service_id}/tcp-proxy/allowlist"),
            token,
            json!({"cidr": "203.0.113.0/24", "description": "office"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rule_id = body["id"].as_str().unwrap().to_string();
    let (status, body) = s
        .post(
            &format!("/projects/{id}/storage"),
            token,
            json!({"envType": "production"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let storage_id = body["id"].as_str().unwrap().to_string();
    let (status, body) = s
        .post(
            &format!("/projects/{id}/volumes"),
            token,
            json!({"name": "data", "mountPath": "/data", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let volume_id = body["id"].as_str().unwrap().to_string();
    Fixture {
        id,
        slug: "p".into(),
        env_id,
        service_id,
        resource_id,
        binding_id,
        proxy_port,
        rule_id,
        storage_id,
        volume_id,
    }
}

/// What a route's refusal to another organisation names.
fn owner_of(route: &Route) -> &'static str {
    if route.spec.path.starts_with("/resources") {
        "this resource belongs to another organisation"
    } else {
        "this project belongs to another organisation"
    }
}

/// The route's path with its parameters filled from `f`; `project` is the
/// project's UUID or slug.
fn fill_path(route: &Route, f: &Fixture, project: &str) -> String {
    route
        .spec
        .path
        .split('/')
        .map(|seg| match seg.strip_prefix(':') {
            None => seg.to_string(),
            Some("id") => project.to_string(),
            Some("envId") => f.env_id.clone(),
            Some("name") => SERVICE.to_string(),
            Some("key") => CONFIG_KEY.to_string(),
            Some("serviceId") => f.service_id.clone(),
            Some("resourceId") => f.resource_id.clone(),
            Some("bindingId") => f.binding_id.clone(),
            Some("ruleId") => f.rule_id.clone(),
            Some("storageId") => f.storage_id.clone(),
            Some("volId") => f.volume_id.clone(),
            Some(other) => panic!(
                "route {} ({}): no test value for path parameter :{other}; extend fill_path",
                route.spec.n, route.spec.path
            ),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn has_path_params(route: &Route) -> bool {
    route.spec.path.contains("/:")
}

/// A valid request body for each mutation route (by its number). A new
/// mutation route fails the tests here until it gets one.
fn body_for(route: &Route, f: &Fixture) -> Option<Value> {
    match route.spec.n {
        2 => Some(json!({"name": "Fresh", "slug": "fresh"})),
        4 => Some(json!({"name": "Renamed", "description": "changed"})),
        5 | 53 => None,
        8 => Some(json!({"envType": "production"})),
        // The target does not exist: a write token gets 404 (see NOT_YET_BUILT).
        9 => Some(json!({"deploymentId": "0190d3a2-0000-7000-8000-000000000000"})),
        17 => Some(json!({})),
        12 => Some(json!({"envType": "production", "vars": [{"key": "NEW_VAR", "value": "x"}]})),
        14 => Some(json!({"name": "staging"})),
        16 => Some(json!({"replicas": 2})),
        19 => Some(json!({"name": "api"})),
        21 => Some(json!({"replicas": 3})),
        22 => Some(json!({"replicas": 4})),
        50 => Some(json!({"entries": [{"key": "NEW_KEY", "value": "1"}]})),
        52 => Some(json!({"value": "changed"})),
        31 => Some(json!({"name": "cache", "kind": "kv"})),
        33 => Some(json!({"name": "renamed db"})),
        34 | 41 => None,
        37 => Some(json!({"targetTime": chrono::Utc::now().to_rfc3339()})),
        38 => Some(json!({"name": "branch"})),
        40 => Some(json!({"projectEnvironmentId": f.env_id, "role": "replica"})),
        25 => Some(json!({"externalPort": f.proxy_port, "targetPort": 8080})),
        28 => Some(json!({"cidr": "198.51.100.0/24"})),
        43 => Some(json!({"envType": "production", "name": "extra"})),
        46 => Some(json!({"name": "more", "mountPath": "/more", "sizeGb": 1})),
        26 | 29 | 44 | 48 => None,
        n => panic!(
            "mutation route {n} ({}) has no test body; add one to body_for",
            route.spec.path
        ),
    }
}

/// Every (route, method) of the table.
fn endpoints(s: &TestServer) -> Vec<(&Route, Method)> {
    s.app
        .rest
        .table
        .routes
        .iter()
        .flat_map(|r| {
            r.spec
                .methods
                .iter()
                .map(move |m| (r, Method::from_bytes(m.as_bytes()).unwrap()))
        })
        .collect()
}

/// Calls one endpoint of the table with `token`.
async fn call_route(
    s: &TestServer,
    route: &Route,
    method: Method,
    f: &Fixture,
    project: &str,
    token: &str,
) -> (StatusCode, Value) {
    let path = fill_path(route, f, project);
    let body = if route.is_mutation {
        body_for(route, f)
    } else {
        None
    };
    s.call(method, &path, token, body).await
}

/// The variables of the route's GraphQL operation for the same call.
fn graphql_variables(route: &Route, f: &Fixture, project: &str) -> Value {
    let mut vars = Map::new();
    for seg in route.spec.path.split('/') {
        if let Some(p) = seg.strip_prefix(':') {
            let value = match p {
                "id" => project.to_string(),
                "envId" => f.env_id.clone(),
                "name" => SERVICE.to_string(),
                "key" => CONFIG_KEY.to_string(),
                "serviceId" => f.service_id.clone(),
                "resourceId" => f.resource_id.clone(),
                "bindingId" => f.binding_id.clone(),
                "ruleId" => f.rule_id.clone(),
                "storageId" => f.storage_id.clone(),
                "volId" => f.volume_id.clone(),
                other => panic!("no test value for :{other}"),
            };
            vars.insert(p.to_string(), json!(value));
        }
    }
    if let Some(body) = route.is_mutation.then(|| body_for(route, f)).flatten() {
        match &route.spec.body {
            Some(target) => {
                vars.insert(target.clone(), body);
            }
            None => vars.extend(body.as_object().unwrap().clone()),
        }
    }
    Value::Object(vars)
}

/// What the owner sees on every query route of the table.
async fn snapshot(s: &TestServer, f: &Fixture, token: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (route, method) in endpoints(s) {
        if route.is_mutation {
            continue;
        }
        let path = fill_path(route, f, &f.id);
        let (status, body) = s.call(method.clone(), &path, token, None).await;
        let expected = if NOT_YET_BUILT.contains(&route.spec.n) {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{method} {path}: {body}");
        // Live figures change from one read to the next.
        let body = if route.spec.n == 35 {
            json!(null)
        } else {
            body
        };
        out.push((format!("{method} {path}"), body));
    }
    assert!(out.len() >= 9, "the table has query routes");
    out
}

// ── tests ─────────────────────────────────────────────────────────────────

async fn missing_malformed_unknown_revoked_expired_tokens_get_401(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token.clone();
    s.project(&admin, "visible").await;

    // A token created over GraphQL works until it is revoked.
    let created = s
        .graphql(
            &admin,
            r#"mutation { createApiKey(input: {name: "ci", role: read}) { apiKey { id role lastUsedAt } token } }"#,
            json!({}),
        )
        .await;
    assert!(created["errors"].is_null(), "{created}");
    let key_id = created["data"]["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["data"]["createApiKey"]["apiKey"]["role"], "read");
    assert_eq!(
        created["data"]["createApiKey"]["apiKey"]["lastUsedAt"],
        Value::Null
    );
    let ci_token = created["data"]["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, list) = s.get("/projects", &ci_token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list[0]["slug"], "visible");

    // Its use is recorded in the background: wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let last_used = loop {
        let keys = s
            .graphql(
                &admin,
                "{ apiKeys(first: 100) { nodes { id createdAt lastUsedAt } } }",
                json!({}),
            )
            .await;
        let node = keys["data"]["apiKeys"]["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("{keys}"))
            .iter()
            .find(|n| n["id"] == key_id.as_str())
            .expect("the new key is listed")
            .clone();
        if !node["lastUsedAt"].is_null() {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "lastUsedAt was never recorded: {node}"
        );
        tokio::task::yield_now().await;
    };
    let used = DateTime::parse_from_rfc3339(last_used["lastUsedAt"].as_str().unwrap()).unwrap();
    let created_at =
        DateTime::parse_from_rfc3339(last_used["createdAt"].as_str().unwrap()).unwrap();
    assert!(used >= created_at, "{last_used}");

    let revoked = s
        .graphql(
            &admin,
            "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }",
            json!({"id": key_id}),
        )
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    assert_eq!(revoked["data"]["revokeApiKey"]["id"], key_id.as_str());
    assert!(revoked["data"]["revokeApiKey"]["revokedAt"].is_string());

    // Expiry: the same kind of row works with a future expiry, not a past one.
    let future = insert_key(&s, Utc::now() + chrono::Duration::hours(1)).await;
    let (status, body) = s.get("/projects", &future).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let expired = insert_key(&s, Utc::now() - chrono::Duration::hours(1)).await;

    let unknown = sylphx::auth::tokens::mint().plaintext.expose().to_string();
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("no Authorization", vec![], MISSING),
        (
            "Basic",
            vec![("authorization", "Basic xyz".into())],
            NOT_BEARER,
        ),
        (
            "garbage",
            vec![("authorization", "Bearer garbage".into())],
            MALFORMED,
        ),
        (
            "short prefix",
            vec![("authorization", "Bearer slx_cli_abc".into())],
            MALFORMED,
        ),
        (
            "unknown",
            vec![("authorization", format!("Bearer {unknown}"))],
            UNKNOWN,
        ),
        (
            "revoked",
            vec![("authorization", format!("Bearer {ci_token}"))],
            REVOKED,
        ),
        (
            "expired",
            vec![("authorization", format!("Bearer {expired}"))],
            EXPIRED,
        ),
    ];
    for (label, headers, message) in &cases {
        let (status, www, body) =
            send_full(rest_request(&s, Method::GET, "/projects", headers)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "REST {label}: {body}");
        assert_eq!(www.as_deref(), Some("Bearer"), "REST {label}");
        assert_eq!(body, rest_error(message), "REST {label}");

        // A mutation is refused the same way and changes nothing.
        let (status, _, body) = send_full(
            rest_request(&s, Method::POST, "/projects", headers)
                .json(&json!({"name": "Nope", "slug": "nope"})),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "REST POST {label}");
        assert_eq!(body, rest_error(message), "REST POST {label}");

        let (status, www, body) = send_full(graphql_request(
            &s,
            headers,
            "{ projects { nodes { id } } }",
        ))
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "GraphQL {label}: {body}");
        assert_eq!(www.as_deref(), Some("Bearer"), "GraphQL {label}");
        assert_eq!(body, graphql_unauthenticated(message), "GraphQL {label}");
    }

    let (status, list) = s.get("/projects", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let slugs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["visible"], "no refused request created anything");
}

async fn session_cookie_authenticates(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token.clone();
    let org = org_id(&s, &admin).await;
    s.project(&admin, "alpha").await;
    let other = s.token("org-b", Role::Admin).await;
    s.project(&other, "beta").await;
    let (_, admin_list) = s.get("/projects", &admin).await;

    let keys = s.app.sessions();
    let exp = now_secs() + 3600;
    let write = session(keys, org, Role::Write, exp);
    let (status, _, body) =
        send_full(rest_request(&s, Method::GET, "/projects", &cookie(&write))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, admin_list);
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["slug"], "alpha");

    // The cookie is found among others, and on GraphQL too.
    let mixed = vec![(
        "cookie",
        format!("theme=dark; slx_session={write}; lang=en"),
    )];
    let (status, _, viewer) = send_full(graphql_request(
        &s,
        &mixed,
        "{ viewer { actorType actorId role organization { id } } }",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        viewer,
        json!({"data": {"viewer": {"actorType": "user", "actorId": "user-1", "role": "write",
                                    "organization": {"id": org.to_string()}}}})
    );

    // A write session can change things.
    let (status, _, created) = send_full(
        rest_request(&s, Method::POST, "/projects", &cookie(&write))
            .json(&json!({"name": "Gamma", "slug": "gamma"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (_, admin_list) = s.get("/projects", &admin).await;
    assert_eq!(admin_list.as_array().unwrap().len(), 2);

    // A read session can look but not touch.
    let read = session(keys, org, Role::Read, exp);
    let (status, _, body) =
        send_full(rest_request(&s, Method::GET, "/projects", &cookie(&read))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, admin_list);
    let (status, _, body) = send_full(
        rest_request(&s, Method::POST, "/projects", &cookie(&read))
            .json(&json!({"name": "Nope", "slug": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, rest_error(READ_ONLY));

    // Expired, forged and orphaned sessions are refused.
    let expired = session(keys, org, Role::Admin, now_secs() - 10);
    let forged = session(
        &SessionKeys::new(&SecretString::new("x".repeat(40))).unwrap(),
        org,
        Role::Admin,
        exp,
    );
    let orphan = session(keys, uuid::Uuid::now_v7(), Role::Admin, exp);
    for (label, jwt, message) in [
        ("expired", expired, "the session has expired"),
        ("forged", forged, "invalid session"),
        ("unknown organisation", orphan, "invalid session"),
        ("not a JWT", "not-a-jwt".to_string(), "invalid session"),
    ] {
        let (status, www, body) =
            send_full(rest_request(&s, Method::GET, "/projects", &cookie(&jwt))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}: {body}");
        assert_eq!(www.as_deref(), Some("Bearer"), "{label}");
        assert_eq!(body, rest_error(message), "{label}");
        let (status, _, body) = send_full(
            rest_request(&s, Method::POST, "/projects", &cookie(&jwt))
                .json(&json!({"name": "Nope", "slug": "nope"})),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label} POST");
        assert_eq!(body, rest_error(message), "{label} POST");
        let (status, _, body) =
            send_full(graphql_request(&s, &cookie(&jwt), "{ viewer { actorId } }")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label} GraphQL");
        assert_eq!(body, graphql_unauthenticated(message), "{label} GraphQL");
    }
    let (_, after) = s.get("/projects", &admin).await;
    assert_eq!(after, admin_list, "refused sessions changed nothing");
}

async fn read_token_is_refused_on_every_mutation(backend: Backend) {
    let s = TestServer::start(backend).await;
    let writer = s.token("default", Role::Write).await;
    let reader = s.token("default", Role::Read).await;
    let f = seed(&s, &writer).await;
    let before = snapshot(&s, &f, &writer).await;

    // A read token sees exactly what the owner sees, but for a
    // database's password: its connection strings are for writers.
    let mut without_passwords = before.clone();
    for (what, body) in &mut without_passwords {
        if what.ends_with(&format!("/resources/{}", f.resource_id)) {
            assert!(body["connectionString"].is_string(), "{body}");
            body["connectionString"] = Value::Null;
            body["publicConnectionString"] = Value::Null;
        }
    }
    assert_eq!(snapshot(&s, &f, &reader).await, without_passwords);

    let mut refused = 0;
    for (route, method) in endpoints(&s) {
        if !route.is_mutation {
            continue;
        }
        for project in [f.id.as_str(), f.slug.as_str()] {
            let (status, body) = call_route(&s, route, method.clone(), &f, project, &reader).await;
            let what = format!("{method} {}", fill_path(route, &f, project));
            assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
            assert_eq!(body, rest_error(READ_ONLY), "{what}");
        }
        refused += 1;
    }
    assert!(refused >= 17, "every mutation endpoint was tried");
    assert_eq!(snapshot(&s, &f, &writer).await, before, "nothing changed");

    // The same operations over GraphQL are refused too.
    for route in s.app.rest.table.routes.iter().filter(|r| r.is_mutation) {
        let resp = s
            .graphql(&reader, &route.text, graphql_variables(route, &f, &f.id))
            .await;
        assert_eq!(
            gql_error(&resp),
            ("FORBIDDEN".to_string(), READ_ONLY.to_string()),
            "route {}: {resp}",
            route.spec.n
        );
        assert_eq!(resp["data"], Value::Null, "route {}", route.spec.n);
    }
    for token in [&reader, &writer] {
        let resp = s
            .graphql(
                token,
                r#"mutation { createApiKey(input: {name: "escalate", role: admin}) { token } }"#,
                json!({}),
            )
            .await;
        assert_eq!(
            gql_error(&resp),
            ("FORBIDDEN".to_string(), ADMIN_ONLY.to_string()),
            "{resp}"
        );
    }
    let keys = s
        .graphql(
            &s.admin_token,
            "{ apiKeys { nodes { id name } } }",
            json!({}),
        )
        .await;
    let nodes = keys["data"]["apiKeys"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "no key was created: {keys}");
    let admin_key = nodes[0]["id"].as_str().unwrap();
    for token in [&reader, &writer] {
        let resp = s
            .graphql(
                token,
                "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
                json!({"id": admin_key}),
            )
            .await;
        assert_eq!(
            gql_error(&resp),
            ("FORBIDDEN".to_string(), ADMIN_ONLY.to_string()),
            "{resp}"
        );
    }
    let (status, _) = s.get("/projects", &s.admin_token).await;
    assert_eq!(status, StatusCode::OK, "the admin token still works");
    assert_eq!(snapshot(&s, &f, &writer).await, before, "nothing changed");

    // The refusals were about the role: the same requests succeed with a
    // write token (deletes last, innermost first).
    let all = endpoints(&s);
    let (deletes, others): (Vec<_>, Vec<_>) = all
        .into_iter()
        .filter(|(r, _)| r.is_mutation)
        .partition(|(_, m)| *m == Method::DELETE);
    for (route, method) in others.into_iter().chain(deletes.into_iter().rev()) {
        let (status, body) = call_route(&s, route, method.clone(), &f, &f.id, &writer).await;
        let expected = if NOT_YET_BUILT.contains(&route.spec.n) {
            404
        } else if route.spec.n == 25 {
            // The fixture's proxy exists: enabling it again changes it.
            200
        } else {
            route.spec.status
        };
        assert_eq!(
            status.as_u16(),
            expected,
            "{method} {} with a write token: {body}",
            route.spec.path
        );
    }
}

async fn other_organisation_is_isolated_on_every_route(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = s.admin_token.clone();
    let f = seed(&s, &a).await;
    let before = snapshot(&s, &f, &a).await;
    let b = s.token("org-b", Role::Admin).await;

    let mut unscoped = Vec::new();
    let mut refused = 0;
    for (route, method) in endpoints(&s) {
        if !has_path_params(route) {
            unscoped.push(format!("{method} {}", route.spec.path));
            continue;
        }
        for project in [f.id.as_str(), f.slug.as_str()] {
            let (status, body) = call_route(&s, route, method.clone(), &f, project, &b).await;
            let what = format!("{method} {}", fill_path(route, &f, project));
            assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
            assert_eq!(body, rest_error(owner_of(route)), "{what}");
        }
        refused += 1;
    }
    assert!(refused >= 24, "every scoped endpoint was tried");
    // Routes without a resource in the path act on the caller's own
    // organisation; each one needs its own isolation check below.
    assert_eq!(
        unscoped,
        [
            "GET /projects",
            "POST /projects",
            "GET /resources",
            "POST /resources"
        ],
        "a route without path parameters needs an isolation check in this test"
    );

    // The same operations over GraphQL are refused too.
    for route in s
        .app
        .rest
        .table
        .routes
        .iter()
        .filter(|r| has_path_params(r))
    {
        let resp = s
            .graphql(&b, &route.text, graphql_variables(route, &f, &f.id))
            .await;
        assert_eq!(
            gql_error(&resp),
            ("FORBIDDEN".to_string(), owner_of(route).to_string()),
            "route {}: {resp}",
            route.spec.n
        );
    }

    // B's own listings are empty.
    let (status, list) = s.get("/projects", &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    let resp = s
        .graphql(&b, "{ projects { nodes { id } } }", json!({}))
        .await;
    assert_eq!(resp, json!({"data": {"projects": {"nodes": []}}}));

    // B cannot see or revoke A's keys.
    let a_keys = s
        .graphql(&a, "{ apiKeys { nodes { id } } }", json!({}))
        .await;
    let a_key = a_keys["data"]["apiKeys"]["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_keys = s
        .graphql(&b, "{ apiKeys { nodes { id name } } }", json!({}))
        .await;
    let b_nodes = b_keys["data"]["apiKeys"]["nodes"].as_array().unwrap();
    assert_eq!(b_nodes.len(), 1, "{b_keys}");
    assert_ne!(b_nodes[0]["id"], a_key.as_str());
    let resp = s
        .graphql(
            &b,
            "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
            json!({"id": a_key}),
        )
        .await;
    assert_eq!(
        gql_error(&resp),
        (
            "FORBIDDEN".to_string(),
            "this API key belongs to another organisation".to_string()
        ),
        "{resp}"
    );

    // POST /projects creates in B's organisation, never A's.
    let (status, created) = s
        .post("/projects", &b, json!({"name": "Bee", "slug": "bee"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (_, list) = s.get("/projects", &b).await;
    assert_eq!(list, json!([created]));

    // B's resources are B's own, and B cannot bind into A's environment.
    let (_, list) = s.get("/resources", &b).await;
    assert_eq!(list, json!({"object": "list", "data": []}));
    let (status, body) = s
        .post(
            "/resources",
            &b,
            json!({"name": "sneaky", "kind": "kv", "environmentId": f.env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body,
        rest_error("this environment belongs to another organisation")
    );
    let (_, list) = s.get("/resources", &b).await;
    assert_eq!(list["data"], json!([]));

    // A's data is untouched and A's token still works.
    assert_eq!(snapshot(&s, &f, &a).await, before);
}

async fn health_is_public(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, www, body) = send_full(rest_request(&s, Method::GET, "/health/status", &[])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(www, None);
    assert_eq!(body["status"], "healthy");
    assert_eq!(
        body["services"],
        json!({"database": "ok", "kubernetes": "disabled", "storage": "ok"})
    );
    let ts = body["timestamp"].as_str().expect("a timestamp");
    assert!(DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");

    let (status, _, doc) = send_full(rest_request(&s, Method::GET, "/openapi.json", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for (route, method) in endpoints(&s) {
        let op = &doc["paths"][&route.axum_path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {} is documented", route.axum_path);
    }

    // The rest of the API is not public.
    let (status, _, _) = send_full(rest_request(&s, Method::GET, "/projects", &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

backend_tests!(
    missing_malformed_unknown_revoked_expired_tokens_get_401,
    session_cookie_authenticates,
    read_token_is_refused_on_every_mutation,
    other_organisation_is_isolated_on_every_route,
    health_is_public,
);
