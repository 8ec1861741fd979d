//! The API's listening socket.
//!
//! One acceptor admits each new connection against the connection limits
//! (all connections, and per client address) and hands it to the HTTP
//! thread with the fewest open connections. Each thread runs its own
//! single-threaded runtime: a request, its handler and the upstream calls
//! it makes (the AI gateway keeps a pooled client per thread) stay on one
//! thread. Connections are served by hyper with a header-read timeout
//! (which also closes an HTTP/1 connection that waits too long for its next
//! request) and an idle timeout; a refused connection gets a short 503 and
//! is closed at once, and the connections already open keep working.
//!
//! Work that outlives a request (jobs, the app router, usage writes) runs
//! on the main runtime.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::{Error, Result};

/// Limits on the API's connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections, all clients together (websockets included).
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_per_ip: usize,
    /// How long a request's head may take to arrive, counted from the
    /// moment an HTTP/1 connection waits for it.
    pub header_timeout: Duration,
    /// How long a request body may pause between two pieces.
    pub body_timeout: Duration,
    /// How long a connection may stay without a request in flight.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_per_ip: 512,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The answer of a refused connection.
static REFUSED: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = Error::Unavailable("too many open connections; try again shortly".into()).body();
    let body = body.to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Open connections, counted for the limits.
struct Gate {
    limits: ConnectionLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Gate {
    /// Counts a new connection from `ip`, or refuses it.
    fn admit(self: &Arc<Self>, ip: IpAddr, thread: Arc<AtomicUsize>) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *open;
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.limits.max_connections || mine >= self.limits.max_per_ip {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, mine + 1);
        thread.fetch_add(1, Ordering::Relaxed);
        Some(Permit {
            gate: self.clone(),
            ip,
            thread,
        })
    }
}

/// One admitted connection; dropping it (when the socket closes, after an
/// upgrade too) frees its place.
struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
    thread: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.thread.fetch_sub(1, Ordering::Relaxed);
        let mut open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A socket that holds its connection's place for as long as it lives.
struct Counted {
    tcp: tokio::net::TcpStream,
    _permit: Permit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A connection on its way to a thread.
struct Handoff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: Permit,
}

/// An HTTP thread as the acceptor sees it.
struct Thread {
    open: Arc<AtomicUsize>,
    handoff: mpsc::UnboundedSender<Handoff>,
}

/// HTTP threads serving one listening socket.
pub struct Serving {
    stop: watch::Sender<bool>,
    /// Each thread's outcome, as it stops.
    threads: FuturesUnordered<oneshot::Receiver<Result<()>>>,
}

impl Serving {
    /// Starts `threads` threads serving `routes` on `listener`, and the
    /// acceptor on the current runtime.
    pub fn start(
        listener: std::net::TcpListener,
        routes: Router,
        threads: usize,
        limits: ConnectionLimits,
    ) -> Result<Serving> {
        let fail = |what: &str, e: std::io::Error| Error::internal(format!("{what}: {e}"));
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("listener", e))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| fail("listener", e))?;
        let (stop, stopping) = watch::channel(false);
        let serving = Serving {
            stop,
            threads: FuturesUnordered::new(),
        };
        let mut handles = Vec::new();
        for n in 0..threads.max(1) {
            let (handoff, arrivals) = mpsc::unbounded_channel();
            let (done, finished) = oneshot::channel();
            let (routes, stopping, limits) = (routes.clone(), stopping.clone(), limits.clone());
            std::thread::Builder::new()
                .name(format!("sylphx-http-{n}"))
                .spawn(move || {
                    HTTP_THREAD.with(|t| t.set(Some(n)));
                    serve_thread(arrivals, routes, limits, stopping, done)
                })
                .map_err(|e| fail("cannot start an HTTP thread", e))?;
            serving.threads.push(finished);
            handles.push(Thread {
                open: Arc::new(AtomicUsize::new(0)),
                handoff,
            });
        }
        let gate = Arc::new(Gate {
            limits,
            open: Mutex::new((0, HashMap::new())),
        });
        tokio::spawn(accept(listener, handles, gate, stopping));
        Ok(serving)
    }

    /// Resolves only if a thread stops before [`Serving::stop`]: why it did.
    pub async fn failed(&mut self) -> Error {
        match self.threads.next().await {
            Some(Ok(Err(e))) => e,
            Some(_) => Error::internal("an HTTP thread stopped"),
            None => std::future::pending().await,
        }
    }

    /// Stops accepting; returns once the requests in flight are answered.
    pub async fn stop(mut self) -> Result<()> {
        self.signal_stop();
        let mut result = Ok(());
        while let Some(r) = self.threads.next().await {
            if let Ok(Err(e)) = r {
                result = Err(e);
            }
        }
        result
    }

    /// Stops accepting, without waiting.
    pub fn signal_stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Accepts connections until `stopping`, admitting each against the limits
/// and handing it to the least busy thread.
async fn accept(
    listener: tokio::net::TcpListener,
    threads: Vec<Thread>,
    gate: Arc<Gate>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: let the open connections
                // finish before trying again, instead of spinning.
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let thread = threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
            .expect("at least one thread");
        let Some(permit) = gate.admit(peer.ip(), thread.open.clone()) else {
            // The answer fits the socket's buffer; the socket closes at once.
            let _ = tcp.try_write(&REFUSED);
            continue;
        };
        let Ok(tcp) = tcp.into_std() else { continue };
        let _ = thread.handoff.send(Handoff { tcp, peer, permit });
    }
}

thread_local! {
    static HTTP_THREAD: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Which HTTP thread (0, 1, …) the calling thread is, if it is one.
pub fn http_thread() -> Option<usize> {
    HTTP_THREAD.with(std::cell::Cell::get)
}

/// One HTTP thread: serves the connections handed to it on a
/// current-thread runtime until `stopping` turns true and they are done,
/// reports through `done`, then keeps the runtime's I/O driver running
/// until the process exits, since sockets it opened (pooled store
/// connections) may still be used from other threads.
fn serve_thread(
    mut arrivals: mpsc::UnboundedReceiver<Handoff>,
    routes: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
    done: oneshot::Sender<Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = done.send(Err(Error::internal(format!("HTTP thread runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // A connection's read buffer stays at 8 KiB (hyper's least):
            // request heads fit in it (431 beyond), bodies are read in
            // pieces of it, and each idle keep-alive connection or event
            // stream keeps 8 KiB less than when it may grow.
            .max_buf_size(HTTP1_BUFFER);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let mut connections = tokio::task::JoinSet::new();
        let for_connections = stopping.clone();
        loop {
            tokio::select! {
                arrival = arrivals.recv() => match arrival {
                    Some(h) => {
                        connections.spawn(connection(
                            builder.clone(),
                            h,
                            routes.clone(),
                            limits.idle_timeout,
                            for_connections.clone(),
                        ));
                    }
                    None => break,
                },
                _ = stopping.wait_for(|stop| *stop) => break,
            }
            while connections.try_join_next().is_some() {}
        }
        while connections.join_next().await.is_some() {}
    });
    let _ = done.send(Ok(()));
    runtime.block_on(std::future::pending::<()>());
}

/// The most an HTTP/1 connection buffers, and so the largest request head.
const HTTP1_BUFFER: usize = 8 * 1024;

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    fn end(&self) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// When the connection will have been idle for `idle`, if nothing
    /// happens meanwhile (`None` while a request is in flight).
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        (self.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| *self.since.lock().unwrap_or_else(|e| e.into_inner()) + idle)
    }
}

/// Serves one connection until it closes: after `idle` without a request,
/// or when the server stops, it is closed once the response in progress
/// has been written.
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    h: Handoff,
    routes: Router,
    idle: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let Ok(tcp) = tokio::net::TcpStream::from_std(h.tcp) else {
        return;
    };
    // Small SSE chunks and JSON answers must leave at once (AI gateway).
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        since: Mutex::new(Instant::now()),
    });
    let peer = h.peer;
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            req.extensions_mut().insert(ConnectInfo(peer));
            let answer = routes.clone().oneshot(req);
            let activity = activity.clone();
            async move {
                let r = answer.await;
                activity.end();
                r
            }
        })
    };
    let io = TokioIo::new(Counted {
        tcp,
        _permit: h.permit,
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_at = activity
            .idle_at(idle)
            .unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stopping.wait_for(|stop| *stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(idle_at), if !closing => {
                if activity.idle_at(idle).is_some_and(|at| at <= Instant::now()) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
