//! Stage 5b: the HTTP endpoints. `/metrics` (Prometheus text), `/api/network-stats` (the seed
//! document's shape), `/api/status` (hooks, interfaces, maps), `/healthz`. Shutdown is a
//! token passed in, so the server is tested on 127.0.0.1:0 without root or kernel programs.

use std::{
    io::Write as _,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    aggregate::{self, CgroupRow, Connection, ProcessRow, ServiceRow, Tracker},
    anon::Anonymize,
    load::Hook,
    load::Monitored,
    metrics::Metrics,
};

#[derive(Debug, Clone, Default, Serialize)]
pub struct InterfaceStats {
    pub name: String,
    pub ifindex: u32,
    pub is_up: bool,
    /// Mb/s, 0 where the driver reports none.
    pub speed: u64,
    pub mtu: u32,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    /// Device error and drop counters (rx + tx), from the kernel's interface statistics.
    pub errors: u64,
    pub drops: u64,
    /// The same per direction.
    pub errors_recv: u64,
    pub errors_sent: u64,
    pub drops_recv: u64,
    pub drops_sent: u64,
    /// Bytes/s and packets/s over the last interval.
    pub send_rate: f64,
    pub recv_rate: f64,
    pub packets_sent_rate: f64,
    pub packets_recv_rate: f64,
    /// The send and receive rates as a fraction of the link speed; absent where the driver
    /// reports no speed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_sent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_recv: Option<f64>,
}

/// What the drain publishes of `GET /api/network-stats`: all but the connection table, whose
/// rows are built from the flow table when the document is asked for
/// (`write_network_stats`). The document: `interfaces`, `connections` (the rows), then the
/// summary's fields.
#[derive(Debug, Clone, Default)]
pub struct NetworkStats {
    pub interfaces: Vec<InterfaceStats>,
    pub summary: Summary,
}

/// The fields of `/api/network-stats` after `connections`, in the document's order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Connections in the table (those the request's criteria admit, when it gives any);
    /// `connections` holds the `limit` busiest of them when the request gives one.
    pub connections_total: usize,
    /// Per command name: totals and rates, busiest first.
    pub processes: Vec<ProcessRow>,
    /// Per cgroup path (systemd unit, container, pod): totals and rates, busiest first.
    pub cgroups: Vec<CgroupRow>,
    /// Per application protocol (by well-known port: http, https, ssh, dns...), busiest
    /// first.
    pub services: Vec<ServiceRow>,
    pub total_bytes_sent: u64,
    pub total_bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    /// Unix seconds of the drain this snapshot comes from.
    pub timestamp: f64,
    pub interval_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MapUsage {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
    /// The per-CPU flow tables' slots the programs use now (each CPU's part grows with its
    /// flows: `netmon_map_in_use`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_use: Option<u64>,
}

/// `GET /api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub listen: String,
    pub interfaces: Vec<Monitored>,
    /// Interfaces of the default set left out as stacked on others that are monitored
    /// (`iface::default_set`).
    pub stacked: Vec<Stacked>,
    pub hooks: Vec<Hook>,
    /// Where the programs count flows (`--flow-table`).
    pub flow_table: crate::load::FlowTable,
    pub maps: Vec<MapUsage>,
    pub kernel_events: std::collections::BTreeMap<String, u64>,
    pub flows_active: u64,
    pub flow_evictions: u64,
    pub flows_expired: u64,
    pub last_drain_seconds: f64,
    /// Wall time of each of the last 120 drains, oldest first: a slow drain
    /// (a full read of a large map) stays visible after the quick ones that follow it.
    pub recent_drain_seconds: Vec<f64>,
    pub drains: u64,
    /// Drains that read the whole flow map (the others read only flows that changed); with
    /// the per-CPU tables, none does.
    pub full_drains: u64,
    /// Whether the last drain read the whole flow map.
    pub last_drain_full: bool,
    pub threat: ThreatStatus,
    /// The last SIGHUP's outcome; None before the first.
    pub last_reload: Option<ReloadStatus>,
}

/// An interface left out of the default set: its frames pass the devices `below` it, where
/// they are counted.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stacked {
    pub name: String,
    pub below: Vec<String>,
}

/// What the last configuration reload (SIGHUP) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// When it was asked for, unix milliseconds.
    pub at_ms: u64,
    /// Whether the configuration loaded and is in force; if not, the one before still is.
    pub applied: bool,
    /// Why it did not load (the file and line where there is one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings that changed and take a restart (by their configuration-file names).
    pub restart_needed: Vec<String>,
}

/// The threat side's configuration and health, for `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreatStatus {
    pub feeds: Vec<crate::classify::feeds::FeedStatus>,
    /// GeoIP databases: path and database type.
    pub geoip: Vec<String>,
    pub sinks: Vec<String>,
    pub event_log: String,
    pub dry_run: bool,
    pub policy_lines: usize,
}

/// The flow table of the last drain: the connection table is built from it, and from the
/// sockets listed at that moment, when `/api/network-stats` is asked for, not on every
/// drain.
#[derive(Default)]
pub struct Table {
    pub tracker: Tracker,
}

/// What the drain loop publishes and the handlers read.
#[derive(Default)]
pub struct Shared {
    /// Everything but `connections`, which comes from `table`.
    pub stats: RwLock<NetworkStats>,
    pub table: RwLock<Table>,
    pub status: RwLock<Status>,
    pub metrics: Metrics,
    /// Detections, scores and alerts.
    pub classifier: RwLock<crate::classify::Classifier>,
    /// Feed states, as the feed thread last published them.
    pub feed_status: Arc<RwLock<Vec<crate::classify::feeds::FeedStatus>>>,
    /// Lists idle sockets (listeners, TIME_WAIT...) for the connection table; None until
    /// the daemon has its maps.
    pub sockets: std::sync::Mutex<Option<crate::sockdiag::Lister>>,
    /// How the endpoints show remote addresses (`--anonymize`; a reload may change it).
    pub anonymize: RwLock<Anonymize>,
    /// The bearer token every request but /healthz must bring (`--api-token-file`; a reload
    /// may change it).
    pub api_token: RwLock<Option<String>>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/network-stats", get(network_stats))
        .route("/api/status", get(status))
        .route("/api/alerts", get(alerts))
        .route("/api/remotes", get(remotes))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        .with_state(shared)
}

/// With a token configured, every request but /healthz (which says only "ok") must bring
/// `Authorization: Bearer <token>`; others get 401 and a `WWW-Authenticate` challenge.
async fn require_token(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Some(token) = s.api_token.read().expect("lock not poisoned").clone() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if req.uri().path() == "/healthz" || given.is_some_and(|g| same_token(g, &token)) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"netmon\"")],
        "this netmon asks for its API token: Authorization: Bearer <token>\n",
    )
        .into_response()
}

/// Token equality that takes as long wherever the first difference is (a length
/// difference aside): no early exit for a guesser to time.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// `GET /api/network-stats?limit=N&remote=CIDR&port=N&proto=P&process=NAME&level=L`: only
/// the connections every given criterion admits (the remote address in CIDR, either port
/// N, protocol tcp, udp or icmp (ICMPv6 too), owned by a process of that command name, at
/// risk level L or above), and of those the N busiest.
#[derive(Debug, Default, Deserialize)]
pub struct StatsQuery {
    pub limit: Option<usize>,
    pub remote: Option<String>,
    pub port: Option<u16>,
    pub proto: Option<String>,
    pub process: Option<String>,
    pub level: Option<String>,
}

/// A `StatsQuery`'s criteria, checked.
#[derive(Debug, Default)]
pub struct ConnFilter {
    /// What the flows' tuples must be, checked before the rows are built.
    pub tuple: aggregate::TupleFilter,
    /// The row's owner, and its risk level at least.
    pub process: Option<String>,
    pub level: Option<crate::classify::score::Level>,
}

impl ConnFilter {
    /// The criteria of `q`; an error names the parameter and says what it takes.
    pub fn of(q: &StatsQuery) -> Result<Self, String> {
        let remote = q
            .remote
            .as_deref()
            .map(|r| {
                r.parse::<crate::act::net::Net>()
                    .map_err(|e| format!("remote={r}: {e} (an address or a CIDR prefix)"))
            })
            .transpose()?;
        let proto = q
            .proto
            .as_deref()
            .map(|p| match p.to_ascii_lowercase().as_str() {
                "tcp" => Ok(netmon_common::IPPROTO_TCP),
                "udp" => Ok(netmon_common::IPPROTO_UDP),
                "icmp" | "icmpv6" => Ok(netmon_common::IPPROTO_ICMP),
                _ => Err(format!("proto={p}: give tcp, udp or icmp")),
            })
            .transpose()?;
        let level = q
            .level
            .as_deref()
            .map(|l| {
                crate::classify::score::Level::parse(l)
                    .ok_or_else(|| format!("level={l}: give low, medium or high"))
            })
            .transpose()?;
        Ok(Self {
            tuple: aggregate::TupleFilter {
                remote,
                port: q.port,
                proto,
            },
            process: q.process.clone(),
            level,
        })
    }

    /// Whether `c` is of the process asked for: its owner's command name, or for a row
    /// without an owner the label its traffic has in the processes' totals, `forwarded`
    /// (frames the host forwards) or `unknown`.
    fn admits_process(&self, c: &Connection) -> bool {
        let Some(want) = &self.process else {
            return true;
        };
        match &c.process {
            Some(name) => name == want,
            None if c.forwarded => want == aggregate::FORWARDED_PROCESS,
            None => want == aggregate::UNKNOWN_PROCESS,
        }
    }

    /// Whether the rows can be chosen from the flows' activity alone (no row criterion).
    fn by_tuple_only(&self) -> bool {
        self.process.is_none() && self.level.is_none()
    }
}

async fn network_stats(
    State(s): State<Arc<Shared>>,
    Query(q): Query<StatsQuery>,
) -> axum::response::Response {
    let filter = match ConnFilter::of(&q) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    // Anonymized, the table shows remote networks, not addresses: a narrower remote filter
    // would tell whether one address is connected.
    let anon = *s.anonymize.read().expect("lock not poisoned");
    if let Some(n) = &filter.tuple.remote
        && let Some(max) = anon.shown_prefix(n.is_v4())
        && n.prefix() > max
    {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "remote={n}: this daemon anonymizes remote addresses to their /{max} \
                 (--anonymize prefix): ask for a prefix of that length or shorter"
            ),
        )
            .into_response();
    }
    // Off the async workers: with a million flows this takes a while, and the drain waits
    // only for the copy of the flow table. The document goes out as it is written, a chunk
    // at a time, each row built and assessed just before: a table of a million
    // connections is never in memory whole, neither its rows nor its text.
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            buf: Vec::with_capacity(STREAM_CHUNK),
            tx,
        };
        let written = write_network_stats(&s, &q, &filter, &mut out).and_then(|()| out.flush());
        if let Err(e) = written
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            // Sent as the body's error, which ends the response without its end (hyper
            // closes the connection): the client sees a cut document, not a complete one.
            tracing::warn!("writing /api/network-stats: {e}");
            let _ = out.tx.blocking_send(Err(e));
        }
        crate::trim_heap();
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::new(ChunkBody(rx)),
    )
        .into_response()
}

/// Bytes of the `/api/network-stats` document sent at a time.
const STREAM_CHUNK: usize = 64 * 1024;
/// Chunks written ahead of what the client has taken: past them, the builder waits for a
/// slow client with this much of the document in memory, not all of it.
const STREAM_AHEAD: usize = 4;

/// Gathers what is written into chunks of `STREAM_CHUNK` bytes and passes each to the
/// response; an error `BrokenPipe` once the client has gone.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_CHUNK));
        self.tx.blocking_send(Ok(chunk.into())).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

/// A response body of the chunks a `ChunkWriter` passes.
struct ChunkBody(tokio::sync::mpsc::Receiver<std::io::Result<axum::body::Bytes>>);

impl axum::body::HttpBody for ChunkBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::io::Result<http_body::Frame<Self::Data>>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| c.map(http_body::Frame::data)))
    }
}

/// Rows assessed at a time, under one hold of the classifier's lock (never held while the
/// document waits for the client).
const ROW_BATCH: usize = 512;

/// Writes the `/api/network-stats` document for `q` (`filter` its criteria) to `w`.
fn write_network_stats(
    s: &Shared,
    q: &StatsQuery,
    filter: &ConnFilter,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let NetworkStats {
        interfaces,
        mut summary,
    } = s.stats.read().expect("lock not poisoned").clone();
    let table = || s.table.read().expect("lock not poisoned");
    let mut sockets = s
        .sockets
        .lock()
        .expect("lock not poisoned")
        .as_mut()
        .map(crate::sockdiag::Lister::rows)
        .unwrap_or_default();
    sockets.retain(|r| filter.tuple.admits(&r.tuple()));
    // With a limit and no row criterion, the rows are chosen from the flows' activity;
    // otherwise every row the tuple criteria admit is built, and the rest chosen after.
    let chosen_first = q.limit.filter(|_| filter.by_tuple_only());
    let mut parts = match chosen_first {
        None => table().tracker.flow_parts_where(&filter.tuple),
        Some(n) => {
            // Rows only for the n busiest connections: the choice takes a few dozen bytes a
            // flow, where a row (its strings, its owner) takes hundreds.
            let activity = table().tracker.flow_activity_where(&filter.tuple);
            let (tuples, total) = aggregate::busiest_tuples(activity, &sockets, n);
            summary.connections_total = total;
            sockets.retain(|r| tuples.binary_search(&r.tuple()).is_ok());
            table().tracker.flow_parts_of(&tuples)
        }
    };
    let anon = *s.anonymize.read().expect("lock not poisoned");
    let mut rows =
        aggregate::connection_rows(&mut parts, &mut sockets).filter(|c| filter.admits_process(c));
    // The next batch of rows the criteria admit, under the classifier's lock when it is
    // needed: for a level criterion, and to assess the rows when `assess` is given.
    let mut next_batch = |assess: bool| {
        let batch: Vec<Connection> = rows.by_ref().take(ROW_BATCH).collect();
        let done = batch.len() < ROW_BATCH;
        if !assess && filter.level.is_none() {
            return (batch, done);
        }
        let c = s.classifier.read().expect("lock not poisoned");
        let mut batch: Vec<Connection> = batch
            .into_iter()
            .filter(|conn| filter.level.is_none_or(|min| c.level(conn.scored()) >= min))
            .collect();
        if assess {
            assess_rows(&c, anon, &mut batch);
        }
        (batch, done)
    };
    w.write_all(b"{\"interfaces\":")?;
    serde_json::to_writer(&mut *w, &interfaces)?;
    w.write_all(b",\"connections\":[")?;
    let mut first = true;
    let mut write_rows = |w: &mut dyn std::io::Write, batch: &[Connection]| {
        for conn in batch {
            if !std::mem::take(&mut first) {
                w.write_all(b",")?;
            }
            serde_json::to_writer(&mut *w, conn)?;
        }
        std::io::Result::Ok(())
    };
    let mut admitted = 0;
    match q.limit {
        None => loop {
            let (batch, done) = next_batch(true);
            admitted += batch.len();
            write_rows(w, &batch)?;
            if done {
                break;
            }
        },
        Some(n) => {
            // The n busiest, kept as the batches come (never more than twice n, or a
            // batch, at once), then assessed: only the rows sent are.
            let mut kept = Vec::new();
            loop {
                let (batch, done) = next_batch(false);
                admitted += batch.len();
                kept.extend(batch);
                if kept.len() >= 2 * n.max(ROW_BATCH) {
                    aggregate::keep_busiest(&mut kept, n);
                }
                if done {
                    break;
                }
            }
            aggregate::keep_busiest(&mut kept, n);
            assess_rows(
                &s.classifier.read().expect("lock not poisoned"),
                anon,
                &mut kept,
            );
            write_rows(w, &kept)?;
        }
    }
    if chosen_first.is_none() {
        summary.connections_total = admitted;
    }
    // The summary's fields, after the rows: its object without the opening brace.
    let tail = serde_json::to_vec(&summary)?;
    w.write_all(b"],")?;
    w.write_all(&tail[1..])
}

/// Gives each row its risk assessment and GeoIP facts, its remote address anonymized as
/// `anon` says.
fn assess_rows(c: &crate::classify::Classifier, anon: Anonymize, rows: &mut [Connection]) {
    for conn in rows {
        let remote = conn.tuple.0;
        let (mut risk, geo) = c.assess_with_geo(conn.scored());
        if anon != Anonymize::Off {
            conn.remote_address = anon.address(&conn.remote_address);
            anonymize_reasons(anon, &mut risk.reasons, remote);
        }
        conn.risk = Some(risk);
        conn.geo = geo;
    }
}

/// The alerts kept (newest last), with their reasons.
async fn alerts(State(s): State<Arc<Shared>>) -> Json<Vec<crate::classify::Alert>> {
    let mut alerts = s.classifier.read().expect("lock not poisoned").alerts();
    let anon = *s.anonymize.read().expect("lock not poisoned");
    if anon != Anonymize::Off {
        for a in &mut alerts {
            if let Some(ip) = a.remote {
                a.detail = anon.text(&a.detail, ip);
                anonymize_reasons(anon, &mut a.reasons, ip);
                a.remote = Some(anon.ip(ip));
            }
        }
    }
    Json(alerts)
}

/// Remote addresses with something against them (a detection, a feed listing), scored,
/// riskiest first.
async fn remotes(State(s): State<Arc<Shared>>) -> Json<Vec<crate::classify::RemoteRisk>> {
    let mut remotes = s.classifier.read().expect("lock not poisoned").remotes();
    let anon = *s.anonymize.read().expect("lock not poisoned");
    if anon != Anonymize::Off {
        for r in &mut remotes {
            anonymize_reasons(anon, &mut r.reasons, r.remote);
            r.remote = anon.ip(r.remote);
        }
    }
    Json(remotes)
}

/// Reasons about `ip` with its mentions anonymized.
fn anonymize_reasons(anon: Anonymize, reasons: &mut [crate::classify::score::Reason], ip: IpAddr) {
    for r in reasons {
        r.detail = anon.text(&r.detail, ip);
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Json<Status> {
    Json(s.status.read().expect("lock not poisoned").clone())
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Serves until `shutdown` is cancelled.
/// Serves the endpoints on `listener` until `shutdown`: plain HTTP, or HTTPS with `tls`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tls: Option<Arc<crate::tls::CertFiles>>,
) -> std::io::Result<()> {
    let stop = async move { shutdown.cancelled().await };
    match tls {
        None => {
            axum::serve(listener, router(shared))
                .with_graceful_shutdown(stop)
                .await
        }
        Some(certs) => {
            let listener =
                crate::tls::TlsListener::new(listener, certs).map_err(std::io::Error::other)?;
            axum::serve(listener, router(shared))
                .with_graceful_shutdown(stop)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;

    #[tokio::test]
    async fn a_token_guards_everything_but_healthz() {
        let token = "0123456789abcdef0123456789abcdef";
        let shared = Arc::new(Shared {
            api_token: RwLock::new(Some(token.into())),
            ..Shared::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shared, stop.clone(), None));
        let ask = |token: Option<&str>, path: &'static str| {
            let api = client::Api {
                addr: addr.clone(),
                token: token.map(str::to_string),
                ..Default::default()
            };
            tokio::task::spawn_blocking(move || api.get(path).unwrap())
        };
        for path in [
            "/metrics",
            "/api/status",
            "/api/network-stats",
            "/api/alerts",
        ] {
            let (code, body) = ask(None, path).await.unwrap();
            assert_eq!(code, 401, "{path} without a token: {body}");
            let (code, _) = ask(Some("0123456789abcdef0123456789abcdeX"), path)
                .await
                .unwrap();
            assert_eq!(code, 401, "{path} with another token");
            let (code, body) = ask(Some(token), path).await.unwrap();
            assert_eq!(code, 200, "{path} with the token: {body}");
        }
        assert_eq!(ask(None, "/healthz").await.unwrap().0, 200);
        // The CLI's error says what to do.
        let api = client::Api {
            addr: addr.clone(),
            ..Default::default()
        };
        let e = tokio::task::spawn_blocking(move || api.get_json("/api/status").unwrap_err())
            .await
            .unwrap()
            .to_string();
        assert!(e.contains("--api-token-file"), "{e}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// A table of `n` TCP connections from 198.18.0.1 (local ports 1000 up) to two remotes:
    /// every connection sends, every third also receives, with rates that differ in the
    /// second drain; the owner's command name is one of three.
    fn table_of(n: u16) -> Shared {
        use netmon_common::{DIR_EGRESS, DIR_INGRESS, FlowKey, IPPROTO_TCP, v4_mapped};
        const SEC: u64 = 1_000_000_000;
        let key = |dir: u8, i: u16| FlowKey {
            ifindex: 2,
            direction: dir,
            proto: IPPROTO_TCP,
            family: 4,
            flags: 0,
            local_port: 1000 + i,
            remote_port: 443,
            local_addr: v4_mapped([198, 18, 0, 1]),
            remote_addr: v4_mapped([198, 18, 0, 2 + (i % 2) as u8]),
        };
        let mut t = Tracker::default();
        for drain in 1..=2u64 {
            let samples: Vec<aggregate::FlowSample> = (0..n)
                .flat_map(|i| {
                    let bytes = u64::from(i) * 100 * drain.pow(u32::from(i % 5 == 0)) + 60;
                    let sample = |dir| aggregate::FlowSample {
                        key: key(dir, i),
                        bytes,
                        packets: bytes / 60,
                        first_ns: 1_000,
                        last_ns: drain * SEC,
                        tcp_flags: netmon_common::tcp_flags::ACK,
                    };
                    let rx = (i % 3 == 0).then(|| sample(DIR_INGRESS));
                    [Some(sample(DIR_EGRESS)), rx].into_iter().flatten()
                })
                .collect();
            t.apply_flows(&samples, drain * SEC, 1.0, 60 * SEC, |k| {
                Some(aggregate::Owner {
                    pid: u32::from(k.local_port),
                    uid: 0,
                    cgroup_id: 1,
                    cgroup: None,
                    comm: ["web", "db", "cron"][usize::from(k.local_port % 3)].into(),
                    by_port: false,
                    far_end: false,
                })
            });
        }
        let shared = Shared::default();
        shared.table.write().unwrap().tracker = t;
        *shared.stats.write().unwrap() = NetworkStats {
            interfaces: vec![InterfaceStats {
                name: "veth0".into(),
                bytes_sent: 77,
                ..Default::default()
            }],
            summary: Summary {
                total_bytes_sent: 77,
                timestamp: 1234.5,
                interval_seconds: 1.0,
                ..Default::default()
            },
        };
        shared
    }

    /// The document `write_network_stats` writes for `query`.
    fn document(shared: &Shared, query: &str) -> String {
        let q: StatsQuery = serde_json::from_value(url_query(query).into_iter().collect()).unwrap();
        let mut out = Vec::new();
        write_network_stats(shared, &q, &ConnFilter::of(&q).unwrap(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// `a=1&b=x` as pairs, numbers as numbers.
    fn url_query(q: &str) -> Vec<(String, serde_json::Value)> {
        q.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                let v = v.parse::<u64>().map_or_else(|_| v.into(), Into::into);
                (k.to_string(), v)
            })
            .collect()
    }

    /// The document written a row at a time is the whole table, in the table's order, each
    /// row assessed, its fields in the seed document's order; with a limit, the busiest
    /// rows in order and the count of all; with a process, that process's rows alone.
    #[test]
    fn the_network_stats_document_holds_the_whole_table() {
        // Rows enough for several batches of assessment and chunks of the response.
        let n = 3000;
        let shared = table_of(n);
        let mut all = shared.table.read().unwrap().tracker.connections(&[]);
        assess_rows(&shared.classifier.read().unwrap(), Anonymize::Off, &mut all);
        let rows = |doc: &serde_json::Value| -> Vec<serde_json::Value> {
            doc["connections"].as_array().unwrap().clone()
        };
        let want_rows = |conns: &[Connection]| -> Vec<serde_json::Value> {
            conns
                .iter()
                .map(|c| serde_json::to_value(c).unwrap())
                .collect()
        };
        let text = document(&shared, "");
        assert!(text.len() > 4 * STREAM_CHUNK, "{} bytes", text.len());
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(rows(&doc).len(), usize::from(n));
        assert_eq!(rows(&doc), want_rows(&all));
        assert_eq!(doc["connections_total"], n);
        assert_eq!(doc["interfaces"][0]["name"], "veth0");
        assert_eq!(doc["total_bytes_sent"], 77);
        assert!(
            doc["connections"][0]["risk"]["level"].is_string(),
            "{}",
            doc["connections"][0]
        );
        // The seed document's order of fields (the last mention of each: rows have
        // packets_sent too).
        let at = |field: &str| text.rfind(&format!("\"{field}\":")).unwrap();
        let order = [
            "interfaces",
            "connections",
            "connections_total",
            "processes",
            "cgroups",
            "services",
            "total_bytes_sent",
            "total_bytes_recv",
            "packets_sent",
            "packets_recv",
            "timestamp",
            "interval_seconds",
        ];
        assert!(text.starts_with("{\"interfaces\":"), "{}", &text[..40]);
        assert!(
            order.windows(2).all(|w| at(w[0]) < at(w[1])),
            "{}",
            &text[text.len() - 300..]
        );

        let mut busiest = all.clone();
        aggregate::keep_busiest(&mut busiest, 25);
        let doc: serde_json::Value = serde_json::from_str(&document(&shared, "limit=25")).unwrap();
        assert_eq!(rows(&doc), want_rows(&busiest));
        assert_eq!(doc["connections_total"], n);

        // A row criterion: every row is built and chosen, in batches, before the busiest.
        let db: Vec<Connection> = all
            .iter()
            .filter(|c| c.process.as_deref() == Some("db"))
            .cloned()
            .collect();
        let doc: serde_json::Value =
            serde_json::from_str(&document(&shared, "process=db")).unwrap();
        assert_eq!(rows(&doc), want_rows(&db));
        assert_eq!(doc["connections_total"], db.len());
        let mut busiest_db = db.clone();
        aggregate::keep_busiest(&mut busiest_db, 700);
        let doc: serde_json::Value =
            serde_json::from_str(&document(&shared, "process=db&limit=700")).unwrap();
        assert_eq!(rows(&doc), want_rows(&busiest_db));
        assert_eq!(doc["connections_total"], db.len());
    }

    /// `process=` takes the labels of the processes' totals for rows without an owner:
    /// `forwarded` for frames the host forwards, `unknown` for the rest.
    #[test]
    fn rows_without_an_owner_are_asked_for_by_their_label() {
        use netmon_common::{DIR_EGRESS, FLOW_FLAG_FORWARDED, FlowKey, IPPROTO_UDP, v4_mapped};
        let key = |lport: u16, flags: u8| FlowKey {
            ifindex: 2,
            direction: DIR_EGRESS,
            proto: IPPROTO_UDP,
            family: 4,
            flags,
            local_port: lport,
            remote_port: 53,
            local_addr: v4_mapped([198, 18, 0, 1]),
            remote_addr: v4_mapped([198, 18, 0, 2]),
        };
        let (owned, unowned, forwarded) = (key(1, 0), key(2, 0), key(3, FLOW_FLAG_FORWARDED));
        let mut t = Tracker::default();
        let samples = [owned, unowned, forwarded].map(|key| aggregate::FlowSample {
            key,
            bytes: 100,
            packets: 1,
            first_ns: 1,
            last_ns: 2,
            tcp_flags: 0,
        });
        t.apply_flows(&samples, 2, 1.0, u64::MAX, |k| {
            (k.local_port == 1).then(|| aggregate::Owner {
                pid: 7,
                uid: 0,
                cgroup_id: 1,
                cgroup: None,
                comm: "app".into(),
                by_port: false,
                far_end: false,
            })
        });
        let rows = t.connections(&[]);
        let chosen = |process: &str| -> Vec<String> {
            let q = StatsQuery {
                process: Some(process.into()),
                ..Default::default()
            };
            let f = ConnFilter::of(&q).unwrap();
            rows.iter()
                .filter(|c| f.admits_process(c))
                .map(|c| c.local_address.clone())
                .collect()
        };
        assert_eq!(chosen("app"), ["198.18.0.1:1"]);
        assert_eq!(chosen("unknown"), ["198.18.0.1:2"]);
        assert_eq!(chosen("forwarded"), ["198.18.0.1:3"]);
        assert!(chosen("db").is_empty());
    }

    /// Over HTTP the document comes in chunks, as written; a client that goes away in the
    /// middle leaves the server serving.
    #[tokio::test]
    async fn the_network_stats_document_is_streamed() {
        let shared = Arc::new(table_of(3000));
        let want = document(&shared, "");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shared, stop.clone(), None));
        let get = move || {
            let api = client::Api {
                addr: addr.to_string(),
                ..Default::default()
            };
            tokio::task::spawn_blocking(move || api.get("/api/network-stats").unwrap())
        };
        // A client that reads the start of the document and hangs up.
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /api/network-stats HTTP/1.0\r\n\r\n")
                .unwrap();
            let mut start = [0; 1024];
            s.read_exact(&mut start).unwrap();
            assert!(
                start.starts_with(b"HTTP/1.0 200"),
                "{}",
                String::from_utf8_lossy(&start)
            );
        })
        .await
        .unwrap();
        let (code, body) = get().await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(body, want);
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn token_comparison() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", "a"));
    }

    #[tokio::test]
    async fn endpoints_on_an_ephemeral_port() {
        let shared = Arc::new(Shared::default());
        shared.stats.write().unwrap().summary.total_bytes_recv = 1234;
        shared.status.write().unwrap().version = "9.9.9".into();
        shared
            .metrics
            .iface_bytes
            .with_label_values(&["veth0", "tx"])
            .inc_by(77);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shared, token.clone(), None));

        let get = move |path: &'static str| {
            let api = client::Api {
                addr: addr.to_string(),
                ..Default::default()
            };
            tokio::task::spawn_blocking(move || api.get(path))
        };
        let (code, body) = get("/healthz").await.unwrap().unwrap();
        assert_eq!((code, body.as_str()), (200, "ok\n"));
        let (code, body) = get("/metrics").await.unwrap().unwrap();
        assert_eq!(code, 200);
        assert!(
            body.contains("netmon_interface_bytes_total{direction=\"tx\",interface=\"veth0\"} 77"),
            "{body}"
        );
        let (_, body) = get("/api/network-stats").await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["total_bytes_recv"], 1234);
        for field in [
            "interfaces",
            "connections",
            "processes",
            "total_bytes_sent",
            "packets_sent",
            "packets_recv",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {v}");
        }
        let (_, body) = get("/api/status").await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["version"], "9.9.9");
        let (code, _) = get("/nope").await.unwrap().unwrap();
        assert_eq!(code, 404);

        token.cancel();
        server.await.unwrap().unwrap();
    }
}
