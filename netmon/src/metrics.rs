//! Stage 5a: Prometheus metrics. Counters follow the kernel's cumulative totals (incremented
//! by each drain's delta); labels are bounded: interface, direction, protocol, counter kind,
//! and a command name for at most `top_k` processes (the rest are `process="other"`), and a
//! cgroup path for at most `top_k` cgroups likewise, never a PID or a flow. Per-flow detail
//! is in the JSON API.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use prometheus::{
    CounterVec, Encoder as _, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Command names with their own series unless configured otherwise.
pub const DEFAULT_PROCESS_TOP_K: usize = 20;
/// The `process` (or `cgroup`) label of everything beyond the top K.
pub const OTHER_PROCESS: &str = "other";

/// How process (and cgroup) series are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesConfig {
    /// At most this many command names (and as many cgroups) have series of their own.
    pub top_k: usize,
    /// A name's series are removed after it moved no traffic for this long.
    pub ttl: Duration,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        Self {
            top_k: DEFAULT_PROCESS_TOP_K,
            ttl: Duration::from_secs(600),
        }
    }
}

/// Which command names (or cgroup paths) have series of their own. A name keeps its slot
/// while it moves traffic (so its counters stay monotonic) and loses it after `ttl` of
/// silence; a new name takes a free slot, or is counted in `process="other"` (`cgroup=
/// "other"`) while all K are taken. So the K slots go to the first names to move traffic,
/// and a busy newcomer gets one as soon as an idle name's series expire.
#[derive(Debug)]
pub struct NamedSeries {
    cfg: SeriesConfig,
    named: HashMap<String, Instant>,
    /// Whose series: the byte and packet counters (by name and direction) and the TCP
    /// retransmission counter (by name) they go to.
    counters: fn(&Metrics) -> [&IntCounterVec; 3],
}

impl NamedSeries {
    /// Series per command name: `netmon_process_{bytes,packets,tcp_retransmits}_total`.
    pub fn processes(cfg: SeriesConfig) -> Self {
        Self::new(cfg, |m| {
            [&m.proc_bytes, &m.proc_packets, &m.proc_retransmits]
        })
    }

    /// Series per cgroup path: `netmon_cgroup_{bytes,packets,tcp_retransmits}_total`.
    pub fn cgroups(cfg: SeriesConfig) -> Self {
        Self::new(cfg, |m| {
            [&m.cgroup_bytes, &m.cgroup_packets, &m.cgroup_retransmits]
        })
    }

    fn new(cfg: SeriesConfig, counters: fn(&Metrics) -> [&IntCounterVec; 3]) -> Self {
        Self {
            cfg,
            named: HashMap::new(),
            counters,
        }
    }

    /// Adds one tick's per-name deltas `(name, [rx_bytes, tx_bytes, rx_packets, tx_packets,
    /// tcp_retransmits])` to the counters, then removes the series of names silent for
    /// longer than the TTL.
    pub fn apply<'a>(
        &mut self,
        m: &Metrics,
        deltas: impl IntoIterator<Item = (&'a str, [u64; 5])>,
        now: Instant,
    ) {
        let [bytes, packets, retransmits] = (self.counters)(m);
        for (name, d) in deltas {
            if d == [0; 5] {
                continue;
            }
            let [rxb, txb, rxp, txp, retrans] = d;
            let label = if let Some(seen) = self.named.get_mut(name) {
                *seen = now;
                name
            } else if self.named.len() < self.cfg.top_k && name != OTHER_PROCESS {
                self.named.insert(name.to_string(), now);
                name
            } else {
                OTHER_PROCESS
            };
            for (dir, b, p) in [("rx", rxb, rxp), ("tx", txb, txp)] {
                bytes.with_label_values(&[label, dir]).inc_by(b);
                packets.with_label_values(&[label, dir]).inc_by(p);
            }
            // Present (at 0) for every name with traffic, so that a dashboard shows a
            // process that loses nothing as such.
            retransmits.with_label_values(&[label]).inc_by(retrans);
        }
        let ttl = self.cfg.ttl;
        self.named.retain(|name, seen| {
            let keep = now.duration_since(*seen) <= ttl;
            if !keep {
                for dir in ["rx", "tx"] {
                    let _ = bytes.remove_label_values(&[name, dir]);
                    let _ = packets.remove_label_values(&[name, dir]);
                }
                let _ = retransmits.remove_label_values(&[name]);
            }
            keep
        });
    }

    /// Names that currently have series of their own.
    pub fn named(&self) -> usize {
        self.named.len()
    }
}

/// Interfaces (by name) that went, and when: their series stay for `ttl`, so that scrapes
/// see their last counts, and then go, unless an interface of that name came back meanwhile.
/// On a host whose containers come and go, each with a veth of its own name, series would
/// otherwise pile up without end.
#[derive(Debug)]
pub struct GoneNames {
    ttl: Duration,
    gone: HashMap<String, Instant>,
}

impl GoneNames {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            gone: HashMap::new(),
        }
    }

    /// Names in `before` but not in `after` went `now`; those in `after` are there.
    pub fn update<'a>(
        &mut self,
        before: impl IntoIterator<Item = &'a String>,
        after: &HashMap<u32, String>,
        now: Instant,
    ) {
        for name in before {
            if !after.values().any(|n| n == name) {
                self.went(name, now);
            }
        }
        for name in after.values() {
            self.back(name);
        }
    }

    /// `name` went `now` (unless it went before: its series go a TTL after the first time).
    pub fn went(&mut self, name: &str, now: Instant) {
        if !self.gone.contains_key(name) {
            self.gone.insert(name.to_string(), now);
        }
    }

    /// An interface of that name is there (again): its series stay.
    pub fn back(&mut self, name: &str) {
        self.gone.remove(name);
    }

    /// The names gone for longer than the TTL (forgotten here): their series are to go.
    pub fn expired(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        self.gone.retain(|name, since| {
            let keep = now.duration_since(*since) <= self.ttl;
            if !keep {
                out.push(name.clone());
            }
            keep
        });
        out
    }
}

/// Samples by metric family name: (labels, value) per series.
pub type Samples = HashMap<String, Vec<(Vec<(String, String)>, f64)>>;

pub struct Metrics {
    registry: Registry,
    pub iface_bytes: IntCounterVec,
    pub iface_packets: IntCounterVec,
    pub proc_bytes: IntCounterVec,
    pub proc_packets: IntCounterVec,
    pub cgroup_bytes: IntCounterVec,
    pub cgroup_packets: IntCounterVec,
    pub proc_retransmits: IntCounterVec,
    pub cgroup_retransmits: IntCounterVec,
    pub flows_active: IntGauge,
    pub kernel_events: IntCounterVec,
    pub flow_evictions: IntCounter,
    pub flows_expired: IntCounter,
    pub map_entries: IntGaugeVec,
    pub map_capacity: IntGaugeVec,
    pub map_in_use: IntGaugeVec,
    pub hook_info: IntGaugeVec,
    pub drain_seconds: Histogram,
    pub tcp_rtt: Histogram,
    pub tcp_segments: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub dropped_packets: IntCounterVec,
    pub dropped_bytes: IntCounterVec,
    pub banlist_entries: IntGaugeVec,
    pub proto_bytes: IntCounterVec,
    pub proto_packets: IntCounterVec,
    pub service_bytes: IntCounterVec,
    pub service_packets: IntCounterVec,
    pub prog_run_seconds: CounterVec,
    pub prog_runs: IntCounterVec,
    pub bpf_stats_enabled: IntGauge,
    pub scrape_seconds: Gauge,
    pub process_series: IntGauge,
    pub cgroup_series: IntGauge,
    pub iface_speed: IntGaugeVec,
    pub iface_errors: IntCounterVec,
    pub iface_drops: IntCounterVec,
    pub threats: IntCounterVec,
    pub connections_by_risk: IntGaugeVec,
    pub connections_by_country: IntGaugeVec,
    pub automatic_bans: IntCounter,
    pub response_actions: IntCounterVec,
    pub notifications: IntCounterVec,
    pub feed_entries: IntGaugeVec,
    pub feed_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = Self {
            iface_bytes: cv(
                "netmon_interface_bytes_total",
                "Frame bytes seen on a monitored interface (Ethernet header included).",
                &["interface", "direction"],
            ),
            iface_packets: cv(
                "netmon_interface_packets_total",
                "Frames seen on a monitored interface.",
                &["interface", "direction"],
            ),
            proc_bytes: cv(
                "netmon_process_bytes_total",
                "Frame bytes of flows owned by processes with this command name.",
                &["process", "direction"],
            ),
            proc_packets: cv(
                "netmon_process_packets_total",
                "Frames of flows owned by processes with this command name.",
                &["process", "direction"],
            ),
            cgroup_bytes: cv(
                "netmon_cgroup_bytes_total",
                "Frame bytes of flows owned by processes in this cgroup (v2 path: a systemd \
                 unit, a container, a pod).",
                &["cgroup", "direction"],
            ),
            cgroup_packets: cv(
                "netmon_cgroup_packets_total",
                "Frames of flows owned by processes in this cgroup.",
                &["cgroup", "direction"],
            ),
            proc_retransmits: cv(
                "netmon_process_tcp_retransmits_total",
                "TCP segments sent again by sockets of processes with this command name \
                 (tcp:tcp_retransmit_skb).",
                &["process"],
            ),
            cgroup_retransmits: cv(
                "netmon_cgroup_tcp_retransmits_total",
                "TCP segments sent again by sockets of processes in this cgroup.",
                &["cgroup"],
            ),
            flows_active: reg(
                &r,
                IntGauge::new(
                    "netmon_flows_active",
                    "Flows (interface, direction, 5-tuple) currently in the kernel flow map.",
                )
                .expect("valid metric"),
            ),
            kernel_events: cv(
                "netmon_kernel_events_total",
                "Kernel-side events: parse failures, map-full inserts, probe read failures...",
                &["event"],
            ),
            flow_evictions: reg(
                &r,
                IntCounter::new(
                    "netmon_flow_evictions_total",
                    "Flows evicted in the kernel before they expired: by the LRU from a full flow map, or from a full bucket of a per-CPU flow table (their counts kept).",
                )
                .expect("valid metric"),
            ),
            flows_expired: reg(
                &r,
                IntCounter::new(
                    "netmon_flows_expired_total",
                    "Flows removed by the daemon after their idle timeout.",
                )
                .expect("valid metric"),
            ),
            map_entries: gv("netmon_map_entries", "Entries in a kernel map.", &["map"]),
            map_capacity: gv(
                "netmon_map_capacity",
                "max_entries of a kernel map.",
                &["map"],
            ),
            map_in_use: gv(
                "netmon_map_in_use",
                "Slots of a per-CPU flow table its programs use now, summed over CPUs: each \
                 CPU's part grows with its flows, up to its share of netmon_map_capacity.",
                &["map"],
            ),
            hook_info: gv(
                "netmon_hook_info",
                "Kernel hooks: 1 when active, 0 when unavailable.",
                &["purpose", "kind", "target"],
            ),
            tcp_rtt: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "netmon_tcp_rtt_seconds",
                        "Smoothed round-trip time of this host's established TCP connections, \
                         as TCP measures it, each connection observed every tenth drain.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("valid metric"),
            ),
            tcp_segments: cv(
                "netmon_tcp_segments_total",
                "TCP segments this host's network namespace sent (kind=\"sent\") and sent \
                 again (kind=\"retransmitted\"), from the kernel's own counters.",
                &["kind"],
            ),
            drain_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "netmon_drain_duration_seconds",
                        "Time to read the kernel maps and update all aggregates, per tick.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            build_info: gv(
                "netmon_build_info",
                "Always 1; the version label says which netmon is running.",
                &["version"],
            ),
            dropped_packets: cv(
                "netmon_dropped_packets_total",
                "Packets the drop list dropped in the kernel (reason: manual, import, auto).",
                &["interface", "direction", "reason"],
            ),
            dropped_bytes: cv(
                "netmon_dropped_bytes_total",
                "Frame bytes the drop list dropped in the kernel.",
                &["interface", "direction", "reason"],
            ),
            banlist_entries: gv(
                "netmon_banlist_entries",
                "Drop-list entries in force (kind: exact, prefix, allow, limit).",
                &["family", "kind"],
            ),
            proto_bytes: cv(
                "netmon_protocol_bytes_total",
                "Frame bytes of IP traffic per transport protocol (TCP, UDP, ICMP, ICMPv6, or \
                 the protocol number).",
                &["protocol", "direction"],
            ),
            proto_packets: cv(
                "netmon_protocol_packets_total",
                "Frames of IP traffic per transport protocol.",
                &["protocol", "direction"],
            ),
            service_bytes: cv(
                "netmon_service_bytes_total",
                "Frame bytes of TCP and UDP traffic per application protocol, by the \
                 connection's well-known port (http, https, ssh, dns...; other).",
                &["service", "direction"],
            ),
            service_packets: cv(
                "netmon_service_packets_total",
                "Frames of TCP and UDP traffic per application protocol.",
                &["service", "direction"],
            ),
            prog_run_seconds: reg(
                &r,
                CounterVec::new(
                    Opts::new(
                        "netmon_program_run_time_seconds_total",
                        "CPU time the kernel spent in netmon's BPF programs (from the kernel's \
                         own accounting; present while sysctl kernel.bpf_stats_enabled=1).",
                    ),
                    &["program"],
                )
                .expect("valid metric"),
            ),
            prog_runs: cv(
                "netmon_program_runs_total",
                "Runs of netmon's BPF programs (present while kernel.bpf_stats_enabled=1).",
                &["program"],
            ),
            bpf_stats_enabled: reg(
                &r,
                IntGauge::new(
                    "netmon_bpf_stats_enabled",
                    "1 when the kernel accounts BPF program run time (sysctl \
                     kernel.bpf_stats_enabled), which the program run-time metrics need.",
                )
                .expect("valid metric"),
            ),
            scrape_seconds: reg(
                &r,
                Gauge::new(
                    "netmon_scrape_duration_seconds",
                    "Time the previous /metrics request took to render.",
                )
                .expect("valid metric"),
            ),
            threats: cv(
                "netmon_threats_detected_total",
                "Attack patterns detected in traffic (port scan, host sweep, SYN flood, ...), \
                 by kind and by the severity of the remote's score when detected.",
                &["kind", "severity"],
            ),
            connections_by_risk: gv(
                "netmon_connections_by_risk",
                "Connections in the connection table by risk level.",
                &["level"],
            ),
            connections_by_country: gv(
                "netmon_connections_by_country",
                "Connections in the connection table by the remote's country (ISO 3166-1 \
                 alpha-2) as the GeoIP databases say; \"unknown\" where they do not know it \
                 (private addresses, or no --geoip database).",
                &["country"],
            ),
            automatic_bans: reg(
                &r,
                IntCounter::new(
                    "netmon_automatic_bans_total",
                    "Bans the response policy put on the drop list (not counting dry runs).",
                )
                .expect("valid metric"),
            ),
            response_actions: cv(
                "netmon_response_actions_total",
                "Automatic responses by action (ban, kill) and result (done, dry_run, \
                 allowed, rate_limited, failed, skipped).",
                &["action", "result"],
            ),
            notifications: cv(
                "netmon_notifications_total",
                "Alert notifications per sink (log, webhook, syslog, email) and result (sent, \
                 failed, suppressed, dropped).",
                &["sink", "result"],
            ),
            feed_entries: gv(
                "netmon_feed_entries",
                "Entries of a reputation feed in use (the last good copy).",
                &["feed"],
            ),
            feed_failures: cv(
                "netmon_feed_refresh_failures_total",
                "Failed refreshes of a reputation feed (the last good copy stays in use).",
                &["feed"],
            ),
            iface_speed: gv(
                "netmon_interface_speed_bytes_per_second",
                "Link speed the kernel reports for a monitored interface (absent where the \
                 driver reports none).",
                &["interface"],
            ),
            iface_errors: cv(
                "netmon_interface_errors_total",
                "Frames a monitored interface could not receive or send (the kernel's \
                 rx_errors/tx_errors of the device).",
                &["interface", "direction"],
            ),
            iface_drops: cv(
                "netmon_interface_drops_total",
                "Frames the kernel dropped on a monitored interface (rx_dropped/tx_dropped of \
                 the device; netmon's own drop-list drops are netmon_dropped_packets_total).",
                &["interface", "direction"],
            ),
            process_series: reg(
                &r,
                IntGauge::new(
                    "netmon_process_series",
                    "Command names that currently have process series of their own (at most \
                     --process-top-k).",
                )
                .expect("valid metric"),
            ),
            cgroup_series: reg(
                &r,
                IntGauge::new(
                    "netmon_cgroup_series",
                    "cgroups that currently have series of their own (at most \
                     --process-top-k).",
                )
                .expect("valid metric"),
            ),
            config_reloads: cv(
                "netmon_config_reloads_total",
                "Configuration reloads asked for with SIGHUP, by result: applied, or failed \
                 (the configuration did not load; the running one stays).",
                &["result"],
            ),
            config_last_reload_successful: reg(
                &r,
                IntGauge::new(
                    "netmon_config_last_reload_successful",
                    "0 while the configuration's last reload failed (the daemon runs with \
                     the one before), else 1.",
                )
                .expect("valid metric"),
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for kind in ["sent", "retransmitted"] {
            m.tcp_segments.with_label_values(&[kind]);
        }
        // Every kind and severity from the start, at 0, so rates have data before the first.
        for kind in crate::classify::ALERT_KINDS {
            for level in crate::classify::score::Level::ALL {
                m.threats
                    .with_label_values(&[kind, level.as_str()])
                    .inc_by(0);
            }
        }
        for result in ["applied", "failed"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for level in crate::classify::score::Level::ALL {
            m.connections_by_risk
                .with_label_values(&[level.as_str()])
                .set(0);
        }
        m
    }

    /// Every sample of the metric families in `names` as (labels, value), by family name:
    /// counters, gauges, and histograms as their sum; for threshold rules. One gather of
    /// the registry however many names.
    pub fn samples(&self, names: &[&str]) -> Samples {
        use prometheus::proto::MetricType;
        let mut out = Samples::new();
        if names.is_empty() {
            return out;
        }
        for fam in self.registry.gather() {
            if !names.contains(&fam.name()) {
                continue;
            }
            let series = out.entry(fam.name().to_string()).or_default();
            for m in fam.get_metric() {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                let v = match fam.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    MetricType::HISTOGRAM => m.get_histogram().get_sample_sum(),
                    _ => continue,
                };
                series.push((labels, v));
            }
        }
        out
    }

    /// The Prometheus text exposition of every metric; its own duration is reported by the
    /// next one.
    pub fn render(&self) -> String {
        let t0 = Instant::now();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec cannot fail");
        let text = String::from_utf8(buf).expect("the text format is UTF-8");
        self.scrape_seconds.set(t0.elapsed().as_secs_f64());
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_names_expire_after_the_ttl_unless_back() {
        let mut g = GoneNames::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let names = |list: &[(u32, &str)]| -> HashMap<u32, String> {
            list.iter().map(|(i, n)| (*i, n.to_string())).collect()
        };
        let start = names(&[(2, "eth0"), (5, "veth1"), (6, "veth2")]);
        // veth1 goes; veth2 goes and comes back under another index.
        let later = names(&[(2, "eth0"), (7, "veth2")]);
        g.update(start.values(), &later, t0);
        assert!(g.expired(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(g.expired(t0 + Duration::from_secs(11)), ["veth1"]);
        assert!(g.expired(t0 + Duration::from_secs(12)).is_empty(), "once");
        // Gone, then back within the TTL: it stays.
        let without = names(&[(2, "eth0")]);
        g.update(later.values(), &without, t0);
        g.update(without.values(), &later, t0 + Duration::from_secs(1));
        assert!(g.expired(t0 + Duration::from_secs(60)).is_empty());
    }

    /// The value of one series in a rendered exposition, or None if it is absent.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn process_series_are_bounded_to_top_k_and_expire() {
        let m = Metrics::new();
        let mut ps = NamedSeries::processes(SeriesConfig {
            top_k: 2,
            ttl: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let bytes = |name: &str| {
            format!("netmon_process_bytes_total{{direction=\"rx\",process=\"{name}\"}}")
        };
        ps.apply(
            &m,
            [
                ("a", [10, 0, 1, 0, 0]),
                ("b", [20, 0, 2, 0, 0]),
                ("c", [30, 0, 3, 0, 0]),
                ("d", [1, 0, 1, 0, 4]),
                ("a", [0, 0, 0, 0, 3]),
            ],
            t0,
        );
        let text = m.render();
        assert_eq!(value(&text, &bytes("a")), Some(10.0));
        assert_eq!(value(&text, &bytes("b")), Some(20.0));
        assert_eq!(value(&text, &bytes("c")), None, "{text}");
        assert_eq!(value(&text, &bytes("other")), Some(31.0));
        assert_eq!(ps.named(), 2);
        let retrans =
            |name: &str| format!("netmon_process_tcp_retransmits_total{{process=\"{name}\"}}");
        assert_eq!(value(&text, &retrans("a")), Some(3.0), "{text}");
        assert_eq!(value(&text, &retrans("other")), Some(4.0), "{text}");
        assert_eq!(value(&text, &retrans("b")), Some(0.0), "{text}");
        assert_eq!(value(&text, &retrans("c")), None, "{text}");

        // b keeps moving traffic, a falls silent; after the TTL a's series are gone and the
        // next newcomer takes the free slot. "other" never goes backwards.
        ps.apply(&m, [("b", [1, 0, 1, 0, 0])], t0 + Duration::from_secs(61));
        let text = m.render();
        assert_eq!(value(&text, &bytes("a")), None, "{text}");
        assert_eq!(value(&text, &retrans("a")), None, "{text}");
        assert_eq!(value(&text, &bytes("b")), Some(21.0));
        ps.apply(&m, [("c", [5, 0, 1, 0, 0])], t0 + Duration::from_secs(62));
        let text = m.render();
        assert_eq!(value(&text, &bytes("c")), Some(5.0));
        assert_eq!(value(&text, &bytes("other")), Some(31.0));
        // A process literally named "other" is never given a slot of its own.
        let mut ps = NamedSeries::processes(SeriesConfig::default());
        ps.apply(&m, [("other", [1, 0, 1, 0, 0])], t0);
        assert_eq!(ps.named(), 0);
    }

    #[test]
    fn required_names_and_help() {
        let m = Metrics::new();
        m.iface_bytes.with_label_values(&["eth0", "rx"]).inc_by(10);
        m.iface_packets.with_label_values(&["eth0", "rx"]).inc();
        m.proc_bytes.with_label_values(&["curl", "tx"]).inc_by(5);
        m.proc_packets.with_label_values(&["curl", "tx"]).inc();
        m.kernel_events.with_label_values(&["fragment"]).inc();
        m.map_entries.with_label_values(&["flows"]).set(1);
        m.map_capacity.with_label_values(&["flows"]).set(2);
        m.hook_info
            .with_label_values(&["ingress", "xdp-driver", "eth0"])
            .set(1);
        let text = m.render();
        for needle in [
            "netmon_interface_bytes_total{direction=\"rx\",interface=\"eth0\"} 10",
            "netmon_interface_packets_total{direction=\"rx\",interface=\"eth0\"} 1",
            "netmon_process_bytes_total{direction=\"tx\",process=\"curl\"} 5",
            "netmon_flows_active 0",
            "netmon_kernel_events_total{event=\"fragment\"} 1",
            "netmon_flow_evictions_total 0",
            "netmon_map_capacity{map=\"flows\"} 2",
            "# HELP netmon_interface_bytes_total ",
            "# TYPE netmon_interface_bytes_total counter",
            "netmon_drain_duration_seconds_bucket",
            "netmon_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
