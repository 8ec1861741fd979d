//! Public TCP proxies of services and their allowlists, through the REST
//! API of a real server, with real apps behind real listeners.

mod common;

use std::time::Duration;

use common::TestServer;
use common::apps::{deploy, repo};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sylphx::auth::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port in the default proxy range (30000-60999) that nothing listens on.
fn free_proxy_port() -> u16 {
    loop {
        let port = common::binary::free_port();
        if (30000..=60999).contains(&port) {
            return port;
        }
    }
}

/// `GET /` through the proxy on a new connection: status and body.
async fn through(port: u16) -> Option<(StatusCode, String)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    let status = resp.status();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// Whether a new connection to the proxy is closed without an answer: it
/// is accepted (the proxy listens) and ends before the app says anything.
async fn closed_at_once(port: u16) -> bool {
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await {
        Ok(Ok(_)) => got.is_empty(),
        Ok(Err(_)) => true, // Reset.
        Err(_) => false,    // Held open.
    }
}

/// Waits until `GET /` through the proxy answers 200.
async fn until_served(port: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((StatusCode::OK, body)) = through(port).await {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} never served the app"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn service_id(s: &TestServer, project: &str, name: &str) -> String {
    let (status, list) = s
        .get(&format!("/projects/{project}/services"), &s.admin_token)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|svc| svc["name"] == name)
        .unwrap_or_else(|| panic!("no service {name}: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A project with services `names` (none deployed).
async fn services(s: &TestServer, slug: &str, names: &[&str]) -> Vec<String> {
    s.project(&s.admin_token, slug).await;
    let mut ids = Vec::new();
    for name in names {
        let (status, body) = s
            .post(
                &format!("/projects/{slug}/services"),
                &s.admin_token,
                json!({ "name": name, "port": 8080 }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    ids
}

fn field(body: &Value) -> &str {
    body["details"]["field"].as_str().unwrap_or_default()
}

async fn enable(s: &TestServer, token: &str, service: &str, port: u16) -> (StatusCode, Value) {
    s.post(
        &format!("/services/{service}/tcp-proxy"),
        token,
        json!({ "externalPort": port, "targetPort": 8080 }),
    )
    .await
}

async fn delete(s: &TestServer, token: &str, path: &str) -> (StatusCode, Value) {
    s.call(Method::DELETE, path, token, None).await
}

/// A deployed app is reached through its proxy; the allowlist decides who
/// gets through, on every new connection, as rules come and go.
async fn the_proxy_reaches_the_app_and_the_allowlist_decides(backend: common::Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let src = repo("web: exec python3 app.py\n");
    let (status, body) = s
        .post(
            "/projects",
            t,
            json!({"name": "Db", "slug": "db", "gitRepository": src.path().to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(deploy(&s, "db").await["status"], "success");
    let web = service_id(&s, "db", "web").await;
    let proxy = format!("/services/{web}/tcp-proxy");

    let (status, none) = s.get(&proxy, t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        none,
        json!({"enabled": false, "externalPort": null, "targetPort": null, "allowlist": []})
    );

    let port = free_proxy_port();
    let (status, created) = enable(&s, t, &web, port).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created,
        json!({"enabled": true, "externalPort": port, "targetPort": 8080, "allowlist": []})
    );
    assert_eq!(
        through(port).await,
        Some((StatusCode::OK, "unset".into())),
        "the app answers through the proxy"
    );
    // Changing an existing proxy answers 200.
    let (status, changed) = s
        .post(
            &proxy,
            t,
            json!({ "externalPort": port, "targetPort": 5432 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["targetPort"], 5432);

    // A rule that leaves out 127.0.0.1: new connections are closed.
    let (status, rule) = s
        .post(
            &format!("{proxy}/allowlist"),
            t,
            json!({ "cidr": "203.0.113.77/24", "description": "office" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    assert_eq!(rule["cidr"], "203.0.113.0/24", "normalised");
    assert_eq!(rule["description"], "office");
    assert!(rule["createdAt"].is_string());
    let office = rule["id"].as_str().unwrap().to_string();
    assert!(closed_at_once(port).await, "a peer off the list got in");
    assert_eq!(through(port).await.map(|(s, _)| s), None);

    // IPv6 blocks are taken too; 127.0.0.1 is still not on the list.
    let (status, v6) = s
        .post(
            &format!("{proxy}/allowlist"),
            t,
            json!({ "cidr": "2001:DB8:0::1/32" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v6}");
    assert_eq!(v6["cidr"], "2001:db8::/32");
    assert!(closed_at_once(port).await);

    let (status, list) = s.get(&format!("{proxy}/allowlist"), t).await;
    assert_eq!(status, StatusCode::OK);
    let cidrs: Vec<&str> = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs, ["203.0.113.0/24", "2001:db8::/32"]);
    assert_eq!(
        s.get(&proxy, t).await.1["allowlist"],
        json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    // The same block twice is a conflict.
    let (status, again) = s
        .post(
            &format!("{proxy}/allowlist"),
            t,
            json!({ "cidr": "203.0.113.0/24" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    // A rule that takes in the peer opens the door again …
    let (status, local) = s
        .post(
            &format!("{proxy}/allowlist"),
            t,
            json!({ "cidr": "127.0.0.1" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{local}");
    assert_eq!(local["cidr"], "127.0.0.1/32");
    assert_eq!(through(port).await, Some((StatusCode::OK, "unset".into())));
    // … and removing it closes it.
    let local_id = local["id"].as_str().unwrap();
    let (status, _) = delete(&s, t, &format!("{proxy}/allowlist/{local_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(closed_at_once(port).await);

    // Removing the other rules leaves an empty list: everyone gets in.
    let v6_id = v6["id"].as_str().unwrap();
    for id in [office.as_str(), v6_id] {
        let (status, body) = delete(&s, t, &format!("{proxy}/allowlist/{id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (status, gone) = delete(&s, t, &format!("{proxy}/allowlist/{office}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    assert_eq!(through(port).await, Some((StatusCode::OK, "unset".into())));
    assert_eq!(
        s.get(&format!("{proxy}/allowlist"), t).await.1,
        json!({ "rules": [] })
    );

    // Disabled: the port closes, the configuration stays.
    let (status, disabled) = delete(&s, t, &proxy).await;
    assert_eq!(status, StatusCode::OK, "{disabled}");
    assert_eq!(
        disabled,
        json!({"enabled": false, "externalPort": port, "targetPort": 5432, "allowlist": []})
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "a disabled proxy still listens"
    );
    // Enabled again on its port: 200, it existed.
    let (status, back) = enable(&s, t, &web, port).await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["enabled"], true);
    assert_eq!(through(port).await, Some((StatusCode::OK, "unset".into())));

    // Deleting the project closes its proxy.
    let (status, _) = delete(&s, t, "/projects/db").await;
    assert_eq!(status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy of a deleted project still listens"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = s.get(&proxy, t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Bad ports and blocks are refused naming the field; a port another
/// service holds (enabled or reserved) or the machine uses is a conflict;
/// a permanent delete frees the port.
async fn bad_input_and_taken_ports_are_refused(backend: common::Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let ids = services(&s, "ports", &["a", "b"]).await;
    let (a, b) = (&ids[0], &ids[1]);

    for (body, name) in [
        (
            json!({ "externalPort": 80, "targetPort": 8080 }),
            "externalPort",
        ),
        (
            json!({ "externalPort": 29999, "targetPort": 8080 }),
            "externalPort",
        ),
        (
            json!({ "externalPort": 61000, "targetPort": 8080 }),
            "externalPort",
        ),
        (
            json!({ "externalPort": 70000, "targetPort": 8080 }),
            "externalPort",
        ),
        (json!({ "targetPort": 8080 }), "externalPort"),
        (
            json!({ "externalPort": 31000, "targetPort": 0 }),
            "targetPort",
        ),
        (
            json!({ "externalPort": 31000, "targetPort": 65536 }),
            "targetPort",
        ),
        (json!({ "externalPort": 31000 }), "targetPort"),
        (
            json!({ "externalPort": "31000", "targetPort": 8080 }),
            "externalPort",
        ),
    ] {
        let (status, err) = s
            .post(&format!("/services/{a}/tcp-proxy"), t, body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(field(&err), name, "{body}: {err}");
    }
    let (status, err) = s.get("/services/not-a-uuid/tcp-proxy", t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let unknown = uuid::Uuid::now_v7();
    let (status, _) = s.get(&format!("/services/{unknown}/tcp-proxy"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing to disable or to add rules to yet.
    let (status, _) = delete(&s, t, &format!("/services/{a}/tcp-proxy")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .post(
            &format!("/services/{a}/tcp-proxy/allowlist"),
            t,
            json!({ "cidr": "10.0.0.0/8" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let port = free_proxy_port();
    assert_eq!(enable(&s, t, a, port).await.0, StatusCode::CREATED);
    // Taken by another service's proxy.
    let (status, err) = enable(&s, t, b, port).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("externalPort"),
        "{err}"
    );
    // Taken by something else on the machine.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let squatted = squatter.local_addr().unwrap().port();
    if (30000..=60999).contains(&squatted) {
        let (status, err) = enable(&s, t, b, squatted).await;
        assert_eq!(status, StatusCode::CONFLICT, "{err}");
        assert!(
            err["error"].as_str().unwrap().contains("externalPort"),
            "{err}"
        );
        assert_eq!(
            s.get(&format!("/services/{b}/tcp-proxy"), t).await.1["enabled"],
            false
        );
    }
    drop(squatter);

    // Bad blocks name `cidr`; a bad description names itself.
    let allowlist = format!("/services/{a}/tcp-proxy/allowlist");
    for cidr in [
        json!("10.0.0.0/33"),
        json!("300.1.2.3/8"),
        json!("2001:db8::/129"),
        json!("office"),
        json!(""),
        json!(42),
    ] {
        let (status, err) = s.post(&allowlist, t, json!({ "cidr": cidr })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{cidr}: {err}");
        assert_eq!(field(&err), "cidr", "{cidr}: {err}");
    }
    let (status, err) = s.post(&allowlist, t, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(field(&err), "cidr");
    let (status, err) = s
        .post(
            &allowlist,
            t,
            json!({ "cidr": "10.0.0.0/8", "description": "x".repeat(501) }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(field(&err), "description");
    let (status, err) = delete(&s, t, &format!("{allowlist}/not-a-uuid")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(s.get(&allowlist, t).await.1, json!({ "rules": [] }));

    // Disabled without `permanent`: the port stays a's.
    let (status, off) = delete(&s, t, &format!("/services/{a}/tcp-proxy")).await;
    assert_eq!(status, StatusCode::OK, "{off}");
    assert_eq!(off["enabled"], false);
    assert_eq!(off["externalPort"], port);
    let (status, err) = enable(&s, t, b, port).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("externalPort"),
        "{err}"
    );
    // With `permanent`: the port is free for b.
    let (status, gone) = delete(&s, t, &format!("/services/{a}/tcp-proxy?permanent=true")).await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    assert_eq!(
        gone,
        json!({"enabled": false, "externalPort": null, "targetPort": null, "allowlist": []})
    );
    let (status, taken) = enable(&s, t, b, port).await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    // A moves to another port; b keeps its own.
    let other = free_proxy_port();
    assert_eq!(enable(&s, t, a, other).await.0, StatusCode::CREATED);
    let (status, moved) = enable(&s, t, a, free_proxy_port()).await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", other))
            .await
            .is_err(),
        "the old port still listens after a move"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok(),
        "b's port closed"
    );
}

/// Another organisation sees and changes nothing; a read token reads and
/// changes nothing.
async fn other_organisations_and_read_tokens_are_refused(backend: common::Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let ids = services(&s, "mine", &["db"]).await;
    let db = &ids[0];
    let port = free_proxy_port();
    assert_eq!(enable(&s, t, db, port).await.0, StatusCode::CREATED);
    let (status, rule) = s
        .post(
            &format!("/services/{db}/tcp-proxy/allowlist"),
            t,
            json!({ "cidr": "10.0.0.0/8" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let rule_id = rule["id"].as_str().unwrap();

    let foreign = s.token("rival", Role::Admin).await;
    // The answer other service routes give to another organisation's id.
    let (expected, _) = s
        .get(&format!("/services/{db}/latest-image"), &foreign)
        .await;
    assert_eq!(expected, StatusCode::FORBIDDEN);
    let proxy = format!("/services/{db}/tcp-proxy");
    let allowlist = format!("{proxy}/allowlist");
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, proxy.clone(), None),
        (
            Method::POST,
            proxy.clone(),
            Some(json!({ "externalPort": free_proxy_port(), "targetPort": 1 })),
        ),
        (Method::DELETE, proxy.clone(), None),
        (Method::DELETE, format!("{proxy}?permanent=true"), None),
        (Method::GET, allowlist.clone(), None),
        (
            Method::POST,
            allowlist.clone(),
            Some(json!({ "cidr": "0.0.0.0/0" })),
        ),
        (Method::DELETE, format!("{allowlist}/{rule_id}"), None),
    ];
    for (method, path, body) in &attempts {
        let (status, err) = s.call(method.clone(), path, &foreign, body.clone()).await;
        assert_eq!(status, expected, "{method} {path}: {err}");
        assert!(!err.to_string().contains("10.0.0.0"), "{err}");
    }

    let reader = s.token("default", Role::Read).await;
    let (status, seen) = s.get(&proxy, &reader).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["externalPort"], port);
    assert_eq!(s.get(&allowlist, &reader).await.0, StatusCode::OK);
    for (method, path, body) in attempts.iter().filter(|(m, _, _)| *m != Method::GET) {
        let (status, err) = s.call(method.clone(), path, &reader, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {err}");
    }
    // Nothing changed.
    let (_, after) = s.get(&proxy, t).await;
    assert_eq!(
        after,
        json!({"enabled": true, "externalPort": port, "targetPort": 8080, "allowlist": ["10.0.0.0/8"]})
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    );
}

/// One organisation cannot hold more than `max_tcp_proxies_per_organization`
/// (10) proxies, enabled or keeping their port; a permanent delete frees a
/// slot; another organisation has slots of its own.
async fn the_quota_holds_per_organisation(backend: common::Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let names: Vec<String> = (0..11).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ids = services(&s, "many", &refs).await;
    for id in &ids[..10] {
        let (status, body) = enable(&s, t, id, free_proxy_port()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // A disabled proxy keeps its slot.
    let (status, _) = delete(&s, t, &format!("/services/{}/tcp-proxy", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = enable(&s, t, &ids[10], free_proxy_port()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("max_tcp_proxies_per_organization"),
        "{err}"
    );
    // Changing one it has is not a new one.
    let (status, body) = enable(&s, t, &ids[0], free_proxy_port()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Another organisation is not held back.
    let rival = s.token("rival", Role::Admin).await;
    s.project(&rival, "theirs").await;
    let (status, svc) = s
        .post(
            "/projects/theirs/services",
            &rival,
            json!({ "name": "db", "port": 5432 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{svc}");
    let theirs = svc["id"].as_str().unwrap();
    assert_eq!(
        enable(&s, &rival, theirs, free_proxy_port()).await.0,
        StatusCode::CREATED
    );

    let (status, _) = delete(
        &s,
        t,
        &format!("/services/{}/tcp-proxy?permanent=true", ids[1]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = enable(&s, t, &ids[10], free_proxy_port()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

backend_tests!(
    the_proxy_reaches_the_app_and_the_allowlist_decides,
    bad_input_and_taken_ports_are_refused,
    other_organisations_and_read_tokens_are_refused,
    the_quota_holds_per_organisation,
);

/// A proxy listens again after `serve` restarts, with its allowlist; a
/// stopped `serve` leaves no listener behind.
async fn proxies_come_back_after_a_restart(postgres: bool) {
    use common::binary::{ServeProcess, ServeStore, create_token, free_port, post};
    let Some(store) = ServeStore::new(postgres).await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_s = data.to_str().unwrap().to_string();
    let sandbox_ids = common::sandbox_ids();
    let mut envs = vec![
        ("SYLPHX_DATA_DIR", data_s.as_str()),
        ("SYLPHX_SANDBOX_IDS", sandbox_ids.as_str()),
    ];
    envs.extend(store.env());
    let token = create_token("acme", &envs);
    let port = free_port();
    let apps = format!("127.0.0.1:{}", free_port());
    let extra = ["--apps-listen", apps.as_str()];
    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    let src = repo("web: exec python3 app.py\n");
    let (status, body) = post(
        &server.base,
        "/projects",
        &token,
        json!({"name": "Db", "slug": "db", "gitRepository": src.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, d) = post(&server.base, "/projects/db/deploy", &token, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{d}");
    let done = common::apps::finished(
        &server.base,
        &token,
        "db",
        d["deploymentId"].as_str().unwrap(),
    )
    .await;
    assert_eq!(done["status"], "success", "{done}");
    let (_, list) = common::binary::get(&server.base, "/projects/db/services", &token).await;
    let web = list[0]["id"].as_str().unwrap().to_string();
    let external = free_proxy_port();
    let (status, body) = post(
        &server.base,
        &format!("/services/{web}/tcp-proxy"),
        &token,
        json!({ "externalPort": external, "targetPort": 8080 }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(until_served(external).await, "unset");
    let (status, _) = post(
        &server.base,
        &format!("/services/{web}/tcp-proxy/allowlist"),
        &token,
        json!({ "cidr": "127.0.0.0/8" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    assert!(server.terminate().success());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", external))
            .await
            .is_err(),
        "the proxy outlived serve"
    );
    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    assert_eq!(until_served(external).await, "unset");
    let (_, proxy) =
        common::binary::get(&server.base, &format!("/services/{web}/tcp-proxy"), &token).await;
    assert_eq!(proxy["allowlist"], json!(["127.0.0.0/8"]));
    assert!(server.terminate().success());
    store.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_come_back_after_a_restart_on_sqlite() {
    proxies_come_back_after_a_restart(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_come_back_after_a_restart_on_postgres() {
    proxies_come_back_after_a_restart(true).await
}
