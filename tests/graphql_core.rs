//! The GraphQL core's costs and shapes as a client sees them: statements
//! per list query, list answers written straight from the rows equal to
//! the executor's, the token cache's revocation bound, the REST list of a
//! big organisation, and the order of fields in the raw JSON.

mod common;

use std::time::Duration;

use common::{Backend, TestServer};
use futures_util::StreamExt;
use futures_util::stream;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Statement};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

/// The dashboard's list query (the benchmark's).
const LIST: &str = "{ projects(first: 100) { nodes { id slug name environments { name replicas } services { name port } } } }";

/// Creates `n` projects named `{prefix}-{i}`, each with environments
/// production (3 replicas), staging and preview and services web (8080)
/// and worker, as a client would, eight at a time.
async fn seed(s: &TestServer, prefix: &str, n: usize) {
    let t = &s.admin_token;
    stream::iter(0..n)
        .for_each_concurrent(8, |i| async move {
            let slug = format!("{prefix}-{i:04}");
            let p = s.project(t, &slug).await;
            let id = p["id"].as_str().unwrap();
            let prod = p["environments"][0]["id"].as_str().unwrap();
            let (status, body) = s
                .call(
                    Method::PATCH,
                    &format!("/projects/{id}/environments/{prod}"),
                    t,
                    Some(json!({"replicas": 3})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            for env in ["staging", "preview"] {
                let (status, body) = s
                    .post(
                        &format!("/projects/{id}/environments"),
                        t,
                        json!({"name": env}),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
            for svc in [
                json!({"name": "web", "port": 8080}),
                json!({"name": "worker"}),
            ] {
                let (status, body) = s.post(&format!("/projects/{id}/services"), t, svc).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
            }
        })
        .await;
}

/// Statements the list query costs (the least of three runs: the job
/// worker's polls share the counter), and its response.
async fn statements_of(s: &TestServer, query: &str) -> (u64, Value) {
    let mut best = u64::MAX;
    let mut resp = Value::Null;
    for _ in 0..3 {
        let before = s.app.statements();
        resp = s.graphql(&s.admin_token, query, json!({})).await;
        best = best.min(s.app.statements() - before);
    }
    assert!(resp["errors"].is_null(), "{resp}");
    (best, resp)
}

fn check_page(resp: &Value, n: usize) {
    let nodes = resp["data"]["projects"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), n);
    for node in nodes {
        assert_eq!(
            node["environments"],
            json!([
                {"name": "production", "replicas": 3},
                {"name": "staging", "replicas": 1},
                {"name": "preview", "replicas": 1},
            ]),
            "{node}"
        );
        assert_eq!(
            node["services"],
            json!([{"name": "web", "port": 8080}, {"name": "worker", "port": null}])
        );
    }
}

async fn list_query_costs_one_statement_whatever_the_page(backend: Backend) {
    let s = TestServer::start(backend).await;
    seed(&s, "few", 2).await;
    // The token's first use reads the store; then the cache answers.
    statements_of(&s, LIST).await;
    let (few, resp) = statements_of(&s, LIST).await;
    check_page(&resp, 2);

    seed(&s, "many", 98).await;
    let (many, resp) = statements_of(&s, LIST).await;
    check_page(&resp, 100);
    assert_eq!(few, many, "statements must not grow with the page");
    // One statement (projects with their nested lists); the token costs none.
    assert_eq!(many, 1, "{many} statements");

    // The same data whatever selects it: a fragment, an alias, `edges`.
    let other = s
        .graphql(
            &s.admin_token,
            "{ projects(first: 100) { edges { node { ...P e2: environments { name } } } } } fragment P on Project { id services { name } }",
            json!({}),
        )
        .await;
    let edges = other["data"]["projects"]["edges"].as_array().unwrap();
    let nodes = resp["data"]["projects"]["nodes"].as_array().unwrap();
    assert_eq!(edges.len(), 100);
    for (edge, node) in edges.iter().zip(nodes) {
        let e = &edge["node"];
        assert_eq!(e["id"], node["id"]);
        assert_eq!(e["services"].as_array().unwrap().len(), 2);
        assert_eq!(e["e2"].as_array().unwrap().len(), 3);
    }
}

async fn revoked_token_is_refused_within_the_cache_time(backend: Backend) {
    let s = TestServer::start(backend).await;
    let created = s
        .graphql(
            &s.admin_token,
            r#"mutation { createApiKey(input: {name: "elsewhere", role: write}) { apiKey { id } token } }"#,
            json!({}),
        )
        .await;
    let id = created["data"]["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = created["data"]["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    // Cached by its first use.
    assert_eq!(s.get("/projects", &token).await.0, StatusCode::OK);

    // Revoked by another server sharing the store: this one learns of it
    // only from the store.
    let db = s.app.db();
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DbBackend::Postgres => {
                "UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE id = $1"
            }
            _ => "UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE id = ?",
        },
        [uuid::Uuid::parse_str(&id).unwrap().into()],
    ))
    .await
    .unwrap();

    let deadline =
        tokio::time::Instant::now() + sylphx::auth::tokens::TOKEN_TTL + Duration::from_secs(2);
    loop {
        let (rest, _) = s.get("/projects", &token).await;
        let gql = s.graphql(&token, "{ viewer { role } }", json!({})).await;
        if rest == StatusCode::UNAUTHORIZED {
            // Every entry point shares the cache: all refuse together.
            assert_eq!(
                gql["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                "{gql}"
            );
            let models = s
                .client()
                .get(s.url("/api/v1/models"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(models.status(), StatusCode::UNAUTHORIZED);
            break;
        }
        assert_eq!(rest, StatusCode::OK);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a token revoked in the store is still accepted after {:?}",
            sylphx::auth::tokens::TOKEN_TTL
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rest_list_of_a_thousand_projects(backend: Backend) {
    // Seeding makes some 4,000 writes within a minute, more than the
    // default rate limit lets one caller do: this test is about the list.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sylphx.toml");
    std::fs::write(&config, "rate_limits = false\n").unwrap();
    let s = TestServer::start_with_config(backend, Some(config)).await;
    seed(&s, "p", 1000).await;
    let t = &s.admin_token;

    let (status, all) = s.get("/projects", t).await;
    assert_eq!(status, StatusCode::OK);
    let all = all.as_array().expect("a bare array").clone();
    assert_eq!(all.len(), 1000);
    let mut slugs: Vec<&str> = all.iter().map(|p| p["slug"].as_str().unwrap()).collect();
    slugs.sort_unstable();
    slugs.dedup();
    assert_eq!(slugs.len(), 1000);
    let ids: Vec<&str> = all.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first, by id");
    for p in &all {
        let envs: Vec<&str> = p["environments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(envs, ["production", "staging", "preview"], "{p}");
        assert!(p["createdAt"].is_string() && p["isActive"] == true, "{p}");
    }

    // Opt-in pages follow the Link header and join to the same list.
    let mut joined = Vec::new();
    let mut next = Some(s.url("/api/v1/projects?limit=97"));
    let mut pages = 0;
    while let Some(url) = next.take() {
        let resp = s.client().get(&url).bearer_auth(t).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        if let Some(link) = resp.headers().get("link") {
            let link = link.to_str().unwrap();
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(u, _)| u)
                .unwrap_or_else(|| panic!("{link}"));
            next = Some(s.url(target));
        }
        let page: Vec<Value> = resp.json().await.unwrap();
        assert!(page.len() <= 97 && !page.is_empty());
        joined.extend(page);
        pages += 1;
    }
    assert_eq!(pages, 11);
    assert_eq!(joined, all);

    // Bad page arguments name their parameter and change nothing.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=nope", "cursor"),
    ] {
        let (status, body) = s.get(&format!("/projects?{query}"), t).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["details"]["field"], field, "{query}: {body}");
    }

    // Another organisation sees none of them, in either form.
    let other = s.token("elsewhere", sylphx::auth::Role::Admin).await;
    assert_eq!(s.get("/projects", &other).await.1, json!([]));
    assert_eq!(s.get("/projects?limit=5", &other).await.1, json!([]));
    let cursor = all[10]["id"].as_str().unwrap();
    let (status, body) = s.get(&format!("/projects?cursor={cursor}"), &other).await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
}

/// A JSON document's keys in the order they were written.
#[derive(Debug, PartialEq)]
enum Keys {
    Object(Vec<(String, Keys)>),
    List(Vec<Keys>),
    Leaf,
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Keys>()? {
                    out.push((k, v));
                }
                Ok(Keys::Object(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Keys, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element::<Keys>()? {
                    out.push(v);
                }
                Ok(Keys::List(out))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Keys, E> {
                Ok(Keys::Leaf)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Keys, E> {
                Ok(Keys::Leaf)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Keys, E> {
                Ok(Keys::Leaf)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Keys, E> {
                Ok(Keys::Leaf)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Keys, E> {
                Ok(Keys::Leaf)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Keys, E> {
                Ok(Keys::Leaf)
            }
        }
        d.deserialize_any(V)
    }
}

impl Keys {
    fn names(&self) -> Vec<&str> {
        match self {
            Keys::Object(fields) => fields.iter().map(|(k, _)| k.as_str()).collect(),
            _ => panic!("not an object: {self:?}"),
        }
    }
    fn get(&self, key: &str) -> &Keys {
        match self {
            Keys::Object(fields) => &fields.iter().find(|(k, _)| k == key).unwrap().1,
            _ => panic!("not an object: {self:?}"),
        }
    }
    fn items(&self) -> &[Keys] {
        match self {
            Keys::List(items) => items,
            _ => panic!("not a list: {self:?}"),
        }
    }
}

async fn fields_come_in_selection_order(backend: Backend) {
    let s = TestServer::start(backend).await;
    seed(&s, "order", 3).await;
    let query = "query { projects(first: 10) { pageInfo { hasNextPage } nodes { services { port name } environments { replicas ...Env } slug ...Ids } } } \
                 fragment Ids on Project { name id } fragment Env on Environment { name id }";
    let raw = s
        .client()
        .post(s.url("/graphql"))
        .bearer_auth(&s.admin_token)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: Keys = serde_json::from_str(&raw).unwrap();
    let projects = doc.get("data").get("projects");
    assert_eq!(projects.names(), ["pageInfo", "nodes"], "{raw}");
    let nodes = projects.get("nodes").items();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        assert_eq!(
            node.names(),
            ["services", "environments", "slug", "name", "id"],
            "{raw}"
        );
        for svc in node.get("services").items() {
            assert_eq!(svc.names(), ["port", "name"]);
        }
        for env in node.get("environments").items() {
            assert_eq!(env.names(), ["replicas", "name", "id"]);
        }
    }

    // The REST layer answers in the route's order too.
    let raw = s
        .api(Method::GET, "/projects", &s.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let list: Keys = serde_json::from_str(&raw).unwrap();
    for p in list.items() {
        assert_eq!(p.names()[..3], ["id", "slug", "name"], "{raw}");
        assert_eq!(*p.names().last().unwrap(), "environments", "{raw}");
    }
}

/// Runs `query` twice and returns both raw bodies.
async fn twice(s: &TestServer, query: &str, variables: Value) -> (String, String) {
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let resp = s
            .client()
            .post(s.url("/graphql"))
            .bearer_auth(&s.admin_token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        bodies.push(resp.text().await.unwrap());
    }
    let second = bodies.pop().unwrap();
    (bodies.pop().unwrap(), second)
}

async fn list_answers_are_the_same_whichever_path_writes_them(backend: Backend) {
    let s = TestServer::start(backend).await;
    seed(&s, "same", 5).await;
    let cursor = {
        let r = s
            .graphql(
                &s.admin_token,
                "{ projects(first: 1) { nodes { id } } }",
                json!({}),
            )
            .await;
        r["data"]["projects"]["nodes"][0]["id"].clone()
    };
    let queries = [
        (LIST, json!({})),
        (
            "query Named($n: Int, $a: String) { list: projects(first: $n, after: $a) { __typename pageInfo { hasNextPage hasPreviousPage startCursor endCursor __typename } edges { cursor __typename node { ...P } } nodes { slug environments { __typename id projectId domain createdAt updatedAt provisionedAt } } } } \
             fragment P on Project { id slug name description isActive gitRepository gitBranch buildPack dockerImage port domain createdAt updatedAt ... on Project { services { id projectId name port dockerfilePath replicas status latestImage createdAt updatedAt __typename } } __typename }",
            json!({"n": 2, "a": cursor}),
        ),
        (
            "{ projects { nodes { id } pageInfo { endCursor hasNextPage } } }",
            json!({}),
        ),
        ("{ projects(first: 100) { edges { cursor } } }", json!({})),
    ];
    let before = s.app.graphql.direct_answers();
    for (query, variables) in &queries {
        let (first, second) = twice(&s, query, variables.clone()).await;
        assert!(!first.contains("\"errors\""), "{first}");
        assert_eq!(first, second, "{query} {variables}");
    }
    // The second run of each was written straight from the rows.
    assert_eq!(
        s.app.graphql.direct_answers() - before,
        queries.len() as u64
    );

    // What only the executor serves still comes back whole: arguments out
    // of range, directives, nested lists of nested lists.
    for query in [
        "{ projects(first: 0) { nodes { id } } }",
        "{ projects(first: 3) { nodes { id @include(if: false) slug } } }",
        "{ projects(first: 3) { nodes { services { overrides { replicas } resources { cpu } } } } }",
    ] {
        let (first, second) = twice(&s, query, json!({})).await;
        assert_eq!(first, second, "{query}");
    }
    let r = s
        .graphql(
            &s.admin_token,
            "{ projects(first: 0) { nodes { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        r["errors"][0]["extensions"]["details"]["field"], "first",
        "{r}"
    );
    let r = s
        .graphql(
            &s.admin_token,
            "{ projects(first: 3) { nodes { id @include(if: false) slug } } }",
            json!({}),
        )
        .await;
    let node = &r["data"]["projects"]["nodes"][0];
    assert!(node.get("id").is_none() && node["slug"].is_string(), "{r}");
    assert_eq!(
        s.app.graphql.direct_answers() - before,
        queries.len() as u64
    );

    // A validated run does not vouch for other variables: a page size out
    // of range with the same document is refused.
    let named = queries[1].0;
    let r = s
        .graphql(&s.admin_token, named, json!({"n": 101, "a": null}))
        .await;
    assert_eq!(
        r["errors"][0]["extensions"]["details"]["field"], "first",
        "{r}"
    );
    let r = s
        .graphql(&s.admin_token, named, json!({"n": 2, "a": "not-a-cursor"}))
        .await;
    assert_eq!(
        r["errors"][0]["extensions"]["details"]["field"], "after",
        "{r}"
    );

    // Another organisation's token gets its own (empty) list from the
    // same cached document.
    let other = s.token("elsewhere", sylphx::auth::Role::Read).await;
    for _ in 0..2 {
        let r = s.graphql(&other, LIST, json!({})).await;
        assert_eq!(r, json!({"data": {"projects": {"nodes": []}}}));
    }
}

backend_tests!(
    list_query_costs_one_statement_whatever_the_page,
    list_answers_are_the_same_whichever_path_writes_them,
    revoked_token_is_refused_within_the_cache_time,
    rest_list_of_a_thousand_projects,
    fields_come_in_selection_order,
);

/// The backend that runs the list reads' statements on PostgreSQL.
async fn backend_pid(reads: &sylphx::store::Reads) -> i32 {
    let row = reads
        .query_one_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_backend_pid()",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index(0).unwrap()
}

/// A list read whose request goes away mid-statement (a client that hangs
/// up) must not hand its connection, statement still running, to the next
/// request; a statement the store refuses leaves its connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reads_never_reuse_an_unfinished_connection() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        eprintln!("skipped: SYLPHX_TEST_DATABASE_URL is not set");
        return;
    };
    let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let counter = sylphx::store::StatementCounter::default();
    // One connection, so every read takes the same one if it can.
    let reads = sylphx::store::Reads::new(&db, 1, (1, || None), counter.clone());
    let first = backend_pid(&reads).await;
    assert_eq!(
        backend_pid(&reads).await,
        first,
        "a finished read keeps its connection"
    );

    let refused = reads
        .query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT 1 / (random() < 2)::int - 1 / 0",
        ))
        .await;
    let err = refused.expect_err("division by zero");
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert_eq!(
        backend_pid(&reads).await,
        first,
        "a refused statement keeps its connection"
    );

    // Abandoned while the store still works on it.
    let slow = reads.query_all_raw(Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT pg_sleep(30)",
    ));
    let sleeping = async {
        // Until the backend is seen running the statement.
        loop {
            let running: Option<i64> = db
                .query_one_raw(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%' AND state = 'active'",
                    [first.into()],
                ))
                .await
                .unwrap()
                .and_then(|r| r.try_get_by_index(0).ok());
            if running == Some(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = slow => panic!("the sleep cannot finish first"),
        _ = sleeping => {}
    }
    // The next read runs at once, on another connection, and gets its own rows.
    let next = backend_pid(&reads).await;
    assert_ne!(next, first, "an abandoned read's connection was reused");
    assert_eq!(backend_pid(&reads).await, next);
    // Every read counts as a statement of the store.
    assert_eq!(counter.get(), 7);
    // The abandoned backend would sleep on: end it.
    db.execute_unprepared(&format!("SELECT pg_terminate_backend({first})"))
        .await
        .unwrap();
}

thread_local! {
    /// The HTTP thread a test thread stands for.
    static TEST_HTTP_THREAD: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `n` list reads at once on a thread of its own standing for HTTP
/// thread `index`; each waits for a shared advisory lock on `key`, then
/// answers with its backend. First a read that waits for nothing, whose
/// backend goes to `first` before the others start.
fn reads_on_thread(
    reads: sylphx::store::Reads,
    index: usize,
    key: i64,
    n: usize,
    first: Option<std::sync::mpsc::Sender<i32>>,
) -> std::thread::JoinHandle<Vec<i32>> {
    std::thread::spawn(move || {
        TEST_HTTP_THREAD.with(|t| t.set(Some(index)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut pids = Vec::new();
            if let Some(first) = first {
                let pid = backend_pid(&reads).await;
                first.send(pid).unwrap();
                pids.push(pid);
            }
            let sql = format!(
                "SELECT pg_backend_pid() FROM (SELECT pg_advisory_xact_lock_shared({key})) l"
            );
            let waiting = (0..n).map(|_| {
                reads.query_one_raw(Statement::from_string(sea_orm::DbBackend::Postgres, &sql))
            });
            for row in futures_util::future::join_all(waiting).await {
                pids.push(row.unwrap().unwrap().try_get_by_index(0).unwrap());
            }
            pids
        })
    })
}

/// Reads waiting for advisory lock `key`.
async fn waiting_for(db: &sea_orm::DatabaseConnection, key: i64) -> i64 {
    db.query_one_raw(Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = $1 AND NOT granted",
        [key.into()],
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index(0)
    .unwrap()
}

/// The read connections are split among the HTTP threads: together never
/// more than the setting, each thread keeping to its own, so a thread
/// whose reads all wait does not hold up another thread's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reads_keep_each_http_thread_to_its_connections() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        eprintln!("skipped: SYLPHX_TEST_DATABASE_URL is not set");
        return;
    };
    use sea_orm::TransactionTrait;
    let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
    // Three connections for two threads: two for thread 0, one for thread 1.
    let reads = sylphx::store::Reads::new(
        &db,
        3,
        (2, || TEST_HTTP_THREAD.with(std::cell::Cell::get)),
        sylphx::store::StatementCounter::default(),
    );
    let key = i64::from(rand::random::<u16>()) + 1_000_000;
    let lock = db.begin().await.unwrap();
    lock.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({key})"))
        .await
        .unwrap();

    // Thread 0: three reads, two of them in the store at once.
    let zero = reads_on_thread(reads.clone(), 0, key, 3, None);
    while waiting_for(&db, key).await < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Thread 1 reads while every connection of thread 0 waits...
    let (first, answered) = std::sync::mpsc::channel();
    let one = reads_on_thread(reads.clone(), 1, key, 2, Some(first));
    let first = tokio::task::spawn_blocking(move || answered.recv().unwrap())
        .await
        .unwrap();
    // ...then has two waiting reads of its own, one in the store.
    while waiting_for(&db, key).await < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        waiting_for(&db, key).await,
        3,
        "never more than the setting"
    );
    lock.commit().await.unwrap();

    let zero: std::collections::BTreeSet<i32> = zero.join().unwrap().into_iter().collect();
    let one: std::collections::BTreeSet<i32> = one.join().unwrap().into_iter().collect();
    assert_eq!(
        zero.len(),
        2,
        "thread 0 reads through two connections: {zero:?}"
    );
    assert_eq!(one, [first].into(), "thread 1 keeps its one connection");
    assert!(
        zero.is_disjoint(&one),
        "{zero:?} and {one:?} share a connection"
    );
}
