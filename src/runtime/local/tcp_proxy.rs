//! Public TCP proxies of the local runtime: one listener per proxy on the
//! configured address. Each accepted connection is checked against the
//! allowlist (read afresh for every connection, so a rule change applies to
//! the next one without restarting the listener) and spliced to a ready
//! replica of the service, round robin; with no ready replica it is closed
//! at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

use super::Shared;
use crate::error::{Error, Result};
use crate::runtime::TcpProxySpec;

/// Connections one proxy carries at once; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;

/// How long reaching a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a peer may connect: an empty list admits everyone; an
/// IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is matched as IPv4.
pub fn allowed(allowlist: &[IpNet], peer: IpAddr) -> bool {
    if allowlist.is_empty() {
        return true;
    }
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    allowlist.iter().any(|net| net.contains(&peer))
}

/// A listening proxy.
struct Running {
    spec: TcpProxySpec,
    allowlist: watch::Sender<Arc<[IpNet]>>,
    task: tokio::task::JoinHandle<()>,
    since: Instant,
}

impl Running {
    /// Stops accepting and ends its connections; the port is free on return.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The proxies of this machine, by service.
pub(crate) struct TcpProxies {
    address: IpAddr,
    shared: Arc<Shared>,
    running: tokio::sync::Mutex<HashMap<Uuid, Running>>,
}

impl TcpProxies {
    pub fn new(address: IpAddr, shared: Arc<Shared>) -> TcpProxies {
        TcpProxies {
            address,
            shared,
            running: tokio::sync::Mutex::default(),
        }
    }

    /// Opens the proxy or brings it in line with `spec`: a new allowlist
    /// is handed to the running listener; a new port opens a listener
    /// there before the old one closes (a port that cannot be had leaves
    /// the old one serving).
    pub async fn apply(&self, spec: &TcpProxySpec) -> Result<()> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.get_mut(&spec.service_id)
            && r.spec.external_port == spec.external_port
            && r.spec.env.environment_id == spec.env.environment_id
        {
            r.allowlist.send_replace(spec.allowlist.clone().into());
            r.spec = spec.clone();
            return Ok(());
        }
        let listener = TcpListener::bind((self.address, spec.external_port))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => Error::Conflict(format!(
                    "externalPort: port {} is already in use on this machine",
                    spec.external_port
                )),
                _ => Error::Unprocessable(format!(
                    "externalPort: cannot listen on port {}: {e}",
                    spec.external_port
                )),
            })?;
        let (tx, rx) = watch::channel::<Arc<[IpNet]>>(spec.allowlist.clone().into());
        let task = tokio::spawn(serve(
            listener,
            rx,
            self.shared.clone(),
            spec.env.environment_id,
            spec.service_id,
        ));
        tracing::info!(service.id = %spec.service_id, port = spec.external_port, "TCP proxy listening");
        let old = running.insert(
            spec.service_id,
            Running {
                spec: spec.clone(),
                allowlist: tx,
                task,
                since: Instant::now(),
            },
        );
        if let Some(old) = old {
            old.stop().await;
        }
        Ok(())
    }

    /// Closes a service's proxy, if it has one.
    pub async fn remove(&self, service_id: Uuid) {
        let removed = self.running.lock().await.remove(&service_id);
        if let Some(r) = removed {
            r.stop().await;
        }
    }

    /// Closes the proxies into an environment that was known before
    /// `before` (all of them: `None`) and that `keep` does not keep.
    pub async fn remove_where(&self, before: Option<Instant>, keep: impl Fn(Uuid) -> bool) {
        let gone: Vec<Running> = {
            let mut running = self.running.lock().await;
            let ids: Vec<Uuid> = running
                .iter()
                .filter(|(_, r)| {
                    before.is_none_or(|t| r.since < t) && !keep(r.spec.env.environment_id)
                })
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| running.remove(id)).collect()
        };
        for r in gone {
            r.stop().await;
        }
    }
}

/// Accepts connections until aborted; aborting also ends the connections.
async fn serve(
    listener: TcpListener,
    allowlist: watch::Receiver<Arc<[IpNet]>>,
    shared: Arc<Shared>,
    environment_id: Uuid,
    service_id: Uuid,
) {
    let next = AtomicUsize::new(0);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, not spin.
                        tracing::warn!(error = %e, "TCP proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let admitted = allowed(&allowlist.borrow(), peer.ip());
                if !admitted || connections.len() >= MAX_CONNECTIONS {
                    continue; // Dropping the stream closes it.
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(port) = shared.pick_replica(environment_id, service_id, n) else {
                    continue;
                };
                connections.spawn(splice(stream, port));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Carries one connection to a replica and back until either side ends.
async fn splice(mut client: TcpStream, port: u16) {
    let upstream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)),
    )
    .await;
    let Ok(Ok(mut upstream)) = upstream else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn an_empty_allowlist_admits_everyone() {
        assert!(allowed(&[], "203.0.113.9".parse().unwrap()));
        assert!(allowed(&[], "2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn peers_are_matched_against_v4_and_v6_blocks() {
        let list = nets(&["203.0.113.0/24", "2001:db8::/32"]);
        assert!(allowed(&list, "203.0.113.200".parse().unwrap()));
        assert!(!allowed(&list, "203.0.114.1".parse().unwrap()));
        assert!(allowed(&list, "2001:db8:1::5".parse().unwrap()));
        assert!(!allowed(&list, "2001:db9::1".parse().unwrap()));
        assert!(!allowed(&list, "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_rules() {
        let list = nets(&["127.0.0.0/8"]);
        assert!(allowed(&list, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allowed(&list, "::ffff:10.0.0.1".parse().unwrap()));
        assert!(!allowed(&list, "::1".parse().unwrap()));
    }
}
