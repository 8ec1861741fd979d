//! Live streams over the websocket, with a real app deployed on the local
//! runtime and a real graphql-transport-ws client.

mod common;

use std::time::Duration;

use common::apps::{GATE, Gate, deploy, repo, repo_with};
use common::{Backend, TestServer, procs, ws};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sylphx::auth::Role;
use tokio_tungstenite::tungstenite::Message;

const LOGS: &str = "subscription($p: String!, $tail: Int) { logs(projectId: $p, tail: $tail) { ts msg source deploymentId } }";

/// Deploys and waits for success; the deployment's id.
async fn deployed(s: &TestServer, project: &str) -> String {
    let done = deploy(s, project).await;
    assert_eq!(done["status"], "success", "{done}");
    done["id"].as_str().unwrap().to_string()
}

async fn subscribe(socket: &mut ws::Ws, id: &str, query: &str, variables: Value) {
    let start = json!({ "type": "subscribe", "id": id, "payload": { "query": query, "variables": variables } });
    socket.send(Message::text(start.to_string())).await.unwrap();
}

/// Reads the `next` values (`data.<field>`) of subscription `id` until
/// one satisfies `wanted`; all it read. An `error` or `complete` for the
/// subscription fails.
async fn read_until(
    socket: &mut ws::Ws,
    id: &str,
    field: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    // A bound for a broken server, not a measurement.
    let read = async {
        loop {
            let msg = ws::next_text(socket).await.expect("the socket stays open");
            let kind = (msg["id"].as_str(), msg["type"].as_str());
            assert_eq!(kind, (Some(id), Some("next")), "{msg}");
            let value = msg["payload"]["data"][field].clone();
            let done = wanted(&value);
            seen.push(value);
            if done {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .unwrap_or_else(|_| panic!("no such {field} came; saw {seen:?}"));
    seen
}

/// A `logs` subscription sends the environment's past lines, then follows
/// it: the next release's lines arrive on the same subscription.
async fn logs_follow_an_environment_across_deploys(backend: Backend) {
    let s = TestServer::start(backend).await;
    let src = repo("web: exec python3 app.py\nrelease: echo release-phase-ran\n");
    let (status, body) = s
        .post(
            "/projects",
            &s.admin_token,
            json!({"name": "App", "slug": "app", "gitRepository": src.path().to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let first = deployed(&s, "app").await;

    let mut socket = ws::with_token(&s, &s.admin_token).await;
    subscribe(
        &mut socket,
        "logs",
        LOGS,
        json!({ "p": "app", "tail": 1000 }),
    )
    .await;
    let past = read_until(&mut socket, "logs", "logs", |l| {
        l["deploymentId"] == first.as_str()
            && l["msg"].as_str().unwrap().starts_with("listening on")
    })
    .await;
    assert!(
        past.iter().any(|l| l["msg"] == "release-phase-ran"),
        "the release phase's output is among the past lines: {past:?}"
    );

    let second = deployed(&s, "app").await;
    let live = read_until(&mut socket, "logs", "logs", |l| {
        l["deploymentId"] == second.as_str()
            && l["msg"].as_str().unwrap().starts_with("listening on")
    })
    .await;
    assert!(
        live.iter()
            .any(|l| l["source"] == "release" && l["deploymentId"] == second.as_str()),
        "{live:?}"
    );
    // Each line once: nothing is sent twice.
    let mut all: Vec<String> = past.iter().chain(&live).map(Value::to_string).collect();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "a line came twice");

    // Another organisation's token is refused the project: an error and
    // no data, then the subscription completes.
    let other = s.token("other", Role::Admin).await;
    let mut theirs = ws::with_token(&s, &other).await;
    subscribe(&mut theirs, "x", LOGS, json!({ "p": "app" })).await;
    let refused = ws::next_text(&mut theirs).await.unwrap();
    assert_eq!(refused["id"], "x");
    assert_eq!(refused["payload"]["data"], Value::Null, "{refused}");
    let error = &refused["payload"]["errors"][0];
    assert_eq!(error["extensions"]["code"], "FORBIDDEN", "{refused}");
    let end = ws::next_text(&mut theirs).await.unwrap();
    assert_eq!(
        (end["type"].as_str(), end["id"].as_str()),
        (Some("complete"), Some("x"))
    );
}

const STATUS: &str = "subscription($p: String!) { projectStatus(projectId: $p) { status deploymentId replicas { ready desired } services { name ready desired restarts } } }";

/// A `projectStatus` subscription sends the status now, then each change:
/// a deploy goes `deploying` (held at its release command) → `running`,
/// and a killed replica is restarted and counted.
async fn project_status_follows_deploys_and_restarts(backend: Backend) {
    let s = TestServer::start(backend).await;
    let marker = format!("status-{}", uuid::Uuid::new_v4().simple());
    let src = repo_with(
        &format!("web: exec python3 app.py {marker}\nrelease: python3 gate.py\n"),
        &[("gate.py", GATE)],
    );
    let (status, body) = s
        .post(
            "/projects",
            &s.admin_token,
            json!({"name": "Live", "slug": "live", "gitRepository": src.path().to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let gate = Gate::start().await;
    let (status, _) = s
        .post(
            "/projects/live/env-vars",
            &s.admin_token,
            json!({"envType": "production", "vars": [{"key": "GATE_PORT", "value": gate.port.to_string()}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let mut socket = ws::with_token(&s, &s.admin_token).await;
    subscribe(&mut socket, "st", STATUS, json!({ "p": "live" })).await;
    let first = read_until(&mut socket, "st", "projectStatus", |_| true).await;
    assert_eq!(first[0]["status"], "not_deployed", "{first:?}");
    assert_eq!(first[0]["deploymentId"], Value::Null);

    let (status, body) = s
        .post("/projects/live/deploy", &s.admin_token, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deploymentId"].as_str().unwrap().to_string();
    let deploying = read_until(&mut socket, "st", "projectStatus", |st| {
        st["status"] == "deploying"
    })
    .await;
    assert_eq!(deploying.last().unwrap()["deploymentId"], id.as_str());
    // Held at the release command: still deploying, whatever else changes.
    gate.wait_arrivals(1).await;
    gate.open();
    let running = read_until(&mut socket, "st", "projectStatus", |st| {
        st["status"] == "running"
    })
    .await;
    let now = running.last().unwrap();
    assert_eq!(now["deploymentId"], id.as_str());
    assert_eq!(now["replicas"], json!({"ready": 1, "desired": 1}), "{now}");
    assert_eq!(now["services"][0]["restarts"], 0, "{now}");

    // A replica killed from outside is restarted, and the count shows it.
    // The app itself, not the sandbox around it.
    let pids: Vec<i32> = procs::with_marker(&marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with("python"))
        })
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let back = read_until(&mut socket, "st", "projectStatus", |st| {
        st["status"] == "running" && st["services"][0]["restarts"] == 1
    })
    .await;
    assert!(
        back.iter().all(|st| st["deploymentId"] == id.as_str()),
        "{back:?}"
    );
}

backend_tests!(
    logs_follow_an_environment_across_deploys,
    project_status_follows_deploys_and_restarts
);
