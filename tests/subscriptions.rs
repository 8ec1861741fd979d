//! Live streams over the websocket, with a real app deployed on the local
//! runtime and a real graphql-transport-ws client.

mod common;

use std::time::Duration;

use common::apps::{deploy, repo};
use common::{Backend, TestServer, ws};
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

/// Reads `next` lines of subscription `id` until one satisfies `wanted`;
/// all it read. An `error` or `complete` for the subscription fails.
async fn read_until(socket: &mut ws::Ws, id: &str, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    // A bound for a broken server, not a measurement.
    let read = async {
        loop {
            let msg = ws::next_text(socket).await.expect("the socket stays open");
            assert_eq!(msg["id"], id, "{msg}");
            assert_eq!(msg["type"], "next", "{msg}");
            let line = msg["payload"]["data"]["logs"].clone();
            let done = wanted(&line);
            seen.push(line);
            if done {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .unwrap_or_else(|_| panic!("no such line came; saw {seen:?}"));
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
    let past = read_until(&mut socket, "logs", |l| {
        l["deploymentId"] == first.as_str()
            && l["msg"].as_str().unwrap().starts_with("listening on")
    })
    .await;
    assert!(
        past.iter().any(|l| l["msg"] == "release-phase-ran"),
        "the release phase's output is among the past lines: {past:?}"
    );

    let second = deployed(&s, "app").await;
    let live = read_until(&mut socket, "logs", |l| {
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

backend_tests!(logs_follow_an_environment_across_deploys);
