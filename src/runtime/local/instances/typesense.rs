//! Typesense instances: one `typesense-server` per resource, its index in
//! `data/`, its API key in a configuration file of mode 0600 (never on a
//! command line), readiness from `/health` plus a read with the key.
//!
//! Typesense always runs its Raft peering listener besides the API: each
//! start takes a free loopback port for it, and `reset-peers-on-error`
//! lets a single node come back when that port changed.

use std::path::Path;
use std::time::Duration;

use super::{Ctx, DATA, DATA_TMP, make_dir, sh_quote};
use crate::error::{Error, Result};
use crate::runtime::instances::Origin;

/// The configuration file, in the instance's directory (mode 0600).
const CONF: &str = "typesense.ini";
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the sandbox shows the program (it may live anywhere on the host).
pub const PROGRAM: &str = "/run/typesense/typesense-server";
/// The header Typesense reads its key from.
pub const KEY_HEADER: &str = "X-TYPESENSE-API-KEY";

pub fn init(ctx: &Ctx) -> Result<()> {
    if ctx.spec.origin != Origin::Empty {
        return Err(Error::bad_request(
            "copies and restores are available for PostgreSQL only",
        ));
    }
    make_dir(&ctx.path(DATA_TMP), 0o700, Some(ctx.owner), None)
}

/// A loopback port nobody listens on now, for the peering listener.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(Error::internal)?;
    Ok(l.local_addr().map_err(Error::internal)?.port())
}

fn config(ctx: &Ctx, peering_port: u16) -> String {
    format!(
        "; Written by the control plane at every start; edits are lost.
[server]
api-address = 127.0.0.1
api-port = {port}
peering-address = 127.0.0.1
peering-port = {peering_port}
data-dir = {data}
api-key = {key}
enable-cors = false
reset-peers-on-error = true
",
        port = ctx.port,
        data = ctx.inside(DATA),
        key = ctx.spec.credentials.app_password.expose(),
    )
}

pub fn configure(ctx: &Ctx) -> Result<()> {
    ctx.write(CONF, config(ctx, free_port()?).as_bytes())
}

pub fn command(ctx: &Ctx, server: &Path) -> String {
    format!(
        "exec {} --config={}",
        sh_quote(&server.to_string_lossy()),
        sh_quote(&ctx.inside(CONF))
    )
}

/// Readiness: `/health` says ok, and the key lists the collections.
pub async fn probe(ctx: &Ctx) -> Result<()> {
    let unavailable = |e: String| Error::Unavailable(format!("{}: {e}", ctx.spec.name));
    let client = reqwest::Client::builder()
        .timeout(IO_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| unavailable(e.to_string()))?;
    let base = format!("http://127.0.0.1:{}", ctx.port);
    let health: serde_json::Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?
        .json()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    if health.get("ok") != Some(&serde_json::Value::Bool(true)) {
        return Err(unavailable(format!("/health answered {health}")));
    }
    let status = client
        .get(format!("{base}/collections"))
        .header(KEY_HEADER, ctx.spec.credentials.app_password.expose())
        .send()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?
        .status();
    if !status.is_success() {
        return Err(unavailable(format!("the API key was refused ({status})")));
    }
    Ok(())
}
