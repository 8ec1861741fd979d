//! OpenAPI 3.1, generated from the route table and the schema: parameters
//! and bodies from the operations' variables, responses from their
//! selection sets.

use std::collections::BTreeMap;

use async_graphql::parser::types::{DocumentOperations, Selection, SelectionSet};
use serde_json::{Map, Value, json};

use super::constraints;
use super::model::{SchemaModel, TypeRef};
use super::table::{Route, RouteTable, VarSource};

struct Gen<'a> {
    model: &'a SchemaModel,
    components: BTreeMap<String, Value>,
}

fn nullable(schema: Value) -> Value {
    json!({ "oneOf": [schema, { "type": "null" }] })
}

impl Gen<'_> {
    fn scalar(&self, name: &str) -> Value {
        match name {
            "String" | "ID" => json!({ "type": "string" }),
            "Int" => json!({ "type": "integer", "format": "int32" }),
            "Float" => json!({ "type": "number" }),
            "Boolean" => json!({ "type": "boolean" }),
            "DateTime" => json!({ "type": "string", "format": "date-time" }),
            "JSON" => json!({}),
            _ => match self.model.get(name) {
                Some(t) if t.kind == "ENUM" => json!({ "type": "string", "enum": t.enum_values }),
                _ => json!({ "type": "string" }),
            },
        }
    }

    /// Schema of an input type; input objects become components.
    fn input(&mut self, ty: &TypeRef) -> Value {
        match ty {
            TypeRef::NonNull(inner) => self.input_inner(inner),
            other => nullable(self.input_inner(other)),
        }
    }

    fn input_inner(&mut self, ty: &TypeRef) -> Value {
        match ty {
            TypeRef::NonNull(inner) => self.input_inner(inner),
            TypeRef::List(inner) => json!({ "type": "array", "items": self.input(inner) }),
            TypeRef::Named(name) => {
                let Some(info) = self.model.get(name).cloned() else {
                    return json!({});
                };
                if info.kind != "INPUT_OBJECT" {
                    return self.scalar(name);
                }
                if !self.components.contains_key(name) {
                    self.components.insert(name.clone(), json!({}));
                    let mut props = Map::new();
                    let mut required = Vec::new();
                    for f in &info.input_fields {
                        let schema = self.input(&f.ty);
                        let rule = constraints::input_field(name, &f.name);
                        props.insert(f.name.clone(), constraints::apply(schema, rule));
                        if f.ty.is_non_null() && !f.has_default {
                            required.push(f.name.clone());
                        }
                    }
                    let schema = json!({
                        "type": "object",
                        "properties": props,
                        "required": required,
                        "additionalProperties": false,
                    });
                    let schema = constraints::apply(schema, constraints::input_object(name));
                    self.components.insert(name.clone(), schema);
                }
                json!({ "$ref": format!("#/components/schemas/{name}") })
            }
        }
    }

    /// Schema of a selection on an output type.
    fn output(
        &self,
        doc: &DocumentOperations,
        route: &Route,
        ty: &TypeRef,
        set: &SelectionSet,
    ) -> Value {
        match ty {
            TypeRef::NonNull(inner) => self.output_inner(doc, route, inner, set),
            other => nullable(self.output_inner(doc, route, other, set)),
        }
    }

    fn output_inner(
        &self,
        doc: &DocumentOperations,
        route: &Route,
        ty: &TypeRef,
        set: &SelectionSet,
    ) -> Value {
        match ty {
            TypeRef::NonNull(inner) => self.output_inner(doc, route, inner, set),
            TypeRef::List(inner) => {
                json!({ "type": "array", "items": self.output(doc, route, inner, set) })
            }
            TypeRef::Named(name) if set.items.is_empty() => self.scalar(name),
            TypeRef::Named(name) => {
                let mut props = Map::new();
                let mut required = Vec::new();
                self.collect(doc, route, name, set, &mut props, &mut required);
                json!({ "type": "object", "properties": props, "required": required })
            }
        }
    }

    fn collect(
        &self,
        doc: &DocumentOperations,
        route: &Route,
        type_name: &str,
        set: &SelectionSet,
        props: &mut Map<String, Value>,
        required: &mut Vec<String>,
    ) {
        let Some(info) = self.model.get(type_name) else {
            return;
        };
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    let name = f.node.name.node.as_str();
                    let Some(field) = info.field(name) else {
                        continue;
                    };
                    let key = f
                        .node
                        .alias
                        .as_ref()
                        .map(|a| a.node.to_string())
                        .unwrap_or_else(|| name.to_string());
                    let mut schema = self.output(doc, route, &field.ty, &f.node.selection_set.node);
                    if let (Some(d), Some(obj)) = (&field.description, schema.as_object_mut()) {
                        obj.insert("description".into(), json!(d));
                    }
                    props.insert(key.clone(), schema);
                    required.push(key);
                }
                Selection::FragmentSpread(s) => {
                    if let Some(frag) = route.document.fragments.get(&s.node.fragment_name.node) {
                        self.collect(
                            doc,
                            route,
                            type_name,
                            &frag.node.selection_set.node,
                            props,
                            required,
                        );
                    }
                }
                Selection::InlineFragment(_) => {}
            }
        }
    }

    fn response(&self, route: &Route) -> Value {
        let DocumentOperations::Single(op) = &route.document.operations else {
            return json!({});
        };
        let root_type = if route.is_mutation {
            &self.model.mutation_type
        } else {
            &self.model.query_type
        };
        let Some(Selection::Field(root)) =
            op.node.selection_set.node.items.first().map(|i| &i.node)
        else {
            return json!({});
        };
        let Some(field) = self
            .model
            .get(root_type)
            .and_then(|t| t.field(&route.root_field))
        else {
            return json!({});
        };
        let schema = self.output(
            &route.document.operations,
            route,
            &field.ty,
            &root.node.selection_set.node,
        );
        if route.spec.paginate {
            // The adapter returns every node as a bare array.
            return schema["properties"]["nodes"].clone();
        }
        if route.spec.omit_null {
            // Fields that are null are left out: only the others are sure.
            let mut schema = schema;
            if let Some(obj) = schema.as_object_mut() {
                let props = obj.get("properties").cloned().unwrap_or_default();
                let sure: Vec<Value> = obj
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|k| {
                        k.as_str()
                            .and_then(|k| props.get(k))
                            .is_some_and(|p| p.get("oneOf").is_none())
                    })
                    .cloned()
                    .collect();
                obj.insert("required".into(), Value::Array(sure));
            }
            return schema;
        }
        schema
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn retry_response(description: &str) -> Value {
    let mut r = error_response(description);
    r["headers"] = json!({
        "Retry-After": { "description": "Seconds to wait before trying again", "schema": { "type": "integer", "minimum": 0 } }
    });
    r
}

/// Headers of every answer while rate limits are on.
fn rate_limit_headers() -> Value {
    let header =
        |d: &str| json!({ "description": d, "schema": { "type": "integer", "minimum": 0 } });
    json!({
        "X-RateLimit-Limit": header("Points per minute: the tighter of the caller's and the organisation's limits"),
        "X-RateLimit-Remaining": header("Points left in this minute"),
        "X-RateLimit-Reset": header("Whole seconds until the minute resets"),
    })
}

/// `GET /rate-limit`: where the caller stands, free of charge.
fn rate_limit_operation() -> Value {
    let count = json!({ "oneOf": [{ "type": "integer", "minimum": 0 }, { "type": "null" }] });
    json!({
        "operationId": "rateLimit",
        "summary": "The caller's rate limit: points per minute, what is left, when it resets. Costs nothing.",
        "tags": ["Rate limits"],
        "responses": {
            "200": {
                "description": "`enabled: false` (and nulls) when rate limits are off",
                "headers": rate_limit_headers(),
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": {
                        "enabled": { "type": "boolean" },
                        "limit": count.clone(),
                        "remaining": count.clone(),
                        "resetSeconds": count,
                        "cost": { "type": "integer", "const": 0 }
                    },
                    "required": ["enabled", "limit", "remaining", "resetSeconds", "cost"]
                } } }
            },
            "401": error_response("Missing, malformed, expired or revoked credentials")
        }
    })
}

fn operation(gen_: &mut Gen<'_>, route: &Route, method: &str) -> Value {
    let mut params = Vec::new();
    let mut body_props = Map::new();
    let mut body_required = Vec::new();
    let mut body_schema = None;
    for v in &route.variables {
        let rule = || constraints::variable(&v.name);
        match v.source {
            VarSource::Path => params.push(json!({
                "name": v.name, "in": "path", "required": true,
                "schema": constraints::apply(gen_.input_inner(&v.ty), rule())
            })),
            VarSource::Query
                if !(route.spec.paginate && (v.name == "first" || v.name == "after")) =>
            {
                params.push(json!({
                    "name": v.name, "in": "query",
                    "required": v.ty.is_non_null() && !v.has_default,
                    "schema": constraints::apply(gen_.input_inner(&v.ty), rule())
                }))
            }
            VarSource::Query => {}
            VarSource::Body => body_schema = Some(gen_.input_inner(&v.ty)),
            VarSource::BodyField => {
                body_props.insert(
                    v.name.clone(),
                    constraints::apply(gen_.input(&v.ty), rule()),
                );
                if v.ty.is_non_null() && !v.has_default {
                    body_required.push(v.name.clone());
                }
            }
        }
    }
    if body_schema.is_none() && !body_props.is_empty() {
        body_schema = Some(json!({
            "type": "object", "properties": body_props, "required": body_required,
            "additionalProperties": false
        }));
    }
    let op_id = if route.spec.methods.len() > 1 && method != route.spec.methods[0] {
        format!(
            "{}{}",
            route.root_field,
            method[..1].to_string() + &method[1..].to_lowercase()
        )
    } else {
        route.root_field.clone()
    };
    let mut op = json!({
        "operationId": op_id,
        "summary": route.spec.summary,
        "tags": [route.spec.tag],
        "x-contract-endpoint": route.spec.n,
        "x-graphql-operation": route.text,
        "parameters": params,
        "responses": {
            route.spec.status.to_string(): if route.spec.status == 204 {
                json!({ "description": "Done; no content" })
            } else if route.spec.render.is_some() {
                json!({
                    "description": "Success: one `<timestamp> [<source>] <message>` line per entry; with `stream=true` (or `Accept: text/event-stream`), Server-Sent Events: the past lines, then each new one, `id:` the line's cursor, `data:` `{cursor, ts, source, level, msg, deploymentId}`, a `: heartbeat` comment every 15 s",
                    "content": {
                        "text/plain": { "schema": { "type": "string" } },
                        "text/event-stream": { "schema": { "type": "string" } }
                    }
                })
            } else {
                json!({
                    "description": "Success",
                    "content": { "application/json": { "schema": gen_.response(route) } }
                })
            },
            "400": error_response("Invalid input; the message names the field"),
            "401": error_response("Missing, malformed, expired or revoked credentials"),
            "403": error_response("Another organisation's resource, or a role that may not do this"),
            "404": error_response("Not found"),
            "429": retry_response("The caller's or the organisation's rate limit is spent; nothing ran"),
            "503": retry_response("The store cannot be reached, or the request ran out of time"),
        }
    });
    if let Some(flag) = &route.spec.created_flag {
        // The flag picks the status and is not part of the answer.
        let created = &mut op["responses"][route.spec.status.to_string()];
        let schema = &mut created["content"]["application/json"]["schema"];
        if let Some(props) = schema["properties"].as_object_mut() {
            props.remove(flag);
        }
        if let Some(required) = schema["required"].as_array_mut() {
            required.retain(|k| k != flag);
        }
        created["description"] = json!("Created");
        let mut changed = created.clone();
        changed["description"] = json!("Changed an existing one");
        changed["headers"] = rate_limit_headers();
        op["responses"]["200"] = changed;
    }
    op["responses"][route.spec.status.to_string()]["headers"] = rate_limit_headers();
    if route.spec.render.is_some() {
        let params = op["parameters"].as_array_mut().expect("array");
        params.push(json!({
            "name": "stream", "in": "query", "required": false,
            "description": "Follow the logs as Server-Sent Events instead of answering the last lines",
            "schema": { "type": "boolean" }
        }));
        params.push(json!({
            "name": "after", "in": "query", "required": false,
            "description": "With `stream`: every kept line after this cursor (as `Last-Event-ID`)",
            "schema": { "type": "string", "pattern": "^[0-9]{1,19}$" }
        }));
        params.push(json!({
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "With `stream`: resume after this event (a line's cursor)",
            "schema": { "type": "string", "pattern": "^[0-9]{1,19}$" }
        }));
    }
    if route.spec.paginate {
        let params = op["parameters"].as_array_mut().expect("array");
        params.push(json!({
            "name": "limit", "in": "query", "required": false,
            "description": "Answer one page of at most this many items (without it: every item)",
            "schema": { "type": "integer", "minimum": 1, "maximum": crate::graphql::query::MAX_PAGE }
        }));
        params.push(json!({
            "name": "cursor", "in": "query", "required": false,
            "description": "Where the page starts: the `cursor` of the previous page's `Link` header",
            "schema": { "type": "string", "format": "uuid" }
        }));
        op["responses"][route.spec.status.to_string()]["headers"]["Link"] = json!({
            "description": "With `limit`, when more items follow: `<…?limit=N&cursor=…>; rel=\"next\"`",
            "schema": { "type": "string" }
        });
    }
    if route.is_mutation {
        let responses = op["responses"].as_object_mut().expect("object");
        responses.insert(
            "409".into(),
            error_response("Conflict, e.g. a slug already taken"),
        );
        responses.insert(
            "422".into(),
            error_response("Idempotency-Key reused with a different request"),
        );
        op["parameters"].as_array_mut().expect("array").push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Replays the first response for 24 hours instead of repeating the work",
            "schema": { "type": "string", "maxLength": 255 }
        }));
    }
    if let (Some(schema), true) = (body_schema, route.has_body(method)) {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } }
        });
    }
    op
}

/// The public health endpoints and the GitHub webhook.
fn public_operations() -> Vec<(&'static str, &'static str, Value)> {
    let state = json!({ "type": "string", "enum": ["ok", "down", "disabled"] });
    let health = json!({
        "type": "object",
        "properties": {
            "status": { "type": "string", "enum": ["healthy", "unhealthy"] },
            "services": {
                "type": "object",
                "properties": { "database": state, "kubernetes": state, "storage": state },
                "required": ["database", "kubernetes", "storage"]
            },
            "timestamp": { "type": "string", "format": "date-time" },
            "error": { "type": "string", "description": "When unhealthy: which parts are down" },
            "details": { "type": "object", "description": "When unhealthy: why, per part", "additionalProperties": { "type": "string" } }
        },
        "required": ["status", "services", "timestamp"]
    });
    let runners = json!({
        "type": "object",
        "properties": {
            "runners": { "type": "array", "items": {
                "type": "object",
                "properties": {
                    "name": { "type": "string" },
                    "status": { "type": "string", "enum": ["idle", "busy", "offline"] },
                    "labels": { "type": "array", "items": { "type": "string" } }
                },
                "required": ["name", "status", "labels"]
            } },
            "summary": {
                "type": "object",
                "properties": {
                    "idle": { "type": "integer" }, "busy": { "type": "integer" }, "offline": { "type": "integer" }
                },
                "required": ["idle", "busy", "offline"]
            }
        },
        "required": ["runners", "summary"]
    });
    let json_body = |description: &str, schema: Value| json!({ "description": description, "content": { "application/json": { "schema": schema } } });
    let error =
        |description: &str| json_body(description, json!({ "$ref": "#/components/schemas/Error" }));
    vec![
        (
            "/health/status",
            "get",
            json!({
                "operationId": "healthStatus",
                "x-contract-endpoint": 57,
                "summary": "Probes the store, the Kubernetes API (on that runtime) and the data directory.",
                "tags": ["Health"],
                "security": [],
                "responses": {
                    "200": json_body("Every part answers", health.clone()),
                    "503": json_body("A part is down; `details` says which and why", health)
                }
            }),
        ),
        (
            "/health/runners",
            "get",
            json!({
                "operationId": "healthRunners",
                "x-contract-endpoint": 58,
                "summary": "The GitHub Actions runner pool (ARC EphemeralRunners); empty on the local runtime.",
                "tags": ["Health"],
                "security": [],
                "responses": {
                    "200": json_body("The pool", runners),
                    "503": error("The Kubernetes API does not answer")
                }
            }),
        ),
        (
            "/webhooks/github",
            "post",
            json!({
                "operationId": "githubWebhook",
                "summary": "GitHub push events; a push to a project's repository and branch deploys its production environment.",
                "tags": ["Webhooks"],
                "security": [],
                "parameters": [
                    { "name": "X-Hub-Signature-256", "in": "header", "required": true,
                      "description": "sha256=<HMAC-SHA256 of the body with the configured secret>", "schema": { "type": "string" } },
                    { "name": "X-GitHub-Event", "in": "header", "required": true, "schema": { "type": "string" } }
                ],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object" } } } },
                "responses": {
                    "200": json_body("`ping`, or an event other than `push`: `{ok: true}` or `{ignored: true}`", json!({ "type": "object" })),
                    "202": json_body("A push: the deployments it triggered (possibly none)", json!({
                        "type": "object",
                        "properties": { "deployments": { "type": "array", "items": { "type": "object" } } },
                        "required": ["deployments"]
                    })),
                    "401": error("Missing or bad signature; nothing happens")
                }
            }),
        ),
    ]
}

/// The OpenAPI document for the table.
pub fn document(table: &RouteTable, model: &SchemaModel) -> Value {
    let mut gen_ = Gen {
        model,
        components: BTreeMap::new(),
    };
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in &table.routes {
        for method in &route.spec.methods {
            let op = operation(&mut gen_, route, method);
            paths
                .entry(route.axum_path.clone())
                .or_default()
                .insert(method.to_lowercase(), op);
        }
    }
    // Health, the webhook, the rate limit and the AI gateway are axum handlers of their
    // own, not table rows.
    let handlers = public_operations()
        .into_iter()
        .chain([("/rate-limit", "get", rate_limit_operation())])
        .chain(crate::ai::openapi::operations());
    for (path, method, op) in handlers {
        paths
            .entry(path.to_string())
            .or_default()
            .insert(method.to_string(), op);
    }
    let mut schemas: Map<String, Value> = gen_.components.into_iter().collect();
    for (name, schema) in crate::ai::openapi::schemas() {
        schemas.insert(name.to_string(), schema);
    }
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": { "error": { "type": "string" }, "details": {} },
            "required": ["error"]
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Sylphx Management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Deploy apps, manage environments, services, env vars and config, and call AI models through an OpenAI-compatible gateway. Every route but the gateway's (/chat/completions, /embeddings, /models, in OpenAI's wire format) is a GraphQL operation of the same server."
        },
        "servers": [{ "url": "/api/v1" }],
        "security": [{ "bearerAuth": [] }, { "sessionCookie": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "description": "slx_cli_… API token" },
                "sessionCookie": { "type": "apiKey", "in": "cookie", "name": "slx_session" }
            }
        }
    })
}
