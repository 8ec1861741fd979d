//! Redis and Valkey instances: one server per resource, append-only file
//! persistence in `data/`, passwords as ACL users whose passwords are
//! stored hashed in the configuration file, and a tiny RESP client for
//! readiness and figures.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Ctx, DATA, DATA_TMP, make_dir, sh_quote};
use crate::error::{Error, Result};
use crate::runtime::instances::{Origin, Scalars};

/// The configuration file, in the instance's directory (mode 0600).
const CONF: &str = "redis.conf";
/// Commands the application may not run: those that reconfigure, stop,
/// replicate, inspect or persist the server on demand (persistence is the
/// server's own business) and ACL changes. Everything else, `FLUSHALL`
/// and `KEYS` included, is the application's to use on its own data.
const DENIED: &[&str] = &[
    "config",
    "debug",
    "module",
    "shutdown",
    "acl",
    "replicaof",
    "slaveof",
    "monitor",
    "sync",
    "psync",
    "save",
    "bgsave",
    "bgrewriteaof",
    "failover",
    "cluster",
];
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reply line or bulk string read.
const MAX_REPLY: usize = 1 << 20;

pub fn init(ctx: &Ctx) -> Result<()> {
    if ctx.spec.origin != Origin::Empty {
        return Err(Error::bad_request(
            "copies and restores are available for PostgreSQL only",
        ));
    }
    make_dir(&ctx.path(DATA_TMP), 0o700, Some(ctx.owner), None)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `maxmemory`: the spec's, else three quarters of the instance's memory.
fn max_memory_mb(ctx: &Ctx) -> u32 {
    let l = &ctx.spec.limits;
    l.max_memory_mb.unwrap_or(l.memory_mb / 4 * 3).max(1)
}

fn config(ctx: &Ctx) -> String {
    let c = &ctx.spec.credentials;
    let denied: Vec<String> = DENIED.iter().map(|d| format!("-{d}")).collect();
    format!(
        "# Written by the control plane at every start; edits are lost.
bind 127.0.0.1
port {port}
protected-mode yes
daemonize no
logfile \"\"
dir {dir}
appendonly yes
appendfsync everysec
maxmemory {maxmemory}mb
maxmemory-policy noeviction
maxclients {maxclients}
# The application: every key and channel, every command but those above.
user default on #{app} ~* &* +@all {denied}
# The control plane: readiness and figures only.
user {admin} on #{admin_hash} resetchannels -@all +ping +info +client|list
",
        port = ctx.port,
        dir = quote(&ctx.inside(DATA)),
        maxmemory = max_memory_mb(ctx),
        maxclients = ctx.spec.limits.max_connections,
        app = sha256_hex(c.app_password.expose()),
        denied = denied.join(" "),
        admin = c.admin_user,
        admin_hash = sha256_hex(c.admin_password.expose()),
    )
}

/// A string in `redis.conf`.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn configure(ctx: &Ctx) -> Result<()> {
    ctx.write(CONF, config(ctx).as_bytes())
}

pub fn command(ctx: &Ctx, server: &Path) -> String {
    format!(
        "exec {} {}",
        sh_quote(&server.to_string_lossy()),
        sh_quote(&ctx.inside(CONF))
    )
}

/// A reply of the server.
#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

/// A connection speaking just enough RESP for AUTH, PING and INFO (and
/// the tests' GET and SET): bounded reads, timeouts on every exchange.
pub(super) struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(port: u16) -> std::io::Result<Client> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .map_err(|_| std::io::Error::other("connection timed out"))??;
        Ok(Client {
            stream: BufReader::new(stream),
        })
    }

    pub async fn call(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        tokio::time::timeout(IO_TIMEOUT, self.exchange(args))
            .await
            .map_err(|_| std::io::Error::other("no reply in time"))?
    }

    async fn exchange(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await?;
        let line = self.line().await?;
        let bad = || std::io::Error::other("malformed reply");
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => rest.parse().map(Reply::Integer).map_err(|_| bad()),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).map_err(|_| bad())?;
                if len > MAX_REPLY {
                    return Err(std::io::Error::other("reply too long"));
                }
                let mut buf = vec![0; len + 2];
                self.stream.read_exact(&mut buf).await?;
                buf.truncate(len);
                Ok(Reply::Bulk(Some(buf)))
            }
            _ => Err(bad()),
        }
    }

    async fn line(&mut self) -> std::io::Result<String> {
        let mut buf = Vec::new();
        (&mut self.stream)
            .take(MAX_REPLY as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if !buf.ends_with(b"\r\n") {
            return Err(std::io::Error::other("truncated reply"));
        }
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).map_err(|_| std::io::Error::other("reply is not UTF-8"))
    }

    /// AUTH; the error says why it was refused.
    pub async fn auth(&mut self, args: &[&str]) -> std::result::Result<(), String> {
        let mut call = vec!["AUTH"];
        call.extend_from_slice(args);
        match self.call(&call).await {
            Ok(Reply::Status(_)) => Ok(()),
            Ok(Reply::Error(e)) => Err(e),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Readiness: the application's password is accepted and PING answered.
pub async fn probe(ctx: &Ctx) -> Result<()> {
    let unavailable = |e: String| Error::Unavailable(format!("{}: {e}", ctx.spec.name));
    let mut client = Client::connect(ctx.port)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    client
        .auth(&[ctx.spec.credentials.app_password.expose()])
        .await
        .map_err(unavailable)?;
    match client.call(&["PING"]).await {
        Ok(Reply::Status(s)) if s == "PONG" => Ok(()),
        Ok(other) => Err(unavailable(format!("PING: {other:?}"))),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

/// `INFO` as the admin user, as `field → value`.
async fn info(ctx: &Ctx) -> std::result::Result<Vec<(String, String)>, String> {
    let c = &ctx.spec.credentials;
    let mut client = Client::connect(ctx.port).await.map_err(|e| e.to_string())?;
    client
        .auth(&[&c.admin_user, c.admin_password.expose()])
        .await?;
    match client.call(&["INFO"]).await.map_err(|e| e.to_string())? {
        Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()),
        other => Err(format!("INFO: {other:?}")),
    }
}

pub async fn scalars(ctx: &Ctx) -> Result<Scalars> {
    let fields = info(ctx)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", ctx.spec.name)))?;
    let get = |k: &str| -> Option<i64> {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| v.parse().ok())
    };
    let used = get("used_memory");
    let max = get("maxmemory").filter(|m| *m > 0);
    let (hits, misses) = (
        get("keyspace_hits").unwrap_or(0),
        get("keyspace_misses").unwrap_or(0),
    );
    Ok(Scalars {
        memory_used_bytes: used,
        memory_used_percent: used.zip(max).map(|(u, m)| u as f64 / m as f64 * 100.0),
        hit_ratio: Some(if hits + misses > 0 {
            hits as f64 / (hits + misses) as f64
        } else {
            1.0
        }),
        connected_clients: get("connected_clients"),
        commands: get("total_commands_processed"),
        ..Scalars::default()
    })
}
