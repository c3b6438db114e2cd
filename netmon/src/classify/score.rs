//! Risk scoring: plain facts about one connection (or one remote address) in, a score, a
//! level and every reason with its points out. Pure code, no maps, no sockets.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    config::{RuleAction, ThreatConfig},
    detect::{Detection, DetectionKind},
};

/// Risk level, from the score and the configured thresholds (or set by a custom rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Low, Level::Medium, Level::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Level::Low),
            "medium" => Some(Level::Medium),
            "high" => Some(Level::High),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a connection was opened, seen from this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The remote opened it (or sent the first packet).
    Inbound,
    /// This host did.
    Outbound,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inbound" | "in" => Some(Direction::Inbound),
            "outbound" | "out" => Some(Direction::Outbound),
            _ => None,
        }
    }
}

/// What is known about a connection when it is scored.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub remote: IpAddr,
    /// The service port: the local port of an inbound connection, the remote port of an
    /// outbound one.
    pub service_port: u16,
    /// IPPROTO_* number.
    pub proto: u8,
    pub direction: Direction,
    pub process: Option<&'a str>,
    /// ISO country code of the remote, where a geolocation database is configured.
    pub country: Option<&'a str>,
    pub asn: Option<u32>,
    /// Names of the reputation feeds that list the remote.
    pub feeds: &'a [String],
    /// Behaviour detected from the remote's traffic (port scan, ...).
    pub detections: &'a [Detection],
}

/// One contribution to a score.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// Machine-readable: `known_malicious`, `unusual_port`, `port_scan`, `rule:NAME`, ...
    pub kind: String,
    pub points: i32,
    /// For people: which feed, which port, how many ports in how long.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assessment {
    pub score: i32,
    pub level: Level,
    pub reasons: Vec<Reason>,
}

/// Sums the points and, when asked to explain, keeps each reason (its words are only
/// formatted then).
struct Tally {
    explain: bool,
    score: i32,
    reasons: Vec<Reason>,
}

impl Tally {
    fn add(&mut self, kind: &str, points: i32, detail: impl FnOnce() -> String) {
        if points == 0 {
            return;
        }
        self.score += points;
        if self.explain {
            self.reasons.push(Reason {
                kind: kind.to_string(),
                points,
                detail: detail(),
            });
        }
    }
}

/// Scores `f` under `cfg`: every configured weight that applies adds its points with a
/// reason; custom rules then add points or set the level outright.
pub fn assess(cfg: &ThreatConfig, f: &Facts<'_>) -> Assessment {
    evaluate(cfg, f, true)
}

/// The level alone, as `assess` would give it, without building the reasons (for counting
/// many connections).
pub fn level(cfg: &ThreatConfig, f: &Facts<'_>) -> Level {
    evaluate(cfg, f, false).level
}

fn evaluate(cfg: &ThreatConfig, f: &Facts<'_>, explain: bool) -> Assessment {
    let w = &cfg.weights;
    let mut t = Tally {
        explain,
        score: 0,
        reasons: Vec::new(),
    };
    for feed in f.feeds {
        t.add("known_malicious", w.known_malicious, || {
            format!("{} is listed in the reputation feed {feed}", f.remote)
        });
    }
    if !cfg.expected_ports.contains(&f.service_port)
        && cfg.api_port != Some(f.service_port)
        && f.service_port != 0
    {
        t.add("unusual_port", w.unusual_port, || {
            format!("port {} is not among the expected services", f.service_port)
        });
    }
    if let Some(c) = f.country
        && cfg
            .unusual_countries
            .iter()
            .any(|u| u.eq_ignore_ascii_case(c))
    {
        t.add("unusual_country", w.unusual_country, || {
            format!("{} is located in {c}", f.remote)
        });
    }
    if let Some(a) = f.asn
        && cfg.unusual_asns.contains(&a)
    {
        t.add("unusual_asn", w.unusual_asn, || {
            format!("{} belongs to AS{a}", f.remote)
        });
    }
    for d in f.detections {
        t.add(d.kind.as_str(), w.for_detection(d.kind), || {
            d.detail.clone()
        });
    }
    let mut forced = None;
    for rule in &cfg.rules {
        if !rule.matches(f) {
            continue;
        }
        let kind = || format!("rule:{}", rule.name);
        match rule.action {
            RuleAction::Add(points) => {
                t.score += points;
                if explain {
                    t.reasons.push(Reason {
                        kind: kind(),
                        points,
                        detail: format!("custom rule {} matched", rule.name),
                    });
                }
            }
            RuleAction::SetLevel(level) => {
                forced = Some(level);
                if explain {
                    t.reasons.push(Reason {
                        kind: kind(),
                        points: 0,
                        detail: format!("custom rule {} sets the level to {level}", rule.name),
                    });
                }
            }
        }
    }
    let score = t.score;
    let level = forced.unwrap_or(if score >= cfg.thresholds.high {
        Level::High
    } else if score >= cfg.thresholds.medium {
        Level::Medium
    } else {
        Level::Low
    });
    Assessment {
        score,
        level,
        reasons: t.reasons,
    }
}

impl DetectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectionKind::PortScan => "port_scan",
            DetectionKind::HostSweep => "host_sweep",
            DetectionKind::SynFlood => "syn_flood",
            DetectionKind::HighFrequency => "high_frequency",
            DetectionKind::LoginBruteforce => "login_bruteforce",
            DetectionKind::FailedConnections => "failed_connections",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::config::ThreatConfig;

    fn facts<'a>(feeds: &'a [String], detections: &'a [Detection], port: u16) -> Facts<'a> {
        Facts {
            remote: "203.0.113.9".parse().unwrap(),
            service_port: port,
            proto: 6,
            direction: Direction::Outbound,
            process: Some("curl"),
            country: None,
            asn: None,
            feeds,
            detections,
        }
    }

    #[test]
    fn seed_weights_and_thresholds() {
        let cfg = ThreatConfig::default();
        // Expected port, no feed, nothing detected: low, no reasons.
        let a = assess(&cfg, &facts(&[], &[], 443));
        assert_eq!((a.score, a.level, a.reasons.len()), (0, Level::Low, 0));
        // Unusual port alone: 20, low (< 25).
        let a = assess(&cfg, &facts(&[], &[], 6667));
        assert_eq!((a.score, a.level), (20, Level::Low));
        assert_eq!(a.reasons[0].kind, "unusual_port");
        // Known malicious: 50, high; the feed is named.
        let feeds = vec!["spamhaus-drop".to_string()];
        let a = assess(&cfg, &facts(&feeds, &[], 443));
        assert_eq!((a.score, a.level), (50, Level::High));
        assert!(a.reasons[0].detail.contains("spamhaus-drop"), "{a:?}");
        // Unusual port + high frequency: 35, medium.
        let d = vec![Detection {
            kind: DetectionKind::HighFrequency,
            detail: "40 connections in 60 s".into(),
        }];
        let a = assess(&cfg, &facts(&[], &d, 6667));
        assert_eq!((a.score, a.level), (35, Level::Medium));
        assert_eq!(
            a.reasons.iter().map(|r| r.points).collect::<Vec<_>>(),
            vec![20, 15]
        );
    }

    #[test]
    fn the_daemons_own_api_port_is_not_unusual() {
        let mut cfg = ThreatConfig::default();
        assert_eq!(assess(&cfg, &facts(&[], &[], 9911)).score, 20);
        cfg.api_port = Some(9911);
        let a = assess(&cfg, &facts(&[], &[], 9911));
        assert_eq!((a.score, a.reasons.len()), (0, 0), "{a:?}");
        // Any other port still is.
        assert_eq!(assess(&cfg, &facts(&[], &[], 9912)).score, 20);
    }

    #[test]
    fn the_level_alone_agrees_with_the_full_assessment() {
        let cfg = ThreatConfig::parse(
            "[[rules]]\nname = \"irc\"\nport = 6667\nadd = 40\n",
            "t.toml",
        )
        .unwrap();
        let feeds = ["feed".to_string()];
        let d = [Detection {
            kind: DetectionKind::HighFrequency,
            detail: String::new(),
        }];
        for (f, dets, port) in [
            (&[][..], &[][..], 443),
            (&[][..], &[][..], 6667),
            (&feeds[..], &[][..], 443),
            (&[][..], &d[..], 8080),
            (&feeds[..], &d[..], 6667),
        ] {
            let x = facts(f, dets, port);
            assert_eq!(level(&cfg, &x), assess(&cfg, &x).level, "{port}");
        }
    }

    #[test]
    fn custom_rules_add_points_or_set_the_level() {
        let cfg = ThreatConfig::parse(
            r#"
[[rules]]
name = "lab"
cidr = "203.0.113.0/24"
level = "low"

[[rules]]
name = "irc"
port = 6667
add = 40
"#,
            "test.toml",
        )
        .unwrap();
        let feeds = vec!["feed".to_string()];
        let a = assess(&cfg, &facts(&feeds, &[], 6667));
        // 50 + 20 + 40, but the lab rule pins the level.
        assert_eq!((a.score, a.level), (110, Level::Low));
        assert!(a.reasons.iter().any(|r| r.kind == "rule:lab"));
        assert!(
            a.reasons
                .iter()
                .any(|r| r.kind == "rule:irc" && r.points == 40)
        );
    }
}
