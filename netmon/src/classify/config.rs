//! The threat configuration (`[threat]` settings in TOML): scoring weights and thresholds,
//! what counts as expected, detection thresholds, and custom rules. Unknown keys, bad CIDRs
//! and bad levels are errors that name the file and the line.

use std::{collections::BTreeSet, ops::RangeInclusive, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::{
    feeds::{FeedConfig, Location},
    score::{Direction, Facts, Level},
};
use crate::act::{
    net::Net,
    state::{Rate, parse_bandwidth},
};

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

#[derive(Clone, Debug, PartialEq)]
pub struct ThreatConfig {
    pub weights: Weights,
    pub thresholds: Thresholds,
    /// Service ports that are not unusual.
    pub expected_ports: BTreeSet<u16>,
    /// The running daemon's own API port (set when it binds, never read from a file): the
    /// connections of its clients (Prometheus, the CLI) are not unusual either.
    pub api_port: Option<u16>,
    pub unusual_countries: Vec<String>,
    pub unusual_asns: Vec<u32>,
    pub detection: DetectionConfig,
    pub rules: Vec<Rule>,
    /// Reputation feeds (`[[feeds]]`).
    pub feeds: Vec<FeedConfig>,
    /// MaxMind-format databases for country and ASN (`geoip = [...]`, `--geoip`).
    pub geoip: Vec<PathBuf>,
    pub response: ResponseConfig,
    pub alerts: AlertsConfig,
}

/// What to do about an alert, beyond telling: `[response]` and `[[response.policy]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseConfig {
    /// Record what would have been done, do nothing.
    pub dry_run: bool,
    /// Automatic bans at most this many per minute (the rest are refused and reported).
    pub max_bans_per_minute: usize,
    /// Never acted on automatically (the drop list's allow entries are never acted on either).
    pub allow: Vec<Net>,
    pub policy: Vec<PolicyRule>,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            max_bans_per_minute: 10,
            allow: Vec::new(),
            policy: Vec::new(),
        }
    }
}

/// An automatic action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Ban the remote through the drop list (reason `auto`), with a TTL.
    Ban,
    /// Terminate the remote's existing connections (sock_diag SOCK_DESTROY).
    Kill,
    /// Limit the packets the remote may send (in the kernel, per source), with the TTL.
    #[serde(rename = "ratelimit")]
    RateLimit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Ban => "ban",
            Action::Kill => "kill",
            Action::RateLimit => "ratelimit",
        }
    }
}

/// One policy line: alerts that reach `level` (if given) and are of one of `kinds` (if
/// given) get `actions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub level: Option<Level>,
    /// Alert kinds (`port_scan`, ..., `threshold`); empty: any.
    pub kinds: Vec<String>,
    pub actions: Vec<Action>,
    /// TTL of the bans and rate limits this line makes.
    pub ban_ttl: Duration,
    /// The rate of the rate limits this line makes: `rate_pps` and `rate_burst`, or
    /// `rate_bandwidth` and `rate_burst_bytes`.
    pub rate: Rate,
}

/// Where alerts go and how often: `[alerts]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertsConfig {
    /// Forensic event log (JSON lines); default `<state-dir>/events.jsonl`.
    pub log: Option<PathBuf>,
    /// Rotated past this size, keeping `log_keep` old files.
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// Events older than this are removed from the log and its rotated files (the addresses
    /// in them are personal data: a retention period); None: kept until rotated out.
    pub log_max_age: Option<Duration>,
    /// The same alert (kind, subject, severity) is sent to the sinks once per this window.
    pub dedup: Duration,
    /// At most this many notifications per alert key (kind, subject) per hour.
    pub max_per_key_per_hour: usize,
    /// Sinks are told of alerts at or above this level (the log gets everything).
    pub min_severity: Level,
    pub webhook: Option<WebhookConfig>,
    pub syslog: Option<SyslogConfig>,
    pub email: Option<EmailConfig>,
    pub sms: Option<SmsConfig>,
    pub thresholds: Vec<ThresholdRule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            log: None,
            log_max_bytes: 16 << 20,
            log_keep: 5,
            log_max_age: None,
            dedup: Duration::from_secs(300),
            max_per_key_per_hour: 12,
            min_severity: Level::Low,
            webhook: None,
            syslog: None,
            email: None,
            sms: None,
            thresholds: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    pub timeout: Duration,
    /// Attempts after the first, with exponential backoff from 1 s.
    pub retries: u32,
    /// A file whose first line is the `Authorization` header's value (`Bearer TOKEN`,
    /// `Splunk TOKEN`, `ApiKey KEY`, ...), for collectors that ask for one.
    pub authorization_file: Option<PathBuf>,
}

/// Syslog transport (RFC 5424 messages; TCP with octet-counting framing, RFC 6587; TLS as
/// RFC 5425, the same framing inside a TLS session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyslogTarget {
    Udp(String),
    Tcp(String),
    Tls(String),
    Unix(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    pub target: SyslogTarget,
    /// RFC 5424 facility number (default 4, security/auth).
    pub facility: u8,
    pub app_name: String,
    /// With `Tls`: the certificates trusted for the server's (PEM); None: the system's
    /// bundle.
    pub ca_file: Option<PathBuf>,
}

/// How the email sink protects its SMTP session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailTls {
    /// Plain SMTP, as to a local relay (the default).
    None,
    /// Plain SMTP upgraded by STARTTLS (RFC 3207) before anything else is said; a server
    /// that does not offer it gets nothing.
    Starttls,
    /// TLS from the first byte (RFC 8314's implicit TLS, port 465).
    Implicit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailConfig {
    /// SMTP server `host:port`.
    pub server: String,
    pub from: String,
    pub to: Vec<String>,
    pub min_severity: Level,
    pub timeout: Duration,
    pub tls: EmailTls,
    /// The certificates trusted for the server's (PEM); None: the system's bundle.
    pub ca_file: Option<PathBuf>,
    /// AUTH PLAIN (RFC 4954) as this user, with the password in `password_file`'s first
    /// line; only over TLS.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// Text messages through an SMS gateway with Twilio's Messages API: per recipient, a form POST
/// of `To`, `From` and `Body` to `url` with HTTP basic authentication (`account` and the
/// token in `token_file`'s first line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsConfig {
    pub url: String,
    pub account: String,
    pub token_file: PathBuf,
    /// A phone number (E.164) or an alphanumeric sender ID.
    pub from: String,
    /// Phone numbers (E.164).
    pub to: Vec<String>,
    pub min_severity: Level,
    pub timeout: Duration,
    /// Attempts after the first, per recipient, with exponential backoff from 1 s.
    pub retries: u32,
}

/// An E.164 phone number: `+` and 7 to 15 digits.
fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `url` (http or https) names this host's loopback: the one place an SMS gateway's
/// credentials may go without TLS (a local relay).
fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Alert when a metric stays above (or below) a value for a while.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdRule {
    pub name: String,
    pub metric: String,
    /// Every label given must match; the matching series are summed.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Compare the per-second rate (for counters) instead of the value.
    pub rate: bool,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub for_: Duration,
    pub severity: Level,
}

impl Default for ThreatConfig {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            thresholds: Thresholds::default(),
            expected_ports: [22, 25, 53, 80, 123, 443, 465, 587, 853, 993, 995].into(),
            api_port: None,
            unusual_countries: Vec::new(),
            unusual_asns: Vec::new(),
            detection: DetectionConfig::default(),
            rules: Vec::new(),
            feeds: Vec::new(),
            geoip: Vec::new(),
            response: ResponseConfig::default(),
            alerts: AlertsConfig::default(),
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
    #[serde(default)]
    feeds: Vec<RawFeed>,
    #[serde(default)]
    geoip: Vec<PathBuf>,
    #[serde(default)]
    response: RawResponse,
    #[serde(default)]
    alerts: RawAlerts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    name: Spanned<String>,
    path: Option<PathBuf>,
    url: Option<Spanned<String>>,
    refresh: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    #[serde(default)]
    dry_run: bool,
    max_bans_per_minute: Option<usize>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    level: Option<Spanned<String>>,
    #[serde(default)]
    kinds: Vec<Spanned<String>>,
    actions: Spanned<Vec<Spanned<String>>>,
    ban_ttl: Option<Spanned<String>>,
    rate_pps: Option<u32>,
    rate_burst: Option<u32>,
    rate_bandwidth: Option<Spanned<String>>,
    rate_burst_bytes: Option<Spanned<u64>>,
}

/// A policy line's rate limit: packets (`rate_pps`, default 100, and `rate_burst`, default
/// the rate) or a bandwidth (`rate_bandwidth`, e.g. "1mbit", and `rate_burst_bytes`), not
/// both. Errors carry the offending key's position.
fn policy_rate(p: &RawPolicy) -> Result<Rate, (usize, String)> {
    let Some(bw) = &p.rate_bandwidth else {
        if let Some(b) = &p.rate_burst_bytes {
            return Err((
                b.span().start,
                "response.policy: rate_burst_bytes is the burst of a rate_bandwidth; give \
                 rate_bandwidth too, or rate_burst (packets) for rate_pps"
                    .into(),
            ));
        }
        let pps = p.rate_pps.unwrap_or(100).max(1);
        return Ok(Rate::Packets {
            pps,
            burst: p.rate_burst.unwrap_or(pps).max(1),
        });
    };
    if p.rate_pps.is_some() || p.rate_burst.is_some() {
        return Err((
            bw.span().start,
            "response.policy: give rate_pps (and rate_burst) or rate_bandwidth (and \
             rate_burst_bytes), not both: a limit counts packets or bytes"
                .into(),
        ));
    }
    let bytes = parse_bandwidth(bw.get_ref()).map_err(|e| {
        (
            bw.span().start,
            format!("response.policy: rate_bandwidth {e:#}"),
        )
    })?;
    Rate::bandwidth(bytes, p.rate_burst_bytes.as_ref().map(|b| *b.get_ref())).map_err(|e| {
        let at = p
            .rate_burst_bytes
            .as_ref()
            .map_or(bw.span().start, |b| b.span().start);
        (at, format!("response.policy: {e:#}"))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    log: Option<PathBuf>,
    log_max_bytes: Option<u64>,
    log_keep: Option<usize>,
    log_max_age: Option<Spanned<String>>,
    dedup: Option<Spanned<String>>,
    max_per_key_per_hour: Option<usize>,
    min_severity: Option<Spanned<String>>,
    webhook: Option<RawWebhook>,
    syslog: Option<RawSyslog>,
    email: Option<RawEmail>,
    sms: Option<RawSms>,
    #[serde(default)]
    threshold: Vec<RawThreshold>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    authorization_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyslog {
    address: Spanned<String>,
    facility: Option<u8>,
    app_name: Option<String>,
    ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    server: Spanned<String>,
    from: String,
    to: Spanned<Vec<String>>,
    min_severity: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    tls: Option<Spanned<String>>,
    ca_file: Option<PathBuf>,
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSms {
    url: Spanned<String>,
    account: Spanned<String>,
    token_file: PathBuf,
    from: Spanned<String>,
    to: Spanned<Vec<String>>,
    min_severity: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThreshold {
    name: Spanned<String>,
    metric: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    rate: bool,
    above: Option<f64>,
    below: Option<f64>,
    #[serde(rename = "for")]
    for_: Option<Spanned<String>>,
    severity: Option<Spanned<String>>,
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
        // An http(s) URL; with `secret` (what the requests carry), plain http only to this
        // host's loopback, so that it is never sent in the clear.
        let http_url = |u: &Spanned<String>, what: &str, secret: Option<&str>| {
            let url = u.get_ref();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(
                    u.span().start,
                    format!("{what}: url `{url}` is not http(s)://"),
                ));
            }
            if let Some(secret) = secret
                && url.starts_with("http://")
                && !is_loopback_url(url)
            {
                return Err(err(
                    u.span().start,
                    format!(
                        "{what}: url `{url}` is plain http to another host: {secret} is never \
                         sent in the clear (use https://, or http:// to a relay on this host's \
                         loopback)"
                    ),
                ));
            }
            Ok(url.clone())
        };
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
        let dur = |v: &Option<Spanned<String>>, what: &str, default: Duration| match v {
            Some(v) => crate::config::parse_duration(v.get_ref())
                .map_err(|e| err(v.span().start, format!("{what}: {e}"))),
            None => Ok(default),
        };
        let level = |v: &Spanned<String>, what: &str| {
            Level::parse(v.get_ref()).ok_or_else(|| {
                err(
                    v.span().start,
                    format!("{what} `{}` (expected low, medium or high)", v.get_ref()),
                )
            })
        };
        let mut feeds = Vec::new();
        for f in &raw.feeds {
            let name = f.name.get_ref().clone();
            let at = f.name.span().start;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(
                    at,
                    format!("feed name `{name}`: use letters, digits, - _ ."),
                ));
            }
            if feeds.iter().any(|x: &FeedConfig| x.name == name) {
                return Err(err(at, format!("feed {name} is defined twice")));
            }
            let location = match (&f.path, &f.url) {
                (Some(p), None) => Location::File(p.clone()),
                (None, Some(u)) => Location::Url(http_url(u, &format!("feed {name}"), None)?),
                _ => {
                    return Err(err(
                        at,
                        format!("feed {name}: give exactly one of `path` or `url`"),
                    ));
                }
            };
            feeds.push(FeedConfig {
                refresh: dur(
                    &f.refresh,
                    &format!("feed {name}: refresh"),
                    Duration::from_secs(3600),
                )?,
                name,
                location,
                decl: format!("{file}:{}", line_of(text, at)),
            });
        }
        let rr = &raw.response;
        let mut allow = Vec::new();
        for a in &rr.allow {
            allow.push(
                a.get_ref()
                    .parse::<Net>()
                    .map_err(|e| err(a.span().start, format!("response.allow: {e}")))?,
            );
        }
        let mut policy = Vec::new();
        for p in &rr.policy {
            let mut actions = Vec::new();
            for a in p.actions.get_ref() {
                actions.push(match a.get_ref().as_str() {
                    "ban" => Action::Ban,
                    "kill" => Action::Kill,
                    "ratelimit" => Action::RateLimit,
                    // Every alert is told to the log and the sinks anyway.
                    "alert" => continue,
                    other => {
                        return Err(err(
                            a.span().start,
                            format!(
                                "response.policy: action `{other}` (expected alert, ban, kill or ratelimit)"
                            ),
                        ));
                    }
                });
            }
            let mut kinds = Vec::new();
            for k in &p.kinds {
                // Threshold alerts are about a metric, not a remote: nothing to act on.
                let known = super::detect::DetectionKind::ALL
                    .iter()
                    .any(|d| d.as_str() == k.get_ref())
                    || k.get_ref() == "known_malicious";
                if !known {
                    return Err(err(
                        k.span().start,
                        format!(
                            "response.policy: kind `{}` (expected one of port_scan, host_sweep, syn_flood, high_frequency, login_bruteforce, failed_connections, known_malicious; threshold alerts name no remote to act on)",
                            k.get_ref()
                        ),
                    ));
                }
                kinds.push(k.get_ref().clone());
            }
            if p.level.is_none() && kinds.is_empty() {
                return Err(err(p.actions.span().start, "response.policy: give `level` or `kinds` (a policy that matches every alert is refused)".into()));
            }
            policy.push(PolicyRule {
                level: p
                    .level
                    .as_ref()
                    .map(|l| level(l, "response.policy: level"))
                    .transpose()?,
                kinds,
                actions,
                ban_ttl: dur(
                    &p.ban_ttl,
                    "response.policy: ban_ttl",
                    Duration::from_secs(3600),
                )?,
                rate: policy_rate(p).map_err(|(at, msg)| err(at, msg))?,
            });
        }
        let ra = &raw.alerts;
        let da = AlertsConfig::default();
        let webhook = match &ra.webhook {
            Some(w) => {
                let secret = w
                    .authorization_file
                    .as_ref()
                    .map(|_| "the authorization_file's credential");
                let url = http_url(&w.url, "alerts.webhook", secret)?;
                Some(WebhookConfig {
                    authorization_file: w.authorization_file.clone(),
                    url,
                    timeout: dur(
                        &w.timeout,
                        "alerts.webhook: timeout",
                        Duration::from_secs(5),
                    )?,
                    retries: w.retries.unwrap_or(5),
                })
            }
            None => None,
        };
        let syslog = match &ra.syslog {
            Some(sl) => {
                let a = sl.address.get_ref();
                let target = if let Some(r) = a.strip_prefix("udp://") {
                    SyslogTarget::Udp(r.to_string())
                } else if let Some(r) = a.strip_prefix("tcp://") {
                    SyslogTarget::Tcp(r.to_string())
                } else if let Some(r) = a.strip_prefix("tls://") {
                    SyslogTarget::Tls(r.to_string())
                } else if let Some(r) = a.strip_prefix("unix://") {
                    SyslogTarget::Unix(PathBuf::from(r))
                } else {
                    return Err(err(
                        sl.address.span().start,
                        format!(
                            "alerts.syslog: address `{a}` (expected udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or unix:///dev/log)"
                        ),
                    ));
                };
                if sl.facility.is_some_and(|f| f > 23) {
                    return Err(err(
                        sl.address.span().start,
                        "alerts.syslog: facility is 0-23".into(),
                    ));
                }
                if let Some(ca) = &sl.ca_file
                    && !matches!(target, SyslogTarget::Tls(_))
                {
                    return Err(err(
                        ca.span().start,
                        "alerts.syslog: ca_file is for a tls:// address".into(),
                    ));
                }
                Some(SyslogConfig {
                    target,
                    facility: sl.facility.unwrap_or(4),
                    app_name: sl.app_name.clone().unwrap_or_else(|| "netmon".into()),
                    ca_file: sl.ca_file.as_ref().map(|c| c.get_ref().clone()),
                })
            }
            None => None,
        };
        let email = match &ra.email {
            Some(e) => {
                if e.to.get_ref().is_empty() {
                    return Err(err(
                        e.to.span().start,
                        "alerts.email: `to` names no recipient".into(),
                    ));
                }
                let tls = match e.tls.as_ref().map(|t| (t, t.get_ref().as_str())) {
                    None | Some((_, "none")) => EmailTls::None,
                    Some((_, "starttls")) => EmailTls::Starttls,
                    Some((_, "tls")) => EmailTls::Implicit,
                    Some((t, other)) => {
                        return Err(err(
                            t.span().start,
                            format!(
                                "alerts.email: tls = \"{other}\": give \"none\" (plain SMTP, as \
                                 to a local relay), \"starttls\" (port 587) or \"tls\" (port 465)"
                            ),
                        ));
                    }
                };
                match (&e.username, &e.password_file) {
                    (Some(u), _) if tls == EmailTls::None => {
                        return Err(err(
                            u.span().start,
                            "alerts.email: `username` needs `tls` (\"starttls\" or \"tls\"): \
                             a password is never sent in the clear"
                                .into(),
                        ));
                    }
                    (Some(u), None) => {
                        return Err(err(
                            u.span().start,
                            "alerts.email: `username` needs `password_file` (the password on \
                             its first line)"
                                .into(),
                        ));
                    }
                    (None, Some(p)) => {
                        return Err(err(
                            p.span().start,
                            "alerts.email: `password_file` needs `username`".into(),
                        ));
                    }
                    _ => {}
                }
                Some(EmailConfig {
                    tls,
                    ca_file: e.ca_file.clone(),
                    username: e.username.as_ref().map(|u| u.get_ref().clone()),
                    password_file: e.password_file.as_ref().map(|p| p.get_ref().clone()),
                    server: e.server.get_ref().clone(),
                    from: e.from.clone(),
                    to: e.to.get_ref().clone(),
                    min_severity: e
                        .min_severity
                        .as_ref()
                        .map(|l| level(l, "alerts.email: min_severity"))
                        .transpose()?
                        .unwrap_or(Level::High),
                    timeout: dur(&e.timeout, "alerts.email: timeout", Duration::from_secs(10))?,
                })
            }
            None => None,
        };
        let sms = match &ra.sms {
            Some(m) => {
                let url = http_url(&m.url, "alerts.sms", Some("the gateway's token"))?;
                if m.account.get_ref().is_empty() || m.account.get_ref().contains(':') {
                    return Err(err(
                        m.account.span().start,
                        "alerts.sms: `account` (the basic-auth user, Twilio's account SID) is \
                         empty or holds a `:`"
                            .into(),
                    ));
                }
                let from = m.from.get_ref();
                let sender_id = (1..=11).contains(&from.len())
                    && from.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
                    && from.bytes().any(|b| b.is_ascii_alphabetic());
                if !is_e164(from) && !sender_id {
                    return Err(err(
                        m.from.span().start,
                        format!(
                            "alerts.sms: from = \"{from}\": give a phone number in E.164 form \
                             (+ and 7 to 15 digits) or an alphanumeric sender ID (up to 11 \
                             letters, digits and spaces)"
                        ),
                    ));
                }
                if m.to.get_ref().is_empty() {
                    return Err(err(
                        m.to.span().start,
                        "alerts.sms: `to` names no recipient".into(),
                    ));
                }
                if let Some(bad) = m.to.get_ref().iter().find(|n| !is_e164(n)) {
                    return Err(err(
                        m.to.span().start,
                        format!(
                            "alerts.sms: to: \"{bad}\" is not a phone number in E.164 form (+ \
                             and 7 to 15 digits, as +15551234567)"
                        ),
                    ));
                }
                Some(SmsConfig {
                    url,
                    account: m.account.get_ref().clone(),
                    token_file: m.token_file.clone(),
                    from: from.clone(),
                    to: m.to.get_ref().clone(),
                    min_severity: m
                        .min_severity
                        .as_ref()
                        .map(|l| level(l, "alerts.sms: min_severity"))
                        .transpose()?
                        .unwrap_or(Level::High),
                    timeout: dur(&m.timeout, "alerts.sms: timeout", Duration::from_secs(10))?,
                    retries: m.retries.unwrap_or(3),
                })
            }
            None => None,
        };
        let mut thresholds = Vec::new();
        for t in &ra.threshold {
            let name = t.name.get_ref().clone();
            if t.above.is_some() == t.below.is_some() {
                return Err(err(
                    t.name.span().start,
                    format!("alerts.threshold {name}: give exactly one of `above` or `below`"),
                ));
            }
            if !t.metric.starts_with("netmon_") {
                return Err(err(
                    t.name.span().start,
                    format!(
                        "alerts.threshold {name}: metric `{}` is not a netmon metric",
                        t.metric
                    ),
                ));
            }
            thresholds.push(ThresholdRule {
                metric: t.metric.clone(),
                labels: t.labels.clone(),
                rate: t.rate,
                above: t.above,
                below: t.below,
                for_: dur(
                    &t.for_,
                    &format!("alerts.threshold {name}: for"),
                    Duration::from_secs(60),
                )?,
                severity: t
                    .severity
                    .as_ref()
                    .map(|l| level(l, "alerts.threshold: severity"))
                    .transpose()?
                    .unwrap_or(Level::Medium),
                name,
            });
        }
        let alerts = AlertsConfig {
            log: ra.log.clone(),
            log_max_bytes: ra.log_max_bytes.unwrap_or(da.log_max_bytes).max(4096),
            log_keep: ra.log_keep.unwrap_or(da.log_keep),
            log_max_age: match &ra.log_max_age {
                None => None,
                Some(v) => {
                    let age = dur(&ra.log_max_age, "alerts.log_max_age", Duration::ZERO)?;
                    if age < Duration::from_secs(60) {
                        return Err(err(
                            v.span().start,
                            "alerts.log_max_age: at least 1m".into(),
                        ));
                    }
                    Some(age)
                }
            },
            dedup: dur(&ra.dedup, "alerts.dedup", da.dedup)?,
            max_per_key_per_hour: ra.max_per_key_per_hour.unwrap_or(da.max_per_key_per_hour),
            min_severity: ra
                .min_severity
                .as_ref()
                .map(|l| level(l, "alerts.min_severity"))
                .transpose()?
                .unwrap_or(da.min_severity),
            webhook,
            syslog,
            email,
            sms,
            thresholds,
        };
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
            api_port: None,
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
            feeds,
            geoip: raw.geoip,
            response: ResponseConfig {
                dry_run: rr.dry_run,
                max_bans_per_minute: rr.max_bans_per_minute.unwrap_or(10),
                allow,
                policy,
            },
            alerts,
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
    fn feeds_response_and_alerts_sections() {
        let c = ThreatConfig::parse(
            r#"
geoip = ["/var/lib/GeoIP/country.mmdb"]
[[feeds]]
name = "drop"
url = "https://feeds.example/drop.txt"
refresh = "30m"
[[feeds]]
name = "local"
path = "/etc/netmon/bad.netset"
[response]
dry_run = true
max_bans_per_minute = 3
allow = ["10.0.0.0/8", "2001:db8::/32"]
[[response.policy]]
level = "high"
kinds = ["port_scan"]
actions = ["alert", "ban", "ratelimit"]
ban_ttl = "2h"
rate_pps = 5
[alerts]
dedup = "1m"
min_severity = "medium"
[alerts.webhook]
url = "http://127.0.0.1:9/hook"
[alerts.syslog]
address = "unix:///dev/log"
[alerts.email]
server = "127.0.0.1:25"
from = "a@b"
to = ["c@d"]
[[alerts.threshold]]
name = "rx"
metric = "netmon_interface_bytes_total"
labels = { interface = "eth0" }
rate = true
above = 1e6
for = "10s"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.feeds.len(), 2);
        assert_eq!(c.feeds[0].refresh, Duration::from_secs(1800));
        assert_eq!(c.feeds[1].refresh, Duration::from_secs(3600));
        assert_eq!(c.feeds[1].decl, "t.toml:8");
        assert!(c.response.dry_run);
        assert_eq!(c.response.allow.len(), 2);
        let p = &c.response.policy[0];
        assert_eq!(p.actions, vec![Action::Ban, Action::RateLimit]);
        assert_eq!(
            (p.ban_ttl, p.rate),
            (
                Duration::from_secs(7200),
                Rate::Packets { pps: 5, burst: 5 }
            )
        );
        let c2 = ThreatConfig::parse(
            "[[response.policy]]\nkinds = [\"syn_flood\"]\nactions = [\"ratelimit\"]\n\
             rate_bandwidth = \"2.5mbit\"\n[[response.policy]]\nkinds = [\"port_scan\"]\n\
             actions = [\"ratelimit\"]\nrate_bandwidth = \"1gbit/s\"\nrate_burst_bytes = 9000\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c2.response
                .policy
                .iter()
                .map(|p| p.rate)
                .collect::<Vec<_>>(),
            vec![
                Rate::Bytes {
                    bytes_per_sec: 312_500,
                    burst_bytes: 31_250
                },
                Rate::Bytes {
                    bytes_per_sec: 125_000_000,
                    burst_bytes: 9_000
                }
            ]
        );
        assert_eq!(c.alerts.min_severity, Level::Medium);
        assert_eq!(c.alerts.webhook.as_ref().unwrap().retries, 5);
        assert_eq!(
            c.alerts.syslog.as_ref().unwrap().target,
            SyslogTarget::Unix("/dev/log".into())
        );
        assert_eq!(c.alerts.email.as_ref().unwrap().min_severity, Level::High);
        assert_eq!(c.alerts.email.as_ref().unwrap().tls, EmailTls::None);
        assert_eq!(c.alerts.thresholds[0].for_, Duration::from_secs(10));
        let c = ThreatConfig::parse(
            "[alerts.syslog]\naddress = \"tls://siem.example:6514\"\nca_file = \"/ca.pem\"\n",
            "t.toml",
        )
        .unwrap();
        let sl = c.alerts.syslog.unwrap();
        assert_eq!(
            (sl.target, sl.ca_file),
            (
                SyslogTarget::Tls("siem.example:6514".into()),
                Some("/ca.pem".into())
            )
        );
        let c = ThreatConfig::parse(
            "[alerts.email]\nserver = \"h:587\"\nfrom = \"a\"\nto = [\"b\"]\n\
             tls = \"starttls\"\nusername = \"u\"\npassword_file = \"/p\"\n",
            "t.toml",
        )
        .unwrap();
        let e = c.alerts.email.unwrap();
        assert_eq!(
            (e.tls, e.username.as_deref(), e.password_file, e.ca_file),
            (EmailTls::Starttls, Some("u"), Some("/p".into()), None)
        );
        let sms = |url: &str, from: &str| {
            ThreatConfig::parse(
                &format!(
                    "[alerts.sms]\nurl = \"{url}\"\naccount = \"AC1\"\n\
                     token_file = \"/etc/netmon/sms-token\"\nfrom = \"{from}\"\n\
                     to = [\"+15550100001\"]\n"
                ),
                "t.toml",
            )
            .unwrap()
            .alerts
            .sms
            .unwrap()
        };
        let m = sms(
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json",
            "NETMON",
        );
        assert_eq!(
            (m.min_severity, m.retries, m.timeout, m.to),
            (
                Level::High,
                3,
                Duration::from_secs(10),
                vec!["+15550100001".to_string()]
            )
        );
        // Plain http only to this host's loopback.
        for url in [
            "http://127.0.0.1:8080/sms",
            "http://[::1]/sms",
            "http://localhost/x",
        ] {
            assert_eq!(sms(url, "+15550100000").url, url);
        }
    }

    #[test]
    fn bad_response_and_alert_settings_name_the_line() {
        for (text, line, what) in [
            (
                "[[feeds]]\nname = \"x\"\n",
                2,
                "exactly one of `path` or `url`",
            ),
            (
                "[[feeds]]\nname = \"x\"\nurl = \"ftp://x\"\n",
                3,
                "not http",
            ),
            ("[response]\nallow = [\"10.0.0.1/8\"]\n", 2, "host bits"),
            (
                "[[response.policy]]\nactions = [\"ban\"]\n",
                2,
                "give `level` or `kinds`",
            ),
            (
                "[[response.policy]]\nkinds = [\"portscan\"]\nactions = []\n",
                2,
                "portscan",
            ),
            (
                "[[response.policy]]\nkinds = [\"threshold\"]\nactions = []\n",
                2,
                "name no remote",
            ),
            (
                "[[response.policy]]\nlevel = \"high\"\nban_ttl = \"1y\"\nactions = []\n",
                3,
                "unit",
            ),
            (
                "[[response.policy]]\nlevel = \"high\"\nactions = []\nrate_pps = 5\n\
                 rate_bandwidth = \"1mbit\"\n",
                5,
                "not both",
            ),
            (
                "[[response.policy]]\nlevel = \"high\"\nactions = []\nrate_bandwidth = \"1mb\"\n",
                4,
                "unknown unit \"mb\"",
            ),
            (
                "[[response.policy]]\nlevel = \"high\"\nactions = []\nrate_bandwidth = \"1kbit\"\n",
                4,
                "from 8kbit",
            ),
            (
                "[[response.policy]]\nlevel = \"high\"\nactions = []\n\
                 rate_bandwidth = \"1mbit\"\nrate_burst_bytes = 100\n",
                5,
                "at least 1514 bytes",
            ),
            (
                "[[response.policy]]\nlevel = \"high\"\nactions = []\nrate_burst_bytes = 9000\n",
                4,
                "give rate_bandwidth too",
            ),
            (
                "[alerts.syslog]\naddress = \"127.0.0.1:514\"\n",
                2,
                "udp://",
            ),
            (
                "[alerts.webhook]\nurl = \"http://siem.example/hook\"\n\
                 authorization_file = \"/etc/netmon/auth\"\n",
                2,
                "in the clear",
            ),
            (
                "[alerts.syslog]\naddress = \"tcp://h:514\"\nca_file = \"/ca.pem\"\n",
                3,
                "ca_file is for a tls:// address",
            ),
            ("[alerts]\nwebhok = 1\n", 2, "webhok"),
            (
                "[[alerts.threshold]]\nname = \"t\"\nmetric = \"netmon_x\"\n",
                2,
                "exactly one of `above` or `below`",
            ),
            (
                "[alerts.email]\nserver = \"h:25\"\nfrom = \"a\"\nto = []\n",
                4,
                "no recipient",
            ),
            (
                "[alerts.email]\nserver = \"h:25\"\nfrom = \"a\"\nto = [\"b\"]\ntls = \"ssl\"\n",
                5,
                "\"starttls\" (port 587) or \"tls\" (port 465)",
            ),
            (
                "[alerts.email]\nserver = \"h:25\"\nfrom = \"a\"\nto = [\"b\"]\n\
                 username = \"u\"\npassword_file = \"/p\"\n",
                5,
                "never sent in the clear",
            ),
            (
                "[alerts.email]\nserver = \"h:587\"\nfrom = \"a\"\nto = [\"b\"]\n\
                 tls = \"starttls\"\nusername = \"u\"\n",
                6,
                "needs `password_file`",
            ),
            (
                "[alerts.sms]\nurl = \"http://gw.example/sms\"\naccount = \"a\"\n\
                 token_file = \"/t\"\nfrom = \"+15550100000\"\nto = [\"+15550100001\"]\n",
                2,
                "never sent in the clear",
            ),
            (
                "[alerts.sms]\nurl = \"https://gw.example/sms\"\naccount = \"a\"\n\
                 token_file = \"/t\"\nfrom = \"+1555\"\nto = [\"+15550100001\"]\n",
                5,
                "E.164",
            ),
            (
                "[alerts.sms]\nurl = \"https://gw.example/sms\"\naccount = \"a\"\n\
                 token_file = \"/t\"\nfrom = \"netmon\"\nto = [\"5550100001\"]\n",
                6,
                "\"5550100001\" is not a phone number",
            ),
            (
                "[alerts.sms]\nurl = \"https://gw.example/sms\"\naccount = \"a:b\"\n\
                 token_file = \"/t\"\nfrom = \"netmon\"\nto = [\"+15550100001\"]\n",
                3,
                "holds a `:`",
            ),
        ] {
            let e = ThreatConfig::parse(text, "t.toml").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("t.toml:{line}:")) && e.contains(what),
                "{text:?}: {e}"
            );
        }
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
