//! Stage 5b: the HTTP endpoints. `/metrics` (Prometheus text), `/api/network-stats` (the seed
//! document's shape), `/api/status` (hooks, interfaces, maps), `/healthz`. Shutdown is a
//! token passed in, so the server is tested on 127.0.0.1:0 without root or kernel programs.

use std::{
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

/// `GET /api/network-stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkStats {
    pub interfaces: Vec<InterfaceStats>,
    pub connections: Vec<Connection>,
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
    // only for the copy of the flow table.
    let built = tokio::task::spawn_blocking(move || {
        let mut stats = s.stats.read().expect("lock not poisoned").clone();
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
        let flows = match chosen_first {
            None => table().tracker.flow_snapshot_where(&filter.tuple),
            Some(n) => {
                // Rows only for the n busiest connections: the choice takes a few dozen
                // bytes a flow, where a row of the whole table (its strings, its owner)
                // takes hundreds.
                let activity = table().tracker.flow_activity_where(&filter.tuple);
                let (tuples, total) = aggregate::busiest_tuples(activity, &sockets, n);
                stats.connections_total = total;
                sockets.retain(|r| tuples.binary_search(&r.tuple()).is_ok());
                table().tracker.flow_snapshot_of(&tuples)
            }
        };
        stats.connections = aggregate::connections(flows.iter().map(|(k, e)| (k, e)), &sockets);
        if let Some(p) = &filter.process {
            stats.connections.retain(|c| c.process.as_ref() == Some(p));
        }
        let c = s.classifier.read().expect("lock not poisoned");
        if let Some(min) = filter.level {
            stats
                .connections
                .retain(|conn| c.level(conn.scored()) >= min);
        }
        if chosen_first.is_none() {
            stats.connections_total = stats.connections.len();
        }
        if let Some(n) = q.limit {
            // In order (the rows are those of the chosen tuples only), before the scores and
            // the serialization, which are most of a large table's cost.
            aggregate::keep_busiest(&mut stats.connections, n);
        }
        let anon = *s.anonymize.read().expect("lock not poisoned");
        for conn in &mut stats.connections {
            let remote = conn.tuple.0;
            let (mut risk, geo) = c.assess_with_geo(conn.scored());
            if anon != Anonymize::Off {
                conn.remote_address = anon.address(&conn.remote_address);
                anonymize_reasons(anon, &mut risk.reasons, remote);
            }
            conn.risk = Some(risk);
            conn.geo = geo;
        }
        drop(c);
        // Serialized here, so that the table's many small allocations are freed and given
        // back before the response goes out: with a million flows they come to over a GiB,
        // which the heap would otherwise keep resident until the drain's next trim.
        let body = serde_json::to_vec(&stats);
        drop(stats);
        drop(flows);
        crate::trim_heap();
        body
    })
    .await
    .expect("the connection table builder does not panic");
    match built {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing the connection table: {e}"),
        )
            .into_response(),
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
        shared.stats.write().unwrap().total_bytes_recv = 1234;
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
