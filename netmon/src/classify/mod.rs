//! Stage 4: classify. New flows become connection attempts for the pattern detector
//! ([`detect`]); every connection, and every remote with a detection, is scored with its
//! reasons ([`score`]) under the threat configuration ([`config`]); a remote's first
//! detection of a kind in a window raises an alert.

pub mod config;
pub mod detect;
pub mod feeds;
pub mod geo;
pub mod score;
pub mod thresholds;

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use netmon_common::{
    DIR_INGRESS, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, tcp_flags,
};
use serde::{Deserialize, Serialize};

use self::{
    config::ThreatConfig,
    detect::{ConnEvent, Detection, DetectionKind, Detector},
    feeds::Feeds,
    geo::{Geo, GeoInfo},
    score::{Assessment, Direction, Facts, Level, Reason},
    thresholds::Thresholds,
};

/// Alerts kept for `GET /api/alerts`.
pub const ALERTS_KEPT: usize = 1000;

/// Every alert kind (the `kind` label of `netmon_threats_detected_total`).
pub const ALERT_KINDS: [&str; 8] = [
    "port_scan",
    "host_sweep",
    "syn_flood",
    "high_frequency",
    "login_bruteforce",
    "failed_connections",
    "known_malicious",
    "threshold",
];

/// Remotes whose feeds/GeoIP facts are cached at most; past it the cache starts over.
const FACTS_CACHED: usize = 200_000;

/// Something an operator should know about: a pattern detected in a remote's traffic, a
/// connection with an address a reputation feed lists, or a metric past its threshold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    /// Wall-clock milliseconds since the epoch.
    pub time_ms: u64,
    /// One of [`ALERT_KINDS`].
    pub kind: String,
    pub severity: Level,
    /// The remote address it is about; none for threshold alerts.
    pub remote: Option<IpAddr>,
    pub score: i32,
    pub reasons: Vec<Reason>,
    pub detail: String,
}

/// One remote address's risk: `GET /api/remotes`, `netmon remotes`.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteRisk {
    pub remote: IpAddr,
    pub score: i32,
    pub level: Level,
    pub reasons: Vec<Reason>,
    #[serde(flatten)]
    pub geo: GeoInfo,
    /// Feeds that list it.
    pub feeds: Vec<String>,
}

/// What the feeds and the GeoIP databases say about one remote, cached per remote.
#[derive(Clone, Debug, Default)]
struct RemoteFacts {
    feeds: Vec<String>,
    geo: GeoInfo,
    /// The feed generation `feeds` was looked up in.
    feeds_gen: u64,
}

/// One connection as the classifier scores it: the remote address, both ports, the
/// protocol and the owning process's command name, if known.
#[derive(Clone, Copy, Debug)]
pub struct Conn<'a> {
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub process: Option<&'a str>,
}

pub struct Classifier {
    pub cfg: ThreatConfig,
    detector: Detector,
    /// Detections per remote as of the last tick: the per-remote part of every score.
    by_remote: HashMap<IpAddr, Vec<Detection>>,
    /// (remote, kind) already alerted on while the detection holds.
    alerted: HashMap<(IpAddr, DetectionKind), u64>,
    alerts: VecDeque<Alert>,
    next_id: u64,
    feeds: Arc<Feeds>,
    geo: Arc<Geo>,
    facts: Mutex<HashMap<IpAddr, RemoteFacts>>,
    /// Listed remotes seen in new flows, with when last seen: alerted on once while seen
    /// within the detection window.
    listed: HashMap<IpAddr, u64>,
    listed_new: Vec<IpAddr>,
    thresholds: Thresholds,
    /// Bumped whenever something a connection's score depends on changes: the detections
    /// (recomputed in `tick`), the feeds, the GeoIP databases.
    generation: u64,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(ThreatConfig::default())
    }
}

impl Classifier {
    pub fn new(cfg: ThreatConfig) -> Self {
        Self {
            detector: Detector::new(cfg.detection.clone()),
            thresholds: Thresholds::new(cfg.alerts.thresholds.len()),
            cfg,
            by_remote: HashMap::new(),
            alerted: HashMap::new(),
            alerts: VecDeque::new(),
            next_id: 1,
            feeds: Arc::new(Feeds::default()),
            geo: Arc::new(Geo::default()),
            facts: Mutex::new(HashMap::new()),
            listed: HashMap::new(),
            listed_new: Vec::new(),
            generation: 0,
        }
    }

    /// Scores, detects and alerts by `cfg` from now on (a reload). Detections in progress
    /// start over when the detection settings changed, and threshold alerts when their
    /// list did; the alerts raised so far, and which remotes were alerted on, are kept.
    pub fn reconfigure(&mut self, cfg: ThreatConfig) {
        if cfg.detection != self.cfg.detection {
            self.detector = Detector::new(cfg.detection.clone());
            self.by_remote.clear();
        }
        if cfg.alerts.thresholds != self.cfg.alerts.thresholds {
            self.thresholds = Thresholds::new(cfg.alerts.thresholds.len());
        }
        self.cfg = cfg;
        self.generation += 1;
        self.facts.lock().expect("lock not poisoned").clear();
    }

    /// Changes whenever a connection's level may have changed for reasons outside the
    /// connection itself (see `generation`).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Uses these databases for countries and ASNs from now on.
    /// Whether any GeoIP database is loaded (without one every remote's country is unknown).
    pub fn has_geo(&self) -> bool {
        !self.geo.dbs.is_empty()
    }

    pub fn set_geo(&mut self, geo: Arc<Geo>) {
        self.geo = geo;
        self.generation += 1;
        self.facts.lock().expect("lock not poisoned").clear();
    }

    /// Uses this set of feeds from now on (cached lookups of an older set are redone).
    pub fn set_feeds(&mut self, feeds: Arc<Feeds>) {
        if feeds.generation != self.feeds.generation {
            self.feeds = feeds;
            self.generation += 1;
        }
    }

    pub fn feeds(&self) -> &Arc<Feeds> {
        &self.feeds
    }

    /// Runs `f` with the cached facts of `remote`, looking them up first when absent or
    /// looked up in an older feed set.
    fn with_facts<T>(&self, remote: IpAddr, f: impl FnOnce(&RemoteFacts) -> T) -> T {
        if self.feeds.feeds.is_empty() && self.geo.dbs.is_empty() {
            // Nothing to look up: no cache entry, no lock.
            return f(&RemoteFacts::default());
        }
        let mut cache = self.facts.lock().expect("lock not poisoned");
        let stale = cache
            .get(&remote)
            .is_none_or(|x| x.feeds_gen != self.feeds.generation);
        if stale {
            if cache.len() >= FACTS_CACHED {
                cache.clear();
            }
            let geo = match cache.remove(&remote) {
                Some(old) => old.geo,
                None => self.geo.lookup(remote),
            };
            cache.insert(
                remote,
                RemoteFacts {
                    feeds: self.feeds.lookup(remote),
                    geo,
                    feeds_gen: self.feeds.generation,
                },
            );
        }
        f(cache.get(&remote).expect("inserted above"))
    }

    /// Feeds a flow the daemon saw for the first time (its key and the TCP flags of its first
    /// drain) to the detector, if it is a connection attempt or a refusal; and notes a
    /// remote that a reputation feed lists.
    pub fn observe_new_flow(&mut self, key: &FlowKey, flags: u8, at_ns: u64) {
        let remote = key_ip(key.family, key.remote_addr);
        if !self.feeds.feeds.is_empty()
            && self.with_facts(remote, |f| !f.feeds.is_empty())
            && self.listed.insert(remote, at_ns).is_none()
        {
            self.listed_new.push(remote);
        }
        if let Some(e) = attempt(key, flags, at_ns) {
            self.detector.observe(e);
        }
    }

    fn keep(&mut self, mut a: Alert) -> Alert {
        a.id = self.next_id;
        self.next_id += 1;
        if self.alerts.len() == ALERTS_KEPT {
            self.alerts.pop_front();
        }
        self.alerts.push_back(a.clone());
        a
    }

    /// Ends a tick: ages the windows out, recomputes every remote's detections and returns
    /// the alerts for detections new since the last tick.
    pub fn tick(&mut self, now_ns: u64, now_ms: u64) -> Vec<Alert> {
        self.detector.expire(now_ns);
        let window = self.cfg.detection.window.as_nanos() as u64;
        self.listed
            .retain(|_, seen| now_ns.saturating_sub(*seen) <= window);
        let mut new = Vec::new();
        for remote in std::mem::take(&mut self.listed_new) {
            let a = self.assess_remote(remote, self.by_remote.get(&remote).map_or(&[], |d| d));
            let feeds = self.with_facts(remote, |f| f.feeds.join(", "));
            new.push(Alert {
                id: 0,
                time_ms: now_ms,
                kind: "known_malicious".into(),
                severity: a.level,
                remote: Some(remote),
                score: a.score,
                reasons: a.reasons,
                detail: format!("{remote}: traffic with an address listed in {feeds}"),
            });
        }
        if self.detector.changed() {
            self.generation += 1;
            self.by_remote.clear();
            for (remote, d) in self.detector.evaluate() {
                let a = self.assess_remote(remote, &d);
                for det in &d {
                    if self.alerted.contains_key(&(remote, det.kind)) {
                        continue;
                    }
                    self.alerted.insert((remote, det.kind), now_ns);
                    new.push(Alert {
                        id: 0,
                        time_ms: now_ms,
                        kind: det.kind.as_str().into(),
                        severity: a.level,
                        remote: Some(remote),
                        score: a.score,
                        reasons: a.reasons.clone(),
                        detail: det.detail.clone(),
                    });
                }
                self.by_remote.insert(remote, d);
            }
            // A detection that no longer holds may alert again when it comes back.
            let by_remote = &self.by_remote;
            self.alerted.retain(|(remote, kind), _| {
                by_remote
                    .get(remote)
                    .is_some_and(|d| d.iter().any(|x| x.kind == *kind))
            });
        }
        new.into_iter().map(|a| self.keep(a)).collect()
    }

    /// Evaluates the threshold rules against the metrics; returns the alerts of rules that
    /// started firing.
    pub fn check_thresholds(
        &mut self,
        metrics: &crate::metrics::Metrics,
        now_ns: u64,
        now_ms: u64,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        let names: Vec<&str> = self
            .cfg
            .alerts
            .thresholds
            .iter()
            .map(|r| r.metric.as_str())
            .collect();
        let samples = metrics.samples(&names);
        for i in 0..self.cfg.alerts.thresholds.len() {
            let rule = &self.cfg.alerts.thresholds[i];
            let value = samples
                .get(&rule.metric)
                .and_then(|s| thresholds::select(s, &rule.labels));
            if let Some(f) = self.thresholds.observe(i, rule, value, now_ns) {
                out.push(Alert {
                    id: 0,
                    time_ms: now_ms,
                    kind: "threshold".into(),
                    severity: rule.severity,
                    remote: None,
                    score: 0,
                    reasons: vec![Reason {
                        kind: format!("threshold:{}", rule.name),
                        points: 0,
                        detail: f.detail.clone(),
                    }],
                    detail: f.detail,
                });
            }
        }
        out.into_iter().map(|a| self.keep(a)).collect()
    }

    fn assess_remote(&self, remote: IpAddr, detections: &[Detection]) -> Assessment {
        self.with_facts(remote, |rf| {
            score::assess(
                &self.cfg,
                &Facts {
                    remote,
                    service_port: 0,
                    proto: 0,
                    direction: Direction::Inbound,
                    process: None,
                    country: rf.geo.country.as_deref(),
                    asn: rf.geo.asn,
                    feeds: &rf.feeds,
                    detections,
                },
            )
        })
    }

    /// Scores one connection: its own facts plus what is known of its remote (feeds, GeoIP,
    /// what its traffic showed), the remote's part cached.
    pub fn assess(&self, conn: Conn<'_>) -> Assessment {
        self.with_connection(conn, |cfg, f, _| score::assess(cfg, f))
    }

    /// `assess` and what GeoIP says of the remote (None when nothing), with one look at the
    /// remote's cached facts: for the connection table.
    pub fn assess_with_geo(&self, conn: Conn<'_>) -> (Assessment, Option<GeoInfo>) {
        self.with_connection(conn, |cfg, f, rf| {
            (
                score::assess(cfg, f),
                (!rf.geo.is_empty()).then(|| rf.geo.clone()),
            )
        })
    }

    /// `level`, with the remote's country as the GeoIP databases say (None: unknown) given
    /// to `country`, in one look at the remote's cached facts.
    pub fn level_and_country(&self, conn: Conn<'_>, country: impl FnOnce(Option<&str>)) -> Level {
        self.with_connection(conn, |cfg, f, rf| {
            country(rf.geo.country.as_deref());
            score::level(cfg, f)
        })
    }

    /// The level `assess` would give, without building its reasons.
    pub fn level(&self, conn: Conn<'_>) -> Level {
        self.with_connection(conn, |cfg, f, _| score::level(cfg, f))
    }

    fn with_connection<T>(
        &self,
        conn: Conn<'_>,
        score: impl FnOnce(&ThreatConfig, &Facts<'_>, &RemoteFacts) -> T,
    ) -> T {
        let Conn {
            remote,
            local_port,
            remote_port,
            proto,
            process,
        } = conn;
        let direction = direction_of(local_port, remote_port);
        let service_port = match direction {
            Direction::Inbound => local_port,
            Direction::Outbound => remote_port,
        };
        let detections = self
            .by_remote
            .get(&remote)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        self.with_facts(remote, |rf| {
            score(
                &self.cfg,
                &Facts {
                    remote,
                    service_port: if proto == IPPROTO_TCP || proto == IPPROTO_UDP {
                        service_port
                    } else {
                        0
                    },
                    proto,
                    direction,
                    process,
                    country: rf.geo.country.as_deref(),
                    asn: rf.geo.asn,
                    feeds: &rf.feeds,
                    detections,
                },
                rf,
            )
        })
    }

    /// Remotes with detections in the window or seen in traffic while a feed lists them,
    /// with the remote's own score (no connection facts), riskiest first.
    pub fn remotes(&self) -> Vec<RemoteRisk> {
        let mut ips: Vec<IpAddr> = self.by_remote.keys().copied().collect();
        ips.extend(
            self.listed
                .keys()
                .filter(|ip| !self.by_remote.contains_key(ip)),
        );
        let mut out: Vec<RemoteRisk> = ips
            .into_iter()
            .map(|ip| {
                let a = self.assess_remote(ip, self.by_remote.get(&ip).map_or(&[], |d| d));
                let (geo, feeds) = self.with_facts(ip, |f| (f.geo.clone(), f.feeds.clone()));
                RemoteRisk {
                    remote: ip,
                    score: a.score,
                    level: a.level,
                    reasons: a.reasons,
                    geo,
                    feeds,
                }
            })
            .collect();
        out.sort_by(|a, b| (b.level, b.score, a.remote).cmp(&(a.level, a.score, b.remote)));
        out
    }

    /// The alerts kept, oldest first.
    pub fn alerts(&self) -> Vec<Alert> {
        self.alerts.iter().cloned().collect()
    }

    /// Takes back alerts of an earlier run (oldest first, as the event log has them), before
    /// any of this run's: the last `ALERTS_KEPT` are listed again, and this run's ids follow
    /// the highest, so that an id (which action records refer to) stays one alert's.
    /// Lists `earlier` alerts again (the last `ALERTS_KEPT`), but for those older than
    /// `not_before_ms` (the event log's retention), whose ids are still never used again.
    pub fn restore(&mut self, earlier: Vec<Alert>, not_before_ms: u64) {
        let skip = earlier.len().saturating_sub(ALERTS_KEPT);
        for a in earlier.into_iter().skip(skip) {
            self.next_id = self.next_id.max(a.id + 1);
            if a.time_ms < not_before_ms {
                continue;
            }
            if self.alerts.len() == ALERTS_KEPT {
                self.alerts.pop_front();
            }
            self.alerts.push_back(a);
        }
    }
}

/// A flow key's address as an IpAddr (IPv4 keys hold IPv4-mapped addresses).
pub fn key_ip(family: u8, a: [u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::from([a[12], a[13], a[14], a[15]])
    } else {
        IpAddr::from(a)
    }
}

/// Ports at or above this are clients' (the IANA/Linux ephemeral ranges start at 32768 or
/// 49152).
const EPHEMERAL: u16 = 32768;

/// Who opened a connection, from its ports: the side on an ephemeral port is the client.
pub fn direction_of(local_port: u16, remote_port: u16) -> Direction {
    if remote_port >= EPHEMERAL && local_port < EPHEMERAL {
        Direction::Inbound
    } else if local_port >= EPHEMERAL && remote_port < EPHEMERAL {
        Direction::Outbound
    } else if local_port <= remote_port {
        Direction::Inbound
    } else {
        Direction::Outbound
    }
}

/// A new flow as a connection attempt (or refusal), or None when it is the answer to one
/// (SYN-ACK, a UDP reply, an echo reply) or the middle of a connection.
fn attempt(key: &FlowKey, flags: u8, at_ns: u64) -> Option<ConnEvent> {
    let ingress = key.direction == DIR_INGRESS;
    let from_remote = if ingress {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let to_remote = if ingress {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    let direction = match key.proto {
        IPPROTO_TCP => {
            let syn = flags & tcp_flags::SYN != 0;
            let ack = flags & tcp_flags::ACK != 0;
            if syn && !ack {
                // The opening SYN of whoever sent this flow.
                from_remote
            } else if flags & tcp_flags::RST != 0 && !syn {
                // A reset: the other side's attempt was refused.
                to_remote
            } else {
                return None;
            }
        }
        IPPROTO_UDP => {
            let d = direction_of(key.local_port, key.remote_port);
            if d != from_remote {
                return None;
            }
            d
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let ty = key.remote_port >> 8;
            let unreachable =
                (key.proto == IPPROTO_ICMP && ty == 3) || (key.proto == IPPROTO_ICMPV6 && ty == 1);
            let echo_request = (key.proto == IPPROTO_ICMP && ty == 8)
                || (key.proto == IPPROTO_ICMPV6 && ty == 128);
            if unreachable {
                to_remote
            } else if echo_request {
                from_remote
            } else {
                return None;
            }
        }
        _ => return None,
    };
    let ip = |a: [u8; 16]| key_ip(key.family, a);
    Some(ConnEvent {
        at_ns,
        remote: ip(key.remote_addr),
        local: ip(key.local_addr),
        local_port: key.local_port,
        remote_port: key.remote_port,
        proto: key.proto,
        direction,
        tcp_flags: flags,
        icmp: if key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6 {
            key.remote_port
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmon_common::{DIR_EGRESS, v4_mapped};

    /// Alerts of an earlier run are listed first, at most `ALERTS_KEPT` of them, and this
    /// run's ids follow the highest.
    #[test]
    fn restored_alerts_are_listed_and_ids_continue() {
        let a = |id: u64| Alert {
            id,
            time_ms: id,
            kind: "port_scan".into(),
            severity: Level::High,
            remote: None,
            score: 50,
            reasons: vec![],
            detail: String::new(),
        };
        let mut c = Classifier::default();
        c.restore((1..=ALERTS_KEPT as u64 + 5).map(a).collect(), 0);
        let listed = c.alerts();
        assert_eq!(listed.len(), ALERTS_KEPT);
        assert_eq!(listed[0].id, 6);
        assert_eq!(listed.last().unwrap().id, ALERTS_KEPT as u64 + 5);
        let next = c.keep(a(0));
        assert_eq!(next.id, ALERTS_KEPT as u64 + 6);
        assert_eq!(c.alerts().last().unwrap().id, next.id);
        assert_eq!(c.alerts()[0].id, 7, "the oldest made room");

        // Past the retention (time before 100): not listed, and their ids not used again.
        let mut c = Classifier::default();
        c.restore((90..=110).map(a).collect(), 100);
        let ids: Vec<u64> = c.alerts().iter().map(|a| a.id).collect();
        assert_eq!(ids, (100..=110).collect::<Vec<_>>());
        assert_eq!(c.keep(a(0)).id, 111);
        let mut c = Classifier::default();
        c.restore((1..=5).map(a).collect(), 100);
        assert!(c.alerts().is_empty());
        assert_eq!(c.keep(a(0)).id, 6);
    }

    fn key(dir: u8, proto: u8, lport: u16, rport: u16) -> FlowKey {
        FlowKey {
            ifindex: 2,
            direction: dir,
            proto,
            family: 4,
            flags: 0,
            local_port: lport,
            remote_port: rport,
            local_addr: v4_mapped([198, 18, 0, 1]),
            remote_addr: v4_mapped([198, 18, 0, 2]),
        }
    }

    #[test]
    fn attempts_are_told_from_answers() {
        let syn = tcp_flags::SYN;
        let synack = tcp_flags::SYN | tcp_flags::ACK;
        // A remote's SYN to us: inbound attempt. Our SYN-ACK back: an answer.
        let e = attempt(&key(DIR_INGRESS, IPPROTO_TCP, 22, 50000), syn, 1).unwrap();
        assert_eq!(e.direction, Direction::Inbound);
        assert!(attempt(&key(DIR_EGRESS, IPPROTO_TCP, 22, 50000), synack, 1).is_none());
        // Our RST to a SYN on a closed port: a refused inbound attempt.
        let e = attempt(&key(DIR_EGRESS, IPPROTO_TCP, 23, 50000), tcp_flags::RST, 1).unwrap();
        assert_eq!(e.direction, Direction::Inbound);
        // Mid-connection traffic is nothing.
        assert!(attempt(&key(DIR_INGRESS, IPPROTO_TCP, 22, 50000), tcp_flags::ACK, 1).is_none());
        // UDP: a query to a server is an attempt, its reply is not.
        assert!(attempt(&key(DIR_EGRESS, IPPROTO_UDP, 40000, 53), 0, 1).is_some());
        assert!(attempt(&key(DIR_INGRESS, IPPROTO_UDP, 40000, 53), 0, 1).is_none());
        // ICMP port unreachable from the remote: our attempt failed.
        let e = attempt(&key(DIR_INGRESS, IPPROTO_ICMP, 0, 3 << 8 | 3), 0, 1).unwrap();
        assert_eq!(e.direction, Direction::Outbound);
    }

    #[test]
    fn a_scan_alerts_once_per_kind_and_scores_the_remote() {
        let mut c = Classifier::new(ThreatConfig::default());
        for p in 1..=30 {
            c.observe_new_flow(
                &key(DIR_INGRESS, IPPROTO_TCP, p, 40000 + p),
                tcp_flags::SYN,
                1,
            );
        }
        let alerts = c.tick(2, 1000);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.kind, "port_scan");
        assert_eq!(a.remote, Some("198.18.0.2".parse::<IpAddr>().unwrap()));
        assert_eq!((a.severity, a.score), (Level::High, 50));
        assert!(a.detail.contains("30 ports"), "{}", a.detail);
        // Still scanning: no second alert; connections from it carry the reason.
        assert!(c.tick(3, 2000).is_empty());
        let s = c.assess(Conn {
            remote: "198.18.0.2".parse().unwrap(),
            local_port: 6667,
            remote_port: 40001,
            proto: IPPROTO_TCP,
            process: None,
        });
        assert_eq!(s.level, Level::High);
        assert!(s.reasons.iter().any(|r| r.kind == "port_scan"));
        assert!(s.reasons.iter().any(|r| r.kind == "unusual_port"));
        assert_eq!(c.alerts().len(), 1);
    }
}
