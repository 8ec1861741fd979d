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

/// A project `slug` on the repository `src`.
async fn git_project(s: &TestServer, slug: &str, src: &tempfile::TempDir) {
    let (status, body) = s
        .post(
            "/projects",
            &s.admin_token,
            json!({"name": slug, "slug": slug, "gitRepository": src.path().to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A project `slug` on a repository of the test app with a release phase;
/// the repository (kept while it is alive).
async fn app_project(s: &TestServer, slug: &str) -> tempfile::TempDir {
    let src = repo("web: exec python3 app.py\nrelease: echo release-phase-ran\n");
    git_project(s, slug, &src).await;
    src
}

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

/// Reads the `next` messages of subscription `id` until one whose
/// `data.<field>` satisfies `wanted`: each as sent, and that value. An
/// `error` or `complete` for the subscription fails.
async fn next_until(
    socket: &mut ws::Ws,
    id: &str,
    field: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<(String, Value)> {
    use futures_util::StreamExt;
    let mut seen = Vec::new();
    // A bound for a broken server, not a measurement.
    let read = async {
        while let Some(msg) = socket.next().await {
            let Message::Text(text) = msg.unwrap() else {
                continue;
            };
            let msg: Value = serde_json::from_str(&text).unwrap();
            let kind = (msg["id"].as_str(), msg["type"].as_str());
            assert_eq!(kind, (Some(id), Some("next")), "{msg}");
            let value = msg["payload"]["data"][field].clone();
            let done = wanted(&value);
            seen.push((text.to_string(), value));
            if done {
                return;
            }
        }
        panic!("the socket closed");
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .unwrap_or_else(|_| panic!("no such {field} came; saw {seen:?}"));
    seen
}

/// The `next` values (`data.<field>`) of subscription `id` until one
/// satisfies `wanted`.
async fn read_until(
    socket: &mut ws::Ws,
    id: &str,
    field: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let seen = next_until(socket, id, field, wanted).await;
    seen.into_iter().map(|(_, v)| v).collect()
}

/// A `logs` subscription sends the environment's past lines, then follows
/// it: the next release's lines arrive on the same subscription.
async fn logs_follow_an_environment_across_deploys(backend: Backend) {
    let s = TestServer::start(backend).await;
    let _src = app_project(&s, "app").await;
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

    // One service's lines matching a text, with where each came from.
    let mut filtered = ws::with_token(&s, &s.admin_token).await;
    let query = "subscription { logs(projectId: \"app\", tail: 1000, service: \"web\", filter: \"listening\") { msg stream service replica level } }";
    subscribe(&mut filtered, "f", query, json!({})).await;
    let lines = read_until(&mut filtered, "f", "logs", |l| {
        l["msg"].as_str().unwrap().starts_with("listening on")
            && l["msg"] == live.last().unwrap()["msg"]
    })
    .await;
    assert_eq!(lines.len(), 2, "one line per release: {lines:?}");
    for l in &lines {
        assert_eq!(
            (&l["stream"], &l["service"], &l["replica"], &l["level"]),
            (
                &json!("stdout"),
                &json!("web"),
                &json!("web.1"),
                &json!("info")
            ),
            "{l}"
        );
    }
    // An unknown service is refused, naming it.
    let query = "subscription { logs(projectId: \"app\", service: \"nope\") { msg } }";
    subscribe(&mut filtered, "u", query, json!({})).await;
    let refused = ws::next_text(&mut filtered).await.unwrap();
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused}"
    );
    let end = ws::next_text(&mut filtered).await.unwrap();
    assert_eq!(
        (end["type"].as_str(), end["id"].as_str()),
        (Some("complete"), Some("u"))
    );
    // A filter is at most 200 characters: more is refused, naming it.
    let query = "subscription($f: String) { logs(projectId: \"app\", filter: $f) { msg } }";
    subscribe(
        &mut filtered,
        "long",
        query,
        json!({ "f": "x".repeat(201) }),
    )
    .await;
    let refused = ws::next_text(&mut filtered).await.unwrap();
    let error = &refused["payload"]["errors"][0];
    assert_eq!(error["extensions"]["code"], "BAD_REQUEST", "{refused}");
    assert!(
        error["message"].as_str().unwrap().contains("filter"),
        "{refused}"
    );

    // Another organisation's token is refused the project: an error and
    // no data, then the connection closes with 4403.
    let other = s.token("other", Role::Admin).await;
    let mut theirs = ws::with_token(&s, &other).await;
    subscribe(&mut theirs, "x", LOGS, json!({ "p": "app" })).await;
    let (code, texts) = ws::until_closed(&mut theirs).await;
    assert_eq!(code, Some(4403), "{texts:?}");
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(
        (texts[0]["type"].as_str(), texts[0]["id"].as_str()),
        (Some("error"), Some("x"))
    );
    assert_eq!(
        texts[0]["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{texts:?}"
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
    git_project(&s, "live", &src).await;
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

async fn connect(s: &TestServer) -> ws::Ws {
    tokio_tungstenite::connect_async(ws::request(s, &[]))
        .await
        .unwrap()
        .0
}

/// Bad credentials close the socket with 4401 before anything else; so
/// does an operation sent before `connection_init`.
async fn bad_credentials_close_with_4401(backend: Backend) {
    let s = TestServer::start(backend).await;
    for payload in [
        json!({}),
        json!({ "authorization": format!("Bearer slx_cli_{}", "0".repeat(64)) }),
    ] {
        let mut socket = connect(&s).await;
        let init = json!({ "type": "connection_init", "payload": payload });
        socket.send(Message::text(init.to_string())).await.unwrap();
        let (code, texts) = ws::until_closed(&mut socket).await;
        assert_eq!(code, Some(4401), "{texts:?}");
        assert!(texts.is_empty(), "{texts:?}");
    }
    let mut socket = connect(&s).await;
    subscribe(&mut socket, "1", "{ viewer { role } }", json!({})).await;
    let (code, texts) = ws::until_closed(&mut socket).await;
    assert_eq!(code, Some(4401));
    assert!(texts.is_empty(), "{texts:?}");
}

/// At most 100 operations run at once on one connection: the 101st gets
/// an error for its id and the connection stays; once one completes,
/// another may start.
async fn a_connection_runs_at_most_100_operations(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.project(&s.admin_token, "quiet").await;
    let mut socket = ws::with_token(&s, &s.admin_token).await;
    let follow = "subscription { logs(projectId: \"quiet\", tail: 0) { msg } }";
    for i in 0..100 {
        subscribe(&mut socket, &format!("s{i}"), follow, json!({})).await;
    }
    subscribe(&mut socket, "one-too-many", follow, json!({})).await;
    let refused = ws::next_text(&mut socket).await.unwrap();
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "one-too-many");
    assert!(
        refused["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100"),
        "{refused}"
    );
    // Ending one makes room.
    let end = json!({ "type": "complete", "id": "s0" });
    socket.send(Message::text(end.to_string())).await.unwrap();
    subscribe(&mut socket, "q", "{ viewer { role } }", json!({})).await;
    let answer = ws::next_text(&mut socket).await.unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["id"].as_str()),
        (Some("next"), Some("q")),
        "{answer}"
    );
}

/// A token revoked while its socket is open ends the connection (4401)
/// and its subscriptions, whether it came in `connection_init` or on the
/// upgrade request (with an empty `connection_init`).
async fn a_revoked_token_ends_its_subscriptions(backend: Backend) {
    let s = TestServer::start(backend).await;
    s.project(&s.admin_token, "watched").await;
    let created = s
        .graphql(
            &s.admin_token,
            r#"mutation { createApiKey(input: {name: "watcher", role: read}) { apiKey { id } token } }"#,
            json!({}),
        )
        .await;
    let key = &created["data"]["createApiKey"];
    let token = key["token"].as_str().unwrap();
    let mut in_init = ws::with_token(&s, token).await;
    let upgrade = ws::request(&s, &[("authorization", format!("Bearer {token}"))]);
    let (mut on_upgrade, _) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    on_upgrade
        .send(Message::text(r#"{"type":"connection_init"}"#))
        .await
        .unwrap();
    let ack = ws::next_text(&mut on_upgrade).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let follow = "subscription { logs(projectId: \"watched\", tail: 0) { msg } }";
    subscribe(&mut in_init, "f", follow, json!({})).await;
    subscribe(&mut on_upgrade, "f", follow, json!({})).await;
    let revoked = s
        .graphql(
            &s.admin_token,
            "mutation($id: ID!) { revokeApiKey(id: $id) { id } }",
            json!({ "id": key["apiKey"]["id"] }),
        )
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    for socket in [&mut in_init, &mut on_upgrade] {
        let (code, texts) = ws::until_closed(socket).await;
        assert_eq!(code, Some(4401), "{texts:?}");
    }
}

/// The older graphql-ws protocol (subscriptions-transport-ws) is spoken
/// too: `start` answered with `data`, then `complete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_protocol_is_spoken_too() {
    let s = TestServer::start(Backend::Sqlite).await;
    let mut req = ws::request(&s, &[]);
    req.headers_mut()
        .insert("sec-websocket-protocol", "graphql-ws".parse().unwrap());
    let (mut socket, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "graphql-ws");
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", s.admin_token) } });
    socket.send(Message::text(init.to_string())).await.unwrap();
    assert_eq!(
        ws::next_text(&mut socket).await.unwrap()["type"],
        "connection_ack"
    );
    let start =
        json!({ "type": "start", "id": "1", "payload": { "query": "{ viewer { role } }" } });
    socket.send(Message::text(start.to_string())).await.unwrap();
    let data = ws::next_text(&mut socket).await.unwrap();
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["payload"]["data"]["viewer"]["role"], "admin");
    let end = ws::next_text(&mut socket).await.unwrap();
    assert_eq!(
        (end["type"].as_str(), end["id"].as_str()),
        (Some("complete"), Some("1"))
    );
}

/// One Server-Sent Event: its id and its data as JSON.
type SseEvent = (Option<String>, Value);

/// Reads events from an SSE answer until one satisfies `wanted`; all it
/// read (heartbeats skipped).
async fn sse_until(resp: reqwest::Response, wanted: impl Fn(&Value) -> bool) -> Vec<SseEvent> {
    use futures_util::StreamExt;
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut id, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a heartbeat comment
                }
                let value: Value = serde_json::from_str(&data).unwrap();
                let done = wanted(&value);
                events.push((id, value));
                if done {
                    return;
                }
            }
        }
        panic!("the stream ended");
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the wanted event came");
    events
}

/// `GET /projects/:id/logs?stream=true` answers Server-Sent Events, one per
/// line with its cursor as id; a reconnect with `Last-Event-ID` continues
/// exactly after that line. Another organisation is refused before any
/// event.
async fn sse_logs_resume_exactly(backend: Backend) {
    let s = TestServer::start(backend).await;
    let _src = app_project(&s, "sse").await;
    deployed(&s, "sse").await;
    let listening = |l: &Value| l["msg"].as_str().unwrap().starts_with("listening on");
    let get = |extra: Option<(&'static str, String)>| {
        let mut req = s.api(
            reqwest::Method::GET,
            "/projects/sse/logs?stream=true&tail=1000",
            &s.admin_token,
        );
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        req.send()
    };
    let resp = get(None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = sse_until(resp, listening).await;
    assert!(first.len() >= 3, "{first:?}");
    let ids: Vec<u64> = first
        .iter()
        .map(|(id, _)| id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "cursors follow each other: {ids:?}"
    );
    assert!(
        first
            .iter()
            .all(|(id, line)| line["cursor"].as_str() == id.as_deref())
    );

    // Resume after the second event: the rest, exactly.
    let resume = first[1].0.clone().unwrap();
    let resp = get(Some(("Last-Event-ID", resume))).await.unwrap();
    let again = sse_until(resp, listening).await;
    assert_eq!(again, first[2..].to_vec());

    // Asking by Accept works the same.
    let resp = s
        .api(reqwest::Method::GET, "/projects/sse/logs", &s.admin_token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    drop(resp);

    let other = s.token("other", Role::Admin).await;
    let (status, body) = TestServer::send(s.api(
        reqwest::Method::GET,
        "/projects/sse/logs?stream=true",
        &other,
    ))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

/// The raw `next` messages of subscription `x` until one whose
/// `data.lines` satisfies `wanted`, as sent.
async fn raw_until(socket: &mut ws::Ws, wanted: impl Fn(&Value) -> bool) -> Vec<String> {
    let seen = next_until(socket, "x", "lines", wanted).await;
    seen.into_iter().map(|(raw, _)| raw).collect()
}

/// A `logs` subscription the executor has run once is then written
/// straight from the lines, each line once for every follower of the same
/// selection: a later subscriber gets exactly the executor's bytes, for
/// past and live lines alike. The event stream with `tail=0` starts at the
/// live edge, and the text form with `tail=0` is empty.
async fn followers_of_one_selection_get_the_same_bytes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let _src = app_project(&s, "same").await;
    let first = deployed(&s, "same").await;
    let query = "subscription($p: String!) { lines: logs(projectId: $p, tail: 1000) { ...L __typename cursor } } fragment L on LogEntry { ts msg source stream level service replica deploymentId }";
    let listening = |d: &str| {
        let d = d.to_string();
        move |l: &Value| {
            l["deploymentId"] == d.as_str()
                && l["msg"].as_str().unwrap().starts_with("listening on")
        }
    };
    let mut by_executor = ws::with_token(&s, &s.admin_token).await;
    subscribe(&mut by_executor, "x", query, json!({ "p": "same" })).await;
    let past = raw_until(&mut by_executor, listening(&first)).await;
    assert!(past.len() >= 3, "{past:?}");

    let before = s.app.graphql.direct_answers();
    let mut written = ws::with_token(&s, &s.admin_token).await;
    subscribe(&mut written, "x", query, json!({ "p": "same" })).await;
    assert_eq!(raw_until(&mut written, listening(&first)).await, past);
    assert_eq!(
        s.app.graphql.direct_answers() - before,
        1,
        "the second subscription was written from the lines"
    );

    let logs = |query: &str| {
        s.api(
            reqwest::Method::GET,
            &format!("/projects/same/logs?{query}"),
            &s.admin_token,
        )
        .send()
    };
    let text = logs("tail=0").await.unwrap();
    assert_eq!(text.status(), StatusCode::OK);
    assert_eq!(text.text().await.unwrap(), "");
    let events = logs("stream=true&tail=0").await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);

    let second = deployed(&s, "same").await;
    let live = raw_until(&mut by_executor, listening(&second)).await;
    assert_eq!(raw_until(&mut written, listening(&second)).await, live);
    let events = sse_until(events, listening(&second)).await;
    // The event stream got the live lines, none from before.
    let cursors = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|t| {
                serde_json::from_str::<Value>(t).unwrap()["payload"]["data"]["lines"]["cursor"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let ids: Vec<String> = events.iter().map(|(id, _)| id.clone().unwrap()).collect();
    assert!(ids.len() >= 3, "{events:?}");
    assert!(
        cursors(&live).ends_with(&ids),
        "{ids:?} are the last of {live:?}"
    );
    assert!(!cursors(&past).contains(&ids[0]));
}

/// Following one deployment ends when its processes have stopped: a
/// newer deployment succeeded. The subscription completes; the event
/// stream ends with `event: end`.
async fn a_deployments_logs_end_when_it_is_superseded(backend: Backend) {
    let s = TestServer::start(backend).await;
    let _src = app_project(&s, "old").await;
    let first = deployed(&s, "old").await;
    let mut socket = ws::with_token(&s, &s.admin_token).await;
    let query = "subscription($d: ID) { logs(projectId: \"old\", deploymentId: $d, tail: 1000) { msg deploymentId } }";
    subscribe(&mut socket, "d", query, json!({ "d": first })).await;
    read_until(&mut socket, "d", "logs", |l| {
        l["msg"].as_str().unwrap().starts_with("listening on")
    })
    .await;
    deployed(&s, "old").await;
    // Its remaining lines, if any, then `complete`.
    let ended = async {
        loop {
            let msg = ws::next_text(&mut socket)
                .await
                .expect("the socket stays open");
            assert_eq!(msg["id"], "d", "{msg}");
            match msg["type"].as_str() {
                Some("complete") => return,
                _ => assert_eq!(
                    msg["payload"]["data"]["logs"]["deploymentId"],
                    first.as_str(),
                    "{msg}"
                ),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), ended)
        .await
        .expect("the subscription completes");

    // The stream of a deployment already superseded: its lines, then the end.
    let resp = s
        .api(
            reqwest::Method::GET,
            &format!("/projects/old/logs?stream=true&deploymentId={first}"),
            &s.admin_token,
        )
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(60), resp.text())
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(body.contains("listening on"), "{body}");
    assert!(body.trim_end().ends_with("event: end\ndata: {}"), "{body}");
}

/// Prints many lines at once, then runs the test app.
const BURST: &str = r#"
import sys
for i in range(200000):
    print("burst", i)
sys.stdout.flush()
exec(open("app.py").read())
"#;

/// A subscriber that does not read falls behind; it is not waited for: the
/// deploy goes on, and when it reads again it gets a `lagged: N lines
/// skipped` notice and continues from the live edge.
async fn a_slow_subscriber_is_told_what_it_missed(backend: Backend) {
    let s = TestServer::start(backend).await;
    let src = repo_with("web: exec python3 burst.py\n", &[("burst.py", BURST)]);
    git_project(&s, "burst", &src).await;
    let mut slow = ws::with_token(&s, &s.admin_token).await;
    subscribe(&mut slow, "slow", LOGS, json!({ "p": "burst", "tail": 0 })).await;
    // Not read while the app prints its 200,000 lines and starts.
    deployed(&s, "burst").await;
    let lines = read_until(&mut slow, "slow", "logs", |l| {
        l["msg"].as_str().unwrap().starts_with("listening on")
    })
    .await;
    let notice = lines
        .iter()
        .find(|l| l["source"] == "lagged")
        .unwrap_or_else(|| panic!("no lagged notice among {} lines", lines.len()));
    assert!(
        notice["msg"].as_str().unwrap().starts_with("lagged: ")
            && notice["msg"].as_str().unwrap().ends_with(" lines skipped"),
        "{notice}"
    );
    assert!(lines.len() < 200_000, "{}", lines.len());
}

/// SIGTERM ends each running subscription with `complete` and the socket
/// with close 1001, rather than dropping the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye() {
    use common::binary::{ServeProcess, free_port, post};
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let port = free_port();
    let server = ServeProcess::start(
        port,
        &[],
        &[("SYLPHX_DATA_DIR", data.to_str().unwrap())],
        work.path(),
    )
    .await;
    let token = admin_token_in(&data);
    let (status, body) = post(
        &server.base,
        "/projects",
        &token,
        json!({"name": "Bye", "slug": "bye"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut socket = ws_at(&server.base, &token).await;
    let follow = "subscription { logs(projectId: \"bye\", tail: 0) { msg } }";
    subscribe(&mut socket, "f", follow, json!({})).await;
    // Messages are handled in order: once this one is answered, `f` runs.
    subscribe(&mut socket, "q", "{ viewer { role } }", json!({})).await;
    let answered = read_until(&mut socket, "q", "viewer", |_| true).await;
    assert_eq!(answered[0]["role"], "admin");
    assert_eq!(
        ws::next_text(&mut socket).await.unwrap()["type"],
        "complete"
    );

    let exit = tokio::task::spawn_blocking(move || server.terminate());
    let (code, texts) = ws::until_closed(&mut socket).await;
    assert_eq!(texts, vec![json!({ "type": "complete", "id": "f" })]);
    assert_eq!(code, Some(1001));
    assert!(exit.await.unwrap().success());
}

/// A socket that never sends `connection_init` is closed with 4408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_with_4408() {
    let s = TestServer::start(Backend::Sqlite).await;
    let mut socket = connect(&s).await;
    let (code, texts) = ws::until_closed(&mut socket).await;
    assert_eq!(code, Some(4408), "{texts:?}");
}

const EVENTS: &str = "subscription($d: ID!) { deploymentEvents(deploymentId: $d) { deploymentId seq step message at } }";

/// Reads the `next` values of subscription `id` until it completes.
async fn until_complete(socket: &mut ws::Ws, id: &str, field: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    let read = async {
        loop {
            let msg = ws::next_text(socket).await.expect("the socket stays open");
            assert_eq!(msg["id"], id, "{msg}");
            match msg["type"].as_str() {
                Some("complete") => return,
                Some("next") => seen.push(msg["payload"]["data"][field].clone()),
                _ => panic!("{msg}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .unwrap_or_else(|_| panic!("{id} did not complete; saw {seen:?}"));
    seen
}

fn steps(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["step"].as_str().unwrap()).collect()
}

/// `deploymentEvents` gives each step in order as it happens and completes
/// with the outcome; asked again later, the whole timeline. A failing
/// release completes with `failed` and why.
async fn deployment_events_tell_each_step(backend: Backend) {
    let s = TestServer::start(backend).await;
    let _src = app_project(&s, "steps").await;
    let (status, body) = s
        .post("/projects/steps/deploy", &s.admin_token, json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deploymentId"].as_str().unwrap().to_string();
    let mut socket = ws::with_token(&s, &s.admin_token).await;
    subscribe(&mut socket, "e", EVENTS, json!({ "d": id })).await;
    let events = until_complete(&mut socket, "e", "deploymentEvents").await;
    assert_eq!(
        steps(&events),
        [
            "queued",
            "cloning",
            "building",
            "releasing",
            "starting",
            "health-checking",
            "switching",
            "success"
        ],
        "{events:?}"
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["deploymentId"] == id.as_str()));
    let times: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // The second deploy retires the first release.
    let second = deployed(&s, "steps").await;
    subscribe(&mut socket, "e2", EVENTS, json!({ "d": second })).await;
    let again = until_complete(&mut socket, "e2", "deploymentEvents").await;
    assert!(steps(&again).contains(&"stopping-old"), "{again:?}");
    assert_eq!(steps(&again).last(), Some(&"success"));
    // A deployment that ended: the same timeline, then complete.
    subscribe(&mut socket, "old", EVENTS, json!({ "d": id })).await;
    assert_eq!(
        until_complete(&mut socket, "old", "deploymentEvents").await,
        events
    );

    let broken = repo("web: exec python3 app.py\nrelease: echo migrating; exit 3\n");
    git_project(&s, "broken", &broken).await;
    let failed = deploy(&s, "broken").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    subscribe(&mut socket, "f", EVENTS, json!({ "d": failed["id"] })).await;
    let events = until_complete(&mut socket, "f", "deploymentEvents").await;
    let last = events.last().unwrap();
    assert_eq!(last["step"], "failed", "{events:?}");
    assert_eq!(last["message"], failed["error"], "{events:?}");
    assert!(steps(&events).contains(&"releasing"), "{events:?}");
    assert!(!steps(&events).contains(&"starting"), "{events:?}");

    // Another organisation's deployment is refused (4403).
    let other = s.token("other", Role::Admin).await;
    let mut theirs = ws::with_token(&s, &other).await;
    subscribe(&mut theirs, "x", EVENTS, json!({ "d": id })).await;
    let (code, texts) = ws::until_closed(&mut theirs).await;
    assert_eq!(code, Some(4403), "{texts:?}");
    assert!(!texts.iter().any(|t| t["type"] == "next"), "{texts:?}");
}

/// The bootstrap admin token the first `serve` wrote into its data dir.
fn admin_token_in(data: &std::path::Path) -> String {
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    token.trim().to_string()
}

/// A project `slug` on a repository of the test app with `procfile`,
/// created through a `serve` process's API; the repository.
async fn project_at(base: &str, token: &str, slug: &str, procfile: &str) -> tempfile::TempDir {
    let src = repo(procfile);
    let (status, body) = common::binary::post(
        base,
        "/projects",
        token,
        json!({"name": slug, "slug": slug, "gitRepository": src.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    src
}

/// A graphql-transport-ws connection to a `serve` process (`base` ends
/// in `/api/v1`), acknowledged for `token`.
async fn ws_at(base: &str, token: &str) -> ws::Ws {
    ws::with_token_at(base.trim_end_matches("/api/v1"), token).await
}

/// Reads SSE events of a `serve` process's log stream until `wanted`.
async fn sse_from(
    base: &str,
    token: &str,
    path: &str,
    last_id: Option<&str>,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<SseEvent> {
    let mut req = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    sse_until(resp, wanted).await
}

/// Log history outlives the server: after a restart, `Last-Event-ID`
/// continues exactly after the last line seen (nothing lost, nothing
/// twice, cursors going on), and the text endpoint still has the lines
/// of before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_across_a_server_restart() {
    use common::binary::{ServeProcess, free_port, post};
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let (port, apps) = (free_port(), free_port().to_string());
    let apps_listen = format!("127.0.0.1:{apps}");
    let envs = [
        ("SYLPHX_DATA_DIR", data.to_str().unwrap()),
        ("SYLPHX_APPS_LISTEN", apps_listen.as_str()),
    ];
    let server = ServeProcess::start(port, &[], &envs, work.path()).await;
    let token = admin_token_in(&data);
    let _src = project_at(
        &server.base,
        &token,
        "again",
        "web: exec python3 app.py\nrelease: echo release-phase-ran\n",
    )
    .await;
    let (status, body) = post(&server.base, "/projects/again/deploy", &token, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let path = "/projects/again/logs?stream=true&tail=1000";
    let listening = |l: &Value| l["msg"].as_str().unwrap().starts_with("listening on");
    let before = sse_from(&server.base, &token, path, None, listening).await;
    assert!(before.len() >= 3, "{before:?}");

    assert!(server.terminate().success());
    let server = ServeProcess::start(port, &[], &envs, work.path()).await;
    // The release comes back and prints again; the stream resumes after
    // the second line of before.
    let seen = before[1].0.clone().unwrap();
    let last: u64 = before.last().unwrap().0.as_ref().unwrap().parse().unwrap();
    let restored =
        |l: &Value| listening(l) && l["cursor"].as_str().unwrap().parse::<u64>().unwrap() > last;
    let after = sse_from(&server.base, &token, path, Some(&seen), restored).await;
    assert_eq!(
        after[..before.len() - 2],
        before[2..],
        "the rest of before, exactly"
    );
    let ids: Vec<u64> = before[..2]
        .iter()
        .chain(&after)
        .map(|(id, _)| id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, nothing twice, across the restart: {ids:?}"
    );
    assert!(
        after.len() > before.len() - 2,
        "the restored release's lines follow"
    );

    let text = reqwest::Client::new()
        .get(format!("{}/projects/again/logs?tail=1000", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("release-phase-ran"), "{text}");
    assert!(server.terminate().success());
}

/// Two `serve` processes on one PostgreSQL: a subscriber on one sees the
/// status and the steps of a deploy asked of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_deploys_run_by_another_server() {
    use common::binary::{ServeProcess, free_port, post};
    let Some((url, name)) = common::fresh_postgres().await else {
        eprintln!("skipped: SYLPHX_TEST_DATABASE_URL is not set");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let key = "ab".repeat(32);
    let start = |n: &str| {
        let data = work.path().join(n);
        let apps = format!("127.0.0.1:{}", free_port());
        let (url, key, work) = (url.clone(), key.clone(), work.path().to_path_buf());
        async move {
            let envs = [
                ("SYLPHX_DATA_DIR", data.to_str().unwrap()),
                ("SYLPHX_APPS_LISTEN", apps.as_str()),
                ("SYLPHX_DATABASE_URL", url.as_str()),
                ("SYLPHX_MASTER_KEY", key.as_str()),
            ];
            (
                ServeProcess::start(free_port(), &[], &envs, &work).await,
                data,
            )
        }
    };
    let (a, data) = start("a").await;
    let (b, _) = start("b").await;
    let token = admin_token_in(&data);
    let _src = project_at(&a.base, &token, "shared", "web: exec python3 app.py\n").await;
    let mut socket = ws_at(&b.base, &token).await;
    subscribe(&mut socket, "st", STATUS, json!({ "p": "shared" })).await;
    let now = read_until(&mut socket, "st", "projectStatus", |_| true).await;
    assert_eq!(now[0]["status"], "not_deployed");

    let (status, body) = post(&a.base, "/projects/shared/deploy", &token, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deploymentId"].as_str().unwrap().to_string();
    let deploying = read_until(&mut socket, "st", "projectStatus", |st| {
        st["status"] == "deploying"
    })
    .await;
    assert_eq!(deploying.last().unwrap()["deploymentId"], id.as_str());
    let settled = read_until(&mut socket, "st", "projectStatus", |st| {
        st["status"] != "deploying"
    })
    .await;
    assert_eq!(settled.last().unwrap()["deploymentId"], id.as_str());
    let mut socket2 = ws_at(&b.base, &token).await;
    subscribe(&mut socket2, "e", EVENTS, json!({ "d": id })).await;
    let events = until_complete(&mut socket2, "e", "deploymentEvents").await;
    assert_eq!(steps(&events).first(), Some(&"queued"));
    assert_eq!(steps(&events).last(), Some(&"success"), "{events:?}");
    assert!(steps(&events).contains(&"health-checking"), "{events:?}");
    drop((socket, socket2));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    common::drop_postgres(&name).await;
}

backend_tests!(
    deployment_events_tell_each_step,
    logs_follow_an_environment_across_deploys,
    project_status_follows_deploys_and_restarts,
    bad_credentials_close_with_4401,
    a_connection_runs_at_most_100_operations,
    a_revoked_token_ends_its_subscriptions,
    sse_logs_resume_exactly,
    a_slow_subscriber_is_told_what_it_missed,
    a_deployments_logs_end_when_it_is_superseded,
    followers_of_one_selection_get_the_same_bytes,
);

/// On PostgreSQL a change announced by one server wakes the watchers of
/// every other: what one `NOTIFY`s, a listener on another connection hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_announced_on_postgres_wakes_other_servers() {
    let Some((url, name)) = common::fresh_postgres().await else {
        eprintln!("skipped: SYLPHX_TEST_DATABASE_URL is not set");
        return;
    };
    let (listening, _) = sylphx::store::connect(&url, sylphx::store::DEFAULT_POOL)
        .await
        .unwrap();
    let (announcing, _) = sylphx::store::connect(&url, sylphx::store::DEFAULT_POOL)
        .await
        .unwrap();
    let changes = std::sync::Arc::new(tokio::sync::Notify::new());
    // The listener wakes everyone once it listens.
    let connected = changes.notified();
    let listener = sylphx::store::spawn_listener(&listening, changes.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), connected)
        .await
        .expect("the listener listens");
    let woken = changes.notified();
    sylphx::store::announce(&announcing).await;
    tokio::time::timeout(Duration::from_secs(30), woken)
        .await
        .expect("the announcement arrives");
    listener.abort();
    drop((listening, announcing));
    common::drop_postgres(&name).await;
}
