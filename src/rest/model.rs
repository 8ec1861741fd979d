//! The schema as the REST layer sees it: types, fields and arguments read by
//! introspection, used to validate operations and to generate OpenAPI.

use std::collections::HashMap;

use async_graphql::parser::types::{BaseType, Type};
use serde::Deserialize;

use crate::graphql::AppSchema;

/// A GraphQL type reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeRef {
    Named(String),
    List(Box<TypeRef>),
    NonNull(Box<TypeRef>),
}

impl TypeRef {
    /// The named type under any list and non-null wrappers.
    pub fn name(&self) -> &str {
        match self {
            TypeRef::Named(n) => n,
            TypeRef::List(t) | TypeRef::NonNull(t) => t.name(),
        }
    }

    pub fn is_non_null(&self) -> bool {
        matches!(self, TypeRef::NonNull(_))
    }

    /// Converts a parsed variable type.
    pub fn from_parsed(t: &Type) -> TypeRef {
        let base = match &t.base {
            BaseType::Named(n) => TypeRef::Named(n.to_string()),
            BaseType::List(inner) => TypeRef::List(Box::new(TypeRef::from_parsed(inner))),
        };
        if t.nullable {
            base
        } else {
            TypeRef::NonNull(Box::new(base))
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawTypeRef {
    kind: String,
    name: Option<String>,
    #[serde(rename = "ofType")]
    of_type: Option<Box<RawTypeRef>>,
}

impl RawTypeRef {
    fn convert(&self) -> TypeRef {
        let inner = || {
            self.of_type
                .as_ref()
                .map(|t| t.convert())
                .unwrap_or(TypeRef::Named("String".into()))
        };
        match self.kind.as_str() {
            "NON_NULL" => TypeRef::NonNull(Box::new(inner())),
            "LIST" => TypeRef::List(Box::new(inner())),
            _ => TypeRef::Named(self.name.clone().unwrap_or_default()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawValue {
    name: String,
    #[serde(rename = "type")]
    ty: RawTypeRef,
    #[serde(rename = "defaultValue")]
    default_value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawField {
    name: String,
    #[serde(default)]
    args: Vec<RawValue>,
    #[serde(rename = "type")]
    ty: RawTypeRef,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawType {
    kind: String,
    name: String,
    description: Option<String>,
    fields: Option<Vec<RawField>>,
    #[serde(rename = "inputFields")]
    input_fields: Option<Vec<RawValue>>,
    #[serde(rename = "enumValues")]
    enum_values: Option<Vec<RawEnumValue>>,
}

#[derive(Debug, Deserialize)]
struct RawEnumValue {
    name: String,
}

/// An argument or input field.
#[derive(Debug, Clone)]
pub struct InputValue {
    pub name: String,
    pub ty: TypeRef,
    pub has_default: bool,
}

/// An output field.
#[derive(Debug, Clone)]
pub struct FieldInfo {
    pub args: Vec<InputValue>,
    pub ty: TypeRef,
    pub description: Option<String>,
}

/// One named type.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    /// `OBJECT`, `INPUT_OBJECT`, `ENUM`, `SCALAR`, …
    pub kind: String,
    pub description: Option<String>,
    pub fields: Vec<(String, FieldInfo)>,
    pub input_fields: Vec<InputValue>,
    pub enum_values: Vec<String>,
}

impl TypeInfo {
    pub fn field(&self, name: &str) -> Option<&FieldInfo> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }
}

/// All types of the schema, by name.
#[derive(Debug, Clone)]
pub struct SchemaModel {
    pub types: HashMap<String, TypeInfo>,
    pub query_type: String,
    pub mutation_type: String,
}

const INTROSPECTION: &str = r#"
query {
  __schema {
    queryType { name }
    mutationType { name }
    types {
      kind name description
      fields(includeDeprecated: true) { name description args { name defaultValue type { ...T } } type { ...T } }
      inputFields { name defaultValue type { ...T } }
      enumValues(includeDeprecated: true) { name }
    }
  }
}
fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } }
"#;

fn values(raw: Vec<RawValue>) -> Vec<InputValue> {
    raw.into_iter()
        .map(|v| InputValue {
            name: v.name,
            ty: v.ty.convert(),
            has_default: v.default_value.is_some(),
        })
        .collect()
}

impl SchemaModel {
    /// Reads the schema by running the standard introspection query.
    pub async fn introspect(schema: &AppSchema) -> Result<SchemaModel, String> {
        let resp = schema.execute(INTROSPECTION).await;
        if !resp.errors.is_empty() {
            return Err(format!("introspection failed: {:?}", resp.errors));
        }
        let data = resp.data.into_json().map_err(|e| e.to_string())?;
        let root = &data["__schema"];
        let name_of = |k: &str| root[k]["name"].as_str().unwrap_or_default().to_string();
        let raw: Vec<RawType> =
            serde_json::from_value(root["types"].clone()).map_err(|e| e.to_string())?;
        let types = raw
            .into_iter()
            .map(|t| {
                let info = TypeInfo {
                    kind: t.kind,
                    description: t.description,
                    fields: t
                        .fields
                        .unwrap_or_default()
                        .into_iter()
                        .map(|f| {
                            (
                                f.name,
                                FieldInfo {
                                    args: values(f.args),
                                    ty: f.ty.convert(),
                                    description: f.description,
                                },
                            )
                        })
                        .collect(),
                    input_fields: values(t.input_fields.unwrap_or_default()),
                    enum_values: t
                        .enum_values
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| e.name)
                        .collect(),
                };
                (t.name, info)
            })
            .collect();
        Ok(SchemaModel {
            types,
            query_type: name_of("queryType"),
            mutation_type: name_of("mutationType"),
        })
    }

    pub fn get(&self, name: &str) -> Option<&TypeInfo> {
        self.types.get(name)
    }
}
