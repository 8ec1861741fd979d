//! Providers of managed resources: what each accepts in `config`, how big
//! its instance is, how its connection string reads and which env vars a
//! binding writes. A new kind or provider is one more entry of
//! [`PROVIDERS`]; nothing else branches on provider names.

use serde_json::{Map, Value};

use crate::domain::{validate, volumes};
use crate::error::{Error, Result};
use crate::runtime::instances::{self, InstanceLimits};

/// One `config` key a provider accepts: a whole number within bounds.
#[derive(Debug)]
pub struct ConfigKey {
    pub name: &'static str,
    pub min: i64,
    pub max: i64,
    /// `None`: derived from other keys when absent.
    pub default: Option<i64>,
    pub what: &'static str,
}

/// One `config` key a provider accepts as text, checked by `check`
/// (whose errors name the field it is given: `config.<name>`).
#[derive(Debug)]
pub struct TextKey {
    pub name: &'static str,
    /// Whether a new resource must give it (else `default`, if any).
    pub required: bool,
    pub default: Option<&'static str>,
    pub check: fn(&str, &str) -> Result<()>,
    /// What JSON Schema says of its values (type aside).
    pub schema: fn() -> Value,
}

const fn key(
    name: &'static str,
    min: i64,
    max: i64,
    default: i64,
    what: &'static str,
) -> ConfigKey {
    ConfigKey {
        name,
        min,
        max,
        default: Some(default),
        what,
    }
}

const STORAGE: ConfigKey = key("storageGb", 1, 1000, 10, "disk in GiB");
const SQL_MEMORY: ConfigKey = key("memoryMb", 128, 16384, 256, "memory of the server in MiB");
const SQL_CONNECTIONS: ConfigKey = key("maxConnections", 5, 1000, 50, "connections accepted");
const RETENTION: ConfigKey = key(
    "backupRetentionDays",
    1,
    35,
    7,
    "days of backups and WAL kept",
);
/// Redis' knob is the data set's size; the server gets a third more
/// (and 32 MiB) for its own needs.
const KV_DATA: ConfigKey = key(
    "maxMemoryMb",
    16,
    16384,
    96,
    "the data set's limit in MiB (maxmemory)",
);
const KV_CLIENTS: ConfigKey = key("maxConnections", 1, 10000, 100, "clients accepted");
const KV_STORAGE: ConfigKey = key("storageGb", 1, 1000, 1, "disk in GiB");

/// Typesense keeps its whole index in memory: the server's limit.
const SEARCH_MEMORY: ConfigKey = key("memoryMb", 128, 16384, 512, "memory of the server in MiB");
const SEARCH_STORAGE: ConfigKey = key("storageGb", 1, 1000, 5, "disk in GiB");

/// A volume's size; what this server allows is checked where it is made.
const VOLUME_SIZE: ConfigKey = key(
    "storageGb",
    1,
    volumes::MAX_SIZE_GB as i64,
    10,
    "size in GiB",
);
const VOLUME_KEYS: &[TextKey] = &[
    TextKey {
        name: "mountPath",
        required: true,
        default: None,
        check: volumes::mount_path,
        schema: volumes::mount_path_schema,
    },
    TextKey {
        name: "service",
        required: false,
        default: None,
        check: validate::dns_label,
        schema: || serde_json::json!({ "pattern": validate::DNS_LABEL_PATTERN, "minLength": 1, "maxLength": 63 }),
    },
    TextKey {
        name: "accessMode",
        required: false,
        default: Some(READ_WRITE_ONCE),
        check: read_write_once,
        schema: || serde_json::json!({ "enum": [READ_WRITE_ONCE] }),
    },
];
const READ_WRITE_ONCE: &str = "ReadWriteOnce";

/// A block volume is mounted by the replicas of one service on one node.
fn read_write_once(field: &str, value: &str) -> Result<()> {
    if value == READ_WRITE_ONCE {
        Ok(())
    } else {
        Err(Error::field(
            field,
            format!(
                "must be {READ_WRITE_ONCE}: a ceph-rbd volume is mounted by one service, not '{value}'"
            ),
        ))
    }
}

/// Role and database names inside every instance; only the passwords,
/// ports and uids differ (a branch or a restore keeps the names).
const ADMIN_USER: &str = "sylphx";
const APP_USER: &str = "app";
const DATABASE: &str = "app";

/// One part of a connection, as a binding's env var holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Host,
    Port,
    User,
    Password,
    Database,
    /// The same text for every resource (a protocol name).
    Fixed(&'static str),
}

/// What stands behind a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosting {
    /// A server of the runtime's data services (`Instances`).
    Instance,
    /// A storage of a project environment: a prefix of the S3 endpoint's
    /// bucket with its own key pair (`domain::storage`).
    Storage,
    /// A volume of a service in one project environment
    /// (`domain::volumes`).
    Volume,
}

impl Hosting {
    /// Whether resources of this hosting belong to one project environment
    /// (which `environmentId` names when one is made).
    pub fn attached(self) -> bool {
        self != Hosting::Instance
    }
}

/// A provider of resources of one kind.
#[derive(Debug)]
pub struct Provider {
    pub kind: &'static str,
    pub name: &'static str,
    /// The provider a resource of `kind` gets when none is named.
    pub default_for_kind: bool,
    pub config: &'static [ConfigKey],
    pub text_config: &'static [TextKey],
    /// URL scheme of its connection strings.
    pub scheme: &'static str,
    /// Env var names a binding writes: the URL by role (`{ROLE}` is the
    /// role's infix: empty for primary, `_REPLICA` …), and for the primary
    /// role the parts.
    pub url_var: &'static str,
    pub part_vars: &'static [(&'static str, Part)],
    /// The control plane's own user (a superuser) and the application's.
    pub admin_user: &'static str,
    pub app_user: &'static str,
    /// The application's database (empty where there are none).
    pub database: &'static str,
    /// Whether it has base backups and point-in-time restore.
    pub backups: bool,
    /// Whether `fast` branches copy its data.
    pub branches: bool,
    /// What a user reads when provisioning starts.
    pub started: &'static str,
    /// Names the instance's objects and directories start with.
    pub short: &'static str,
    pub hosting: Hosting,
}

/// A KV store provider: Redis and its forks speak alike.
const fn kv(name: &'static str, default_for_kind: bool) -> Provider {
    Provider {
        kind: "kv",
        name,
        default_for_kind,
        config: &[KV_DATA, KV_CLIENTS, KV_STORAGE],
        text_config: &[],
        scheme: "redis",
        url_var: "REDIS{ROLE}_URL",
        part_vars: &[],
        admin_user: ADMIN_USER,
        // Redis' application user is its `default` user.
        app_user: "default",
        database: "",
        backups: false,
        branches: false,
        started: "KV store provisioning started. Poll GET /resources/:id for status.",
        short: "kv",
        hosting: Hosting::Instance,
    }
}

/// A blob storage provider: a storage of one environment under the
/// resource's id, its variables written there.
const fn blob(name: &'static str, default_for_kind: bool, started: &'static str) -> Provider {
    Provider {
        kind: "blob",
        name,
        default_for_kind,
        config: &[],
        text_config: &[],
        scheme: "s3",
        url_var: "BLOB{ROLE}_URL",
        part_vars: &[],
        admin_user: "",
        app_user: "",
        database: "",
        backups: false,
        branches: false,
        started,
        short: "blob",
        hosting: Hosting::Storage,
    }
}

/// Every provider.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        kind: "database",
        name: instances::POSTGRESQL,
        default_for_kind: true,
        config: &[STORAGE, SQL_MEMORY, SQL_CONNECTIONS, RETENTION],
        text_config: &[],
        scheme: "postgresql",
        url_var: "DATABASE{ROLE}_URL",
        part_vars: &[
            ("PGHOST", Part::Host),
            ("PGPORT", Part::Port),
            ("PGUSER", Part::User),
            ("PGPASSWORD", Part::Password),
            ("PGDATABASE", Part::Database),
        ],
        admin_user: ADMIN_USER,
        app_user: APP_USER,
        database: DATABASE,
        backups: true,
        branches: true,
        started: "Database provisioning started. Poll GET /resources/:id for status.",
        short: "pg",
        hosting: Hosting::Instance,
    },
    Provider {
        kind: "database",
        name: instances::MYSQL,
        default_for_kind: false,
        config: &[STORAGE, SQL_MEMORY, SQL_CONNECTIONS],
        text_config: &[],
        scheme: "mysql",
        url_var: "MYSQL{ROLE}_URL",
        part_vars: &[
            ("MYSQL_HOST", Part::Host),
            ("MYSQL_PORT", Part::Port),
            ("MYSQL_USER", Part::User),
            ("MYSQL_PASSWORD", Part::Password),
            ("MYSQL_DATABASE", Part::Database),
        ],
        // MySQL's superuser is `root` (its images set only that one).
        admin_user: "root",
        app_user: APP_USER,
        database: DATABASE,
        backups: false,
        branches: false,
        started: "Database provisioning started. Poll GET /resources/:id for status.",
        short: "my",
        hosting: Hosting::Instance,
    },
    kv(instances::REDIS, true),
    kv(instances::VALKEY, false),
    Provider {
        kind: "search",
        name: instances::TYPESENSE,
        default_for_kind: true,
        config: &[SEARCH_MEMORY, SEARCH_STORAGE],
        text_config: &[],
        scheme: "http",
        url_var: "TYPESENSE{ROLE}_URL",
        part_vars: &[
            ("TYPESENSE_HOST", Part::Host),
            ("TYPESENSE_PORT", Part::Port),
            ("TYPESENSE_PROTOCOL", Part::Fixed("http")),
            ("TYPESENSE_API_KEY", Part::Password),
        ],
        admin_user: ADMIN_USER,
        // One key: `http://:key@host:port`, like Redis' password.
        app_user: "",
        database: "",
        backups: false,
        branches: false,
        started: "Search provisioning started. Poll GET /resources/:id for status.",
        short: "ts",
        hosting: Hosting::Instance,
    },
    blob(
        "s3",
        true,
        "Blob storage is ready: its S3 credentials are the BLOB_* secret env vars of its environment (they are shown once, in the answer of POST /projects/:id/storage; this storage is also listed there).",
    ),
    blob(
        "b2",
        false,
        "Blob storage is ready: its key is minted by Backblaze B2 for its prefix, and its S3 credentials are the BLOB_* secret env vars of its environment (this storage is also listed by GET /projects/:id/storage).",
    ),
    Provider {
        kind: "volume",
        name: "ceph-rbd",
        default_for_kind: true,
        config: &[VOLUME_SIZE],
        text_config: VOLUME_KEYS,
        scheme: "",
        url_var: "",
        part_vars: &[],
        admin_user: "",
        app_user: "",
        database: "",
        backups: false,
        branches: false,
        started: "The volume is made: the service mounts it at config.mountPath from its next deploy.",
        short: "vol",
        hosting: Hosting::Volume,
    },
];

/// Kinds of the contract; those without a provider here are refused with
/// a message saying so.
pub const KINDS: [&str; 5] = ["database", "kv", "blob", "search", "volume"];

/// Binding roles and the infix each gives the URL variable.
pub const ROLES: [(&str, &str); 4] = [
    ("primary", ""),
    ("replica", "_REPLICA"),
    ("analytics", "_ANALYTICS"),
    ("backup", "_BACKUP"),
];

/// The provider for `kind` and the requested `provider` (the kind's
/// default when absent); 400 naming the field otherwise.
pub fn find(kind: &str, provider: Option<&str>) -> Result<&'static Provider> {
    let kind = kind.trim();
    if !KINDS.contains(&kind) {
        return Err(Error::field(
            "kind",
            format!("must be one of {}, not '{kind}'", KINDS.join(", ")),
        ));
    }
    let of_kind: Vec<&Provider> = PROVIDERS.iter().filter(|p| p.kind == kind).collect();
    if of_kind.is_empty() {
        return Err(Error::field(
            "kind",
            format!("resources of kind '{kind}' are not offered by this server yet"),
        ));
    }
    match provider.map(str::trim) {
        None | Some("") => Ok(of_kind
            .iter()
            .find(|p| p.default_for_kind)
            .copied()
            .unwrap_or(of_kind[0])),
        Some(name) => of_kind
            .iter()
            .find(|p| p.name == name)
            .copied()
            .ok_or_else(|| {
                let names: Vec<&str> = of_kind.iter().map(|p| p.name).collect();
                Error::field(
                    "provider",
                    format!("kind '{kind}' offers {}, not '{name}'", names.join(", ")),
                )
            }),
    }
}

/// The provider a stored resource was made with.
pub fn of(kind: &str, provider: &str) -> Result<&'static Provider> {
    PROVIDERS
        .iter()
        .find(|p| p.kind == kind && p.name == provider)
        .ok_or_else(|| Error::internal(format!("no provider {kind}/{provider}")))
}

impl Provider {
    /// Checks `config` (an object of known keys, each a whole number in
    /// bounds) and fills in the defaults; `base` holds the current values
    /// on an update. Errors name `config.<key>`.
    pub fn config(
        &self,
        given: Option<&Value>,
        base: Option<&Value>,
    ) -> Result<Map<String, Value>> {
        let mut out = match base {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        match given {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    if let Some(text) = self.text_config.iter().find(|c| c.name == k) {
                        let field = format!("config.{k}");
                        let Some(value) = v.as_str() else {
                            return Err(Error::field(&field, "must be a string"));
                        };
                        (text.check)(&field, value)?;
                        out.insert(k.clone(), Value::from(value));
                        continue;
                    }
                    let Some(spec) = self.config.iter().find(|c| c.name == k) else {
                        let known: Vec<&str> = self
                            .config
                            .iter()
                            .map(|c| c.name)
                            .chain(self.text_config.iter().map(|c| c.name))
                            .collect();
                        return Err(Error::field(
                            &format!("config.{k}"),
                            format!(
                                "is not a setting of {}: it takes {}",
                                self.name,
                                known.join(", ")
                            ),
                        ));
                    };
                    let n = v.as_i64().filter(|n| (spec.min..=spec.max).contains(n));
                    let Some(n) = n else {
                        return Err(Error::field(
                            &format!("config.{k}"),
                            format!(
                                "must be a whole number from {} to {} ({})",
                                spec.min, spec.max, spec.what
                            ),
                        ));
                    };
                    out.insert(k.clone(), Value::from(n));
                }
            }
            Some(_) => return Err(Error::field("config", "must be an object")),
        }
        for spec in self.config {
            if let Some(d) = spec.default {
                out.entry(spec.name).or_insert(Value::from(d));
            }
        }
        for spec in self.text_config {
            if let Some(d) = spec.default {
                out.entry(spec.name).or_insert(Value::from(d));
            } else if spec.required && !out.contains_key(spec.name) {
                return Err(Error::field(
                    &format!("config.{}", spec.name),
                    format!("is required for a {} resource", self.kind),
                ));
            }
        }
        Ok(out)
    }

    /// The instance's sizes from a checked config.
    pub fn limits(&self, config: &Map<String, Value>) -> InstanceLimits {
        let get = |k: &str, d: i64| u32::try_from(number(config, k).unwrap_or(d)).unwrap_or(0);
        let data = number(config, "maxMemoryMb").and_then(|n| u32::try_from(n).ok());
        InstanceLimits {
            memory_mb: match data {
                Some(d) => d + d / 3 + 32,
                None => get("memoryMb", 256),
            },
            max_connections: get("maxConnections", 50),
            storage_gb: get("storageGb", 10),
            max_memory_mb: data,
        }
    }

    /// Days of backups kept (PostgreSQL).
    pub fn retention_days(&self, config: &Map<String, Value>) -> u32 {
        number(config, "backupRetentionDays")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(7)
    }

    /// Whether changing `before` to `after` needs the instance restarted
    /// (every size does; the retention does not).
    pub fn needs_restart(&self, before: &Map<String, Value>, after: &Map<String, Value>) -> bool {
        self.limits(before) != self.limits(after)
    }

    /// `scheme://user:password@host:port/database` (Redis' user is
    /// `default`: clients read `redis://:password@` differently, that
    /// form they all read alike).
    pub fn url(&self, c: &Connection, password: &str) -> String {
        let user = &c.user;
        let path = if c.database.is_empty() {
            String::new()
        } else {
            format!("/{}", c.database)
        };
        format!(
            "{}://{user}:{password}@{}:{}{path}",
            self.scheme, c.host, c.port
        )
    }

    /// The env vars a binding with `role` writes.
    pub fn binding_vars(&self, role: &str, c: &Connection) -> Vec<(String, String)> {
        let infix = ROLES
            .iter()
            .find(|(r, _)| *r == role)
            .map_or("", |(_, i)| *i);
        let mut out = vec![(
            self.url_var.replace("{ROLE}", infix),
            self.url(c, c.password.expose()),
        )];
        if infix.is_empty() {
            out.extend(self.part_vars.iter().map(|(name, part)| {
                let value = match part {
                    Part::Host => c.host.clone(),
                    Part::Port => c.port.to_string(),
                    Part::User => c.user.clone(),
                    Part::Password => c.password.expose().to_string(),
                    Part::Database => c.database.clone(),
                    Part::Fixed(text) => (*text).to_string(),
                };
                (name.to_string(), value)
            }));
        }
        out
    }
}

/// How the application connects.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: crate::secrets::SecretString,
    pub database: String,
}

/// What `config` may hold for `provider`, as JSON Schema.
pub fn config_schema(provider: &Provider) -> Value {
    let props: Map<String, Value> = provider
        .config
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                serde_json::json!({
                    "type": "integer", "minimum": c.min, "maximum": c.max, "description": c.what
                }),
            )
        })
        .chain(provider.text_config.iter().map(|c| {
            let mut schema = (c.schema)();
            schema["type"] = Value::from("string");
            (c.name.to_string(), schema)
        }))
        .collect();
    let required: Vec<&str> = provider
        .text_config
        .iter()
        .filter(|c| c.required)
        .map(|c| c.name)
        .collect();
    if !required.is_empty() {
        return serde_json::json!({
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": false
        });
    }
    serde_json::json!({
        "type": ["object", "null"],
        "properties": props,
        "additionalProperties": false
    })
}

/// What `kind`, `provider` and `config` of a new resource may be together,
/// as JSON Schema: one branch per provider, and one per kind's default.
pub fn create_schema() -> Value {
    let mut any = Vec::new();
    for p in PROVIDERS {
        // Another blob provider than the default is served only by servers
        // set up with it (`blob_provider`): not a request every server takes.
        if p.hosting == Hosting::Storage && !p.default_for_kind {
            continue;
        }
        // A storage or a volume belongs to one environment: it must be
        // named; and it is named after the resource, whose name must hold
        // a letter or digit.
        let (environment, name, mut required) = if p.hosting.attached() {
            (
                serde_json::json!({ "type": "string", "format": "uuid" }),
                serde_json::json!({ "type": "string", "pattern": "[A-Za-z0-9]" }),
                vec!["environmentId"],
            )
        } else {
            (serde_json::json!({}), serde_json::json!({}), vec![])
        };
        if p.text_config.iter().any(|c| c.required) {
            required.push("config");
        }
        let mut with_provider = required.clone();
        with_provider.push("provider");
        any.push(serde_json::json!({
            "properties": {
                "kind": { "const": p.kind },
                "provider": { "const": p.name },
                "config": config_schema(p),
                "environmentId": environment,
                "name": name
            },
            "required": with_provider
        }));
        if p.default_for_kind {
            any.push(serde_json::json!({
                "properties": {
                    "kind": { "const": p.kind },
                    "provider": { "type": "null" },
                    "config": config_schema(p),
                    "environmentId": environment,
                    "name": name
                },
                "required": required
            }));
        }
    }
    serde_json::json!({
        "anyOf": any,
        "description": "kind and provider go together (database: postgresql, mysql; kv: redis, valkey; search: typesense; blob: s3, or b2 where the server is set up with it, with environmentId; volume: ceph-rbd, with environmentId and config.mountPath); config takes that provider's settings"
    })
}

/// Kinds that have a provider on this server.
pub fn offered_kinds() -> Vec<&'static str> {
    KINDS
        .iter()
        .copied()
        .filter(|k| PROVIDERS.iter().any(|p| p.kind == *k))
        .collect()
}

fn number(m: &Map<String, Value>, k: &str) -> Option<i64> {
    m.get(k).and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_default_and_refuse_by_field() {
        assert_eq!(find("database", None).unwrap().name, "postgresql");
        assert_eq!(find("kv", Some("")).unwrap().name, "redis");
        assert_eq!(find("database", Some("mysql")).unwrap().name, "mysql");
        assert!(find("rocket", None).unwrap_err().message().contains("kind"));
        let e = find("kv", Some("postgresql")).unwrap_err();
        assert!(e.message().contains("provider"), "{}", e.message());
    }

    #[test]
    fn config_names_unknown_and_out_of_range_keys() {
        let pg = find("database", None).unwrap();
        let e = pg.config(Some(&json!({"colour": 1})), None).unwrap_err();
        assert!(e.message().contains("config.colour"), "{}", e.message());
        let e = pg.config(Some(&json!({"storageGb": 0})), None).unwrap_err();
        assert!(e.message().contains("config.storageGb"), "{}", e.message());
        let e = pg
            .config(Some(&json!({"storageGb": "10"})), None)
            .unwrap_err();
        assert!(e.message().contains("config.storageGb"), "{}", e.message());
        let c = pg.config(Some(&json!({"memoryMb": 512})), None).unwrap();
        assert_eq!(c["memoryMb"], 512);
        assert_eq!(c["storageGb"], 10);
        let kv = find("kv", None).unwrap();
        let e = kv.config(Some(&json!({"memoryMb": 64})), None).unwrap_err();
        assert!(e.message().contains("config.memoryMb"), "{}", e.message());
        let c = kv.config(Some(&json!({"maxMemoryMb": 96})), None).unwrap();
        assert_eq!(kv.limits(&c).memory_mb, 96 + 32 + 32);
        assert_eq!(kv.limits(&c).max_memory_mb, Some(96));
    }

    #[test]
    fn bindings_write_the_role_s_names() {
        let pg = find("database", None).unwrap();
        let c = Connection {
            host: "127.0.0.1".into(),
            port: 21000,
            user: "app".into(),
            password: "pw".to_string().into(),
            database: "app".into(),
        };
        let vars = pg.binding_vars("primary", &c);
        let keys: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "DATABASE_URL",
                "PGHOST",
                "PGPORT",
                "PGUSER",
                "PGPASSWORD",
                "PGDATABASE"
            ]
        );
        assert_eq!(vars[0].1, "postgresql://app:pw@127.0.0.1:21000/app");
        let replica = pg.binding_vars("replica", &c);
        assert_eq!(replica.len(), 1);
        assert_eq!(replica[0].0, "DATABASE_REPLICA_URL");
        let kv = find("kv", None).unwrap();
        let c = Connection {
            user: "default".into(),
            database: String::new(),
            ..c
        };
        assert_eq!(
            kv.binding_vars("primary", &c),
            [(
                "REDIS_URL".to_string(),
                "redis://default:pw@127.0.0.1:21000".to_string()
            )]
        );
    }
}
