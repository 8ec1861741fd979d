//! Deployments on the local runtime with a real app in a temporary git
//! repository, reached through the built-in router by Host.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::apps::{deploy, finished, git, repo};
use common::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn wait_deployment(s: &TestServer, project: &str, id: &str) -> Value {
    finished(&s.url("/api/v1"), &s.admin_token, project, id).await
}

async fn set_greeting(s: &TestServer, project: &str, value: &str) {
    let (status, _) = s
        .post(
            &format!("/projects/{project}/env-vars"),
            &s.admin_token,
            json!({"envType": "production", "vars": [{"key": "GREETING", "value": value, "secret": true}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn served(s: &TestServer, host: &str) -> (StatusCode, String) {
    let resp = s
        .client()
        .get(format!("http://{}/", s.apps))
        .header("Host", host)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn deploy_redeploy_rollback(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let src = repo("web: exec python3 app.py\nrelease: echo release-phase-ran\n");
    let (status, _) = s
        .post(
            "/projects",
            t,
            json!({"name": "App", "slug": "app", "gitRepository": src.path().to_str().unwrap(), "domain": "app.example.test"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = served(&s, "app.example.test").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing deployed yet");

    set_greeting(&s, "app", "hello-1").await;
    let first = deploy(&s, "app").await;
    assert_eq!(first["status"], "success", "{first}");
    assert_eq!(first["triggeredBy"], "api");
    assert_eq!(first["gitBranch"], "main");
    assert_eq!(first["gitCommit"].as_str().unwrap().len(), 40);
    assert!(first["startedAt"].is_string() && first["finishedAt"].is_string());
    assert_eq!(first.get("error"), Some(&Value::Null), "{first}");
    assert_eq!(
        served(&s, "app.example.test").await,
        (StatusCode::OK, "hello-1".into())
    );
    assert_eq!(served(&s, "app.localhost").await.1, "hello-1");
    let (status, _) = served(&s, "nobody.example.test").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, st) = s.get("/projects/app/status", t).await;
    assert_eq!(
        st,
        json!({"status": "running", "environment": "production", "replicas": {"ready": 1, "desired": 1}})
    );
    let (_, services) = s.get("/projects/app/services", t).await;
    assert_eq!(
        services[0]["name"], "web",
        "Procfile processes become services"
    );
    let service_id = services[0]["id"].as_str().unwrap();
    let (status, img) = s
        .get(&format!("/services/{service_id}/latest-image"), t)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(img["image"].as_str().unwrap().starts_with("local:"));

    // Build and release output is in the deployment's logs, as text.
    let first_id = first["id"].as_str().unwrap();
    let resp = s
        .api(
            reqwest::Method::GET,
            &format!("/projects/app/logs?deploymentId={first_id}"),
            t,
        )
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("[release] release-phase-ran"), "{text}");
    assert!(text.lines().all(|l| l.contains("Z [")), "{text}");
    assert!(!text.contains("hello-1"), "secret values are not logged");

    // Redeploy with a new value while a client keeps requesting.
    set_greeting(&s, "app", "hello-2").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (http, url) = (s.client().clone(), format!("http://{}/", s.apps));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = http
                    .get(&url)
                    .header("Host", "app.example.test")
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let second = deploy(&s, "app").await;
    assert_eq!(second["status"], "success");
    assert_eq!(served(&s, "app.example.test").await.1, "hello-2");
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "zero-downtime redeploy");

    // Roll back: the first deployment's env vars come back.
    let (status, rb) = s
        .post(
            "/projects/app/rollback",
            t,
            json!({"deploymentId": first_id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rb}");
    assert_eq!(rb["status"], "rolling-back");
    assert_eq!(rb["targetDeploymentId"], first_id);
    let third = wait_deployment(&s, "app", rb["deploymentId"].as_str().unwrap()).await;
    assert_eq!(third["status"], "success");
    assert_eq!(third["triggeredBy"], "rollback");
    assert_eq!(served(&s, "app.example.test").await.1, "hello-1");
    let (_, list) = s.get("/projects/app/deployments?limit=2", t).await;
    let triggers: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["triggeredBy"].as_str().unwrap())
        .collect();
    assert_eq!(triggers, ["rollback", "api"], "newest first, limited");

    // Bad rollbacks.
    let (status, _) = s
        .post(
            "/projects/app/rollback",
            t,
            json!({"deploymentId": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s.post("/projects/app/rollback", t, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"]["field"], "deploymentId");
    let (status, _) = s.get("/projects/app/deployments?limit=101", t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn failed_deploys_keep_the_old_release(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let src = repo("web: exec python3 app.py\n");
    s.post("/projects", t, json!({"name": "A", "slug": "keep", "gitRepository": src.path().to_str().unwrap(), "domain": "keep.test"}))
        .await;
    set_greeting(&s, "keep", "good").await;
    assert_eq!(deploy(&s, "keep").await["status"], "success");

    // A failing release command fails the deploy.
    std::fs::write(
        src.path().join("Procfile"),
        "web: exec python3 app.py\nrelease: exit 3\n",
    )
    .unwrap();
    git(src.path(), &["commit", "-qam", "bad release"]);
    set_greeting(&s, "keep", "bad").await;
    let d = deploy(&s, "keep").await;
    assert_eq!(d["status"], "failed");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("release command failed"),
        "the list says why: {d}"
    );
    assert_eq!(
        served(&s, "keep.test").await,
        (StatusCode::OK, "good".into())
    );
    let (_, gql) = (
        (),
        s.graphql(
            t,
            "{ deployments(projectId: \"keep\", limit: 1) { error } }",
            json!({}),
        )
        .await,
    );
    assert!(
        gql["data"]["deployments"][0]["error"]
            .as_str()
            .unwrap()
            .contains("release command failed"),
        "{gql}"
    );

    // A process that never listens fails the deploy too.
    std::fs::write(src.path().join("Procfile"), "web: exec sleep 600\n").unwrap();
    git(src.path(), &["commit", "-qam", "never ready"]);
    let d = deploy(&s, "keep").await;
    assert_eq!(d["status"], "failed");
    assert_eq!(
        served(&s, "keep.test").await,
        (StatusCode::OK, "good".into())
    );
    let (_, st) = s.get("/projects/keep/status", t).await;
    assert_eq!(st["status"], "running");
}

async fn webhook_deploys_pushes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let src = repo("web: exec python3 app.py\n");
    let repo_path = src.path().to_str().unwrap();
    s.post(
        "/projects",
        &s.admin_token,
        json!({"name": "H", "slug": "hook", "gitRepository": repo_path}),
    )
    .await;
    let head = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(src.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let event =
        json!({"ref": "refs/heads/main", "after": head, "repository": {"full_name": repo_path}})
            .to_string();
    let url = s.url("/api/v1/webhooks/github");
    let send = |sig: Option<String>| {
        let mut r = s
            .client()
            .post(&url)
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", "delivery-1")
            .body(event.clone());
        if let Some(sig) = sig {
            r = r.header("X-Hub-Signature-256", sig);
        }
        r.send()
    };
    for bad in [
        None,
        Some("sha256=00".to_string()),
        Some(sign(b"wrong-secret", event.as_bytes())),
    ] {
        assert_eq!(send(bad).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let (_, list) = s.get("/projects/hook/deployments", &s.admin_token).await;
    assert_eq!(list, json!([]), "a bad signature does nothing");

    let resp = send(Some(sign(
        common::WEBHOOK_SECRET.as_bytes(),
        event.as_bytes(),
    )))
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let id = body["deployments"][0]["deploymentId"].as_str().unwrap();
    let d = wait_deployment(&s, "hook", id).await;
    assert_eq!(d["triggeredBy"], "push");
    assert_eq!(d["gitCommit"], head.as_str());
    assert_eq!(d["status"], "success");

    // The same delivery again (a replay, or GitHub redelivering it) is
    // acknowledged and does nothing.
    for _ in 0..2 {
        let resp = send(Some(sign(
            common::WEBHOOK_SECRET.as_bytes(),
            event.as_bytes(),
        )))
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"duplicate": true, "deployments": []}));
    }
    let (_, list) = s.get("/projects/hook/deployments", &s.admin_token).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

/// Without a webhook secret the endpoint does not exist: 404 in JSON, and
/// nothing is deployed whatever the body says.
async fn webhook_without_secret_is_404(backend: Backend) {
    let s = TestServer::start_without_webhook(backend).await;
    let resp = s
        .client()
        .post(s.url("/api/v1/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(b"", b"{}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "the GitHub webhook is not configured on this server (no webhook secret)", "details": null})
    );
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

backend_tests!(
    deploy_redeploy_rollback,
    failed_deploys_keep_the_old_release,
    webhook_deploys_pushes,
    webhook_without_secret_is_404
);
