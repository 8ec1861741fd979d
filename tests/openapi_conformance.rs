//! The OpenAPI document against the server, by schemathesis: requests
//! generated from `/api/v1/openapi.json` (valid ones, and invalid ones for
//! the server-error check) must never get a 5xx, and a request valid by the
//! document must never be refused for a rule the document does not state.

mod common;

use std::process::Stdio;

use common::{Backend, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Pinned, so that a new release's new checks arrive by choice.
const SCHEMATHESIS_PACKAGE: &str = "schemathesis==4.32.5";

fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        common::python_with(
            "schemathesis",
            SCHEMATHESIS_PACKAGE,
            env!("CARGO_TARGET_TMPDIR"),
        )
    })
}

fn id_of(body: &Value) -> String {
    body["id"].as_str().expect("an id").to_string()
}

async fn audit_count(s: &TestServer, project: &str) -> usize {
    let data = s
        .graphql(
            &s.admin_token,
            "query($p: String) { auditEvents(projectId: $p, first: 100) { nodes { action } } }",
            json!({ "p": project }),
        )
        .await;
    data["data"]["auditEvents"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{data}"))
        .len()
}

async fn schema_valid_requests_are_accepted(backend: Backend) {
    // Thousands of requests a minute from one token: a rate limit would
    // answer 429 to most of them and hide what they would have found.
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), "rate_limits = false\n").expect("write config");
    let s = TestServer::start_with_config(backend, Some(config.path().to_path_buf())).await;
    let token = s.admin_token.clone();
    // Something for the generated requests to find.
    let (status, project) = s
        .post(
            "/projects",
            &token,
            json!({ "name": "Demo", "slug": "demo", "dockerImage": "registry.example/demo:1" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let (status, env) = s
        .post(
            "/projects/demo/environments",
            &token,
            json!({ "name": "staging" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let (status, service) = s
        .post(
            "/projects/demo/services",
            &token,
            json!({ "name": "web", "port": 8080 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{service}");
    let (status, config) = s
        .post(
            "/projects/demo/config",
            &token,
            json!({ "entries": [{ "key": "k", "value": "v" }] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{config}");
    let (status, database) = s
        .post(
            "/resources",
            &token,
            json!({ "name": "db", "kind": "database" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{database}");
    let events_before = audit_count(&s, "demo").await;

    let (status, document) = s.get("/openapi.json", &token).await;
    assert_eq!(status, StatusCode::OK);
    let operations: usize = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().expect("methods").len())
        .sum();

    let hooks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis");
    let report = tempfile::tempdir().expect("tempdir");
    let out = tokio::process::Command::new(python())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(s.url("/api/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,positive_data_acceptance"])
        .args(["--mode", "all", "--max-examples", "30", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--seed", "20261201", "--report-dir"])
        .arg(report.path())
        .current_dir(report.path())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", hooks)
        .env("ST_PROJECT", "demo")
        .env("ST_PROJECT_ID", id_of(&project))
        .env("ST_ENV_ID", id_of(&env))
        .env("ST_SERVICE", "web")
        .env("ST_SERVICE_ID", id_of(&service))
        .env("ST_CONFIG_KEY", "k")
        .env("ST_RESOURCE_ID", id_of(&database))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "every one of the document's {operations} operations is tested:\n{stdout}"
    );
    assert!(!stdout.contains("failures"), "{stdout}");

    // The generated requests reached the existing project, not only 404s.
    assert!(
        audit_count(&s, "demo").await > events_before,
        "no generated request changed the fixture project:\n{stdout}"
    );
}

backend_tests!(schema_valid_requests_are_accepted);

/// The document states the rules the server enforces, where a client
/// generator reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_rules() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (_, doc) = s.get("/openapi.json", &s.admin_token).await;
    let schemas = &doc["components"]["schemas"];
    let slug = &schemas["CreateProjectInput"]["properties"]["slug"];
    assert_eq!(slug["maxLength"], 63, "{slug}");
    assert!(slug["pattern"].as_str().unwrap().starts_with('^'));
    let port = &schemas["CreateServiceInput"]["properties"]["port"]["oneOf"][0];
    assert_eq!(
        (port["minimum"].clone(), port["maximum"].clone()),
        (json!(1), json!(65535))
    );
    assert_eq!(schemas["CreateProjectInput"]["additionalProperties"], false);
    assert_eq!(
        schemas["CreateProjectInput"]["required"],
        json!(["name", "slug"])
    );
    let build_pack = &schemas["CreateProjectInput"]["properties"]["buildPack"]["oneOf"][0];
    assert_eq!(build_pack["enum"], json!(["dockerfile", "nixpacks"]));

    let logs = &doc["paths"]["/projects/{id}/logs"]["get"]["parameters"];
    let tail = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tail")
        .expect("tail");
    assert_eq!(tail["schema"]["maximum"], 1000);
    let env_id = doc["paths"]["/projects/{id}/environments/{envId}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envId")
        .expect("envId")
        .clone();
    assert_eq!(env_id["schema"]["format"], "uuid");
    let vars = &doc["paths"]["/projects/{id}/env-vars"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(vars["properties"]["vars"]["minItems"], 1, "{vars}");
    assert_eq!(vars["additionalProperties"], false);
}
