//! The generated REST layer: every /api/v1 row of the route table becomes a
//! route that runs its GraphQL operation in-process and shapes the result
//! into the documented JSON.

mod constraints;
pub mod model;
pub mod openapi;
mod sse;
pub mod table;

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::Executor;
use async_graphql::Value as ConstValue;
use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::{Map, Value, json};

use crate::domain::Ctx;
use crate::error::{Error, status_for_code};
use crate::graphql::Core;
use crate::graphql::plan::ListPlan;
use crate::graphql::query::{MAX_PAGE, Unpaged};
use crate::state::AppState;
use model::SchemaModel;
use table::{Route, RouteTable, VarSource};

/// What the REST handlers need.
#[derive(Clone)]
pub struct RestState {
    pub app: AppState,
    pub core: Core,
    pub rest: Arc<Rest>,
}

/// Builds the routes of the table (paths relative to /api/v1).
pub fn router(state: RestState) -> Router {
    let table = &state.rest.table;
    let mut by_path: HashMap<String, MethodRouter<RestState>> = HashMap::new();
    for (index, route) in table.routes.iter().enumerate() {
        for method in &route.spec.methods {
            let filter = match method.as_str() {
                "GET" => MethodFilter::GET,
                "POST" => MethodFilter::POST,
                "PUT" => MethodFilter::PUT,
                "PATCH" => MethodFilter::PATCH,
                _ => MethodFilter::DELETE,
            };
            let handler = move |state: State<RestState>,
                                ctx: Extension<Ctx>,
                                method: Method,
                                uri: OriginalUri,
                                headers: HeaderMap,
                                path: Path<HashMap<String, String>>,
                                query: Query<Vec<(String, String)>>,
                                body: Bytes| {
                let call = Call {
                    index,
                    method,
                    uri,
                    headers,
                };
                handle(state, ctx, call, path, query, body)
            };
            let entry = by_path.remove(&route.axum_path).unwrap_or_default();
            by_path.insert(route.axum_path.clone(), entry.merge(on(filter, handler)));
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |r, (path, mr)| r.route(&path, mr))
        .with_state(state)
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

/// JSON has one number type: `3.0` is the integer 3 (as JSON Schema says),
/// which GraphQL's `Int` would refuse. Integral numbers become integers;
/// `Float` inputs take integers as they are.
fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = json!(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// Collects the operation's variables from path, query string and body.
fn variables(
    rest: &Rest,
    route: &Route,
    method: &Method,
    path: HashMap<String, String>,
    query: Vec<(String, String)>,
    body: &Bytes,
) -> Result<Map<String, Value>, Error> {
    let model = &rest.model;
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
        let mut parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| Error::bad_request(format!("malformed JSON body: {e}")))?
        };
        integral_numbers(&mut parsed);
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
fn log_lines(result: &ConstValue) -> String {
    let mut out = String::new();
    let ConstValue::List(lines) = result else {
        return out;
    };
    for line in lines {
        let field = |k: &str| match line {
            ConstValue::Object(m) => match m.get(k) {
                Some(ConstValue::String(s)) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
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
    let mut resp = (
        status,
        axum::Json(json!({ "error": message, "details": details })),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Runs the route's operation; `unpaged` makes its connection return
/// every row at once.
async fn execute(
    s: &RestState,
    route: &Route,
    ctx: &Ctx,
    vars: Map<String, Value>,
    unpaged: bool,
) -> Result<ConstValue, Response> {
    let mut req = async_graphql::Request::new(route.text.clone())
        .variables(async_graphql::Variables::from_json(Value::Object(vars)));
    if unpaged {
        req = req.data(Unpaged);
    }
    let req = crate::graphql::with_request_data(req, s.app.db(), ctx.clone());
    let resp = s.core.execute(req).await;
    if !resp.errors.is_empty() {
        return Err(error_response(&resp.errors));
    }
    Ok(match resp.data {
        ConstValue::Object(mut m) => m.swap_remove("result").unwrap_or(ConstValue::Null),
        _ => ConstValue::Null,
    })
}

/// A JSON answer written straight from the operation's result.
fn json(status: StatusCode, value: &ConstValue) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(status, body),
        Err(e) => Error::internal(e).into_response(),
    }
}

/// An answer of JSON already written.
fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Takes one field out of an object result.
fn take(value: &mut ConstValue, key: &str) -> ConstValue {
    match value {
        ConstValue::Object(m) => m.swap_remove(key).unwrap_or(ConstValue::Null),
        _ => ConstValue::Null,
    }
}

/// Which row of the table a request hit, and how.
struct Call {
    index: usize,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
}

/// `?limit=&cursor=` of a paginated endpoint, when the client asks for pages.
fn page_request(query: &[(String, String)]) -> Result<Option<(i32, Option<String>)>, Error> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (limit, cursor) = (get("limit"), get("cursor"));
    if limit.is_none() && cursor.is_none() {
        return Ok(None);
    }
    let limit = match limit {
        None => MAX_PAGE,
        Some(l) => l
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                Error::field(
                    "limit",
                    format!("must be an integer between 1 and {MAX_PAGE}"),
                )
            })?,
    };
    let cursor = match cursor {
        None | Some("") => None,
        Some(c) => {
            uuid::Uuid::parse_str(c)
                .map_err(|_| Error::field("cursor", "is not a cursor this endpoint returned"))?;
            Some(c.to_string())
        }
    };
    Ok(Some((limit, cursor)))
}

/// One route's request: charged against the rate limits (its operation's
/// cost), then answered, with where the caller stands in the headers.
async fn handle(
    State(s): State<RestState>,
    Extension(ctx): Extension<Ctx>,
    call: Call,
    Path(path): Path<HashMap<String, String>>,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let cost = s.rest.costs[call.index];
    match s.app.rate_limits().charge(&ctx.principal, cost) {
        None => answer(&s, ctx, call, path, query, body).await,
        Some(Ok(standing)) => {
            let mut resp = answer(&s, ctx, call, path, query, body).await;
            standing.apply(resp.headers_mut());
            resp
        }
        Some(Err(refused)) => {
            let mut headers = axum::http::HeaderMap::new();
            refused.apply(&mut headers);
            let mut resp = refused.error.into_response();
            resp.headers_mut().extend(headers);
            resp
        }
    }
}

async fn answer(
    s: &RestState,
    ctx: Ctx,
    call: Call,
    path: HashMap<String, String>,
    query: Vec<(String, String)>,
    body: Bytes,
) -> Response {
    let route = &s.rest.table.routes[call.index];
    let page = match route
        .spec
        .paginate
        .then(|| page_request(&query))
        .transpose()
    {
        Ok(p) => p.flatten(),
        Err(e) => return e.into_response(),
    };
    let stream = route
        .spec
        .render
        .is_some()
        .then(|| sse::wanted(&query, &call.headers))
        .flatten();
    let mut vars = match variables(&s.rest, route, &call.method, path, query, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let status = StatusCode::from_u16(route.spec.status).unwrap_or(StatusCode::OK);
    if let Some(after) = stream {
        return match sse::logs(s, &ctx, vars, after).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
    }
    if !route.spec.paginate {
        return match execute(s, route, &ctx, vars, false).await {
            Ok(result) if route.spec.render.is_some() => (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                log_lines(&result),
            )
                .into_response(),
            Ok(_) if status == StatusCode::NO_CONTENT => status.into_response(),
            Ok(mut result) => {
                if route.spec.omit_null
                    && let ConstValue::Object(m) = &mut result
                {
                    m.retain(|_, v| *v != ConstValue::Null);
                }
                let created = match (&route.spec.created_flag, &mut result) {
                    (Some(flag), ConstValue::Object(m)) => m.shift_remove(flag.as_str()),
                    _ => None,
                };
                let status = match created {
                    Some(ConstValue::Boolean(false)) => StatusCode::OK,
                    _ => status,
                };
                json(status, &result)
            }
            Err(resp) => resp,
        };
    }
    // A connection behind a bare-array endpoint.
    vars.remove("after");
    let Some((limit, cursor)) = page else {
        // Every node, read in one pass: written straight from the rows when
        // the route's selection allows, else by the executor.
        if let Some(plan) = &s.rest.lists[call.index] {
            return match plan.write_all(s.app.reads(), &ctx).await {
                Ok(body) => json_bytes(status, body),
                Err(e) => e.into_response(),
            };
        }
        vars.insert("first".into(), json!(MAX_PAGE));
        return match execute(s, route, &ctx, vars, true).await {
            Ok(mut result) => json(status, &take(&mut result, "nodes")),
            Err(resp) => resp,
        };
    };
    vars.insert("first".into(), json!(limit));
    if let Some(c) = cursor {
        vars.insert("after".into(), json!(c));
    }
    let mut result = match execute(s, route, &ctx, vars, false).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut info = take(&mut result, "pageInfo");
    let mut resp = json(status, &take(&mut result, "nodes"));
    if let (ConstValue::Boolean(true), ConstValue::String(end)) =
        (take(&mut info, "hasNextPage"), take(&mut info, "endCursor"))
    {
        let link = format!(
            "<{}?limit={limit}&cursor={end}>; rel=\"next\"",
            call.uri.path()
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

/// The compiled table, the schema model and the OpenAPI document.
pub struct Rest {
    pub table: RouteTable,
    pub model: SchemaModel,
    pub openapi: Value,
    /// Per route: how a bare-array list is written in one pass.
    pub lists: Vec<Option<ListPlan>>,
    /// Per route: what a request costs against the rate limits.
    pub costs: Vec<u64>,
}

impl Rest {
    /// Compiles the committed table against `schema`; fails on any mismatch.
    pub async fn load(schema: &crate::graphql::AppSchema) -> Result<Arc<Rest>, Error> {
        let model = SchemaModel::introspect(schema)
            .await
            .map_err(Error::internal)?;
        let table = RouteTable::load(table::SOURCE, &model).map_err(Error::internal)?;
        let openapi = openapi::document(&table, &model);
        let lists = table
            .routes
            .iter()
            .map(|r| {
                r.spec
                    .paginate
                    .then(|| ListPlan::compile(&r.document))
                    .flatten()
            })
            .collect();
        let costs = table
            .routes
            .iter()
            .map(|r| crate::graphql::size::measure(&r.document).0.max(1))
            .collect();
        Ok(Arc::new(Rest {
            table,
            model,
            openapi,
            lists,
            costs,
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
