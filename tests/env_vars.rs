//! Env vars (11–12) and the config store (49–53) over real HTTP.

mod common;

use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

const SECRET: &str = "s3cr3t-value-that-must-never-leak-7f1c";
const PLAIN: &str = "plain-visible-value-42";

async fn secrets_are_masked_everywhere(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "app").await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/projects/{id}/env-vars");

    let (status, set) = s
        .post(
            &path,
            t,
            json!({"envType": "production", "vars": [
                {"key": "DATABASE_URL", "value": SECRET, "secret": true},
                {"key": "PORT", "value": PLAIN, "secret": false},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    let expected = json!([
        {"key": "DATABASE_URL", "value": "***", "secret": true},
        {"key": "PORT", "value": PLAIN, "secret": false},
    ]);
    assert_eq!(set, expected);
    for query in ["", "?envType=production"] {
        let (status, list) = s.get(&format!("{path}{query}"), t).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list, expected);
    }
    let prod = p["environments"][0]["id"].as_str().unwrap();
    let (_, by_id) = s.get(&format!("{path}?envId={prod}"), t).await;
    assert_eq!(by_id, expected);

    // GraphQL masks too.
    let q = s
        .graphql(
            t,
            "query($id: String!) { envVars(projectId: $id) { key value secret } project(id: $id) { envVars { value } } }",
            json!({"id": id}),
        )
        .await;
    let text = q.to_string();
    assert!(!text.contains(SECRET), "{text}");
    assert_eq!(q["data"]["envVars"][0]["value"], "***");

    // Re-setting a secret without `secret` keeps it secret.
    let (_, again) = s
        .post(&path, t, json!({"envType": "production", "vars": [{"key": "DATABASE_URL", "value": "rotated-secret-value"}]}))
        .await;
    assert_eq!(
        again,
        json!([{"key": "DATABASE_URL", "value": "***", "secret": true}])
    );

    // Nothing in the raw store holds a value in plaintext.
    let db = s.app.db();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT key, value_ciphertext FROM env_vars",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let sealed: String = row.try_get("", "value_ciphertext").unwrap();
        assert!(sealed.starts_with("v1:"), "{sealed}");
        for plain in [SECRET, PLAIN, "rotated-secret-value"] {
            assert!(!sealed.contains(plain));
        }
    }
    if let Backend::Sqlite = backend_kind(&s) {
        // The database files themselves, WAL included.
        for file in ["sylphx.db", "sylphx.db-wal"] {
            if let Ok(bytes) = std::fs::read(s.dir.path().join(file)) {
                let hay = String::from_utf8_lossy(&bytes);
                for plain in [SECRET, PLAIN, "rotated-secret-value"] {
                    assert!(!hay.contains(plain), "{plain} found in {file}");
                }
            }
        }
    }
    // The audit log names keys, never values.
    let audit = s
        .graphql(
            t,
            "{ auditEvents(first: 50) { nodes { action details } } }",
            json!({}),
        )
        .await;
    let text = audit.to_string();
    assert!(
        text.contains("env_vars.set") && text.contains("DATABASE_URL"),
        "{text}"
    );
    assert!(!text.contains(SECRET) && !text.contains(PLAIN));
}

fn backend_kind(s: &TestServer) -> Backend {
    if s.database_url.starts_with("sqlite:") {
        Backend::Sqlite
    } else {
        Backend::Postgres(s.database_url.clone())
    }
}

async fn env_vars_are_per_environment(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "app").await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/projects/{id}/env-vars");
    let (status, staging) = s
        .post(
            &format!("/projects/{id}/environments"),
            t,
            json!({"name": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    s.post(
        &path,
        t,
        json!({"envType": "production", "vars": [{"key": "MODE", "value": "prod"}]}),
    )
    .await;
    s.post(&path, t, json!({"envType": "staging", "vars": [{"key": "MODE", "value": "stage"}, {"key": "EXTRA", "value": "1"}]})).await;

    let (_, prod) = s.get(&path, t).await;
    assert_eq!(
        prod,
        json!([{"key": "MODE", "value": "prod", "secret": false}])
    );
    let (_, stage) = s.get(&format!("{path}?envType=staging"), t).await;
    assert_eq!(
        stage,
        json!([{"key": "EXTRA", "value": "1", "secret": false}, {"key": "MODE", "value": "stage", "secret": false}])
    );
    let (_, by_id) = s
        .get(
            &format!("{path}?envId={}", staging["id"].as_str().unwrap()),
            t,
        )
        .await;
    assert_eq!(by_id, stage);

    // Upsert replaces the value and keeps the others.
    s.post(
        &path,
        t,
        json!({"envType": "staging", "vars": [{"key": "MODE", "value": "stage-2"}]}),
    )
    .await;
    let (_, stage) = s.get(&format!("{path}?envType=staging"), t).await;
    assert_eq!(stage[1]["value"], "stage-2");
    assert_eq!(stage.as_array().unwrap().len(), 2);

    // Deleting a project deletes its env vars.
    s.call(Method::DELETE, &format!("/projects/{id}"), t, None)
        .await;
    let db = s.app.db();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM env_vars",
        ))
        .await
        .unwrap();
    assert!(rows.is_empty());
}

async fn bad_env_var_input_changes_nothing(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "app").await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/projects/{id}/env-vars");
    s.post(
        &path,
        t,
        json!({"envType": "production", "vars": [{"key": "KEEP", "value": "1"}]}),
    )
    .await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"vars": [{"key": "A", "value": "1"}]}),
            StatusCode::BAD_REQUEST,
            "envType",
        ),
        (
            json!({"envType": "production"}),
            StatusCode::BAD_REQUEST,
            "vars",
        ),
        (
            json!({"envType": "production", "vars": []}),
            StatusCode::BAD_REQUEST,
            "vars",
        ),
        (
            json!({"envType": "production", "vars": [{"key": "OK", "value": "1"}, {"key": "1BAD", "value": "x"}]}),
            StatusCode::BAD_REQUEST,
            "vars[1].key",
        ),
        (
            json!({"envType": "production", "vars": [{"key": "A", "value": "1"}, {"key": "A", "value": "2"}]}),
            StatusCode::BAD_REQUEST,
            "vars[1].key",
        ),
        (
            json!({"envType": "production", "vars": [{"key": "A"}]}),
            StatusCode::BAD_REQUEST,
            "value",
        ),
        (
            json!({"envType": "production", "vars": [{"key": "A", "value": 5}]}),
            StatusCode::BAD_REQUEST,
            "value",
        ),
        (
            json!({"envType": "nope", "vars": [{"key": "A", "value": "1"}]}),
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            json!({"envType": "production", "vars": [{"key": "A", "value": "1"}], "colour": 1}),
            StatusCode::BAD_REQUEST,
            "colour",
        ),
    ];
    for (body, status, field) in cases {
        let (got, resp) = s.post(&path, t, body.clone()).await;
        assert_eq!(got, status, "{body}: {resp}");
        if !field.is_empty() {
            assert_eq!(resp["details"]["field"], field, "{body}: {resp}");
        }
    }
    let (status, resp) = s.get(&format!("{path}?envId=xyz"), t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["details"]["field"], "envId");
    let (status, _) = s.get(&format!("{path}?envType=staging"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = s.get(&path, t).await;
    assert_eq!(
        list,
        json!([{"key": "KEEP", "value": "1", "secret": false}])
    );
}

async fn config_store(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = &s.admin_token;
    let p = s.project(t, "app").await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/projects/{id}/config");

    let (status, list) = s.get(&path, t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));

    let (status, all) = s
        .post(&path, t, json!({"entries": [{"key": "FEATURE_X", "value": "true"}, {"key": "MAX_RETRIES", "value": "3"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let expected =
        json!([{"key": "FEATURE_X", "value": "true"}, {"key": "MAX_RETRIES", "value": "3"}]);
    assert_eq!(all, expected);
    let (_, list) = s.get(&path, t).await;
    assert_eq!(list, expected);

    // PUT on the collection upserts too.
    let (status, all) = s
        .call(
            Method::PUT,
            &path,
            t,
            Some(json!({"entries": [{"key": "MAX_RETRIES", "value": "5"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        all,
        json!([{"key": "FEATURE_X", "value": "true"}, {"key": "MAX_RETRIES", "value": "5"}])
    );

    let (status, one) = s.get(&format!("{path}/FEATURE_X"), t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, json!({"key": "FEATURE_X", "value": "true"}));
    let (status, one) = s
        .call(
            Method::PUT,
            &format!("{path}/feature.y"),
            t,
            Some(json!({"value": "on"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, json!({"key": "feature.y", "value": "on"}));
    let (status, one) = s
        .call(
            Method::PUT,
            &format!("{path}/feature.y"),
            t,
            Some(json!({"value": "off"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["value"], "off");

    let (status, del) = s
        .call(Method::DELETE, &format!("{path}/FEATURE_X"), t, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(del, json!({"key": "FEATURE_X", "deleted": true}));
    let (status, _) = s.get(&format!("{path}/FEATURE_X"), t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/FEATURE_X"), t, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad input.
    let (status, resp) = s
        .call(
            Method::PUT,
            &format!("{path}/bad%20key"),
            t,
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["details"]["field"], "key");
    let (status, resp) = s
        .call(Method::PUT, &format!("{path}/k"), t, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["details"]["field"], "value");
    let (status, resp) = s
        .post(
            &path,
            t,
            json!({"entries": [{"key": "ok", "value": "1"}, {"key": "no way", "value": "1"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["details"]["field"], "entries[1].key");
    let (_, list) = s.get(&path, t).await;
    assert_eq!(
        list,
        json!([{"key": "MAX_RETRIES", "value": "5"}, {"key": "feature.y", "value": "off"}])
    );
}

backend_tests!(
    secrets_are_masked_everywhere,
    env_vars_are_per_environment,
    bad_env_var_input_changes_nothing,
    config_store,
);
