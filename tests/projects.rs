//! Projects (endpoints 1–5) over real HTTP.

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

const PROJECT_KEYS: [&str; 14] = [
    "id",
    "slug",
    "name",
    "description",
    "isActive",
    "gitRepository",
    "gitBranch",
    "buildPack",
    "dockerImage",
    "port",
    "domain",
    "createdAt",
    "updatedAt",
    "environments",
];

async fn create_list_get_update_delete(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let (status, created) = s
        .post(
            "/projects",
            t,
            json!({"name": "My App", "slug": "my-app", "gitRepository": "acme/my-app",
                   "gitBranch": "main", "buildPack": "nixpacks", "port": 3000, "domain": "MyApp.Example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        keys(&created),
        PROJECT_KEYS
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(created["slug"], "my-app");
    assert_eq!(created["name"], "My App");
    assert_eq!(created["isActive"], true);
    assert_eq!(created["buildPack"], "nixpacks");
    assert_eq!(created["port"], 3000);
    assert_eq!(created["domain"], "myapp.example.com");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    // Creating a project creates its production environment.
    let envs = created["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0]["name"], "production");
    assert_eq!(envs[0]["replicas"], 1);
    assert_eq!(envs[0]["domain"], "myapp.example.com");

    // Option B: a Docker image project gets no git defaults.
    let (status, img) = s
        .post(
            "/projects",
            t,
            json!({"name": "Img", "slug": "img", "dockerImage": "nginx:1.27"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(img["dockerImage"], "nginx:1.27");
    assert_eq!(img["gitBranch"], Value::Null);
    assert_eq!(img["buildPack"], Value::Null);

    let (status, list) = s.get("/projects", t).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().expect("a bare array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0], created);

    for key in [id.as_str(), "my-app"] {
        let (status, got) = s.get(&format!("/projects/{key}"), t).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got, created);
    }

    let (status, patched) = s
        .call(
            Method::PATCH,
            &format!("/projects/{id}"),
            t,
            Some(json!({"name": "Renamed", "description": "hello", "port": 8080})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], "Renamed");
    assert_eq!(patched["description"], "hello");
    assert_eq!(patched["port"], 8080);
    assert_eq!(patched["slug"], "my-app");
    let (status, put) = s
        .call(
            Method::PUT,
            &format!("/projects/{id}"),
            t,
            Some(json!({"domain": "new.example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(put["name"], "Renamed", "PUT is a partial update");
    assert_eq!(put["domain"], "new.example.com");
    assert_eq!(put["environments"][0]["domain"], "new.example.com");

    let (status, del) = s
        .call(Method::DELETE, &format!("/projects/{id}"), t, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(del, json!({"id": id, "deleted": true}));
    let (status, body) = s.get(&format!("/projects/{id}"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], format!("project '{id}' not found"));
    let (_, list) = s.get("/projects", t).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // The slug is free again.
    s.project(t, "my-app").await;
}

async fn listing_returns_every_page(backend: Backend) {
    let s = TestServer::start(backend).await;
    for i in 0..105 {
        s.project(&s.admin_token, &format!("p{i}")).await;
    }
    let (status, list) = s.get("/projects", &s.admin_token).await;
    assert_eq!(status, StatusCode::OK);
    let slugs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs.len(), 105);
    assert_eq!(slugs[0], "p0");
    assert_eq!(slugs[104], "p104");
}

async fn bad_input_is_refused_and_changes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    s.project(t, "taken").await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"name": "x", "slug": "taken"}),
            StatusCode::CONFLICT,
            "slug 'taken' is already taken",
        ),
        (
            json!({"name": "x", "slug": "Bad_Slug"}),
            StatusCode::BAD_REQUEST,
            "slug:",
        ),
        (
            json!({"name": "x", "slug": "a".repeat(64)}),
            StatusCode::BAD_REQUEST,
            "slug:",
        ),
        (
            json!({"name": "x", "slug": "ok", "port": 0}),
            StatusCode::BAD_REQUEST,
            "port:",
        ),
        (
            json!({"name": "x", "slug": "ok", "port": 65536}),
            StatusCode::BAD_REQUEST,
            "port:",
        ),
        (
            json!({"name": "x", "slug": "ok", "buildPack": "heroku"}),
            StatusCode::BAD_REQUEST,
            "buildPack",
        ),
        (json!({"slug": "ok"}), StatusCode::BAD_REQUEST, "\"name\""),
        (
            json!({"name": "x", "slug": "ok", "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            json!({"name": "x", "slug": "ok", "port": "eighty"}),
            StatusCode::BAD_REQUEST,
            "port",
        ),
        (
            json!({"name": "  ", "slug": "ok"}),
            StatusCode::BAD_REQUEST,
            "name:",
        ),
        (
            json!({"name": "x", "slug": "ok", "domain": "bad..host"}),
            StatusCode::BAD_REQUEST,
            "domain:",
        ),
        (
            json!({"name": "x", "slug": "ok", "gitRepository": "a/b", "dockerImage": "nginx"}),
            StatusCode::BAD_REQUEST,
            "dockerImage",
        ),
        (
            json!(["not", "an", "object"]),
            StatusCode::BAD_REQUEST,
            "JSON object",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, resp) = s.post("/projects", t, body.clone()).await;
        assert_eq!(got, status, "{body} -> {resp}");
        let msg = resp["error"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{body}: '{msg}' should mention {needle}"
        );
        assert!(resp.as_object().unwrap().contains_key("details"));
    }
    let (status, resp) = s
        .send_raw(Method::POST, "/projects", t, "{\"name\": \"x\", \"slug\":")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(resp["error"].as_str().unwrap().contains("malformed JSON"));

    // Unknown ids and non-UUIDs.
    let missing = uuid::Uuid::now_v7();
    let (status, _) = s.get(&format!("/projects/{missing}"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s.get("/projects/Not_A_Slug!", t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"]["field"], "id");
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/projects/{missing}"),
            t,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(Method::DELETE, &format!("/projects/{missing}"), t, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s
        .call(
            Method::PATCH,
            "/projects/taken",
            t,
            Some(json!({"port": 99999})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"]["field"], "port");

    // Nothing above changed anything.
    let (_, list) = s.get("/projects", t).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["slug"], "taken");
    assert_eq!(list[0]["port"], Value::Null);
}

async fn slugs_are_unique_across_organisations(backend: Backend) {
    let s = TestServer::start(backend).await;
    let other = s.token("other-org", sylphx::auth::Role::Write).await;
    s.project(&s.admin_token, "shared-name").await;
    let (status, body) = s
        .post(
            "/projects",
            &other,
            json!({"name": "x", "slug": "shared-name"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// The hostnames the local runtime generates; a custom domain may not be one.
const RESERVED: [&str; 4] = [
    "localhost",
    "victim.localhost",
    "Victim.LOCALHOST",
    "www.victim.localhost",
];

async fn localhost_domains_are_reserved(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "victim").await;
    let id = p["id"].as_str().unwrap();
    for domain in RESERVED {
        let (status, body) = s
            .post(
                "/projects",
                t,
                json!({"name": "x", "slug": "squatter", "domain": domain}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{domain}: {body}");
        assert_eq!(body["details"]["field"], "domain", "{domain}: {body}");
        assert_eq!(
            body["error"],
            "domain: `.localhost` names are reserved for generated hostnames"
        );
        for method in [Method::PATCH, Method::PUT] {
            let (status, body) = s
                .call(
                    method.clone(),
                    &format!("/projects/{id}"),
                    t,
                    Some(json!({"domain": domain})),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {domain}: {body}");
            assert_eq!(body["details"]["field"], "domain", "{method} {domain}");
        }
    }
    let gql = s
        .graphql(
            t,
            "mutation { createProject(input: {name: \"x\", slug: \"squatter\", domain: \"victim.localhost\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        gql["errors"][0]["extensions"]["code"], "BAD_REQUEST",
        "{gql}"
    );
    assert_eq!(gql["errors"][0]["extensions"]["details"]["field"], "domain");

    // Nothing above changed anything.
    let (_, list) = s.get("/projects", t).await;
    assert_eq!(list, json!([p]));

    // A name that only mentions localhost is a domain like any other.
    let (status, body) = s
        .call(
            Method::PATCH,
            &format!("/projects/{id}"),
            t,
            Some(json!({"domain": "localhost.example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["domain"], "localhost.example.com");
}

async fn domains_are_unique_across_organisations(backend: Backend) {
    let s = TestServer::start(backend).await;
    let other = s.token("other-org", sylphx::auth::Role::Write).await;
    let (status, shop) = s
        .post(
            "/projects",
            &s.admin_token,
            json!({"name": "Shop", "slug": "shop", "domain": "shop.example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{shop}");
    let in_use = "domain 'shop.example.com' is already in use";

    let (status, body) = s
        .post(
            "/projects",
            &other,
            json!({"name": "x", "slug": "squatter", "domain": "Shop.Example.COM"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], in_use);
    let mine = s.project(&other, "mine").await;
    for method in [Method::PATCH, Method::PUT] {
        let (status, body) = s
            .call(
                method,
                "/projects/mine",
                &other,
                Some(json!({"domain": "SHOP.example.com"})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], in_use);
    }
    let (_, list) = s.get("/projects", &other).await;
    assert_eq!(list, json!([mine]), "the refused requests changed nothing");

    // Setting a project's own domain again is no conflict.
    let (status, body) = s
        .call(
            Method::PATCH,
            "/projects/shop",
            &s.admin_token,
            Some(json!({"domain": "SHOP.example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["domain"], "shop.example.com");
}

async fn concurrent_creates_take_a_domain_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            s.api(Method::POST, "/projects", &s.admin_token).json(
                &json!({"name": "Race", "slug": format!("race-{i}"), "domain": "race.example.com"}),
            )
        })
        .collect();
    let created = common::race(requests, "domain 'race.example.com' is already in use").await;
    assert_eq!(created, 1, "one of 20 concurrent creates takes the domain");
    let (_, list) = s.get("/projects", &s.admin_token).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "the refused creates left nothing behind");
    assert_eq!(list[0]["environments"][0]["domain"], "race.example.com");
}

async fn unknown_endpoints_and_methods(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, body) = s.get("/nothing-here", &s.admin_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let resp = s
        .api(Method::DELETE, "/projects", &s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

backend_tests!(
    create_list_get_update_delete,
    listing_returns_every_page,
    bad_input_is_refused_and_changes_nothing,
    slugs_are_unique_across_organisations,
    localhost_domains_are_reserved,
    domains_are_unique_across_organisations,
    concurrent_creates_take_a_domain_once,
    unknown_endpoints_and_methods,
);
