//! What a hostile client tries against the API's edges: replaying another
//! caller's idempotency key, cross-site writes with the session cookie,
//! slow and numerous connections, oversized websocket messages before
//! authentication, odd request ids, and requests that no handler answers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Backend, TestServer, ws};
use futures_util::SinkExt;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use sylphx::auth::Role;
use sylphx::auth::session::Claims;
use tokio_tungstenite::tungstenite::Message;

const CREATE_KEY: &str =
    "mutation { createApiKey(input: {name: \"deploy bot\", role: admin}) { token } }";

async fn graphql_with_key(s: &TestServer, token: &str, key: &str) -> (StatusCode, Value) {
    TestServer::send(
        s.client()
            .post(s.url("/graphql"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({ "query": CREATE_KEY })),
    )
    .await
}

/// An admin's `createApiKey` answer (with the new admin token) is replayed
/// to the admin alone: a read token of the same organisation sending the
/// same key and body gets 422 and no token; the stored answer is sealed.
async fn idempotent_answers_belong_to_their_caller(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token.clone();
    let reader = s.token("default", Role::Read).await;
    let (status, first) = graphql_with_key(&s, &admin, "mint-1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let token = first["data"]["createApiKey"]["token"]
        .as_str()
        .expect("a new token")
        .to_string();

    let (status, stolen) = graphql_with_key(&s, &reader, "mint-1").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{stolen}");
    assert_eq!(
        stolen,
        json!({"error": "Idempotency-Key was already used by another caller", "details": null})
    );
    assert!(!stolen.to_string().contains(&token));

    // The admin's own retry still replays the answer.
    let (status, again) = graphql_with_key(&s, &admin, "mint-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);

    // The store holds no plaintext answer.
    let rows = s
        .app
        .db()
        .query_all_raw(Statement::from_string(
            s.app.db().get_database_backend(),
            "SELECT response_body FROM idempotency_keys",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let stored: String = rows[0].try_get("", "response_body").unwrap();
    assert!(!stored.contains(&token), "the token is stored in plaintext");
    assert!(
        !stored.contains("createApiKey"),
        "the answer is stored in plaintext"
    );
}

/// A dashboard session of `org`'s default organisation with `role`.
async fn session(s: &TestServer, role: Role) -> String {
    let org = s
        .graphql(&s.admin_token, "{ organization { id } }", json!({}))
        .await;
    let org = uuid::Uuid::parse_str(org["data"]["organization"]["id"].as_str().unwrap()).unwrap();
    s.app
        .sessions()
        .issue(&Claims {
            sub: "user-1".into(),
            org,
            role,
            exp: chrono::Utc::now().timestamp() as u64 + 3600,
        })
        .unwrap()
}

async fn project_count(s: &TestServer) -> usize {
    s.get("/projects", &s.admin_token)
        .await
        .1
        .as_array()
        .unwrap()
        .len()
}

/// A page elsewhere can make a browser send the session cookie with a
/// `text/plain` or form body, or from its own origin: none of that writes.
/// The dashboard's own origin with JSON writes; bearer tokens need no
/// origin at all.
async fn cookie_writes_need_json_and_an_allowed_origin(backend: Backend) {
    let s = TestServer::start(backend).await;
    let jwt = session(&s, Role::Admin).await;
    let cookie = format!("slx_session={jwt}");
    let mutation =
        r#"{"query":"mutation { createProject(input: {name: \"Evil\", slug: \"evil\"}) { id } }"}"#;
    let rest_body = r#"{"name":"Evil","slug":"evil"}"#;
    let cases: Vec<(&str, &str, &str, Option<&str>, StatusCode)> = vec![
        // (path, content type, body, origin, expected)
        (
            "/graphql",
            "text/plain",
            mutation,
            Some(&s.base),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/api/v1/projects",
            "text/plain",
            rest_body,
            Some(&s.base),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/api/v1/projects",
            "application/x-www-form-urlencoded",
            "name=Evil&slug=evil",
            Some(&s.base),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "/graphql",
            "application/json",
            mutation,
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/v1/projects",
            "application/json",
            rest_body,
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/v1/projects",
            "application/json",
            rest_body,
            None,
            StatusCode::FORBIDDEN,
        ),
    ];
    for (path, ct, body, origin, expected) in cases {
        let mut req = s
            .client()
            .post(s.url(path))
            .header("cookie", &cookie)
            .header("content-type", ct)
            .body(body.to_string());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, expected, "{path} {ct} {origin:?}: {text}");
        let json: Value = serde_json::from_str(&text).expect("a JSON error");
        assert!(
            json.get("error").is_some() || json.get("errors").is_some(),
            "{text}"
        );
    }
    assert_eq!(project_count(&s).await, 0, "refused writes changed nothing");

    // A Referer from the dashboard stands in for a missing Origin.
    let resp = s
        .client()
        .post(s.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .header("referer", format!("{}/dashboard/projects?x=1", s.base))
        .json(&json!({"name": "Mine", "slug": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // The dashboard's own origin with JSON works on GraphQL too.
    let resp = s
        .client()
        .post(s.url("/graphql"))
        .header("cookie", &cookie)
        .header("origin", &s.base)
        .header("content-type", "application/json")
        .body(mutation.replace("evil", "own").replace("Evil", "Own"))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"].is_null(), "{body}");
    // Cookie reads need neither.
    let resp = s
        .client()
        .get(s.url("/api/v1/projects"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Bearer tokens are not affected: no Origin, any content type.
    let (status, _) = TestServer::send(
        s.api(Method::POST, "/projects", &s.admin_token)
            .header("content-type", "application/json")
            .body(r#"{"name":"Bot","slug":"bot"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(project_count(&s).await, 3);
}

/// A websocket opened with the session cookie from another origin is
/// refused at the upgrade; from the dashboard's origin it runs.
async fn cookie_websockets_check_the_origin(backend: Backend) {
    let s = TestServer::start(backend).await;
    let jwt = session(&s, Role::Admin).await;
    let cookie = format!("slx_session={jwt}");
    let foreign = ws::request(
        &s,
        &[
            ("cookie", cookie.clone()),
            ("origin", "https://evil.example".into()),
        ],
    );
    match tokio_tungstenite::connect_async(foreign).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("a foreign origin was not refused: {:?}", other.map(|_| ())),
    }
    let own = ws::request(&s, &[("cookie", cookie), ("origin", s.base.clone())]);
    let (mut ws, _) = tokio_tungstenite::connect_async(own).await.unwrap();
    ws.send(Message::text(r#"{"type":"connection_init","payload":{}}"#))
        .await
        .unwrap();
    let ack = ws::next_text(&mut ws).await.expect("an answer");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws.send(Message::text(
        r#"{"id":"1","type":"subscribe","payload":{"query":"mutation { createProject(input: {name: \"Ws\", slug: \"ws\"}) { slug } }"}}"#,
    ))
    .await
    .unwrap();
    let next = ws::next_text(&mut ws).await.expect("an answer");
    assert_eq!(
        next["payload"]["data"]["createProject"]["slug"], "ws",
        "{next}"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 1 MB message before `connection_init` closes the socket, unread by
/// the server beyond its size, and memory does not grow with it.
async fn oversized_websocket_messages_before_init_close_the_socket(backend: Backend) {
    let s = TestServer::start(backend).await;
    let before = rss_kib();
    for _ in 0..5 {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws::request(&s, &[]))
            .await
            .unwrap();
        let big = format!(
            r#"{{"type":"connection_init","payload":{{"pad":"{}"}}}}"#,
            "x".repeat(1_000_000)
        );
        // The server may close before the whole message is written.
        let _ = ws.send(Message::text(big)).await;
        assert_eq!(ws::next_text(&mut ws).await, None, "the socket stays open");
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "memory grew by {grown} KiB");

    // A small init still works.
    ws::with_token(&s, &s.admin_token).await;
}

/// Operations started on the websocket are charged like HTTP ones: once
/// the caller's points are spent, a `subscribe` is answered with an error
/// for its id (and runs nothing), while the socket stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_operations_count_against_the_rate_limit() {
    let (s, _dir) =
        limited_server("[rate_limits]\nread = 30\nwrite = 30\nadmin = 30\norganization = 100000\n")
            .await;
    let mut ws = ws::with_token(&s, &s.admin_token).await;
    // `{ viewer { role } }` costs 11: two fit in 30 points, the third not.
    let mut answers = Vec::new();
    for id in ["a", "b", "c"] {
        let start =
            json!({ "type": "subscribe", "id": id, "payload": { "query": "{ viewer { role } }" } });
        ws.send(Message::text(start.to_string())).await.unwrap();
        let first = ws::next_text(&mut ws).await.expect("an answer");
        assert_eq!(first["id"], id, "{first}");
        if first["type"] == "next" {
            assert_eq!(first["payload"]["data"]["viewer"]["role"], "admin");
            assert_eq!(ws::next_text(&mut ws).await.unwrap()["type"], "complete");
        }
        answers.push(first);
    }
    assert_eq!(answers[0]["type"], "next");
    assert_eq!(answers[1]["type"], "next");
    let refused = &answers[2];
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    // The HTTP side sees the same budget spent.
    let (status, _) = s.get("/projects", &s.admin_token).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The socket is still open: the free question is answered.
    let ask = json!({ "type": "subscribe", "id": "d", "payload": { "query": "{ rateLimit { remaining } }" } });
    ws.send(Message::text(ask.to_string())).await.unwrap();
    let answer = ws::next_text(&mut ws).await.unwrap();
    assert_eq!(answer["type"], "next", "{answer}");
}

/// A server with tight connection limits, from a config file.
async fn limited_server(limits: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sylphx.toml");
    std::fs::write(&path, limits).unwrap();
    (
        TestServer::start_with_config(Backend::Sqlite, Some(path)).await,
        dir,
    )
}

fn addr(s: &TestServer) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// What a new connection sending one request reads before it is closed.
async fn one_more_connection(s: &TestServer) -> String {
    let a = addr(s);
    tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(a).unwrap();
        let _ = c.write_all(b"GET /api/v1/health/status HTTP/1.1\r\nHost: x\r\n\r\n");
        read_to_close(&mut c)
    })
    .await
    .unwrap()
}

/// Reads until the peer closes; what it sent.
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection that sends half a request head is closed once the header
/// timeout has passed; the server answers others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_is_closed_after_the_header_timeout() {
    let (s, _dir) = limited_server("header_timeout_secs = 1\n").await;
    let a = addr(&s);
    let mut slow = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(a).unwrap();
        c.write_all(b"GET /api/v1/projects HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        read_to_close(&mut c)
    });
    let (status, _) = s.get("/projects", &s.admin_token).await;
    assert_eq!(status, StatusCode::OK);
    let answer = (&mut slow).await.unwrap();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

/// A request head (request line and headers) is read into a buffer of at
/// most 8 KiB, which is all an idle connection keeps: a head that fits is
/// answered, a larger one gets 431 and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_8_kib_is_refused() {
    let s = TestServer::start(Backend::Sqlite).await;
    let send = |filler: usize| {
        let a = addr(&s);
        tokio::task::spawn_blocking(move || {
            let mut c = TcpStream::connect(a).unwrap();
            let head = format!(
                "GET /api/v1/health/status HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\nConnection: close\r\n\r\n",
                "f".repeat(filler)
            );
            c.write_all(head.as_bytes()).unwrap();
            read_to_close(&mut c)
        })
    };
    let fits = send(7 * 1024).await.unwrap();
    assert!(fits.starts_with("HTTP/1.1 200"), "{fits}");
    let over = send(9 * 1024).await.unwrap();
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
}

/// With the connection limit reached, a new connection gets a 503 and is
/// closed; the open ones keep being answered, and once one closes a new
/// one is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_new_connections_only() {
    let (s, _dir) = limited_server("max_connections = 3\n").await;
    let clients: Vec<reqwest::Client> = (0..3)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap()
        })
        .collect();
    let get = |c: &reqwest::Client| {
        c.get(s.url("/api/v1/projects"))
            .bearer_auth(&s.admin_token)
            .send()
    };
    for c in &clients {
        assert_eq!(get(c).await.unwrap().status(), StatusCode::OK);
    }
    let refused = one_more_connection(&s).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let body = refused.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body["error"],
        "too many open connections; try again shortly"
    );
    // The open connections still work.
    for c in &clients {
        assert_eq!(get(c).await.unwrap().status(), StatusCode::OK);
    }
    // Closing one frees its place.
    drop(clients);
    let fresh = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match get(&fresh).await {
            Ok(r) if r.status() == StatusCode::OK => break,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            other => panic!("no place freed: {other:?}"),
        }
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// Every answer says where the caller stands; a caller that has spent its
/// points gets 429 with `Retry-After` while another caller of the same
/// organisation goes on; asking costs nothing; `rate_limits = false` turns
/// it all off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_points_per_caller() {
    let (s, _dir) = limited_server(
        "[rate_limits]\nread = 200\nwrite = 200\nadmin = 200\norganization = 100000\n",
    )
    .await;
    let t = s.admin_token.clone();
    let resp = s.api(Method::GET, "/projects", &t).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-ratelimit-limit"), Some(200));
    assert!(header(&resp, "x-ratelimit-remaining").unwrap() < 200);
    assert!((1..=60).contains(&header(&resp, "x-ratelimit-reset").unwrap()));

    // The GraphQL field tells the cost of the query it is in.
    let resp = s
        .client()
        .post(s.url("/graphql"))
        .bearer_auth(&t)
        .json(&json!({ "query": "{ rateLimit { limit remaining resetSeconds cost } viewer { role } }" }))
        .send()
        .await
        .unwrap();
    let remaining = header(&resp, "x-ratelimit-remaining").unwrap();
    let body: Value = resp.json().await.unwrap();
    let rl = &body["data"]["rateLimit"];
    assert_eq!(rl["limit"], 200, "{body}");
    // `viewer` reads the store: 10 points, and 1 for `role`.
    assert_eq!(rl["cost"], 11, "{body}");
    assert_eq!(rl["remaining"], remaining, "{body}");

    // Spend the caller's points with a query of 44 points.
    let heavy: String = (0..4)
        .map(|i| format!("v{i}: viewer {{ role }} "))
        .collect();
    let heavy = json!({ "query": format!("{{ {heavy} }}") });
    let refused = loop {
        let resp = s
            .client()
            .post(s.url("/graphql"))
            .bearer_auth(&t)
            .json(&heavy)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            break resp;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    };
    let retry = header(&refused, "retry-after").unwrap();
    assert!((1..=60).contains(&retry));
    assert!(header(&refused, "x-ratelimit-remaining").unwrap() < 44);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("rate limit exceeded"),
        "{body}"
    );
    // REST is refused the same way, as JSON.
    let (status, body) = s.get("/projects", &t).await;
    if status == StatusCode::TOO_MANY_REQUESTS {
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("rate limit exceeded")
        );
    } else {
        // The minute turned over meanwhile: the caller has points again.
        assert_eq!(status, StatusCode::OK);
    }
    // Asking where one stands is free, even when spent.
    let (status, standing) = s.get("/rate-limit", &t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(standing["enabled"], true);
    assert_eq!(standing["cost"], 0);
    // Another caller of the same organisation is not affected.
    let other = s.token("default", Role::Write).await;
    let resp = s
        .api(Method::GET, "/projects", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(&resp, "x-ratelimit-remaining").unwrap() > 100);

    let (off, _dir) = limited_server("rate_limits = false\n").await;
    let resp = off
        .api(Method::GET, "/projects", &off.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("x-ratelimit-limit").is_none());
    let body = off
        .graphql(&off.admin_token, "{ rateLimit { limit } }", json!({}))
        .await;
    assert_eq!(body, json!({"data": {"rateLimit": null}}));
}

/// One client address may hold `max_connections_per_ip` connections; the
/// next one from it is refused while those keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_refuses_the_next_connection() {
    let (s, _dir) = limited_server("max_connections_per_ip = 2\n").await;
    let clients: Vec<reqwest::Client> = (0..2).map(|_| reqwest::Client::new()).collect();
    for c in &clients {
        let r = c
            .get(s.url("/api/v1/projects"))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let refused = one_more_connection(&s).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    for c in &clients {
        let r = c
            .get(s.url("/api/v1/projects"))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// Every error answer is JSON, including those no handler writes.
async fn every_error_body_is_json(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.admin_token.clone();
    let big = "x".repeat(3 * 1024 * 1024);
    let cases = vec![
        (
            "body limit",
            s.api(Method::POST, "/projects", &t)
                .header("content-type", "application/json")
                .body(big.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "method",
            s.client().patch(s.url("/graphql")).bearer_auth(&t),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "path decoding",
            s.api(Method::GET, "/projects/%FF%FE", &t),
            StatusCode::BAD_REQUEST,
        ),
        (
            "batch",
            s.client().post(s.url("/graphql")).bearer_auth(&t).json(
                &json!([{ "query": "{ viewer { role } }" }, { "query": "{ viewer { role } }" }]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "parser",
            s.client()
                .post(s.url("/graphql"))
                .bearer_auth(&t)
                .header("content-type", "application/json")
                .body(format!("{}{}", "[".repeat(200), "]".repeat(200))),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown route",
            s.client().get(s.url("/nowhere")),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (label, req, expected) in cases {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        assert_eq!(status, expected, "{label}: {text}");
        assert!(
            ct.as_deref().is_some_and(|c| c.contains("json")),
            "{label}: {ct:?}"
        );
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{label}: {text}"));
        let message = body["error"]
            .as_str()
            .or(body["errors"][0]["message"].as_str())
            .unwrap_or_else(|| panic!("{label}: {body}"));
        assert!(!message.contains("Error("), "{label}: {message}");
        assert!(!message.is_empty());
    }
}

/// A read token may not list the organisation's API keys; a request id
/// that is too long or odd is replaced, not stored.
async fn small_ones(backend: Backend) {
    let s = TestServer::start(backend).await;
    let reader = s.token("default", Role::Read).await;
    let resp = s
        .graphql(&reader, "{ apiKeys { nodes { id name } } }", json!({}))
        .await;
    assert_eq!(
        resp["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{resp}"
    );
    assert!(resp["data"].is_null(), "{resp}");

    let long = "r".repeat(500);
    for (sent, kept) in [(long.as_str(), false), ("trace-1.a:b_c-2", true)] {
        let resp = s
            .api(Method::POST, "/projects", &s.admin_token)
            .header("x-request-id", sent)
            .json(&json!({"name": "Rid", "slug": format!("rid-{}", sent.len())}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(echoed == sent, kept);
        assert!(echoed.len() <= 128);
        let events = s
            .graphql(
                &s.admin_token,
                "{ auditEvents(first: 1) { nodes { action requestId } } }",
                json!({}),
            )
            .await;
        let stored = events["data"]["auditEvents"]["nodes"][0]["requestId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(stored, echoed, "{events}");
    }
}

/// The 16,000-alias query is refused before any resolver runs (no
/// statement reaches the store); while four clients send the most
/// expensive accepted query in a loop, another organisation's project list
/// is still answered.
async fn oversized_queries_are_refused_before_they_run(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.admin_token.clone();
    let p = s.project(&t, "heavy").await;
    let id = p["id"].as_str().unwrap().to_string();
    s.graphql(&t, "{ viewer { role } }", json!({})).await; // token cached
    let aliases: String = (0..16_000)
        .map(|i| format!("a{i}: envVars(projectId: \"{id}\") {{ key }} "))
        .collect();
    let before = s.app.statements();
    let resp = s.graphql(&t, &format!("{{ {aliases} }}"), json!({})).await;
    assert_eq!(
        resp["errors"][0]["extensions"]["code"], "QUERY_TOO_LARGE",
        "{}",
        resp["errors"][0]
    );
    assert_eq!(
        resp["errors"][0]["message"],
        "the operation selects 32000 fields; at most 1000 are allowed \
         (fields are counted with fragments expanded, each alias apart)"
    );
    assert!(resp["data"].is_null());
    // Had it run, it would have made 16,000 statements; the job workers'
    // queue polls may fall into the window.
    let made = s.app.statements() - before;
    assert!(
        made < 100,
        "a refused query reached the store: {made} statements"
    );

    // The most expensive query accepted: 50 root fields, 1,000 selections.
    let heavy: String = (0..50)
        .map(|i| {
            format!("a{i}: envVars(projectId: \"{id}\") {{ key value secret environmentId }} ")
        })
        .collect();
    let heavy = format!("{{ {heavy} }}");
    let first = s.graphql(&t, &heavy, json!({})).await;
    assert!(first["errors"].is_null(), "{first}");
    let other = s.token("bystander", Role::Read).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, token, query, stop) = (
            s.client().clone(),
            s.url("/graphql"),
            t.clone(),
            heavy.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "query": query }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                sent += 1;
            }
            sent
        }));
    }
    for _ in 0..5 {
        let (status, list) = s.get("/projects", &other).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list, json!([]));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        assert!(l.await.unwrap() > 0);
    }
}

backend_tests!(
    oversized_queries_are_refused_before_they_run,
    idempotent_answers_belong_to_their_caller,
    cookie_writes_need_json_and_an_allowed_origin,
    cookie_websockets_check_the_origin,
    oversized_websocket_messages_before_init_close_the_socket,
    every_error_body_is_json,
    small_ones,
);
