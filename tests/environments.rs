//! Environments (13–16) and services (18–22) over real HTTP.

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

async fn environments_lifecycle(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "shop").await;
    let id = p["id"].as_str().unwrap();
    let base = format!("/projects/{id}/environments");

    let (status, list) = s.get(&base, t).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        keys(&list[0]),
        ["id", "name", "domain", "replicas", "createdAt", "updatedAt"]
    );
    assert_eq!(list[0]["name"], "production");

    let (status, staging) = s
        .post(
            &base,
            t,
            json!({"name": "staging", "domain": "staging-shop.example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    assert_eq!(staging["name"], "staging");
    assert_eq!(staging["replicas"], 1, "replicas default to 1");
    assert_eq!(staging["domain"], "staging-shop.example.com");
    let env_id = staging["id"].as_str().unwrap();

    let (status, got) = s.get(&format!("{base}/{env_id}"), t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, staging);

    let (status, patched) = s
        .call(
            Method::PATCH,
            &format!("{base}/{env_id}"),
            t,
            Some(json!({"replicas": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["replicas"], 3);
    assert_eq!(patched["domain"], "staging-shop.example.com");
    let (status, put) = s
        .call(
            Method::PUT,
            &format!("{base}/{env_id}"),
            t,
            Some(json!({"domain": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(put["domain"], Value::Null);
    assert_eq!(put["replicas"], 3);

    // Conflicts and bad input.
    let (status, body) = s.post(&base, t, json!({"name": "staging"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let other = s.project(t, "blog").await;
    s.call(
        Method::PATCH,
        &format!("/projects/{}", other["id"].as_str().unwrap()),
        t,
        Some(json!({"domain": "blog.example.com"})),
    )
    .await;
    let (status, body) = s
        .post(
            &base,
            t,
            json!({"name": "preview", "domain": "blog.example.com"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a domain serves one environment: {body}"
    );
    for (body, field) in [
        (json!({"name": "Bad Name"}), "name"),
        (json!({"name": "ok", "replicas": -1}), "replicas"),
        (json!({"name": "ok", "replicas": 1000}), "replicas"),
        (json!({"name": "ok", "domain": "-bad-.com"}), "domain"),
        (json!({"domain": "x.example.com"}), "name"),
    ] {
        let (status, resp) = s.post(&base, t, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert_eq!(resp["details"]["field"], field, "{body}: {resp}");
    }
    let (status, body) = s.get(&format!("{base}/not-a-uuid"), t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"]["field"], "envId");
    let (status, _) = s.get(&format!("{base}/{}", uuid::Uuid::now_v7()), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An environment id of another project of the same org is not found here.
    let other_env = other["environments"][0]["id"].as_str().unwrap();
    let (status, _) = s.get(&format!("{base}/{other_env}"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, list) = s.get(&base, t).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["production", "staging"]);
}

async fn production_domain_follows_the_project(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "web").await;
    let id = p["id"].as_str().unwrap();
    let prod = p["environments"][0]["id"].as_str().unwrap();
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("/projects/{id}/environments/{prod}"),
            t,
            Some(json!({"domain": "www.example.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, project) = s.get(&format!("/projects/{id}"), t).await;
    assert_eq!(project["domain"], "www.example.com");
}

async fn environment_domains_are_owned(backend: Backend) {
    let s = TestServer::start(backend).await;
    let other = s.token("other-org", sylphx::auth::Role::Write).await;
    let (status, body) = s
        .post(
            "/projects",
            &s.admin_token,
            json!({"name": "Shop", "slug": "shop", "domain": "shop.example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mine = s.project(&other, "mine").await;
    let prod = mine["environments"][0]["id"].as_str().unwrap();
    let base = "/projects/mine/environments";
    let (status, staging) = s.post(base, &other, json!({"name": "staging"})).await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    let staging_id = staging["id"].as_str().unwrap();

    // Another organisation's domain, in another case.
    let (status, body) = s
        .post(
            base,
            &other,
            json!({"name": "preview", "domain": "Shop.Example.COM"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "domain 'shop.example.com' is already in use");
    for env in [staging_id, prod] {
        for method in [Method::PATCH, Method::PUT] {
            let (status, body) = s
                .call(
                    method,
                    &format!("{base}/{env}"),
                    &other,
                    Some(json!({"domain": "SHOP.example.com"})),
                )
                .await;
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["error"], "domain 'shop.example.com' is already in use");
        }
    }

    // Generated hostnames are reserved.
    for domain in [
        "localhost",
        "victim.localhost",
        "Victim.LOCALHOST",
        "staging.shop.localhost",
    ] {
        let (status, body) = s
            .post(base, &other, json!({"name": "preview", "domain": domain}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{domain}: {body}");
        assert_eq!(body["details"]["field"], "domain", "{domain}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("reserved"),
            "{body}"
        );
        for method in [Method::PATCH, Method::PUT] {
            let (status, body) = s
                .call(
                    method.clone(),
                    &format!("{base}/{staging_id}"),
                    &other,
                    Some(json!({"domain": domain})),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {domain}: {body}");
            assert_eq!(body["details"]["field"], "domain", "{method} {domain}");
        }
    }

    // Nothing above changed anything.
    let (_, list) = s.get(base, &other).await;
    assert_eq!(list, json!([mine["environments"][0], staging]));
}

async fn concurrent_creates_take_a_domain_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.project(&s.admin_token, "race").await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            s.api(Method::POST, "/projects/race/environments", &s.admin_token)
                .json(&json!({"name": format!("env-{i}"), "domain": "race.example.com"}))
        })
        .collect();
    let created = common::race(requests, "domain 'race.example.com' is already in use").await;
    assert_eq!(created, 1, "one of 20 concurrent creates takes the domain");
    let (_, list) = s.get("/projects/race/environments", &s.admin_token).await;
    let domains: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["domain"])
        .collect();
    assert_eq!(
        domains,
        [&Value::Null, &json!("race.example.com")],
        "production and the one created"
    );
}

async fn services_lifecycle(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "api").await;
    let id = p["id"].as_str().unwrap();
    let base = format!("/projects/{id}/services");

    let (status, list) = s.get(&base, t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));

    let (status, web) = s
        .post(&base, t, json!({"name": "web", "port": 3000, "replicas": 2, "resources": {"cpu": "250m", "memory": "512Mi"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{web}");
    for k in ["id", "name", "port", "replicas", "status"] {
        assert!(web.get(k).is_some(), "{k} missing in {web}");
    }
    assert_eq!(web["port"], 3000);
    assert_eq!(web["replicas"], 2);
    assert_eq!(web["dockerfilePath"], "Dockerfile");
    assert_eq!(web["resources"], json!({"cpu": "250m", "memory": "512Mi"}));
    assert_eq!(web["status"], "idle");

    let (status, worker) = s
        .post(
            &base,
            t,
            json!({"name": "worker", "dockerfilePath": "worker/Dockerfile"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(worker["port"], Value::Null, "workers have no port");
    assert_eq!(worker["replicas"], 1);
    assert_eq!(worker["dockerfilePath"], "worker/Dockerfile");

    let (_, list) = s.get(&base, t).await;
    assert_eq!(list, json!([web, worker]));
    let (status, got) = s.get(&format!("{base}/web"), t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, web);
    let (status, _) = s.get(&format!("{base}/nope"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, patched) = s
        .call(
            Method::PATCH,
            &format!("{base}/web"),
            t,
            Some(json!({"replicas": 4, "resources": {"cpu": "1"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["replicas"], 4);
    assert_eq!(patched["port"], 3000);
    assert_eq!(patched["resources"], json!({"cpu": "1", "memory": null}));
    let (status, put) = s
        .call(
            Method::PUT,
            &format!("{base}/worker"),
            t,
            Some(json!({"port": 9000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(put["port"], 9000);

    // Per-environment override.
    let prod = p["environments"][0]["id"].as_str().unwrap();
    let (status, ov) = s
        .call(
            Method::PATCH,
            &format!("{base}/web/environments/{prod}"),
            t,
            Some(json!({"replicas": 6, "dockerImage": "ghcr.io/acme/web:1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ov}");
    assert_eq!(ov["serviceId"], web["id"]);
    assert_eq!(ov["environmentId"], prod);
    assert_eq!(ov["replicas"], 6);
    assert_eq!(ov["port"], Value::Null);
    assert_eq!(ov["dockerImage"], "ghcr.io/acme/web:1");
    let (status, ov2) = s
        .call(
            Method::PUT,
            &format!("{base}/web/environments/{prod}"),
            t,
            Some(json!({"port": 8080})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ov2["replicas"], 6,
        "an override update keeps the other settings"
    );
    assert_eq!(ov2["port"], 8080);
    let q = s
        .graphql(t, "query($id: String!) { service(projectId: $id, name: \"web\") { overrides { environmentId replicas port } } }", json!({"id": id}))
        .await;
    assert_eq!(
        q["data"]["service"]["overrides"],
        json!([{"environmentId": prod, "replicas": 6, "port": 8080}])
    );

    // Bad input and conflicts.
    let (status, _) = s.post(&base, t, json!({"name": "web"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (body, field) in [
        (json!({"name": "Web!"}), "name"),
        (json!({"name": "x", "port": 0}), "port"),
        (json!({"name": "x", "port": 70000}), "port"),
        (json!({"name": "x", "replicas": 101}), "replicas"),
        (
            json!({"name": "x", "dockerfilePath": "../Dockerfile"}),
            "dockerfilePath",
        ),
        (
            json!({"name": "x", "resources": {"cpu": "lots"}}),
            "resources.cpu",
        ),
        (
            json!({"name": "x", "resources": {"memory": "1Zi"}}),
            "resources.memory",
        ),
    ] {
        let (status, resp) = s.post(&base, t, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert_eq!(resp["details"]["field"], field, "{body}: {resp}");
    }
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("{base}/web/environments/{}", uuid::Uuid::now_v7()),
            t,
            Some(json!({"replicas": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!("{base}/web/environments/{prod}"),
            t,
            Some(json!({"replicas": -2})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, list) = s.get(&base, t).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "failed requests created nothing"
    );

    // Deleting the project removes its services.
    s.call(Method::DELETE, &format!("/projects/{id}"), t, None)
        .await;
    let (status, _) = s.get(&base, t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

backend_tests!(
    environments_lifecycle,
    production_domain_follows_the_project,
    environment_domains_are_owned,
    concurrent_creates_take_a_domain_once,
    services_lifecycle,
);
