//! The durable reconciler as an operator meets it: `sylphx serve` killed
//! with SIGKILL mid-deploy and started again, two `serve` processes
//! sharing one PostgreSQL database, and a SIGTERM that must not lose the
//! AI usage counted but not yet written.

mod common;

use std::time::Duration;

use common::apps::{GATE, Gate, finished, repo, repo_with};
use common::binary::{ServeProcess, create_token, free_port, get, post};
use common::procs;
use common::{TestServer, drop_postgres, fresh_postgres};
use reqwest::{Client, StatusCode};
use sea_orm::{Database, EntityTrait};
use serde_json::json;

/// `kill -9` of `serve` while a deploy's release command runs, then a
/// restart, several times over: nothing the dead server started lives on,
/// the interrupted deploy resumes and finishes exactly once, and the moment
/// it says `success` the router serves the new release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_deploy_resumes_and_finishes_exactly_once() {
    const ROUNDS: usize = 3;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let marker = format!("gate-{}", uuid::Uuid::new_v4().simple());
    // The release command waits at the test's gate: the deploy is held
    // mid-way until the test opens it.
    let src = repo_with(
        &format!("release: python3 gate.py {marker}\nweb: exec python3 app.py {marker}\n"),
        &[("gate.py", GATE)],
    );
    let data_s = data.to_str().unwrap().to_string();
    let envs = [
        ("SYLPHX_DATA_DIR", data_s.as_str()),
        ("SYLPHX_JOB_LEASE_SECS", "2"),
    ];
    let token = create_token("acme", &envs);
    let (port, apps_port) = (free_port(), free_port());
    let apps = format!("127.0.0.1:{apps_port}");
    let extra = ["--apps-listen", apps.as_str()];
    let mut server = ServeProcess::start(port, &extra, &envs, work.path()).await;

    let (status, _) = post(
        &server.base,
        "/projects",
        &token,
        json!({"name": "Crash", "slug": "crash", "gitRepository": src.path().to_str().unwrap(), "domain": "crash.test"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut gates = Vec::new();
    let mut ids = Vec::new();
    for round in 0..ROUNDS {
        let gate = Gate::start().await;
        let greeting = format!("round-{round}");
        let (status, _) = post(
            &server.base,
            "/projects/crash/env-vars",
            &token,
            json!({"envType": "production", "vars": [
                {"key": "GREETING", "value": greeting},
                {"key": "GATE_PORT", "value": gate.port.to_string()},
            ]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = post(&server.base, "/projects/crash/deploy", &token, json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["deploymentId"].as_str().unwrap().to_string();

        // Mid-deploy: the release command is at the gate.
        gate.wait_arrivals(1).await;
        let (_, list) = get(&server.base, "/projects/crash/deployments", &token).await;
        assert_eq!(list[0]["status"], "deploying", "{list}");
        // The release command, and the previous round's app.
        let tenant = procs::with_marker(&marker);
        assert!(tenant.len() >= if round == 0 { 1 } else { 2 }, "{tenant:?}");

        server.kill9();
        // Nothing the dead server started lives on.
        procs::wait_gone(&tenant).await;

        server = ServeProcess::start(port, &extra, &envs, work.path()).await;
        // The resumed deploy runs its release command again, and waits.
        gate.wait_arrivals(2).await;
        gate.open();
        let done = finished(&server.base, &token, "crash", &id).await;
        assert_eq!(done["status"], "success", "{done}");
        assert!(done["finishedAt"].is_string(), "{done}");
        // Reported success: served, at once.
        let served = Client::new()
            .get(format!("http://{apps}/"))
            .header("Host", "crash.test")
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), StatusCode::OK, "round {round}");
        assert_eq!(served.text().await.unwrap(), greeting);
        assert_eq!(
            gate.arrivals(),
            2,
            "the release command ran once per attempt"
        );
        gates.push(gate);
        ids.push(id);
    }

    let (_, list) = get(&server.base, "/projects/crash/deployments", &token).await;
    assert_eq!(list.as_array().unwrap().len(), ROUNDS, "{list}");
    let (_, status) = get(&server.base, "/projects/crash/status", &token).await;
    assert_eq!(
        status["replicas"],
        json!({"ready": 1, "desired": 1}),
        "{status}"
    );
    let last = ids.last().unwrap();
    let (_, logs) = get(
        &server.base,
        &format!("/projects/crash/logs?deploymentId={last}"),
        &token,
    )
    .await;
    let logs = logs.as_str().unwrap();
    assert_eq!(logs.matches("listening on").count(), 1, "{logs}");

    // Each deploy job is done after two claims (the killed one and the
    // resumed one).
    drop(server);
    let db = Database::connect(format!(
        "sqlite://{}?mode=ro",
        data.join("sylphx.db").display()
    ))
    .await
    .unwrap();
    let jobs = entity::jobs::Entity::find().all(&db).await.unwrap();
    for id in &ids {
        let deploys: Vec<_> = jobs
            .iter()
            .filter(|j| j.deployment_id.map(|d| d.to_string()).as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(deploys.len(), 1, "{jobs:?}");
        assert_eq!(
            (deploys[0].status.as_str(), deploys[0].attempts),
            ("done", 2)
        );
    }
}

/// PostgreSQL only: SQLite runs one `serve` per store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_never_run_a_job_twice() {
    let Some((url, name)) = fresh_postgres().await else {
        eprintln!("skipped: SYLPHX_TEST_DATABASE_URL is not set");
        return;
    };

    let work = tempfile::tempdir().unwrap();
    let master_key = sylphx::secrets::random_hex(32);
    let env_for = |dir: &str| {
        vec![
            ("SYLPHX_DATABASE_URL", url.clone()),
            (
                "SYLPHX_DATA_DIR",
                work.path().join(dir).to_str().unwrap().to_string(),
            ),
            ("SYLPHX_MASTER_KEY", master_key.clone()),
        ]
    };
    let (env_a, env_b) = (env_for("a"), env_for("b"));
    let refs_a: Vec<(&str, &str)> = env_a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refs_b: Vec<(&str, &str)> = env_b.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let token = create_token("acme", &refs_a);
    let apps_a = format!("127.0.0.1:{}", free_port());
    let apps_b = format!("127.0.0.1:{}", free_port());
    let a = ServeProcess::start(
        free_port(),
        &["--apps-listen", &apps_a],
        &refs_a,
        work.path(),
    )
    .await;
    let b = ServeProcess::start(
        free_port(),
        &["--apps-listen", &apps_b],
        &refs_b,
        work.path(),
    )
    .await;

    // Deploys of six projects, asked of each server in turn so both
    // workers are woken; each deploy starts a real app and takes a while.
    let src = repo("web: exec python3 app.py\n");
    let mut deployments = Vec::new();
    for i in 0..6 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let slug = format!("p{i}");
        let (status, body) = post(
            base,
            "/projects",
            &token,
            json!({"name": slug, "slug": slug, "gitRepository": src.path().to_str().unwrap()}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) =
            post(base, &format!("/projects/{slug}/deploy"), &token, json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        deployments.push((slug, body["deploymentId"].as_str().unwrap().to_string()));
    }
    for (slug, id) in &deployments {
        let done = finished(&a.base, &token, slug, id).await;
        assert_eq!(done["status"], "success", "{done}");
    }

    let db = Database::connect(url.as_str()).await.unwrap();
    // A deployment reads `success` a moment before its worker records the
    // job as done: wait for the workers to finish their bookkeeping.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        let jobs = entity::jobs::Entity::find().all(&db).await.unwrap();
        let settled = jobs
            .iter()
            .all(|j| j.status != "running" && j.status != "queued");
        if settled || tokio::time::Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(jobs.len(), 6, "{jobs:?}");
    for job in &jobs {
        assert_eq!(
            (job.status.as_str(), job.attempts),
            ("done", 1),
            "claimed once: {job:?}"
        );
    }
    let workers: std::collections::BTreeSet<_> =
        jobs.iter().map(|j| j.locked_by.clone().unwrap()).collect();
    assert_eq!(workers.len(), 2, "both servers ran jobs: {workers:?}");

    drop((a, b));
    db.close().await.ok();
    drop_postgres(&name).await;
}

/// SIGTERM, as on every upgrade of the control plane: requests answered by
/// any of the HTTP threads were metered, and the usage not yet written
/// (the flush interval here is an hour) is written before the process
/// exits, on PostgreSQL when it is available (store connections opened
/// on one thread are then used from another), else on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_the_ai_usage_not_yet_flushed() {
    let upstream = common::serve_router(axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            axum::Json(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "stub",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hi"}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
            }))
        }),
    ))
    .await;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("sylphx.toml");
    std::fs::write(
        &config,
        format!(
            "[ai]\nusage_flush_ms = 3600000\n\n[[ai.providers]]\nname = \"stub\"\nbase_url = \"{upstream}/v1\"\nmodels = [\"stub-chat\"]\n"
        ),
    )
    .unwrap();
    let data = work.path().join("data");
    let mut env = vec![
        ("SYLPHX_DATA_DIR", data.to_str().unwrap().to_string()),
        ("SYLPHX_CONFIG", config.to_str().unwrap().to_string()),
        ("SYLPHX_HTTP_THREADS", "3".to_string()),
    ];
    let postgres = fresh_postgres().await;
    if let Some((url, _)) = &postgres {
        env.push(("SYLPHX_DATABASE_URL", url.clone()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let port = free_port();
    let server = ServeProcess::start(port, &[], &env, work.path()).await;
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let token = token.trim();
    // A connection of its own for each request, spread over the threads.
    for _ in 0..6 {
        let (status, body) = post(
            &server.base,
            "/chat/completions",
            token,
            json!({"model": "stub-chat", "messages": [{"role": "user", "content": "hello"}]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["usage"]["total_tokens"], 15, "{body}");
    }
    let stderr = server.stderr();
    let status = server.terminate();
    assert!(status.success(), "serve exited with {status}: {stderr}");

    let server = ServeProcess::start(port, &[], &env, work.path()).await;
    let graphql = server.base.replace("/api/v1", "/graphql");
    let (status, body) = TestServer::send(
        Client::new()
            .post(graphql)
            .bearer_auth(token)
            .json(&json!({"query": "{ aiUsage { requests promptTokens completionTokens } }"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["aiUsage"],
        json!({"requests": 6, "promptTokens": 66, "completionTokens": 24}),
        "{body}"
    );
    drop(server);
    if let Some((_, name)) = postgres {
        drop_postgres(&name).await;
    }
}
