//! What the domain checks, as JSON Schema: the OpenAPI document states the
//! rules the server enforces (patterns, lengths, ranges, list sizes), so a
//! request valid by the document is one the server accepts. The GraphQL
//! types carry no such rules; this table names them by input type and field,
//! and by route variable.

use serde_json::{Value, json};

use crate::domain::resources::providers;

use crate::domain::validate::{
    CONFIG_KEY_PATTERN, CPU_PATTERN, DNS_LABEL_PATTERN, DOMAIN_PATTERN, ENV_KEY_PATTERN,
    LONG_TEXT_PATTERN, MAX_ENTRIES, MAX_REPLICAS, MAX_VALUE_CHARS, MEMORY_PATTERN,
    PROJECT_REF_PATTERN, RELATIVE_PATH_PATTERN, TEXT_PATTERN, UUID_PATTERN,
};

fn label() -> Value {
    json!({ "pattern": DNS_LABEL_PATTERN, "minLength": 1, "maxLength": 63 })
}

fn uuid() -> Value {
    json!({ "format": "uuid", "pattern": UUID_PATTERN })
}

fn text(max: usize) -> Value {
    json!({ "pattern": TEXT_PATTERN, "minLength": 1, "maxLength": max })
}

fn long_text(max: usize) -> Value {
    json!({ "pattern": LONG_TEXT_PATTERN, "maxLength": max })
}

fn port() -> Value {
    json!({ "minimum": 1, "maximum": 65535 })
}

fn replicas() -> Value {
    json!({ "minimum": 0, "maximum": MAX_REPLICAS })
}

fn domain() -> Value {
    json!({
        "pattern": DOMAIN_PATTERN,
        "maxLength": 253,
        "not": { "pattern": "(^|\\.)[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt]$" },
        "description": "A hostname; `localhost` and `*.localhost` are reserved"
    })
}

fn entries(what: &str) -> Value {
    json!({
        "minItems": 1,
        "maxItems": MAX_ENTRIES,
        "description": format!("Each key at most once per request ({what})")
    })
}

/// Rules of one field of an input object.
pub fn input_field(type_name: &str, field: &str) -> Option<Value> {
    let rule = match (type_name, field) {
        (_, "port") => port(),
        (_, "replicas") => replicas(),
        (_, "domain") => domain(),
        (_, "description") => long_text(2000),
        (_, "gitRepository" | "gitBranch" | "dockerImage") => text(500),
        ("CreateProjectInput" | "UpdateProjectInput" | "CreateApiKeyInput", "name") => text(100),
        ("CreateProjectInput", "slug") => label(),
        ("CreateEnvironmentInput" | "CreateServiceInput", "name") => label(),
        (_, "dockerfilePath") => json!({ "pattern": RELATIVE_PATH_PATTERN, "maxLength": 255 }),
        ("ResourcesInput", "cpu") => json!({ "pattern": CPU_PATTERN }),
        ("ResourcesInput", "memory") => json!({ "pattern": MEMORY_PATTERN }),
        ("EnvVarInput", "key") => json!({ "pattern": ENV_KEY_PATTERN, "maxLength": 256 }),
        ("ConfigEntryInput", "key") => {
            json!({ "pattern": CONFIG_KEY_PATTERN, "minLength": 1, "maxLength": 128 })
        }
        ("EnvVarInput" | "ConfigEntryInput", "value") => long_text(MAX_VALUE_CHARS),
        ("CreateResourceInput" | "UpdateResourceInput" | "BranchResourceInput", "name") => {
            text(100)
        }
        ("CreateResourceInput", "kind") => json!({ "enum": providers::offered_kinds() }),
        ("CreateResourceInput", "provider") => {
            json!({ "enum": providers::PROVIDERS.iter().map(|p| p.name).collect::<Vec<_>>() })
        }
        ("CreateResourceInput", "environmentId") => uuid(),
        ("CreateBindingInput", "projectEnvironmentId") => uuid(),
        ("CreateBindingInput", "role") => {
            json!({ "enum": providers::ROLES.iter().map(|(r, _)| *r).collect::<Vec<_>>() })
        }
        ("UpdateResourceInput", "config") => json!({
            "type": ["object", "null"],
            "description": "The resource's provider's settings; others are refused"
        }),
        ("BranchResourceInput", "env") => label(),
        ("CreateStorageInput", "envType" | "name") => label(),
        ("CreateVolumeInput", "name" | "service" | "envType") => label(),
        ("CreateVolumeInput", "mountPath") => crate::domain::volumes::mount_path_schema(),
        ("CreateVolumeInput", "sizeGb") => json!({
            "minimum": 1,
            "maximum": crate::domain::volumes::MAX_SIZE_GB,
            "description": "Whole GB; past the server's max_volume_size_gb (100 by default) 403, as is a volume that takes the organisation's volumes past max_volume_gb_per_organization (100 by default)"
        }),
        ("BranchResourceInput", "storageGb") => json!({ "minimum": 1, "maximum": 1000 }),
        _ => return None,
    };
    Some(rule)
}

/// Rules that tie fields of an input object together.
pub fn input_object(type_name: &str) -> Option<Value> {
    match type_name {
        "CreateProjectInput" => Some(json!({
            "not": { "anyOf": [
                { "required": ["gitRepository", "dockerImage"] },
                { "required": ["dockerImage", "gitBranch"] },
                { "required": ["dockerImage", "buildPack"] }
            ] },
            "description": "Either a Git source (gitRepository, gitBranch, buildPack) or a dockerImage, not both"
        })),
        "CreateResourceInput" => Some(providers::create_schema()),
        _ => None,
    }
}

/// Rules of a route variable (a path, query or body parameter).
pub fn variable(name: &str) -> Option<Value> {
    let rule = match name {
        "id" => json!({
            "pattern": PROJECT_REF_PATTERN,
            "description": "The project's UUID or slug"
        }),
        "envId" | "serviceId" | "deploymentId" | "resourceId" | "bindingId" | "storageId"
        | "ruleId" | "volId" => uuid(),
        "externalPort" => {
            let ports = crate::settings::TcpProxyConfig::default().ports;
            json!({
                "minimum": ports.first, "maximum": ports.last,
                "description": "A port of the server's `tcp_proxy_ports` (by default the range stated here) that nothing else holds"
            })
        }
        "targetPort" => port(),
        "cidr" => json!({
            "maxLength": 64,
            "description": "An IPv4 or IPv6 CIDR block (`203.0.113.0/24`, `2001:db8::/32`) or a single address"
        }),
        "description" => long_text(500),
        "kind" => json!({
            "enum": crate::domain::resources::providers::KINDS,
            "description": "Only resources of this kind"
        }),
        "targetTime" => json!({
            "format": "date-time",
            "description": "ISO 8601, at most 7 days ago, not in the future"
        }),
        "name" => label(),
        "envType" => json!({
            "pattern": DNS_LABEL_PATTERN, "minLength": 1, "maxLength": 63,
            "description": "An environment's name (default: production)"
        }),
        "key" => json!({ "pattern": CONFIG_KEY_PATTERN, "minLength": 1, "maxLength": 128 }),
        "value" => long_text(MAX_VALUE_CHARS),
        "tail" => json!({ "minimum": 0, "maximum": 1000, "default": 200 }),
        "service" => json!({
            "pattern": DNS_LABEL_PATTERN, "minLength": 1, "maxLength": 63,
            "description": "Only this service's lines"
        }),
        "filter" => json!({
            "maxLength": 200,
            "description": "Only lines containing this text, or with `level:<level>` (e.g. `level:error`) of that level"
        }),
        "limit" => json!({ "minimum": 1, "maximum": 100, "default": 20 }),
        "vars" => entries("a key twice is refused"),
        "entries" => entries("a key twice is refused"),
        _ => return None,
    };
    Some(rule)
}

/// `schema` with `rule`'s keywords added; a nullable schema (`oneOf` with
/// `null`) gets them on its non-null branch, so `null` stays valid.
pub fn apply(mut schema: Value, rule: Option<Value>) -> Value {
    let Some(Value::Object(rule)) = rule else {
        return schema;
    };
    let target = match schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        Some(branches) => &mut branches[0],
        None => &mut schema,
    };
    if let Some(obj) = target.as_object_mut() {
        for (k, v) in rule {
            obj.insert(k, v);
        }
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_go_on_the_non_null_branch() {
        let nullable = json!({ "oneOf": [{ "type": "integer" }, { "type": "null" }] });
        let out = apply(nullable, input_field("CreateServiceInput", "port"));
        assert_eq!(out["oneOf"][0]["maximum"], 65535);
        assert_eq!(out["oneOf"][1], json!({ "type": "null" }));
        let plain = apply(json!({ "type": "string" }), variable("envId"));
        assert_eq!(plain["format"], "uuid");
        assert_eq!(apply(json!({}), variable("unknown")), json!({}));
    }
}
