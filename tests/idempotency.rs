//! `Idempotency-Key` on REST writes and GraphQL mutations.

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

async fn send_with_key(
    s: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = s.api(method, path, token).header("Idempotency-Key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    (
        status,
        replayed,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn project_count(s: &TestServer, token: &str) -> usize {
    s.get("/projects", token).await.1.as_array().unwrap().len()
}

async fn same_key_same_body_replays(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let body = json!({"name": "Once", "slug": "once"});
    let (status, replayed, first) = send_with_key(
        &s,
        Method::POST,
        "/projects",
        t,
        "key-1",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replayed, None);
    let (status, replayed, second) = send_with_key(
        &s,
        Method::POST,
        "/projects",
        t,
        "key-1",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "the stored status is replayed");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(second, first);
    assert_eq!(project_count(&s, t).await, 1);

    // The same key with a different body is refused and does nothing.
    let (status, _, err) = send_with_key(
        &s,
        Method::POST,
        "/projects",
        t,
        "key-1",
        Some(json!({"name": "Twice", "slug": "twice"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"].as_str().unwrap().contains("Idempotency-Key"));
    // …and so is the same key on another endpoint.
    let id = first["id"].as_str().unwrap();
    let (status, _, _) = send_with_key(
        &s,
        Method::DELETE,
        &format!("/projects/{id}"),
        t,
        "key-1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(project_count(&s, t).await, 1);

    // Client errors are remembered too: the replay of a 409 is a 409.
    let dup = json!({"name": "Dup", "slug": "once"});
    let (status, _, e1) =
        send_with_key(&s, Method::POST, "/projects", t, "key-2", Some(dup.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, replayed, e2) =
        send_with_key(&s, Method::POST, "/projects", t, "key-2", Some(dup)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(e1, e2);

    // A DELETE replays its success instead of answering 404 the second time.
    let (status, _, d1) = send_with_key(
        &s,
        Method::DELETE,
        &format!("/projects/{id}"),
        t,
        "key-3",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, replayed, d2) = send_with_key(
        &s,
        Method::DELETE,
        &format!("/projects/{id}"),
        t,
        "key-3",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(d1, d2);
}

async fn concurrent_requests_do_the_work_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.admin_token.clone();
    let body = json!({"name": "Race", "slug": "race"});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = s
            .api(Method::POST, "/projects", &t)
            .header("Idempotency-Key", "race-key")
            .json(&body);
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }));
    }
    let mut bodies = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every caller sees the one result"
    );
    assert_eq!(project_count(&s, &t).await, 1);
    let audit = s
        .graphql(
            &t,
            "{ auditEvents(first: 100) { nodes { action } } }",
            json!({}),
        )
        .await;
    let creates = audit["data"]["auditEvents"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "project.create")
        .count();
    assert_eq!(creates, 1);
}

async fn keys_are_per_organisation_and_expire(backend: Backend) {
    let s = TestServer::start(backend).await;
    let a = &s.admin_token;
    let b = s.token("org-b", sylphx::auth::Role::Write).await;
    let (status, _, _) = send_with_key(
        &s,
        Method::POST,
        "/projects",
        a,
        "shared",
        Some(json!({"name": "A", "slug": "a-app"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // Another organisation's identical key is its own.
    let (status, replayed, body) = send_with_key(
        &s,
        Method::POST,
        "/projects",
        &b,
        "shared",
        Some(json!({"name": "B", "slug": "b-app"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(replayed, None);
    assert_eq!(body["slug"], "b-app");

    // After 24 hours a key is forgotten and the request runs again.
    let db = s.app.db();
    let past = if s.database_url.starts_with("sqlite:") {
        "UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00+00:00'"
    } else {
        "UPDATE idempotency_keys SET expires_at = TIMESTAMPTZ '2000-01-01 00:00:00+00'"
    };
    db.execute_raw(Statement::from_string(db.get_database_backend(), past))
        .await
        .unwrap();
    let (status, replayed, _) = send_with_key(
        &s,
        Method::POST,
        "/projects",
        a,
        "shared",
        Some(json!({"name": "A", "slug": "a-app"})),
    )
    .await;
    assert_eq!(replayed, None);
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the work ran again and met the existing slug"
    );
    assert_eq!(
        sylphx::idempotency::purge_expired(db).await.unwrap(),
        1,
        "only the expired key is purged"
    );
}

async fn bad_keys_and_graphql_mutations(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let long = "k".repeat(256);
    let (status, _, err) = send_with_key(
        &s,
        Method::POST,
        "/projects",
        t,
        &long,
        Some(json!({"name": "x", "slug": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["details"]["field"], "Idempotency-Key");
    assert_eq!(project_count(&s, t).await, 0);

    let gql = json!({
        "query": "mutation($i: CreateProjectInput!) { createProject(input: $i) { id slug } }",
        "variables": {"i": {"name": "G", "slug": "gql"}}
    });
    let mut results = Vec::new();
    for _ in 0..2 {
        let resp = s
            .client()
            .post(s.url("/graphql"))
            .bearer_auth(t)
            .header("Idempotency-Key", "gql-key")
            .json(&gql)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        results.push(resp.json::<Value>().await.unwrap());
    }
    assert!(results[0]["errors"].is_null(), "{}", results[0]);
    assert_eq!(results[0], results[1]);
    assert_eq!(project_count(&s, t).await, 1);
}

backend_tests!(
    same_key_same_body_replays,
    concurrent_requests_do_the_work_once,
    keys_are_per_organisation_and_expire,
    bad_keys_and_graphql_mutations,
);
