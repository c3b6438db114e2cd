//! Stage 4: classify. New flows become connection attempts for the pattern detector
//! ([`detect`]); every connection, and every remote with a detection, is scored with its
//! reasons ([`score`]) under the threat configuration ([`config`]); a remote's first
//! detection of a kind in a window raises an alert.

pub mod config;
pub mod detect;
pub mod feeds;
pub mod geo;
pub mod score;

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use netmon_common::{
    DIR_INGRESS, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, tcp_flags,
};
use serde::Serialize;

use self::{
    config::ThreatConfig,
    detect::{ConnEvent, Detection, DetectionKind, Detector},
    score::{Assessment, Direction, Facts, Level, Reason},
};

/// Alerts kept for `GET /api/alerts`.
pub const ALERTS_KEPT: usize = 1000;

/// Something an operator should know about: a pattern detected in a remote's traffic.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub id: u64,
    /// Wall-clock milliseconds since the epoch.
    pub time_ms: u64,
    pub kind: DetectionKind,
    pub severity: Level,
    pub remote: IpAddr,
    pub score: i32,
    pub reasons: Vec<Reason>,
    pub detail: String,
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
            cfg,
            by_remote: HashMap::new(),
            alerted: HashMap::new(),
            alerts: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Feeds a flow the daemon saw for the first time (its key and the TCP flags of its first
    /// drain) to the detector, if it is a connection attempt or a refusal.
    pub fn observe_new_flow(&mut self, key: &FlowKey, flags: u8, at_ns: u64) {
        if let Some(e) = attempt(key, flags, at_ns) {
            self.detector.observe(e);
        }
    }

    /// Ends a tick: ages the windows out, recomputes every remote's detections and returns
    /// the alerts for detections new since the last tick.
    pub fn tick(&mut self, now_ns: u64, now_ms: u64) -> Vec<Alert> {
        self.detector.expire(now_ns);
        let mut new = Vec::new();
        if !self.detector.changed() {
            // The same attempts in the window: the same detections, already alerted on.
            return new;
        }
        self.by_remote.clear();
        for (remote, d) in self.detector.evaluate() {
            let a = self.assess_remote(remote, &d);
            for det in &d {
                if self.alerted.contains_key(&(remote, det.kind)) {
                    continue;
                }
                self.alerted.insert((remote, det.kind), now_ns);
                new.push(Alert {
                    id: self.next_id,
                    time_ms: now_ms,
                    kind: det.kind,
                    severity: a.level,
                    remote,
                    score: a.score,
                    reasons: a.reasons.clone(),
                    detail: det.detail.clone(),
                });
                self.next_id += 1;
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
        for a in &new {
            if self.alerts.len() == ALERTS_KEPT {
                self.alerts.pop_front();
            }
            self.alerts.push_back(a.clone());
        }
        new
    }

    fn assess_remote(&self, remote: IpAddr, detections: &[Detection]) -> Assessment {
        score::assess(
            &self.cfg,
            &Facts {
                remote,
                service_port: 0,
                proto: 0,
                direction: Direction::Inbound,
                process: None,
                country: None,
                asn: None,
                feeds: &[],
                detections,
            },
        )
    }

    /// Scores one connection: its own facts plus what its remote's traffic showed.
    pub fn assess(
        &self,
        remote: IpAddr,
        local_port: u16,
        remote_port: u16,
        proto: u8,
        process: Option<&str>,
    ) -> Assessment {
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
        score::assess(
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
                country: None,
                asn: None,
                feeds: &[],
                detections,
            },
        )
    }

    /// The alerts kept, oldest first.
    pub fn alerts(&self) -> Vec<Alert> {
        self.alerts.iter().cloned().collect()
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
    let v4 = key.family == 4;
    let ip = |a: [u8; 16]| -> IpAddr {
        if v4 {
            IpAddr::from([a[12], a[13], a[14], a[15]])
        } else {
            IpAddr::from(a)
        }
    };
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
        assert_eq!(a.kind, DetectionKind::PortScan);
        assert_eq!(a.remote, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((a.severity, a.score), (Level::High, 50));
        assert!(a.detail.contains("30 ports"), "{}", a.detail);
        // Still scanning: no second alert; connections from it carry the reason.
        assert!(c.tick(3, 2000).is_empty());
        let s = c.assess(
            "198.18.0.2".parse().unwrap(),
            6667,
            40001,
            IPPROTO_TCP,
            None,
        );
        assert_eq!(s.level, Level::High);
        assert!(s.reasons.iter().any(|r| r.kind == "port_scan"));
        assert!(s.reasons.iter().any(|r| r.kind == "unusual_port"));
        assert_eq!(c.alerts().len(), 1);
    }
}
