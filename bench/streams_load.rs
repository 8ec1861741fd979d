//! The load client of the live log stream benchmark (`bench/streams.sh`,
//! cargo example `streams-load`).
//!
//! Opens `--ws` graphql-transport-ws subscribers and `--sse` event-stream
//! subscribers to the `logs` of `--project` (whose app prints
//! `seq=<n> t=<unix ns>` lines at a fixed rate), and optionally idle ones
//! to `--idle-project` (an app that prints nothing after starting; they
//! ask for `tail: 1`, so the one past line confirms each subscription).
//! Event streams ask for `tail=1` as well (the one past line lies before
//! the window).
//! Once every subscriber got its first line, it waits `--settle` seconds,
//! then measures for `--duration` seconds: every line whose `t` lies in
//! the window is a delivery, its latency is receipt time minus `t`; each
//! subscriber that was live when the window opened should get every such
//! line, and what it did not get by `--grace` seconds after the window are
//! lost lines. Prints a JSON summary on stdout.
//!
//! One tokio runtime, one task per connection. The event stream is spoken
//! over a plain TCP socket (HTTP/1.1, chunked), and only the `msg` field
//! of a line is looked at, without a JSON parser.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser, Debug)]
#[command(about = "Live log stream load client (bench/streams.sh)")]
struct Args {
    /// The server, `http://host:port`.
    #[arg(long)]
    base: String,
    /// A file holding the API token (the admin token of `serve`).
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// The project (id or slug) whose app prints the measured lines.
    #[arg(long, default_value = "producer")]
    project: String,
    /// Websocket subscribers to `--project`.
    #[arg(long, default_value_t = 0)]
    ws: usize,
    /// Event-stream subscribers to `--project`.
    #[arg(long, default_value_t = 0)]
    sse: usize,
    /// The project idle subscribers follow (prints nothing).
    #[arg(long, default_value = "quiet")]
    idle_project: String,
    /// Idle websocket subscribers.
    #[arg(long, default_value_t = 0)]
    idle_ws: usize,
    /// Idle event-stream subscribers.
    #[arg(long, default_value_t = 0)]
    idle_sse: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds between the last subscriber being live and the window.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Seconds after the window a line may still arrive.
    #[arg(long, default_value_t = 3.0)]
    grace: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Attempts per connection before it counts as a connect failure.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds to wait for all subscribers to be live.
    #[arg(long, default_value_t = 300.0)]
    ready_timeout: f64,
    /// The server's pid: its CPU time and VmRSS are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Threads of the client, each a single-threaded runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where websockets carry the token: `init` (`connection_init`'s
    /// payload, re-checked by the server every 2 s) or `header` (the
    /// upgrade request's `Authorization`, re-checked the same way).
    #[arg(long, default_value = "init", value_parser = ["init", "header"])]
    ws_auth: String,
}

// ---------------------------------------------------------------- histogram

/// Values below 2^EXACT are exact; above, 2^(EXACT-1) buckets per octave
/// (about 3 % wide).
const EXACT: u32 = 6;
const HALF: u64 = 1 << (EXACT - 1);
const BUCKETS: usize = (1 << EXACT) + (64 - EXACT as usize) * HALF as usize;

/// Latencies in microseconds, in log-linear buckets, shared by all tasks.
struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < 1 << EXACT {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - EXACT + 1;
        ((1 << EXACT) + (msb - EXACT) as u64 * HALF + ((v >> shift) - HALF)) as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> f64 {
        let i = i as u64;
        if i < 1 << EXACT {
            return i as f64;
        }
        let octave = (i - (1 << EXACT)) / HALF;
        let sub = (i - (1 << EXACT)) % HALF;
        let shift = octave + 1;
        let low = (sub + HALF) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    /// One histogram of the counts of several.
    fn merged(parts: &[Histogram]) -> Histogram {
        let all = Histogram::new();
        for p in parts {
            for (a, c) in all.counts.iter().zip(p.counts.iter()) {
                a.fetch_add(c.load(Relaxed), Relaxed);
            }
            all.max.fetch_max(p.max.load(Relaxed), Relaxed);
            all.sum.fetch_add(p.sum.load(Relaxed), Relaxed);
        }
        all
    }

    fn record(&self, us: u64) {
        self.counts[Self::index(us)].fetch_add(1, Relaxed);
        self.max.fetch_max(us, Relaxed);
        self.sum.fetch_add(us, Relaxed);
    }

    /// Nearest-rank percentiles (`q` in 0..=1), in microseconds.
    fn percentiles(&self, qs: &[f64]) -> (u64, Vec<f64>) {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let out = qs
            .iter()
            .map(|q| {
                if total == 0 {
                    return f64::NAN;
                }
                let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
                let mut seen = 0;
                for (i, c) in counts.iter().enumerate() {
                    seen += c;
                    if seen >= rank {
                        return Self::value(i).min(self.max.load(Relaxed) as f64);
                    }
                }
                f64::NAN
            })
            .collect();
        (total, out)
    }
}

// ---------------------------------------------------------------- shared state

#[derive(Default)]
struct Counters {
    /// Subscribers that got their first line.
    live: AtomicUsize,
    /// Subscribers whose connection finally failed.
    failed: AtomicUsize,
    /// Failed connection attempts (retried or not).
    connect_errors: AtomicU64,
    /// Subscribers that lost their connection before the end.
    disconnects: AtomicU64,
    /// Lines with `t` in the window, received by subscribers live before it.
    deliveries: AtomicU64,
    /// Subscribers live before the window opened.
    live_at_start: AtomicU64,
    /// Lines in the window received by subscribers that became live later.
    late_deliveries: AtomicU64,
    /// Lines missing between two received ones (seq gaps), in the window.
    gap_lines: AtomicU64,
    /// Lines received out of order or twice.
    reordered: AtomicU64,
    lagged_notices: AtomicU64,
    lagged_lines: AtomicU64,
    /// Lines an idle subscriber got after its confirmation.
    idle_lines: AtomicU64,
    /// Lowest and highest seq seen in the window.
    first_seq: AtomicU64,
    last_seq: AtomicU64,
}

struct Shared {
    addr: SocketAddr,
    host: String,
    token: String,
    c: Counters,
    /// Latencies, one histogram per thread (index [`SHARD`]), merged at the end.
    hist: Vec<Histogram>,
    /// The window in unix nanoseconds; 0 while not set.
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    connecting: Semaphore,
    attempts: u32,
    /// Distinct error messages (at most 20) and how often each came.
    errors: std::sync::Mutex<Vec<(String, u64)>>,
    /// The token goes on the websocket upgrade, not in `connection_init`.
    ws_auth_header: bool,
    /// Set once the run is over: a closing connection is no disconnect.
    over: AtomicBool,
}

impl Shared {
    fn note_error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if let Some((_, n)) = errors.iter_mut().find(|(m, _)| *m == e) {
            *n += 1;
        } else if errors.len() < 20 {
            errors.push((e, 1));
        }
    }
}

thread_local! {
    /// Which of `Shared::hist` this thread records into (0: the main thread).
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- one subscriber

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ws,
    Sse,
}

/// What one subscriber saw.
struct Sub {
    idle: bool,
    live: bool,
    live_before_start: bool,
    count: u64,
    last_seq: Option<u64>,
    first_seq: u64,
    max_seq: u64,
    gaps: u64,
    reordered: u64,
    lagged: u64,
    lagged_lines: u64,
    idle_lines: u64,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn digits(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let v = s[..n].iter().fold(0u64, |a, b| {
        a.wrapping_mul(10).wrapping_add((b - b'0') as u64)
    });
    Some((v, &s[n..]))
}

impl Sub {
    fn new(idle: bool) -> Self {
        Sub {
            idle,
            live: false,
            live_before_start: false,
            count: 0,
            last_seq: None,
            first_seq: u64::MAX,
            max_seq: 0,
            gaps: 0,
            reordered: 0,
            lagged: 0,
            lagged_lines: 0,
            idle_lines: 0,
        }
    }

    /// One log line (its JSON, from the websocket message or the `data:`
    /// of an event); false if it has no `msg`.
    fn line(&mut self, sh: &Shared, json: &[u8]) -> bool {
        let now = unix_ns();
        let Some(at) = find(json, br#""msg":""#) else {
            return false;
        };
        let msg = &json[at + 7..];
        if !self.live {
            self.live = true;
            let start = sh.start_ns.load(Relaxed);
            self.live_before_start = start == 0 || now < start;
            sh.c.live.fetch_add(1, Relaxed);
            if self.idle {
                return true;
            }
        }
        if self.idle {
            self.idle_lines += 1;
            return true;
        }
        if let Some(rest) = msg.strip_prefix(b"lagged: ") {
            self.lagged += 1;
            self.lagged_lines += digits(rest).map_or(0, |(n, _)| n);
            // Lines skipped were lines lost: the next one is not a gap.
            self.last_seq = None;
            return true;
        }
        let Some(rest) = msg.strip_prefix(b"seq=") else {
            return true;
        };
        let Some((seq, rest)) = digits(rest) else {
            return true;
        };
        let Some((t, _)) = rest.strip_prefix(b" t=").and_then(digits) else {
            return true;
        };
        let start = sh.start_ns.load(Relaxed);
        if start == 0 || t < start {
            return true;
        }
        let end = sh.end_ns.load(Relaxed);
        if end != 0 && t > end {
            return true;
        }
        sh.hist[SHARD.get()].record(now.saturating_sub(t) / 1000);
        self.count += 1;
        self.first_seq = self.first_seq.min(seq);
        self.max_seq = self.max_seq.max(seq);
        match self.last_seq {
            Some(prev) if seq > prev + 1 => self.gaps += seq - prev - 1,
            Some(prev) if seq <= prev => self.reordered += 1,
            _ => {}
        }
        self.last_seq = Some(seq);
        true
    }

    fn publish(&self, sh: &Shared) {
        let c = &sh.c;
        if self.live_before_start && !self.idle {
            c.live_at_start.fetch_add(1, Relaxed);
            c.deliveries.fetch_add(self.count, Relaxed);
        } else {
            c.late_deliveries.fetch_add(self.count, Relaxed);
        }
        c.gap_lines.fetch_add(self.gaps, Relaxed);
        c.reordered.fetch_add(self.reordered, Relaxed);
        c.lagged_notices.fetch_add(self.lagged, Relaxed);
        c.lagged_lines.fetch_add(self.lagged_lines, Relaxed);
        c.idle_lines.fetch_add(self.idle_lines, Relaxed);
        if self.count > 0 {
            c.first_seq.fetch_min(self.first_seq, Relaxed);
            c.last_seq.fetch_max(self.max_seq, Relaxed);
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One subscriber: connects (retrying), subscribes, reads until `stop`.
async fn subscriber(
    sh: Arc<Shared>,
    kind: Kind,
    project: String,
    idle: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut sub = Sub::new(idle);
    let mut attempt = 0;
    let ended = loop {
        attempt += 1;
        let permit = sh.connecting.acquire().await.expect("semaphore");
        let opened = match kind {
            Kind::Ws => ws_open(&sh, &project, idle).await.map(Conn::Ws),
            Kind::Sse => sse_open(&sh, &project).await.map(Conn::Sse),
        };
        // The permit is held until the first line came: the server's work
        // of starting a subscription is paced as well.
        let mut permit = Some(permit);
        let e = match opened {
            Ok(conn) => match conn.run(&sh, &mut sub, &mut stop, &mut permit).await {
                // Failed before its first line: another attempt.
                Err(e) if !sub.live && !sh.over.load(Relaxed) => e,
                ended => break ended,
            },
            Err(e) => e,
        };
        drop(permit);
        sh.c.connect_errors.fetch_add(1, Relaxed);
        sh.note_error(format!("connect ({}): {e}", kind_name(kind)));
        if attempt >= sh.attempts {
            sh.c.failed.fetch_add(1, Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
    };
    if let Err(e) = ended
        && !sh.over.load(Relaxed)
    {
        sh.c.disconnects.fetch_add(1, Relaxed);
        sh.note_error(format!("{}: {e}", kind_name(kind)));
    }
    sub.publish(&sh);
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Ws => "websocket",
        Kind::Sse => "event stream",
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

enum Conn {
    Ws(Box<Ws>),
    Sse(SseConn),
}

impl Conn {
    /// Reads until `stop` (Ok) or the connection ends (Err); drops
    /// `permit` once the subscriber is live, fails if it is not within
    /// [`OPEN_TIMEOUT`].
    async fn run(
        self,
        sh: &Shared,
        sub: &mut Sub,
        stop: &mut watch::Receiver<bool>,
        permit: &mut Option<SemaphorePermit<'_>>,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
        match self {
            Conn::Ws(ws) => ws_run(*ws, sh, sub, stop, permit, deadline).await,
            Conn::Sse(s) => s.run(sh, sub, stop, permit, deadline).await,
        }
    }
}

const ACTIVE_QUERY: &str =
    "subscription($p:String!){ logs(projectId:$p, tail:0){ cursor ts msg } }";
const IDLE_QUERY: &str = "subscription($p:String!){ logs(projectId:$p, tail:1){ cursor ts msg } }";
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

async fn tcp(sh: &Shared) -> Result<TcpStream, Error> {
    let s = TcpStream::connect(sh.addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn ws_open(sh: &Shared, project: &str, idle: bool) -> Result<Box<Ws>, Error> {
    tokio::time::timeout(OPEN_TIMEOUT, async {
        let mut req = format!("ws://{}/graphql/ws", sh.host).into_client_request()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
        if sh.ws_auth_header {
            req.headers_mut()
                .insert("authorization", format!("Bearer {}", sh.token).parse()?);
        }
        // Small buffers: thousands of these live in one process.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(req, tcp(sh).await?, Some(config)).await?;
        let init = if sh.ws_auth_header {
            json!({"type": "connection_init", "payload": {}})
        } else {
            json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {}", sh.token)}})
        };
        ws.send(Message::text(init.to_string())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"connection_ack\"") => break,
                Some(Ok(Message::Text(t))) if t.contains("\"ping\"") => {
                    ws.send(Message::text(r#"{"type":"pong"}"#)).await?
                }
                Some(Ok(Message::Text(t))) => return Err(format!("before ack: {t}").into()),
                Some(Ok(Message::Close(f))) => return Err(format!("closed before ack: {f:?}").into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err("closed before ack".into()),
            }
        }
        let query = if idle { IDLE_QUERY } else { ACTIVE_QUERY };
        let subscribe = json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"p": project}}});
        ws.send(Message::text(subscribe.to_string())).await?;
        Ok(Box::new(ws))
    })
    .await
    .map_err(|_| "websocket open timed out")?
}

async fn ws_run(
    mut ws: Ws,
    sh: &Shared,
    sub: &mut Sub,
    stop: &mut watch::Receiver<bool>,
    permit: &mut Option<SemaphorePermit<'_>>,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            m = ws.next() => m,
            () = tokio::time::sleep_until(deadline), if !sub.live => {
                return Err("no line came".into());
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let b = t.as_bytes();
                if b.starts_with(br#"{"type":"next""#) {
                    if !sub.line(sh, b) && find(b, br#""errors""#).is_some() {
                        return Err(t.as_str().to_string().into());
                    }
                    if sub.live {
                        permit.take();
                    }
                } else if find(b, br#""type":"ping""#).is_some() {
                    ws.send(Message::text(r#"{"type":"pong"}"#)).await?;
                } else if find(b, br#""type":"pong""#).is_none() {
                    return Err(format!("unexpected message: {}", t.as_str()).into());
                }
            }
            // Websocket pings are answered by tungstenite.
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}").into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("closed".into()),
        }
    }
}

// ---------------------------------------------------------------- event stream

struct SseConn {
    tcp: TcpStream,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    chunked: bool,
}

async fn sse_open(sh: &Shared, project: &str) -> Result<SseConn, Error> {
    tokio::time::timeout(OPEN_TIMEOUT, async {
        let mut tcp = tcp(sh).await?;
        // `tail=0` is refused here (the route checks its arguments as for
        // the plain text form, which wants 1 to 1000): one past line, which
        // lies before the window.
        let tail = 1;
        let req = format!(
            "GET /api/v1/projects/{project}/logs?stream=true&tail={tail} HTTP/1.1\r\nHost: {}\r\n\
             Authorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
            sh.host, sh.token
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut raw = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(i) = find(&raw, b"\r\n\r\n") {
                break i + 4;
            }
            if raw.len() > 64 * 1024 {
                return Err("response head too large".into());
            }
            raw.reserve(4096);
            if tcp.read_buf(&mut raw).await? == 0 {
                return Err("closed before the response head".into());
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            let body = String::from_utf8_lossy(&raw[head_end..]);
            let status = head.lines().next().unwrap_or_default().to_string();
            return Err(format!("{status}: {body}").into());
        }
        let chunked = head.contains("transfer-encoding: chunked");
        raw.drain(..head_end);
        Ok(SseConn { tcp, raw, chunked })
    })
    .await
    .map_err(|_| "event stream open timed out")?
}

impl SseConn {
    async fn run(
        mut self,
        sh: &Shared,
        sub: &mut Sub,
        stop: &mut watch::Receiver<bool>,
        permit: &mut Option<SemaphorePermit<'_>>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        // Decoded body bytes not yet split into lines.
        let mut body: Vec<u8> = Vec::with_capacity(4096);
        // Bytes left of the current chunk (chunked), plus its CRLF.
        let mut left: usize = 0;
        // The last chunk came / an error event's data is next.
        let mut ended = false;
        let mut error = false;
        loop {
            // Decode what is there.
            let mut pos = 0;
            loop {
                if !self.chunked {
                    body.extend_from_slice(&self.raw[pos..]);
                    pos = self.raw.len();
                    break;
                }
                if left > 0 {
                    let take = left.min(self.raw.len() - pos);
                    if take == 0 {
                        break;
                    }
                    body.extend_from_slice(&self.raw[pos..pos + take]);
                    pos += take;
                    left -= take;
                    if left == 0 {
                        // The chunk's trailing CRLF went into `body`: drop it.
                        body.truncate(body.len() - 2);
                    }
                    continue;
                }
                let Some(eol) = find(&self.raw[pos..], b"\r\n") else {
                    break;
                };
                let size_line = &self.raw[pos..pos + eol];
                let hex = size_line.split(|b| *b == b';').next().unwrap_or_default();
                let size = usize::from_str_radix(std::str::from_utf8(hex)?.trim(), 16)
                    .map_err(|e| format!("bad chunk size: {e}"))?;
                pos += eol + 2;
                if size == 0 {
                    ended = true;
                    break;
                }
                left = size + 2;
            }
            self.raw.drain(..pos);
            // Handle complete lines.
            let mut from = 0;
            while let Some(nl) = body[from..].iter().position(|b| *b == b'\n') {
                let line = &body[from..from + nl];
                if let Some(data) = line.strip_prefix(b"data:") {
                    if error {
                        let e = String::from_utf8_lossy(data);
                        return Err(format!("error event: {e}").into());
                    }
                    sub.line(sh, data);
                } else if line.starts_with(b"event: end") {
                    return Err("end event".into());
                } else if line.starts_with(b"event: error") {
                    error = true;
                }
                from += nl + 1;
            }
            body.drain(..from);
            if sub.live {
                permit.take();
            }
            if ended {
                return Err("stream ended".into());
            }
            // Read more.
            if self.raw.capacity() - self.raw.len() < 1024 {
                self.raw.reserve(4096);
            }
            let n = tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                n = self.tcp.read_buf(&mut self.raw) => n?,
                () = tokio::time::sleep_until(deadline), if !sub.live => {
                    return Err("no line came".into());
                }
            };
            if n == 0 {
                return Err("closed".into());
            }
        }
    }
}

// ---------------------------------------------------------------- /proc

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// (busy, total) jiffies of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

// ---------------------------------------------------------------- main

fn main() -> Result<(), Error> {
    let args = Args::parse();
    // One single-threaded runtime per thread, the subscribers dealt out to
    // them in turn (as the server deals out its connections): a line's
    // deliveries wake tasks where their sockets are polled, with no work
    // stealing between threads. The threads end with the process.
    let mut workers = Vec::new();
    for i in 0..args.threads.max(1) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        workers.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || {
                SHARD.set(i + 1);
                rt.block_on(std::future::pending::<()>())
            })?;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args, workers))
}

async fn wait_live(sh: &Shared, total: usize, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    while sh.c.live.load(Relaxed) + sh.c.failed.load(Relaxed) < total && t0.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

async fn run(args: Args, workers: Vec<tokio::runtime::Handle>) -> Result<(), Error> {
    let host = args
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr = tokio::net::lookup_host(&host)
        .await?
        .next()
        .ok_or("the server's address does not resolve")?;
    let token = std::fs::read_to_string(&args.token_file)?
        .trim()
        .to_string();
    let sh = Arc::new(Shared {
        addr,
        host,
        token,
        c: Counters {
            first_seq: AtomicU64::new(u64::MAX),
            ..Counters::default()
        },
        hist: (0..=workers.len()).map(|_| Histogram::new()).collect(),
        start_ns: AtomicU64::new(0),
        end_ns: AtomicU64::new(0),
        connecting: Semaphore::new(args.connect_concurrency.max(1)),
        attempts: args.attempts.max(1),
        errors: std::sync::Mutex::new(Vec::new()),
        ws_auth_header: args.ws_auth == "header",
        over: AtomicBool::new(false),
    });
    let pid = args.server_pid.map(|p| p.to_string());
    let server_cpu = || pid.as_deref().and_then(cpu_secs);
    let server_rss = || pid.as_deref().and_then(rss_kib);
    let ready_timeout = Duration::from_secs_f64(args.ready_timeout);
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();

    let rss_before = server_rss();
    let cpu_before = server_cpu();
    let idle_total = args.idle_ws + args.idle_sse;
    let active_total = args.ws + args.sse;
    let spawn = |tasks: &mut Vec<_>, n: usize, kind: Kind, project: &str, idle: bool| {
        for _ in 0..n {
            let worker = &workers[tasks.len() % workers.len()];
            tasks.push(worker.spawn(subscriber(
                sh.clone(),
                kind,
                project.to_string(),
                idle,
                stop.clone(),
            )));
        }
    };
    // Idle ones first, interleaving the two kinds.
    for i in 0..idle_total.max(active_total) {
        if i < args.idle_ws {
            spawn(&mut tasks, 1, Kind::Ws, &args.idle_project, true);
        }
        if i < args.idle_sse {
            spawn(&mut tasks, 1, Kind::Sse, &args.idle_project, true);
        }
    }
    let idle_secs = wait_live(&sh, idle_total, ready_timeout).await;
    let idle_live = sh.c.live.load(Relaxed);
    eprintln!(
        "streams-load: {idle_live} of {idle_total} idle subscribers live after {:.1} s",
        idle_secs.as_secs_f64()
    );
    for i in 0..active_total {
        if i < args.ws {
            spawn(&mut tasks, 1, Kind::Ws, &args.project, false);
        }
        if i < args.sse {
            spawn(&mut tasks, 1, Kind::Sse, &args.project, false);
        }
    }
    let active_secs = wait_live(&sh, idle_total + active_total, ready_timeout).await;
    let live = sh.c.live.load(Relaxed);
    eprintln!(
        "streams-load: {} of {active_total} subscribers live after {:.1} s ({} failed)",
        live - idle_live,
        active_secs.as_secs_f64(),
        sh.c.failed.load(Relaxed)
    );
    let cpu_connected = server_cpu();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_settled = server_rss();

    // The window.
    let cpu0 = server_cpu();
    let own0 = cpu_secs("self");
    let m0 = machine_ticks();
    let t0 = Instant::now();
    sh.start_ns.store(unix_ns(), Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    sh.end_ns.store(unix_ns(), Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = server_cpu();
    let own1 = cpu_secs("self");
    let m1 = machine_ticks();
    let rss_end = server_rss();
    eprintln!("streams-load: window over; {:.0} s of grace", args.grace);
    tokio::time::sleep(Duration::from_secs_f64(args.grace)).await;
    sh.over.store(true, Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }

    let c = &sh.c;
    let (first, last) = (c.first_seq.load(Relaxed), c.last_seq.load(Relaxed));
    let lines = if first == u64::MAX {
        0
    } else {
        last - first + 1
    };
    let live_at_start = c.live_at_start.load(Relaxed);
    let deliveries = c.deliveries.load(Relaxed);
    let expected = live_at_start * lines;
    let hist = Histogram::merged(&sh.hist);
    let (samples, p) = hist.percentiles(&[0.5, 0.9, 0.99, 0.999]);
    let ms = |us: f64| {
        if us.is_nan() {
            json!(null)
        } else {
            json!((us / 10.0).round() / 100.0)
        }
    };
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => json!(((b - a) * 1000.0).round() / 1000.0),
        _ => json!(null),
    };
    let busy = (m1.0 - m0.0) as f64 / ((m1.1 - m0.1).max(1)) as f64;
    let rss_growth = match (rss_before, rss_settled) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    let summary = json!({
        "subscribers": {
            "ws": args.ws, "sse": args.sse,
            "idle_ws": args.idle_ws, "idle_sse": args.idle_sse,
            "ws_auth": args.ws_auth,
            "live": live,
            "live_at_window_start": live_at_start,
        },
        "connect_failures": c.failed.load(Relaxed),
        "connect_errors": c.connect_errors.load(Relaxed),
        "disconnects": c.disconnects.load(Relaxed),
        "connect_secs": { "idle": (idle_secs.as_secs_f64() * 10.0).round() / 10.0, "active": (active_secs.as_secs_f64() * 10.0).round() / 10.0 },
        "window_secs": (window * 1000.0).round() / 1000.0,
        "lines_in_window": lines,
        "line_rate": if window > 0.0 { json!((lines as f64 / window * 10.0).round() / 10.0) } else { json!(null) },
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "lost_lines": expected.saturating_sub(deliveries),
        "late_subscriber_deliveries": c.late_deliveries.load(Relaxed),
        "gap_lines": c.gap_lines.load(Relaxed),
        "reordered": c.reordered.load(Relaxed),
        "lagged_notices": c.lagged_notices.load(Relaxed),
        "lagged_lines": c.lagged_lines.load(Relaxed),
        "idle_lines": c.idle_lines.load(Relaxed),
        "latency_ms": {
            "samples": samples,
            "p50": ms(p[0]), "p90": ms(p[1]), "p99": ms(p[2]), "p999": ms(p[3]),
            "max": ms(hist.max.load(Relaxed) as f64),
            "mean": if samples > 0 { ms(hist.sum.load(Relaxed) as f64 / samples as f64) } else { json!(null) },
        },
        "server_cpu_secs": {
            "connecting": delta(cpu_before, cpu_connected),
            "window": delta(cpu0, cpu1),
        },
        "server_cpu_share": match (cpu0, cpu1) {
            (Some(a), Some(b)) if window > 0.0 => json!(((b - a) / window * 1000.0).round() / 1000.0),
            _ => json!(null),
        },
        "client_cpu_share": match (own0, own1) {
            (Some(a), Some(b)) if window > 0.0 => json!(((b - a) / window * 1000.0).round() / 1000.0),
            _ => json!(null),
        },
        "machine_busy_share": (busy * 1000.0).round() / 1000.0,
        "server_rss_kib": {
            "before": rss_before, "subscribed": rss_settled, "window_end": rss_end,
            "growth": rss_growth,
            "per_idle_subscriber": match rss_growth {
                Some(g) if idle_total > 0 && active_total == 0 => json!((g as f64 / idle_total as f64 * 100.0).round() / 100.0),
                _ => json!(null),
            },
        },
        "errors": sh.errors.lock().unwrap().iter()
            .map(|(m, n)| json!({"message": m, "count": n})).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
