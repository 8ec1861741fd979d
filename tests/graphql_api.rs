//! The GraphQL API over HTTP and websocket.

mod common;

use common::{Backend, TestServer};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const NESTED: &str = "{ projects(first: 50) { nodes { id slug environments { id name } services { id name overrides { replicas } } } } }";

async fn add_project(s: &TestServer, slug: &str) {
    let t = &s.admin_token;
    let p = s.project(t, slug).await;
    let id = p["id"].as_str().unwrap();
    let (status, staging) = s
        .post(
            &format!("/projects/{id}/environments"),
            t,
            json!({"name": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    s.post(
        &format!("/projects/{id}/services"),
        t,
        json!({"name": "web", "port": 3000}),
    )
    .await;
    s.post(
        &format!("/projects/{id}/services"),
        t,
        json!({"name": "worker"}),
    )
    .await;
    let (status, _) = s
        .call(
            Method::PATCH,
            &format!(
                "/projects/{id}/services/web/environments/{}",
                staging["id"].as_str().unwrap()
            ),
            t,
            Some(json!({"replicas": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Statements the nested query costs (the least of three runs, so a batch
/// split by a busy scheduler cannot make the count flaky), and its response.
async fn measure(s: &TestServer) -> (u64, Value) {
    let mut best = u64::MAX;
    let mut resp = Value::Null;
    for _ in 0..3 {
        let before = s.app.statements();
        resp = s.graphql(&s.admin_token, NESTED, json!({})).await;
        best = best.min(s.app.statements() - before);
    }
    (best, resp)
}

async fn nested_query_costs_constant_statements(backend: Backend) {
    let s = TestServer::start(backend).await;
    for i in 0..2 {
        add_project(&s, &format!("small-{i}")).await;
    }
    // Warm up: the first use of a token also records its last use.
    measure(&s).await;
    let (few, resp) = measure(&s).await;
    assert_eq!(
        resp["data"]["projects"]["nodes"].as_array().unwrap().len(),
        2
    );

    for i in 0..10 {
        add_project(&s, &format!("more-{i}")).await;
    }
    let (many, resp) = measure(&s).await;
    let nodes = resp["data"]["projects"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 12);
    for node in nodes {
        assert_eq!(node["environments"].as_array().unwrap().len(), 2);
        let services = node["services"].as_array().unwrap();
        assert_eq!(services.len(), 2);
        assert_eq!(services[0]["overrides"], json!([{"replicas": 3}]));
    }
    // Projects, environments, services, overrides (the token is cached).
    assert_eq!(
        few, many,
        "statements must not grow with the number of projects"
    );
    assert!(many <= 4, "{many} statements");
}

async fn api_keys_are_created_listed_and_revoked(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = &s.admin_token;
    let created = s
        .graphql(
            admin,
            "mutation { createApiKey(input: {name: \"ci\", role: write}) { apiKey { id name role tokenPrefix revokedAt } token } }",
            json!({}),
        )
        .await;
    let key = &created["data"]["createApiKey"];
    let token = key["token"].as_str().unwrap();
    assert!(
        token.starts_with("slx_cli_") && token.len() == 72,
        "{token}"
    );
    assert!(token.starts_with(key["apiKey"]["tokenPrefix"].as_str().unwrap()));
    assert_eq!(key["apiKey"]["role"], "write");
    let (status, _) = s.get("/projects", token).await;
    assert_eq!(status, StatusCode::OK);

    let list = s
        .graphql(
            admin,
            "{ apiKeys(first: 10) { nodes { id name role revokedAt } } }",
            json!({}),
        )
        .await;
    let nodes = list["data"]["apiKeys"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "the bootstrap key and the new one");
    assert!(!list.to_string().contains(token));
    let sdl = sylphx::graphql::sdl();
    let api_key_type = sdl
        .split("type ApiKey {")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert!(!api_key_type.contains("token:") && !api_key_type.contains("tokenHash"));

    let id = key["apiKey"]["id"].as_str().unwrap();
    let revoked = s
        .graphql(
            admin,
            "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }",
            json!({"id": id}),
        )
        .await;
    assert!(
        revoked["data"]["revokeApiKey"]["revokedAt"].is_string(),
        "{revoked}"
    );
    let (status, _) = s.get("/projects", token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let bad = s
        .graphql(
            admin,
            "mutation { createApiKey(input: {name: \"x\", role: root}) { token } }",
            json!({}),
        )
        .await;
    assert!(bad["errors"].is_array() && bad["data"].is_null(), "{bad}");
    let past = s
        .graphql(
            admin,
            "mutation { createApiKey(input: {name: \"x\", expiresAt: \"2001-01-01T00:00:00Z\"}) { token } }",
            json!({}),
        )
        .await;
    assert_eq!(
        past["errors"][0]["extensions"]["details"]["field"],
        "expiresAt"
    );
}

async fn audit_log_records_mutations(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let resp = s
        .api(Method::POST, "/projects", t)
        .header("X-Request-Id", "test-req-1")
        .json(&json!({"name": "Audited", "slug": "audited"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["x-request-id"], "test-req-1");
    let project: Value = resp.json().await.unwrap();
    let id = project["id"].as_str().unwrap();
    s.post(
        &format!("/projects/{id}/env-vars"),
        t,
        json!({"envType": "production", "vars": [{"key": "A", "value": "1"}]}),
    )
    .await;
    let other = s.project(t, "other").await;
    s.graphql(
        t,
        "mutation($id: String!) { setConfigEntry(projectId: $id, key: \"k\", value: \"v\") { key } }",
        json!({"id": id}),
    )
    .await;

    let q = "query($p: String, $after: String, $first: Int) { auditEvents(first: $first, after: $after, projectId: $p) { nodes { action actorType actorId targetType targetId projectId requestId createdAt } pageInfo { hasNextPage endCursor } } }";
    let all = s.graphql(t, q, json!({"first": 20})).await;
    let nodes = all["data"]["auditEvents"]["nodes"].as_array().unwrap();
    let actions: Vec<&str> = nodes
        .iter()
        .map(|n| n["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "config.set",
            "project.create",
            "env_vars.set",
            "project.create",
            "api_key.create"
        ],
        "newest first"
    );
    let created = &nodes[3];
    assert_eq!(created["actorType"], "token");
    assert_eq!(created["targetType"], "project");
    assert_eq!(created["targetId"], id);
    assert_eq!(created["projectId"], id);
    assert_eq!(created["requestId"], "test-req-1");
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(
        nodes[0]["requestId"].is_string(),
        "every request gets an id"
    );

    let mine = s.graphql(t, q, json!({"first": 20, "p": id})).await;
    assert_eq!(
        mine["data"]["auditEvents"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let theirs = s.graphql(t, q, json!({"first": 20, "p": "other"})).await;
    assert_eq!(
        theirs["data"]["auditEvents"]["nodes"][0]["projectId"],
        other["id"]
    );

    // Pagination.
    let page1 = s.graphql(t, q, json!({"first": 1})).await;
    let info = &page1["data"]["auditEvents"]["pageInfo"];
    assert_eq!(info["hasNextPage"], true);
    let page2 = s
        .graphql(t, q, json!({"first": 1, "after": info["endCursor"]}))
        .await;
    assert_eq!(
        page2["data"]["auditEvents"]["nodes"][0]["action"],
        "project.create"
    );

    // Another organisation sees none of it.
    let b = s.token("org-b", sylphx::auth::Role::Admin).await;
    let theirs = s.graphql(&b, q, json!({"first": 20})).await;
    let theirs = theirs["data"]["auditEvents"]["nodes"].as_array().unwrap();
    assert!(
        theirs
            .iter()
            .all(|e| e["action"] == "api_key.create" && e["projectId"].is_null()),
        "only the creation of its own key: {theirs:?}"
    );

    // Events outlive their project.
    s.call(Method::DELETE, &format!("/projects/{id}"), t, None)
        .await;
    let after = s.graphql(t, q, json!({"first": 20, "p": id})).await;
    let actions: Vec<&str> = after["data"]["auditEvents"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "project.delete",
            "config.set",
            "env_vars.set",
            "project.create"
        ]
    );
}

async fn graphql_over_get_and_limits(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let get = |q: &str| {
        s.client()
            .get(s.url("/graphql"))
            .query(&[("query", q)])
            .bearer_auth(t)
            .send()
    };
    let resp = get("{ viewer { role } }").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["data"]["viewer"]["role"],
        "admin"
    );
    let resp = get("mutation { deleteProject(id: \"x\") { deleted } }")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    let too_many = s
        .graphql(t, "{ projects(first: 101) { nodes { id } } }", json!({}))
        .await;
    assert_eq!(too_many["errors"][0]["extensions"]["code"], "BAD_REQUEST");
    assert!(
        too_many["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("first")
    );

    // Introspection nesting beyond the depth limit is refused.
    let mut nested = String::from("name");
    for _ in 0..sylphx::graphql::MAX_DEPTH {
        nested = format!("name ofType {{ {nested} }}");
    }
    let too_deep = s
        .graphql(
            t,
            &format!("{{ __type(name: \"Project\") {{ fields {{ type {{ {nested} }} }} }} }}"),
            json!({}),
        )
        .await;
    assert!(
        too_deep["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("too deep"),
        "{too_deep}"
    );

    // 100 projects × 10 environments × 10 services … is refused as too complex.
    let complex = "{ projects(first: 100) { nodes { id slug name description environments { id name domain replicas createdAt } services { id name port replicas status overrides { replicas port dockerImage environmentId serviceId } } } } }";
    let refused = s.graphql(t, complex, json!({})).await;
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("complex"),
        "{refused}"
    );
}

async fn errors_carry_codes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let missing = s
        .graphql(
            t,
            "query($id: String!) { project(id: $id) { id } }",
            json!({"id": uuid::Uuid::now_v7().to_string()}),
        )
        .await;
    assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND");
    let create = "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }";
    let bad = s
        .graphql(t, create, json!({"i": {"name": "x", "slug": "Bad Slug"}}))
        .await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], "BAD_REQUEST");
    assert_eq!(bad["errors"][0]["extensions"]["details"]["field"], "slug");
    s.graphql(t, create, json!({"i": {"name": "x", "slug": "dup"}}))
        .await;
    let dup = s
        .graphql(t, create, json!({"i": {"name": "x", "slug": "dup"}}))
        .await;
    assert_eq!(dup["errors"][0]["extensions"]["code"], "CONFLICT");
    for resp in [&missing, &bad, &dup] {
        let text = resp.to_string().to_lowercase();
        for leak in ["sql", "sea_orm", "constraint"] {
            assert!(!text.contains(leak), "{text}");
        }
    }
}

async fn ws_connect(
    s: &TestServer,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = s.url("/graphql/ws").replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    ws
}

async fn next_json<S>(ws: &mut S) -> Option<Value>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn websocket_graphql_transport_ws(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut ws = ws_connect(&s).await;
    let init = json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {}", s.admin_token)}});
    ws.send(Message::text(init.to_string())).await.unwrap();
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "connection_ack");
    let sub = json!({"id": "1", "type": "subscribe", "payload": {"query": "{ viewer { role organization { slug } } }"}});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    let next = next_json(&mut ws).await.unwrap();
    assert_eq!(next["type"], "next");
    assert_eq!(
        next["payload"]["data"]["viewer"],
        json!({"role": "admin", "organization": {"slug": "default"}})
    );
    assert_eq!(next_json(&mut ws).await.unwrap()["type"], "complete");

    // Without credentials, or with a bad token, there is no ack.
    for payload in [
        json!({}),
        json!({"token": format!("slx_cli_{}", "0".repeat(64))}),
    ] {
        let mut ws = ws_connect(&s).await;
        ws.send(Message::text(
            json!({"type": "connection_init", "payload": payload}).to_string(),
        ))
        .await
        .unwrap();
        let reply = next_json(&mut ws).await;
        assert!(
            reply.as_ref().is_none_or(|r| r["type"] != "connection_ack"),
            "{reply:?}"
        );
    }
}

backend_tests!(
    nested_query_costs_constant_statements,
    api_keys_are_created_listed_and_revoked,
    audit_log_records_mutations,
    graphql_over_get_and_limits,
    errors_carry_codes,
    websocket_graphql_transport_ws,
);
