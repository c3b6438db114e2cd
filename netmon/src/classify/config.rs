//! The threat configuration (`[threat]` settings in TOML): scoring weights and thresholds,
//! what counts as expected, detection thresholds, and custom rules. Unknown keys, bad CIDRs
//! and bad levels are errors that name the file and the line.

use std::{collections::BTreeSet, ops::RangeInclusive, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::score::{Direction, Facts, Level};
use crate::act::net::Net;

/// Points per reason. The defaults are the seed's: known-malicious +50, unusual port +20,
/// high frequency +15, and for the patterns detected from traffic, what makes one pattern
/// alone reach the level it deserves.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub known_malicious: i32,
    pub unusual_port: i32,
    pub high_frequency: i32,
    pub unusual_country: i32,
    pub unusual_asn: i32,
    pub port_scan: i32,
    pub host_sweep: i32,
    pub syn_flood: i32,
    pub login_bruteforce: i32,
    pub failed_connections: i32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            known_malicious: 50,
            unusual_port: 20,
            high_frequency: 15,
            unusual_country: 15,
            unusual_asn: 10,
            port_scan: 50,
            host_sweep: 50,
            syn_flood: 50,
            login_bruteforce: 30,
            failed_connections: 10,
        }
    }
}

impl Weights {
    pub fn for_detection(&self, kind: super::detect::DetectionKind) -> i32 {
        use super::detect::DetectionKind as K;
        match kind {
            K::PortScan => self.port_scan,
            K::HostSweep => self.host_sweep,
            K::SynFlood => self.syn_flood,
            K::HighFrequency => self.high_frequency,
            K::LoginBruteforce => self.login_bruteforce,
            K::FailedConnections => self.failed_connections,
        }
    }
}

/// low < `medium` <= medium < `high` <= high.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub medium: i32,
    pub high: i32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            medium: 25,
            high: 50,
        }
    }
}

/// When a pattern counts as detected: distinct things seen from one remote within `window`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectionConfig {
    pub window: Duration,
    /// Distinct ports one remote tried (inbound: on this host; outbound: on it).
    pub port_scan_ports: usize,
    /// Distinct local addresses one remote reached.
    pub host_sweep_hosts: usize,
    /// Inbound connections from one remote that never got past SYN.
    pub syn_half_open: usize,
    /// New connections to or from one remote.
    pub high_frequency_connections: usize,
    /// New connections to a login port from one remote.
    pub login_attempts: usize,
    pub login_ports: BTreeSet<u16>,
    /// Connections refused (RST) or unreachable (ICMP) with one remote.
    pub failed_connections: usize,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            port_scan_ports: 20,
            host_sweep_hosts: 20,
            syn_half_open: 100,
            high_frequency_connections: 60,
            login_attempts: 10,
            login_ports: [21, 22, 23, 3389, 5900].into(),
            failed_connections: 20,
        }
    }
}

/// What a matching custom rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Add(i32),
    SetLevel(Level),
}

/// A custom rule: every condition given must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub cidr: Option<Net>,
    pub ports: Option<RangeInclusive<u16>>,
    pub proto: Option<u8>,
    pub direction: Option<Direction>,
    pub country: Option<String>,
    pub asn: Option<u32>,
    pub process: Option<String>,
    pub action: RuleAction,
}

impl Rule {
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        self.cidr.is_none_or(|n| n.contains(f.remote))
            && self
                .ports
                .as_ref()
                .is_none_or(|p| p.contains(&f.service_port))
            && self.proto.is_none_or(|p| p == f.proto)
            && self.direction.is_none_or(|d| d == f.direction)
            && self
                .country
                .as_ref()
                .is_none_or(|c| f.country.is_some_and(|fc| fc.eq_ignore_ascii_case(c)))
            && self.asn.is_none_or(|a| f.asn == Some(a))
            && self
                .process
                .as_ref()
                .is_none_or(|p| f.process == Some(p.as_str()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreatConfig {
    pub weights: Weights,
    pub thresholds: Thresholds,
    /// Service ports that are not unusual.
    pub expected_ports: BTreeSet<u16>,
    pub unusual_countries: Vec<String>,
    pub unusual_asns: Vec<u32>,
    pub detection: DetectionConfig,
    pub rules: Vec<Rule>,
}

impl Default for ThreatConfig {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            thresholds: Thresholds::default(),
            expected_ports: [22, 25, 53, 80, 123, 443, 465, 587, 853, 993, 995].into(),
            unusual_countries: Vec::new(),
            unusual_asns: Vec::new(),
            detection: DetectionConfig::default(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    weights: Weights,
    #[serde(default)]
    thresholds: Thresholds,
    expected_ports: Option<Vec<u16>>,
    #[serde(default)]
    unusual_countries: Vec<String>,
    #[serde(default)]
    unusual_asns: Vec<u32>,
    #[serde(default)]
    detection: RawDetection,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetection {
    window: Option<Spanned<String>>,
    port_scan_ports: Option<usize>,
    host_sweep_hosts: Option<usize>,
    syn_half_open: Option<usize>,
    high_frequency_connections: Option<usize>,
    login_attempts: Option<usize>,
    login_ports: Option<Vec<u16>>,
    failed_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    cidr: Option<Spanned<String>>,
    port: Option<u16>,
    ports: Option<Spanned<String>>,
    proto: Option<Spanned<String>>,
    direction: Option<Spanned<String>>,
    country: Option<String>,
    asn: Option<u32>,
    process: Option<String>,
    add: Option<i32>,
    level: Option<Spanned<String>>,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl ThreatConfig {
    /// Parses the TOML text of a threat configuration; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> anyhow::Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            match line {
                Some(l) => anyhow::anyhow!("{file}:{l}: {}", e.message()),
                None => anyhow::anyhow!("{file}: {}", e.message()),
            }
        })?;
        let err = |at: usize, msg: String| anyhow::anyhow!("{file}:{}: {msg}", line_of(text, at));
        let d = DetectionConfig::default();
        let rd = raw.detection;
        let window = match rd.window {
            Some(w) => crate::config::parse_duration(w.get_ref())
                .map_err(|e| err(w.span().start, format!("detection.window: {e}")))?,
            None => d.window,
        };
        let mut rules = Vec::new();
        for r in raw.rules {
            let name = r.name.get_ref().clone();
            let at = r.name.span().start;
            let cidr = match &r.cidr {
                Some(c) => Some(
                    c.get_ref()
                        .parse::<Net>()
                        .map_err(|e| err(c.span().start, format!("rule {name}: cidr: {e}")))?,
                ),
                None => None,
            };
            let ports = match (&r.port, &r.ports) {
                (Some(_), Some(p)) => {
                    return Err(err(
                        p.span().start,
                        format!("rule {name}: give `port` or `ports`, not both"),
                    ));
                }
                (Some(p), None) => Some(*p..=*p),
                (None, Some(p)) => Some(parse_port_range(p.get_ref()).ok_or_else(|| {
                    err(
                        p.span().start,
                        format!(
                            "rule {name}: ports `{}` is not a port or a range like 6000-6100",
                            p.get_ref()
                        ),
                    )
                })?),
                (None, None) => None,
            };
            let proto = match &r.proto {
                Some(p) => Some(match p.get_ref().to_ascii_lowercase().as_str() {
                    "tcp" => 6,
                    "udp" => 17,
                    "icmp" => 1,
                    "icmpv6" => 58,
                    other => {
                        return Err(err(
                            p.span().start,
                            format!(
                                "rule {name}: proto `{other}` (expected tcp, udp, icmp, icmpv6)"
                            ),
                        ));
                    }
                }),
                None => None,
            };
            let direction = match &r.direction {
                Some(dn) => Some(Direction::parse(dn.get_ref()).ok_or_else(|| {
                    err(
                        dn.span().start,
                        format!(
                            "rule {name}: direction `{}` (expected inbound or outbound)",
                            dn.get_ref()
                        ),
                    )
                })?),
                None => None,
            };
            let action = match (r.add, &r.level) {
                (Some(p), None) => RuleAction::Add(p),
                (None, Some(l)) => {
                    RuleAction::SetLevel(Level::parse(l.get_ref()).ok_or_else(|| {
                        err(
                            l.span().start,
                            format!(
                                "rule {name}: level `{}` (expected low, medium or high)",
                                l.get_ref()
                            ),
                        )
                    })?)
                }
                _ => {
                    return Err(err(
                        at,
                        format!("rule {name}: give exactly one of `add = POINTS` or `level = ...`"),
                    ));
                }
            };
            rules.push(Rule {
                name,
                cidr,
                ports,
                proto,
                direction,
                country: r.country,
                asn: r.asn,
                process: r.process,
                action,
            });
        }
        if raw.thresholds.medium > raw.thresholds.high {
            return Err(anyhow::anyhow!(
                "{file}: thresholds.medium ({}) is above thresholds.high ({})",
                raw.thresholds.medium,
                raw.thresholds.high
            ));
        }
        Ok(Self {
            weights: raw.weights,
            thresholds: raw.thresholds,
            expected_ports: raw
                .expected_ports
                .map(|p| p.into_iter().collect())
                .unwrap_or_else(|| ThreatConfig::default().expected_ports),
            unusual_countries: raw.unusual_countries,
            unusual_asns: raw.unusual_asns,
            detection: DetectionConfig {
                window,
                port_scan_ports: rd.port_scan_ports.unwrap_or(d.port_scan_ports),
                host_sweep_hosts: rd.host_sweep_hosts.unwrap_or(d.host_sweep_hosts),
                syn_half_open: rd.syn_half_open.unwrap_or(d.syn_half_open),
                high_frequency_connections: rd
                    .high_frequency_connections
                    .unwrap_or(d.high_frequency_connections),
                login_attempts: rd.login_attempts.unwrap_or(d.login_attempts),
                login_ports: rd
                    .login_ports
                    .map(|p| p.into_iter().collect())
                    .unwrap_or(d.login_ports),
                failed_connections: rd.failed_connections.unwrap_or(d.failed_connections),
            },
            rules,
        })
    }

    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading threat config {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }
}

fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            (a <= b).then_some(a..=b)
        }
        None => {
            let p = s.trim().parse().ok()?;
            Some(p..=p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = ThreatConfig::parse(
            "expected_ports = [443]\n[weights]\nunusual_port = 30\n[detection]\nwindow = \"10s\"\nport_scan_ports = 5\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.weights.unusual_port, 30);
        assert_eq!(c.weights.known_malicious, 50);
        assert_eq!(c.expected_ports, [443].into());
        assert_eq!(c.detection.window, Duration::from_secs(10));
        assert_eq!(c.detection.port_scan_ports, 5);
        assert_eq!(c.detection.host_sweep_hosts, 20);
        assert_eq!(
            ThreatConfig::parse("", "t.toml").unwrap(),
            ThreatConfig::default()
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = ThreatConfig::parse("[weights]\nport_scann = 3\n", "threat.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("threat.toml:2:") && e.contains("port_scann"),
            "{e}"
        );
        let e = ThreatConfig::parse(
            "[[rules]]\nname = \"x\"\ncidr = \"10.0.0.1/8\"\nadd = 5\n",
            "threat.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("threat.toml:3:") && e.contains("host bits"),
            "{e}"
        );
        let e = ThreatConfig::parse(
            "[[rules]]\nname = \"x\"\nlevel = \"severe\"\n",
            "threat.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("threat.toml:3:") && e.contains("severe"),
            "{e}"
        );
        let e = ThreatConfig::parse("[[rules]]\nname = \"x\"\n", "threat.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one of"), "{e}");
    }
}
