//! Stage 5a: Prometheus metrics. Counters follow the kernel's cumulative totals (incremented
//! by each drain's delta); labels are bounded: interface, direction, command name, counter
//! kind, never a PID or a flow.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub iface_bytes: IntCounterVec,
    pub iface_packets: IntCounterVec,
    pub proc_bytes: IntCounterVec,
    pub proc_packets: IntCounterVec,
    pub flows_active: IntGauge,
    pub kernel_events: IntCounterVec,
    pub flow_evictions: IntCounter,
    pub flows_expired: IntCounter,
    pub map_entries: IntGaugeVec,
    pub map_capacity: IntGaugeVec,
    pub hook_info: IntGaugeVec,
    pub drain_seconds: Histogram,
    pub build_info: IntGaugeVec,
    pub dropped_packets: IntCounterVec,
    pub dropped_bytes: IntCounterVec,
    pub banlist_entries: IntGaugeVec,
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
                    "Flows the kernel's LRU evicted from a full flow map before they expired.",
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
            hook_info: gv(
                "netmon_hook_info",
                "Kernel hooks: 1 when active, 0 when unavailable.",
                &["purpose", "kind", "target"],
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
                "Drop-list entries in force (kind: exact, prefix, allow).",
                &["family", "kind"],
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
