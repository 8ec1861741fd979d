//! The generated REST layer: every /api/v1 row of the route table becomes a
//! route that runs its GraphQL operation in-process and shapes the result
//! into the documented JSON.

pub mod model;
pub mod openapi;
pub mod table;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::{Map, Value, json};

use crate::domain::Ctx;
use crate::error::{Error, status_for_code};
use crate::graphql::query::MAX_PAGE;
use crate::server::AppState;
use model::SchemaModel;
use table::{Route, RouteTable, VarSource};

/// Builds the routes of the table (paths relative to /api/v1).
pub fn router(table: &RouteTable) -> Router<AppState> {
    let mut by_path: HashMap<String, MethodRouter<AppState>> = HashMap::new();
    for (index, route) in table.routes.iter().enumerate() {
        for method in &route.spec.methods {
            let filter = match method.as_str() {
                "GET" => MethodFilter::GET,
                "POST" => MethodFilter::POST,
                "PUT" => MethodFilter::PUT,
                "PATCH" => MethodFilter::PATCH,
                _ => MethodFilter::DELETE,
            };
            let handler = move |state: State<AppState>,
                                ctx: Extension<Ctx>,
                                method: Method,
                                path: Path<HashMap<String, String>>,
                                query: Query<Vec<(String, String)>>,
                                body: Bytes| {
                handle(state, ctx, index, method, path, query, body)
            };
            let entry = by_path.remove(&route.axum_path).unwrap_or_default();
            by_path.insert(route.axum_path.clone(), entry.merge(on(filter, handler)));
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, mr)| r.route(&path, mr))
}

/// Turns a query-string or path value into the variable's GraphQL type.
fn coerce(model: &SchemaModel, name: &str, ty: &model::TypeRef, raw: &str) -> Result<Value, Error> {
    let inner = match ty {
        model::TypeRef::NonNull(t) => t.as_ref(),
        t => t,
    };
    let model::TypeRef::Named(type_name) = inner else {
        return Err(Error::field(name, "cannot be given in the URL"));
    };
    match type_name.as_str() {
        "Int" => raw
            .parse::<i32>()
            .map(|n| json!(n))
            .map_err(|_| Error::field(name, "must be an integer")),
        "Float" => raw
            .parse::<f64>()
            .map(|n| json!(n))
            .map_err(|_| Error::field(name, "must be a number")),
        "Boolean" => match raw {
            "" | "true" | "1" => Ok(json!(true)),
            "false" | "0" => Ok(json!(false)),
            _ => Err(Error::field(name, "must be true or false")),
        },
        other => match model.get(other).map(|t| t.kind.as_str()) {
            Some("SCALAR" | "ENUM") => Ok(json!(raw)),
            _ => Err(Error::field(name, "cannot be given in the URL")),
        },
    }
}

/// Collects the operation's variables from path, query string and body.
fn variables(
    app: &AppState,
    route: &Route,
    method: &Method,
    path: HashMap<String, String>,
    query: Vec<(String, String)>,
    body: &Bytes,
) -> Result<Map<String, Value>, Error> {
    let model = &app.rest().model;
    let mut vars = Map::new();
    for v in route.path_params() {
        let raw = path.get(&v.name).map(String::as_str).unwrap_or_default();
        vars.insert(v.name.clone(), coerce(model, &v.name, &v.ty, raw)?);
    }
    for (key, raw) in query {
        let Some(v) = route.variables.iter().find(|v| v.name == key) else {
            continue; // Unknown query parameters are ignored, as HTTP clients expect.
        };
        if matches!(v.source, VarSource::Query | VarSource::BodyField) && !vars.contains_key(&key) {
            vars.insert(key.clone(), coerce(model, &key, &v.ty, &raw)?);
        }
    }
    if route.has_body(method.as_str()) {
        let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| Error::bad_request(format!("malformed JSON body: {e}")))?
        };
        let Value::Object(fields) = parsed else {
            return Err(Error::bad_request("the request body must be a JSON object"));
        };
        if let Some(target) = &route.spec.body {
            vars.insert(target.clone(), Value::Object(fields));
        } else {
            for (key, value) in fields {
                match route.variables.iter().find(|v| v.name == key) {
                    Some(v) if v.source == VarSource::BodyField => {
                        vars.entry(key).or_insert(value);
                    }
                    Some(_) => {}
                    None => return Err(Error::field(&key, "unknown field")),
                }
            }
        }
    }
    for v in &route.variables {
        let missing = vars.get(&v.name).is_none_or(Value::is_null);
        if missing && v.ty.is_non_null() && !v.has_default {
            return Err(Error::field(&v.name, "is required"));
        }
    }
    Ok(vars)
}

/// Finds the field named by one of GraphQL's own input errors, such as
/// `Invalid value for argument "input.buildPack", …` or
/// `… field "name" of type "String!" is required but not provided`.
fn field_of_validation_error(message: &str) -> Option<String> {
    let quoted_after = |marker: &str| {
        let rest = &message[message.find(marker)? + marker.len()..];
        rest.split('"').next().map(str::to_string)
    };
    let name = quoted_after("unknown field \"")
        .or_else(|| quoted_after("field \""))
        .or_else(|| quoted_after("argument \""))
        .or_else(|| quoted_after("Variable \"$"))?;
    let last = name.rsplit('.').next().unwrap_or(&name).to_string();
    (!last.is_empty() && last != "input").then_some(last)
}

/// `2026-03-09T11:00:00Z [web] message` per entry, newline-terminated.
fn log_lines(result: &Value) -> String {
    let mut out = String::new();
    for line in result.as_array().into_iter().flatten() {
        let field = |k: &str| line[k].as_str().unwrap_or_default().to_string();
        out.push_str(&format!(
            "{} [{}] {}\n",
            field("ts"),
            field("source"),
            field("msg")
        ));
    }
    out
}

/// Maps GraphQL errors onto one REST error: the most severe status wins.
fn error_response(errors: &[async_graphql::ServerError]) -> Response {
    let ranked = errors.iter().map(|e| {
        let code = e
            .extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .and_then(|c| match c {
                async_graphql::Value::String(s) => Some(s.clone()),
                _ => None,
            });
        // Errors without a code come from GraphQL's own input validation.
        let status = code
            .as_deref()
            .map(status_for_code)
            .unwrap_or(StatusCode::BAD_REQUEST);
        (status, e)
    });
    let Some((status, err)) = ranked.max_by_key(|(s, _)| s.as_u16()) else {
        return Error::internal("empty error list").into_response();
    };
    let details = err
        .extensions
        .as_ref()
        .and_then(|x| x.get("details"))
        .and_then(|d| d.clone().into_json().ok())
        .or_else(|| field_of_validation_error(&err.message).map(|f| json!({ "field": f })))
        .unwrap_or(Value::Null);
    let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
        "Internal server error".to_string()
    } else {
        err.message.clone()
    };
    (
        status,
        axum::Json(json!({ "error": message, "details": details })),
    )
        .into_response()
}

async fn execute(
    app: &AppState,
    route: &Route,
    ctx: &Ctx,
    vars: Map<String, Value>,
) -> Result<Value, Response> {
    let mut req = async_graphql::Request::new(route.text.clone())
        .variables(async_graphql::Variables::from_json(Value::Object(vars)));
    req.set_parsed_query(route.document.clone());
    let req = crate::graphql::with_request_data(req, app.db(), ctx.clone());
    let resp = app.schema().execute(req).await;
    if !resp.errors.is_empty() {
        return Err(error_response(&resp.errors));
    }
    let mut data = resp
        .data
        .into_json()
        .map_err(|e| Error::internal(e).into_response())?;
    Ok(data["result"].take())
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    State(app): State<AppState>,
    Extension(ctx): Extension<Ctx>,
    index: usize,
    method: Method,
    Path(path): Path<HashMap<String, String>>,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let rest = app.rest();
    let route = &rest.table.routes[index];
    let mut vars = match variables(&app, route, &method, path, query, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let status = StatusCode::from_u16(route.spec.status).unwrap_or(StatusCode::OK);
    if !route.spec.paginate {
        return match execute(&app, route, &ctx, vars).await {
            Ok(result) if route.spec.render.is_some() => (
                status,
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8",
                )],
                log_lines(&result),
            )
                .into_response(),
            Ok(result) => (status, axum::Json(result)).into_response(),
            Err(resp) => resp,
        };
    }
    // A connection behind a bare-array endpoint: return every page.
    let mut all = Vec::new();
    vars.insert("first".into(), json!(MAX_PAGE));
    vars.remove("after");
    loop {
        let mut page = match execute(&app, route, &ctx, vars.clone()).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        if let Value::Array(nodes) = page["nodes"].take() {
            all.extend(nodes);
        }
        match (
            &page["pageInfo"]["hasNextPage"],
            &page["pageInfo"]["endCursor"],
        ) {
            (Value::Bool(true), Value::String(c)) => {
                vars.insert("after".into(), json!(c));
            }
            _ => break,
        }
    }
    (status, axum::Json(Value::Array(all))).into_response()
}

/// The compiled table, the schema model and the OpenAPI document.
pub struct Rest {
    pub table: RouteTable,
    pub model: SchemaModel,
    pub openapi: Value,
}

impl Rest {
    /// Compiles the committed table against `schema`; fails on any mismatch.
    pub async fn load(schema: &crate::graphql::AppSchema) -> Result<Arc<Rest>, Error> {
        let model = SchemaModel::introspect(schema)
            .await
            .map_err(Error::internal)?;
        let table = RouteTable::load(table::SOURCE, &model).map_err(Error::internal)?;
        let openapi = openapi::document(&table, &model);
        Ok(Arc::new(Rest {
            table,
            model,
            openapi,
        }))
    }
}

/// The exported schema files: the SDL and the pretty-printed OpenAPI document.
pub async fn export() -> Result<(String, String), Error> {
    let schema = crate::graphql::bare();
    let rest = Rest::load(&schema).await?;
    let openapi = serde_json::to_string_pretty(&rest.openapi).map_err(Error::internal)? + "\n";
    Ok((crate::graphql::sdl(), openapi))
}

#[cfg(test)]
mod tests {
    use super::field_of_validation_error as field;

    #[test]
    fn validation_errors_name_their_field() {
        assert_eq!(
            field(
                r#"Invalid value for argument "input.buildPack", enumeration type "BuildPack" does not contain the value "x""#
            ),
            Some("buildPack".into())
        );
        assert_eq!(
            field(
                r#"Invalid value for argument "input", field "name" of type "String!" is required but not provided"#
            ),
            Some("name".into())
        );
        assert_eq!(
            field(
                r#"Invalid value for argument "input", unknown field "colour" of type "CreateProjectInput""#
            ),
            Some("colour".into())
        );
        assert_eq!(
            field(r#"Variable "$vars" of required type "[EnvVarInput!]!" was not provided."#),
            Some("vars".into())
        );
        assert_eq!(field("something else"), None);
    }
}
