//! Settings that the layers beneath the configuration use: plain values
//! with their own parsing (sandbox ids, port ranges, the TCP proxies'), and
//! the private files secrets are kept in. `crate::config` resolves them
//! from flags, variables and the file; the domain and the runtimes take
//! them from here, so that nothing beneath the configuration imports it.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// The largest websocket message before `connection_init` is accepted
/// (`max_websocket_message_bytes` is never below it).
pub const INIT_MESSAGE_BYTES: usize = 64 * 1024;

/// `first-last` as two numbers (spaces around each allowed).
fn first_last<T: std::str::FromStr>(text: &str) -> Option<(T, T)> {
    let (a, b) = text.trim().split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// The ids of the local runtime's sandboxes: `first-last` in the config.
/// `first` is the sandboxes' shared group (it may only traverse the data
/// directory); every project gets one uid (and gid) of the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxIds {
    pub group: u32,
    pub first_uid: u32,
    pub last: u32,
}

impl SandboxIds {
    /// The default range: far above ordinary users and the usual
    /// subordinate id ranges of container tools.
    pub const DEFAULT: &str = "2000000000-2000099999";

    /// Parses `first-last`; the range must leave the system's ids (below
    /// 1000) and `nobody` alone and hold at least one uid.
    pub fn parse(text: &str) -> Result<SandboxIds> {
        let bad = || {
            Error::bad_request(format!(
                "sandbox_ids must be 'first-last' with 1000 <= first < last < 4294967294, not '{text}'"
            ))
        };
        let (first, last): (u32, u32) = first_last(text).ok_or_else(bad)?;
        let nobody = 65534;
        if first < 1000 || first >= last || last >= u32::MAX - 1 || (first..=last).contains(&nobody)
        {
            return Err(bad());
        }
        Ok(SandboxIds {
            group: first,
            first_uid: first + 1,
            last,
        })
    }
}

/// The ports managed data services listen on (local runtime): `first-last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Below the usual ephemeral range, above the well-known ports.
    pub const DEFAULT: &str = "21000-21999";

    pub fn parse(text: &str) -> Result<PortRange> {
        Self::parse_setting("resource_ports", text)
    }

    /// Parses the value of setting `key` (named in the error).
    pub fn parse_setting(key: &str, text: &str) -> Result<PortRange> {
        let bad = || {
            Error::bad_request(format!(
                "{key} must be 'first-last' with 1024 <= first <= last, not '{text}'"
            ))
        };
        let (first, last): (u16, u16) = first_last(text).ok_or_else(bad)?;
        if first < 1024 || first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: i64) -> bool {
        (i64::from(self.first)..=i64::from(self.last)).contains(&port)
    }
}

/// Public TCP proxies of services (endpoints `/services/:id/tcp-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpProxyConfig {
    /// The external ports tenants may choose from.
    pub ports: PortRange,
    /// Where the local runtime's proxies listen.
    pub address: std::net::IpAddr,
    /// Proxies (enabled or keeping their port) one organisation may have.
    pub max_per_organization: u64,
}

impl TcpProxyConfig {
    /// The default external ports (`tcp_proxy_ports`).
    pub const DEFAULT_PORTS: &str = "30000-60999";
}

impl Default for TcpProxyConfig {
    fn default() -> Self {
        TcpProxyConfig {
            ports: PortRange {
                first: 30000,
                last: 60999,
            },
            address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            max_per_organization: 10,
        }
    }
}

/// Writes `contents` to a new file readable only by its owner; fails if it exists.
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Reads a secret file, creating it with `make()` (mode 0600) on first use.
pub fn read_or_create_secret_file(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    match write_private_file(path, &make()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
    }
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))
}
