//! Attack patterns computed from the kernel's per-flow data: every flow new to the daemon is a
//! connection attempt, and per remote address the detector keeps the attempts of the last
//! `window`: distinct ports tried (port scan), distinct local addresses (host sweep), SYNs
//! never answered (half-open excess), how many (high frequency), how many to login ports
//! (brute force), how many refused or unreachable (failed connections). Pure code over plain
//! events: no maps, no sockets.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use netmon_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, tcp_flags};
use serde::Serialize;

use super::{config::DetectionConfig, score::Direction};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectionKind {
    PortScan,
    HostSweep,
    SynFlood,
    HighFrequency,
    LoginBruteforce,
    FailedConnections,
}

impl DetectionKind {
    pub const ALL: [DetectionKind; 6] = [
        DetectionKind::PortScan,
        DetectionKind::HostSweep,
        DetectionKind::SynFlood,
        DetectionKind::HighFrequency,
        DetectionKind::LoginBruteforce,
        DetectionKind::FailedConnections,
    ];
}

/// A pattern seen in one remote's traffic, with the evidence in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub kind: DetectionKind,
    pub detail: String,
}

/// A flow the daemon saw for the first time, as the detector needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    pub at_ns: u64,
    pub remote: IpAddr,
    pub local: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    /// Who sent the flow's first packet: the remote (inbound) or this host (outbound).
    pub direction: Direction,
    /// TCP flags seen on the flow so far (at its first drain).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 `type << 8 | code` for ICMP flows.
    pub icmp: u16,
}

impl ConnEvent {
    /// A refusal or an unreachable: a TCP reset, or ICMP destination unreachable.
    fn failed(&self) -> bool {
        match self.proto {
            IPPROTO_TCP => self.tcp_flags & tcp_flags::RST != 0,
            IPPROTO_ICMP => self.icmp >> 8 == 3,
            IPPROTO_ICMPV6 => self.icmp >> 8 == 1,
            _ => false,
        }
    }

    /// ICMP or ICMPv6: no ports (a port scan does not count them).
    fn is_icmp(&self) -> bool {
        matches!(self.proto, IPPROTO_ICMP | IPPROTO_ICMPV6)
    }

    /// An answer that refused an attempt (a TCP reset without SYN, ICMP destination
    /// unreachable), a flow of its own beside the attempt's but not another connection.
    fn refusal(&self) -> bool {
        match self.proto {
            IPPROTO_TCP => {
                self.tcp_flags & tcp_flags::RST != 0 && self.tcp_flags & tcp_flags::SYN == 0
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => self.failed(),
            _ => false,
        }
    }

    /// An inbound TCP attempt that never got past SYN.
    fn half_open(&self) -> bool {
        self.proto == IPPROTO_TCP
            && self.direction == Direction::Inbound
            && self.tcp_flags & tcp_flags::SYN != 0
            && self.tcp_flags & tcp_flags::ACK == 0
    }
}

/// The attempts of the last window, in time order, and how many each remote has: one
/// event (~50 bytes) per attempt and one counter per remote, so a host contacted by many
/// addresses once each stays small.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectionConfig,
    events: VecDeque<ConnEvent>,
    counts: HashMap<IpAddr, usize>,
    /// A remote with fewer attempts than this cannot reach any threshold.
    min_limit: usize,
    /// Attempts were added or aged out since the last `evaluate`.
    changed: bool,
}

/// Attempts kept at most (a flood beyond it ages out faster than the window).
const MAX_EVENTS: usize = 1 << 20;

impl Detector {
    pub fn new(cfg: DetectionConfig) -> Self {
        let min_limit = [
            cfg.port_scan_ports,
            cfg.host_sweep_hosts,
            cfg.syn_half_open,
            cfg.high_frequency_connections,
            cfg.login_attempts,
            cfg.failed_connections,
        ]
        .into_iter()
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(usize::MAX);
        Self {
            cfg,
            events: VecDeque::new(),
            counts: HashMap::new(),
            min_limit,
            changed: false,
        }
    }

    pub fn observe(&mut self, e: ConnEvent) {
        if self.events.len() == MAX_EVENTS {
            self.pop_oldest();
        }
        *self.counts.entry(e.remote).or_default() += 1;
        self.events.push_back(e);
        self.changed = true;
    }

    fn pop_oldest(&mut self) {
        self.changed = true;
        if let Some(old) = self.events.pop_front()
            && let Some(n) = self.counts.get_mut(&old.remote)
        {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&old.remote);
            }
        }
    }

    /// Forgets attempts older than the window (and remotes with none left).
    pub fn expire(&mut self, now_ns: u64) {
        let window = self.cfg.window.as_nanos() as u64;
        while self
            .events
            .front()
            .is_some_and(|e| now_ns.saturating_sub(e.at_ns) > window)
        {
            self.pop_oldest();
        }
    }

    /// Remotes with attempts in the window.
    pub fn remotes(&self) -> impl Iterator<Item = &IpAddr> {
        self.counts.keys()
    }

    /// Every remote whose attempts in the window show a pattern, with the patterns: one pass
    /// over the window, looking only at remotes with enough attempts to reach a threshold.
    pub fn evaluate(&mut self) -> Vec<(IpAddr, Vec<Detection>)> {
        self.changed = false;
        let mut by_remote: HashMap<IpAddr, Vec<&ConnEvent>> = HashMap::new();
        for e in &self.events {
            if self
                .counts
                .get(&e.remote)
                .is_some_and(|&n| n >= self.min_limit)
            {
                by_remote.entry(e.remote).or_default().push(e);
            }
        }
        by_remote
            .into_iter()
            .map(|(remote, q)| (remote, self.patterns(&remote, &q)))
            .filter(|(_, d)| !d.is_empty())
            .collect()
    }

    /// Whether attempts were added or aged out since the last `evaluate` (if not, its
    /// result would be the same).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The patterns one remote's attempts in the window show.
    pub fn detections(&self, remote: &IpAddr) -> Vec<Detection> {
        let q: Vec<&ConnEvent> = self.events.iter().filter(|e| e.remote == *remote).collect();
        self.patterns(remote, &q)
    }

    fn patterns(&self, remote: &IpAddr, q: &[&ConnEvent]) -> Vec<Detection> {
        let c = &self.cfg;
        let secs = c.window.as_secs();
        let mut out = Vec::new();
        let mut found = |kind, n: usize, limit: usize, what: &str| {
            if limit > 0 && n >= limit {
                out.push(Detection {
                    kind,
                    detail: format!("{remote}: {n} {what} in {secs} s (threshold {limit})"),
                });
            }
        };
        // Ports: inbound attempts on this host's ports, outbound ones on the remote's.
        let inbound_ports: BTreeSet<u16> = q
            .iter()
            .filter(|e| e.direction == Direction::Inbound && !e.is_icmp())
            .map(|e| e.local_port)
            .collect();
        let outbound_ports: BTreeSet<u16> = q
            .iter()
            .filter(|e| e.direction == Direction::Outbound && !e.is_icmp())
            .map(|e| e.remote_port)
            .collect();
        let (ports, way) = if inbound_ports.len() >= outbound_ports.len() {
            (inbound_ports.len(), "ports tried on this host")
        } else {
            (outbound_ports.len(), "of its ports tried from this host")
        };
        found(DetectionKind::PortScan, ports, c.port_scan_ports, way);
        let hosts: BTreeSet<IpAddr> = q
            .iter()
            .filter(|e| e.direction == Direction::Inbound)
            .map(|e| e.local)
            .collect();
        found(
            DetectionKind::HostSweep,
            hosts.len(),
            c.host_sweep_hosts,
            "local addresses reached",
        );
        found(
            DetectionKind::SynFlood,
            half_open(q),
            c.syn_half_open,
            "half-open connections (SYN, no ACK)",
        );
        // A refused attempt is two flows, the attempt and the answer: one connection.
        found(
            DetectionKind::HighFrequency,
            q.iter().filter(|e| !e.refusal()).count(),
            c.high_frequency_connections,
            "new connections",
        );
        found(
            DetectionKind::LoginBruteforce,
            q.iter()
                .filter(|e| {
                    e.direction == Direction::Inbound
                        && c.login_ports.contains(&e.local_port)
                        && !e.refusal()
                })
                .count(),
            c.login_attempts,
            "connections to login ports",
        );
        found(
            DetectionKind::FailedConnections,
            q.iter().filter(|e| e.failed()).count(),
            c.failed_connections,
            "refused or unreachable connections",
        );
        out
    }
}

/// Inbound TCP attempts that never got past SYN and were not refused: a SYN that this
/// host answered with a reset (a closed port, as a scan finds) left nothing half open.
fn half_open(q: &[&ConnEvent]) -> usize {
    let conn = |e: &ConnEvent| (e.local, e.local_port, e.remote_port);
    let refused: HashSet<_> = q
        .iter()
        .filter(|e| e.proto == IPPROTO_TCP && e.direction == Direction::Inbound && e.refusal())
        .map(|e| conn(e))
        .collect();
    q.iter()
        .filter(|e| e.half_open() && !refused.contains(&conn(e)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmon_common::IPPROTO_UDP;
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    fn ev(at: u64, local_port: u16, flags: u8) -> ConnEvent {
        ConnEvent {
            at_ns: at,
            remote: "198.18.0.2".parse().unwrap(),
            local: "198.18.0.1".parse().unwrap(),
            local_port,
            remote_port: 40000,
            proto: IPPROTO_TCP,
            direction: Direction::Inbound,
            tcp_flags: flags,
            icmp: 0,
        }
    }

    /// ICMP port unreachable from the remote: an outbound attempt refused.
    fn port_unreachable(at: u64) -> ConnEvent {
        ConnEvent {
            proto: IPPROTO_ICMP,
            icmp: 3 << 8 | 3,
            direction: Direction::Outbound,
            ..ev(at, 0, 0)
        }
    }

    fn kinds(d: &[Detection]) -> Vec<DetectionKind> {
        d.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn port_scan_names_the_source_and_ages_out() {
        let mut det = Detector::new(DetectionConfig::default());
        let remote: IpAddr = "198.18.0.2".parse().unwrap();
        for p in 1..=19 {
            det.observe(ev(SEC, p, tcp_flags::SYN | tcp_flags::ACK));
        }
        // Pings (ICMPv6 echo requests, as ICMP's) have no port to count.
        det.observe(ConnEvent {
            proto: IPPROTO_ICMPV6,
            icmp: 128 << 8,
            ..ev(SEC, 0, 0)
        });
        assert!(kinds(&det.detections(&remote)).is_empty());
        det.observe(ev(2 * SEC, 20, tcp_flags::SYN | tcp_flags::ACK));
        let d = det.detections(&remote);
        assert_eq!(kinds(&d), vec![DetectionKind::PortScan]);
        assert!(d[0].detail.starts_with("198.18.0.2: 20 ports"), "{d:?}");
        det.expire(70 * SEC);
        assert!(det.detections(&remote).is_empty());
        assert_eq!(det.remotes().count(), 0);
    }

    #[test]
    fn half_open_failed_login_and_frequency() {
        let cfg = DetectionConfig {
            window: Duration::from_secs(10),
            syn_half_open: 5,
            failed_connections: 3,
            login_attempts: 4,
            high_frequency_connections: 12,
            port_scan_ports: 0,
            ..DetectionConfig::default()
        };
        let mut det = Detector::new(cfg);
        let remote: IpAddr = "198.18.0.2".parse().unwrap();
        for _ in 0..5 {
            det.observe(ev(SEC, 8080, tcp_flags::SYN));
        }
        for _ in 0..4 {
            det.observe(ev(
                SEC,
                22,
                tcp_flags::SYN | tcp_flags::ACK | tcp_flags::FIN,
            ));
        }
        for _ in 0..3 {
            det.observe(ConnEvent {
                proto: IPPROTO_UDP,
                ..ev(SEC, 53, 0)
            });
            det.observe(port_unreachable(SEC));
        }
        let k = kinds(&det.detections(&remote));
        assert_eq!(
            k,
            vec![
                DetectionKind::SynFlood,
                DetectionKind::HighFrequency,
                DetectionKind::LoginBruteforce,
                DetectionKind::FailedConnections
            ],
            "{:?}",
            det.detections(&remote)
        );
    }

    #[test]
    fn a_refused_attempt_is_one_connection() {
        // Ten SYNs to a closed SSH port, each answered by this host's RST: twenty flows (the
        // remote's SYN, the reset back), ten connections, ten login attempts, ten refused.
        let cfg = DetectionConfig {
            high_frequency_connections: 10,
            login_attempts: 10,
            failed_connections: 10,
            ..DetectionConfig::default()
        };
        let mut det = Detector::new(cfg.clone());
        for _ in 0..10 {
            det.observe(ev(SEC, 22, tcp_flags::SYN));
            det.observe(ev(SEC, 22, tcp_flags::RST | tcp_flags::ACK));
        }
        let remote: IpAddr = "198.18.0.2".parse().unwrap();
        let details: Vec<String> = det
            .detections(&remote)
            .into_iter()
            .map(|d| d.detail)
            .collect();
        for want in [
            "10 new connections",
            "10 connections to login ports",
            "10 refused or unreachable connections",
        ] {
            assert!(
                details.iter().any(|d| d.contains(want)),
                "{want}: {details:?}"
            );
        }
        // One more than there were is not reached; and refused SYNs left nothing half open.
        let mut det = Detector::new(DetectionConfig {
            high_frequency_connections: 11,
            login_attempts: 11,
            syn_half_open: 5,
            ..cfg
        });
        for _ in 0..10 {
            det.observe(ev(SEC, 22, tcp_flags::SYN));
            det.observe(ev(SEC, 22, tcp_flags::RST | tcp_flags::ACK));
        }
        assert_eq!(
            kinds(&det.detections(&remote)),
            vec![DetectionKind::FailedConnections]
        );
        // Five SYNs to an open port that no ACK followed are (and make fifteen connections).
        for _ in 0..5 {
            det.observe(ev(SEC, 8080, tcp_flags::SYN));
        }
        let d = det.detections(&remote);
        assert_eq!(
            kinds(&d),
            vec![
                DetectionKind::SynFlood,
                DetectionKind::HighFrequency,
                DetectionKind::FailedConnections
            ]
        );
        assert!(d[0].detail.contains(": 5 half-open"), "{d:?}");
        // An outbound datagram refused by ICMP port unreachable: one connection too.
        let mut det = Detector::new(DetectionConfig {
            high_frequency_connections: 2,
            ..DetectionConfig::default()
        });
        det.observe(ConnEvent {
            proto: IPPROTO_UDP,
            direction: Direction::Outbound,
            ..ev(SEC, 40000, 0)
        });
        det.observe(port_unreachable(SEC));
        assert!(det.detections(&remote).is_empty());
    }

    #[test]
    fn host_sweep_counts_local_addresses() {
        let mut det = Detector::new(DetectionConfig {
            host_sweep_hosts: 3,
            ..DetectionConfig::default()
        });
        for i in 1..=3u8 {
            det.observe(ConnEvent {
                local: IpAddr::from([10, 0, 0, i]),
                ..ev(SEC, 80, tcp_flags::SYN | tcp_flags::ACK)
            });
        }
        let remote: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(
            kinds(&det.detections(&remote)),
            vec![DetectionKind::HostSweep]
        );
    }
}
