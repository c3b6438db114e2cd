//! `netmon run`: attach, then drain -> aggregate -> expose every interval until shutdown;
//! on shutdown every program is detached (dropping `Attached` closes every link).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use netmon_common::{
    DIR_EGRESS, DIR_INGRESS, IPPROTO_TCP, IPPROTO_UDP, PortKey, ProcInfo, ban_kind, counter,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    act::{commands::DropList, droplist::DropMaps, state::now_ms},
    aggregate::Owner,
    api::{self, InterfaceStats, MapUsage, NetworkStats, Shared, Status},
    config::RunConfig,
    drain::{Maps, monotonic_ns},
    load::{self, LoadOptions, iface},
};

fn dir_label(direction: u8) -> &'static str {
    if direction == DIR_INGRESS { "rx" } else { "tx" }
}

/// What a Prometheus counter that follows a kernel total gains when the total goes from
/// `prev` (None: first seen) to `now`: all of it at first, so the counter starts equal to
/// the kernel's; all of `now` again when the total went back (the device was recreated
/// under the same name and counts from zero), never a negative step.
fn counter_step(prev: Option<u64>, now: u64) -> u64 {
    match prev {
        Some(p) if now >= p => now - p,
        _ => now,
    }
}

/// A monitored interface's traffic since the daemon attached to it, from the device's own
/// counters (`ip -s link`'s; netmon's programs count flows, not interfaces).
#[derive(Debug, Default)]
struct IfaceTraffic {
    /// rx bytes, rx packets, tx bytes, tx packets at the last reading: the baseline, at
    /// the start.
    last: Option<[u64; 4]>,
    /// The same since the baseline.
    total: [u64; 4],
}

impl IfaceTraffic {
    /// The baseline of interface `name` (none where its counters cannot be read: then the
    /// first reading is).
    fn start(name: &str) -> Self {
        let mut t = Self::default();
        t.read(iface::link_facts(name).counters.as_ref());
        t
    }

    /// Adds what the device's counters moved since the last reading (a counter that went
    /// back was reset, the device created again: all of its value is new), and returns it,
    /// in `total`'s order (all zero for the baseline, or an unreadable device).
    fn read(&mut self, counters: Option<&iface::DevCounters>) -> [u64; 4] {
        let mut step = [0; 4];
        let Some(c) = counters else { return step };
        let now = [c.rx_bytes, c.rx_packets, c.tx_bytes, c.tx_packets];
        if let Some(last) = self.last {
            for (i, (last, now)) in last.into_iter().zip(now).enumerate() {
                step[i] = counter_step(Some(last), now);
                self.total[i] += step[i];
            }
        }
        self.last = Some(now);
        step
    }
}

/// The drop list, as the daemon follows it: the kernel maps its programs use, the state
/// file (re-read when the CLI changes it), and the counters last exported. It runs on its
/// own thread: expiring bans or re-reading a 100,000-entry list must not delay the drain.
struct Drops {
    list: DropList,
    maps: DropMaps,
    state: crate::act::state::State,
    state_mtime: Option<std::time::SystemTime>,
    prev: HashMap<netmon_common::DropKey, (u64, u64)>,
    counts: std::collections::BTreeMap<(&'static str, &'static str), i64>,
    /// The monitored interfaces at the last tick, by ifindex: those the drop series are
    /// exported for.
    names: Arc<HashMap<u32, String>>,
    /// Those of them that went: their series go after the series TTL.
    gone: crate::metrics::GoneNames,
}

impl Drops {
    fn mtime(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.list.state_path())
            .and_then(|m| m.modified())
            .ok()
    }

    /// Runs `tick` after every drain (each message on `ticks`: the monitored interfaces
    /// then) until the drain loop drops its sender. A drain that finds the thread still busy
    /// does not queue another tick.
    fn spawn(
        mut self,
        shared: Arc<Shared>,
        ticks: std::sync::mpsc::Receiver<Arc<HashMap<u32, String>>>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("netmon-droplist".into())
            .spawn(move || {
                while let Ok(names) = ticks.recv() {
                    self.tick(&shared.metrics, names);
                }
            })
    }

    /// Expires bans whose TTL passed, re-reads a changed state file, exports the metrics
    /// of the interfaces monitored now (`names`), forgets those of interfaces gone.
    fn tick(&mut self, m: &crate::metrics::Metrics, names: Arc<HashMap<u32, String>>) {
        if self.state.next_expiry().is_some_and(|e| e <= now_ms()) {
            match self.list.expire(&mut self.maps) {
                Ok(gone) => {
                    for n in gone {
                        info!("drop-list entry {n} expired and was removed");
                    }
                }
                Err(e) => warn!("expiring bans: {e:#}"),
            }
        }
        let mtime = self.mtime();
        if mtime != self.state_mtime {
            match self.list.load_state() {
                Ok(s) => {
                    self.state = s;
                    self.state_mtime = mtime;
                    self.counts = entry_counts(&self.state, now_ms());
                }
                Err(e) => warn!("re-reading the drop list: {e:#}"),
            }
        }
        let before = std::mem::replace(&mut self.names, names);
        let names = &self.names;
        let now = Instant::now();
        self.gone.update(before.values(), names, now);
        for name in self.gone.expired(now) {
            for dir in [DIR_INGRESS, DIR_EGRESS] {
                for reason in ban_kind::NAMES {
                    let labels = [name.as_str(), dir_label(dir), reason];
                    let _ = m.dropped_packets.remove_label_values(&labels);
                    let _ = m.dropped_bytes.remove_label_values(&labels);
                }
            }
        }
        // Every (interface, direction, reason) series exists from the start, at 0, so that
        // rate() and dashboards have data before the first drop.
        for name in names.values() {
            for dir in [DIR_INGRESS, DIR_EGRESS] {
                for reason in ban_kind::NAMES {
                    let labels = [name.as_str(), dir_label(dir), reason];
                    m.dropped_packets.with_label_values(&labels).inc_by(0);
                    m.dropped_bytes.with_label_values(&labels).inc_by(0);
                }
            }
        }
        let drops = self.maps.drops().unwrap_or_else(|e| {
            warn!("reading the drop counters: {e:#}");
            Vec::new()
        });
        // Interfaces whose kernel counts go: gone since the last tick (after their last
        // drops are exported), or before it (no daemon of this pin directory saw them go).
        let mut forget = std::collections::BTreeSet::new();
        for (k, s) in drops {
            let Some(name) = names.get(&k.ifindex).or_else(|| before.get(&k.ifindex)) else {
                // Not monitored here (another instance's interface, one of a run with other
                // interfaces): not exported, and left alone while it exists.
                if iface::index_gone(k.ifindex) {
                    forget.insert(k.ifindex);
                }
                continue;
            };
            if !names.contains_key(&k.ifindex) {
                forget.insert(k.ifindex);
            }
            let reason = ban_kind::NAMES
                .get(k.kind as usize)
                .copied()
                .unwrap_or("other");
            let labels = [name.as_str(), dir_label(k.direction), reason];
            let prev = self.prev.entry(k).or_default();
            m.dropped_packets
                .with_label_values(&labels)
                .inc_by(s.packets.saturating_sub(prev.0));
            m.dropped_bytes
                .with_label_values(&labels)
                .inc_by(s.bytes.saturating_sub(prev.1));
            *prev = (s.packets, s.bytes);
        }
        for ifindex in forget {
            match self.maps.forget_drops(ifindex) {
                Ok(()) => self.prev.retain(|k, _| k.ifindex != ifindex),
                Err(e) => warn!("forgetting the drops of a gone interface: {e:#}"),
            }
        }
        if self.state.next_expiry().is_some_and(|e| e <= now_ms()) {
            // Expired in the kernel already, not yet removed from the state file.
            self.counts = entry_counts(&self.state, now_ms());
        }
        for ((fam, kind), n) in &self.counts {
            m.banlist_entries.with_label_values(&[fam, kind]).set(*n);
        }
        let capacity = self.maps.capacity();
        for (i, (map, fam, kind)) in [
            ("ban4", "ipv4", "exact"),
            ("ban6", "ipv6", "exact"),
            ("banpfx4", "ipv4", "prefix"),
            ("banpfx6", "ipv6", "prefix"),
        ]
        .into_iter()
        .enumerate()
        {
            m.map_capacity
                .with_label_values(&[map])
                .set(capacity[i] as i64);
            m.map_entries
                .with_label_values(&[map])
                .set(self.counts.get(&(fam, kind)).copied().unwrap_or(0));
        }
    }
}

/// Live entries by (family, kind) for `netmon_banlist_entries`.
fn entry_counts(
    state: &crate::act::state::State,
    now: u64,
) -> std::collections::BTreeMap<(&'static str, &'static str), i64> {
    let mut counts = std::collections::BTreeMap::new();
    for fam in ["ipv4", "ipv6"] {
        for kind in ["exact", "prefix", "allow", "limit"] {
            counts.insert((fam, kind), 0);
        }
    }
    let fam = |v4: bool| if v4 { "ipv4" } else { "ipv6" };
    for b in state.live_bans(now) {
        let kind = if b.net.is_host() { "exact" } else { "prefix" };
        *counts.entry((fam(b.net.is_v4()), kind)).or_default() += 1;
    }
    for a in &state.allows {
        *counts.entry((fam(a.net.is_v4()), "allow")).or_default() += 1;
    }
    for l in state.live_limits(now) {
        *counts.entry((fam(l.net.is_v4()), "limit")).or_default() += 1;
    }
    counts
}

/// ifindex -> name of `interfaces`.
fn monitored_names(interfaces: &[load::Monitored]) -> HashMap<u32, String> {
    interfaces
        .iter()
        .map(|i| (i.ifindex, i.name.clone()))
        .collect()
}

/// The kernel's own accounting of netmon's programs (run time and count), which it keeps only
/// while sysctl kernel.bpf_stats_enabled is 1.
#[derive(Default)]
struct ProgStats {
    prev: HashMap<String, (Duration, u64)>,
}

impl ProgStats {
    fn update(&mut self, ebpf: &aya::Ebpf, m: &crate::metrics::Metrics) {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|s| s.trim() == "1");
        m.bpf_stats_enabled.set(i64::from(enabled));
        if !enabled {
            return;
        }
        for (name, prog) in ebpf.programs() {
            // Programs this kernel did not load (the other attribution hook, benchmark
            // references) have no info.
            let Ok(info) = prog.info() else { continue };
            let (t, n) = (info.run_time(), info.run_count());
            let prev = self.prev.entry(name.to_string()).or_default();
            // A smaller value: accounting was switched off and on again; count from zero.
            let dt = t.checked_sub(prev.0).unwrap_or(t);
            let dn = n.checked_sub(prev.1).unwrap_or(n);
            m.prog_run_seconds
                .with_label_values(&[name])
                .inc_by(dt.as_secs_f64());
            m.prog_runs.with_label_values(&[name]).inc_by(dn);
            *prev = (t, n);
        }
    }
}

/// The whole flow map is read at least this often (in drains), so that flows the kernel's
/// LRU evicted leave the table; in between, only flows that changed are read.
const FULL_SCAN_EVERY: u64 = 60;

/// Drains whose wall times `/api/status` lists (`recent_drain_seconds`).
const RECENT_DRAINS: usize = 120;

/// State the drain loop keeps between ticks.
struct Drain {
    maps: Maps,
    /// The per-CPU flow tables (`--flow-table per-cpu`); `None`: the LRU flow maps.
    tables: Option<crate::flowtab::Tables>,
    flow_bufs: crate::drain::FlowBufs,
    /// Keys taken from the dirty ring this drain.
    dirty_keys: Vec<netmon_common::FlowKey>,
    prev_dirty_lost: u64,
    /// The namespace's TCP segment counters at the last drain (sent, retransmitted).
    prev_segments: Option<(u64, u64)>,
    /// Drains that read the whole flow map.
    full_scans: u64,
    /// (classifier, table) generations the last count of connections by risk was made at.
    risk_inputs: Option<(u64, u64)>,
    /// The countries `netmon_connections_by_country` has series for.
    countries: HashMap<String, usize>,
    /// Wall times of the last RECENT_DRAINS drains, in seconds.
    recent: std::collections::VecDeque<f64>,
    last_ns: u64,
    idle_ns: u64,
    /// ifindex -> name of the monitored interfaces.
    names: HashMap<u32, String>,
    /// Those that went: their series go after the series TTL.
    gone_ifaces: crate::metrics::GoneNames,
    /// Each monitored interface's traffic since the start, by ifindex.
    traffic: HashMap<u32, IfaceTraffic>,
    /// Each interface's device error and drop counters at the last drain.
    prev_link: HashMap<u32, iface::DevCounters>,
    prev_counters: [u64; counter::COUNT as usize],
    prev_evictions: u64,
    prev_expired: u64,
    /// Wakes the drop-list thread after each drain, with the interfaces monitored then.
    housekeeping: Option<std::sync::mpsc::SyncSender<Arc<HashMap<u32, String>>>>,
    /// max_entries of the IPv4 and the IPv6 flow map.
    flow_capacity: [u32; 2],
    started: Instant,
    drains: u64,
    /// Which command names have Prometheus series of their own.
    process_series: crate::metrics::NamedSeries,
    /// Which cgroup paths do.
    cgroup_series: crate::metrics::NamedSeries,
    /// The feed and response threads, and the threat configuration in force.
    threat: crate::reload::ThreatSide,
    /// Failures already counted per feed.
    feed_failures: HashMap<String, u64>,
    /// What each TCP socket had sent again at the last drain.
    retrans: crate::aggregate::RetransCounts,
}

impl Drain {
    /// Counts `i`'s traffic from now (an interface that appeared after the start).
    fn iface_added(&mut self, i: &load::Monitored) {
        self.names.insert(i.ifindex, i.name.clone());
        self.gone_ifaces.back(&i.name);
        self.traffic.insert(i.ifindex, IfaceTraffic::start(&i.name));
    }

    /// Stops listing interface `ifindex`, which has gone (or is no longer monitored: stacked
    /// on another).
    fn iface_gone(&mut self, ifindex: u32) {
        if let Some(name) = self.names.remove(&ifindex)
            && !self.names.values().any(|n| *n == name)
        {
            self.gone_ifaces.went(&name, Instant::now());
        }
        self.traffic.remove(&ifindex);
        self.prev_link.remove(&ifindex);
    }

    /// Removes the series of interfaces gone for longer than the series TTL.
    fn expire_iface_series(&mut self, m: &crate::metrics::Metrics) {
        for name in self.gone_ifaces.expired(Instant::now()) {
            for dir in ["rx", "tx"] {
                for family in [
                    &m.iface_bytes,
                    &m.iface_packets,
                    &m.iface_errors,
                    &m.iface_drops,
                ] {
                    let _ = family.remove_label_values(&[name.as_str(), dir]);
                }
            }
        }
    }

    fn tick(&mut self, shared: &Shared, base_status: &Status) -> Result<()> {
        let t0 = Instant::now();
        let now = monotonic_ns();
        let interval_s = now.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = now;
        // Every tenth drain, the established TCP connections as sock_diag lists them, with
        // TCP's own measure of each: their round-trip times for the histogram, and their
        // retransmission counts, which can be ahead of the tracepoint's (see
        // `RetransCounts`). Listed before the table is locked: requests wait less.
        let established = if self.drains.is_multiple_of(10) {
            shared
                .sockets
                .lock()
                .expect("lock not poisoned")
                .as_mut()
                .map(crate::sockdiag::Lister::established)
                .unwrap_or_default()
        } else {
            Vec::new()
        };

        let mut table = shared.table.write().expect("lock not poisoned");
        let table = &mut *table;
        let tracker = &mut table.tracker;
        // Usually only the flows that changed since the last drain are read: the programs
        // push a flow's key to the dirty ring on its first packet of an epoch. The ring is
        // taken before the epoch advances, so no change falls between two drains. The whole
        // map is read on the first drain, every FULL_SCAN_EVERY drains (to see LRU
        // evictions), and whenever keys did not fit in the ring.
        // With the per-CPU tables, the buckets marked since the last drain are taken before
        // the epoch advances in the same way, and a flow never leaves without its eviction
        // record, so no drain needs to read everything.
        self.dirty_keys.clear();
        match &mut self.tables {
            Some(t) => t.take_marked(),
            None => self.maps.take_dirty(&mut self.dirty_keys),
        }
        self.maps.advance_epoch()?;
        let lost = self.maps.counter(counter::DIRTY_LOST);
        let cycle = self.drains.is_multiple_of(FULL_SCAN_EVERY);
        let full = self.tables.is_none() && (cycle || lost != self.prev_dirty_lost);
        self.prev_dirty_lost = lost;
        let mut st = tracker.begin_tick(interval_s);
        let maps = &self.maps;
        let mut owners = maps.owner_lookup();
        tracker.set_local(owners.local());
        // Each flow goes from the kernel straight into the table. The connection table is
        // built from it on request (api.rs), not every tick.
        if let Some(t) = &mut self.tables {
            t.drain(tracker, &mut st, |k| owners.owner(k))
                .context("reading the per-CPU flow tables")?;
            // Slots given to other flows: the kernel's evictions, as with the LRU maps (the
            // flows stay in the daemon's table until they idle out).
            tracker.evictions += t.take_evictions();
        } else {
            let mut apply = |s: &crate::aggregate::FlowSample| {
                tracker.apply_sample(&mut st, s, |k| owners.owner(k));
            };
            if full {
                maps.read_flows(&mut self.flow_bufs, &mut apply)?;
            } else {
                self.dirty_keys.sort_unstable_by_key(|k| {
                    (
                        k.ifindex,
                        k.direction,
                        k.proto,
                        k.flags,
                        k.local_addr,
                        k.remote_addr,
                        k.local_port,
                        k.remote_port,
                    )
                });
                self.dirty_keys.dedup();
                maps.read_flows_by_key(&self.dirty_keys, &mut apply);
            }
        }
        let mut out = tracker.finish_tick(st, now, self.idle_ns, full, |k| owners.owner(k));
        drop(owners);
        // Segments sent again, to the process and cgroup of the socket (looked up now: the
        // record stays while the socket lives, and a while after in the LRU map).
        let counts = maps.tcp_retransmits().unwrap_or_else(|e| {
            warn!("{e:#}");
            Default::default()
        });
        let retrans_sockets = counts.len();
        let listed: Vec<_> = established
            .iter()
            .map(|(k, q)| (*k, u64::from(q.retrans_segments)))
            .collect();
        for (key, segs) in self.retrans.deltas(counts, &listed) {
            let owner = maps.sock_owner(&key).map(Owner::from);
            tracker.credit_retransmits(&mut out, owner.as_ref(), segs, now);
        }
        {
            let mut c = shared.classifier.write().expect("lock not poisoned");
            c.set_feeds(self.threat.feeds.read().expect("lock not poisoned").clone());
            for (k, flags) in &out.new_flows {
                c.observe_new_flow(k, *flags, now);
            }
            let mut alerts = c.tick(now, now_ms());
            let raised = !alerts.is_empty();
            alerts.extend(c.check_thresholds(&shared.metrics, now, now_ms()));
            for a in alerts {
                warn!(
                    "alert: {} {}{} (score {}): {}",
                    a.severity,
                    a.kind,
                    a.remote.map(|r| format!(" from {r}")).unwrap_or_default(),
                    a.score,
                    a.detail
                );
                shared
                    .metrics
                    .threats
                    .with_label_values(&[a.kind.as_str(), a.severity.as_str()])
                    .inc();
                if let Some(p) = &self.threat.pipeline {
                    p.send(a);
                }
            }
            // Connections by risk: a pass over the whole table, so every RISK_EVERY drains
            // (a gauge scraped every 15 s or so), and at once when an alert changed a score.
            // Skipped while neither the flows, their owners nor the classifier's inputs
            // changed since the last count: with a million flows the pass costs ~100 ms.
            let inputs = (c.generation(), tracker.generation());
            if raised
                || (self.drains.is_multiple_of(RISK_EVERY) && self.risk_inputs != Some(inputs))
            {
                self.risk_inputs = Some(inputs);
                let (counts, countries) = risk_counts(&c, tracker);
                for (level, n) in crate::classify::score::Level::ALL.iter().zip(counts) {
                    shared
                        .metrics
                        .connections_by_risk
                        .with_label_values(&[level.as_str()])
                        .set(n as i64);
                }
                // A country no connection is from any more loses its series.
                let by_country = &shared.metrics.connections_by_country;
                for gone in self
                    .countries
                    .keys()
                    .filter(|k| !countries.contains_key(*k))
                {
                    let _ = by_country.remove_label_values(&[gone]);
                }
                for (cc, n) in &countries {
                    by_country.with_label_values(&[cc]).set(*n as i64);
                }
                self.countries = countries;
            }
        }
        {
            let status = shared.feed_status.read().expect("lock not poisoned");
            for f in status.iter() {
                shared
                    .metrics
                    .feed_entries
                    .with_label_values(&[&f.name])
                    .set(f.entries as i64);
                let prev = self.feed_failures.entry(f.name.clone()).or_default();
                shared
                    .metrics
                    .feed_failures
                    .with_label_values(&[&f.name])
                    .inc_by(f.failures.saturating_sub(*prev));
                *prev = f.failures;
            }
        }
        self.full_scans += u64::from(full);
        if cycle {
            // Give back what a large drain or connection-table request left free in the heap
            // (the allocator keeps it otherwise), once per full-scan cycle.
            crate::trim_heap();
        }
        // A per-CPU table's slot stays with its idle flow until a new flow needs it.
        if !out.expired.is_empty() && self.tables.is_none() {
            self.maps
                .delete_flows(&out.expired)
                .context("removing idle flows")?;
        }

        let links: Vec<(u32, String, iface::LinkFacts)> = self
            .names
            .iter()
            .map(|(&ifindex, name)| (ifindex, name.clone(), iface::link_facts(name)))
            .collect();
        let m = &shared.metrics;
        let mut ifaces = Vec::with_capacity(2 * links.len());
        for (ifindex, name, f) in &links {
            let t = self.traffic.entry(*ifindex).or_default();
            let step = t.read(f.counters.as_ref());
            let [rx_bytes, rx_packets, tx_bytes, tx_packets] = t.total;
            ifaces.push((*ifindex, DIR_INGRESS, rx_bytes, rx_packets));
            ifaces.push((*ifindex, DIR_EGRESS, tx_bytes, tx_packets));
            // The Prometheus counters gain what the totals did.
            for (dir, bytes, packets) in [
                (DIR_INGRESS, step[0], step[1]),
                (DIR_EGRESS, step[2], step[3]),
            ] {
                m.iface_bytes
                    .with_label_values(&[name.as_str(), dir_label(dir)])
                    .inc_by(bytes);
                m.iface_packets
                    .with_label_values(&[name.as_str(), dir_label(dir)])
                    .inc_by(packets);
            }
        }
        tracker.apply_ifaces(&ifaces, interval_s);
        self.expire_iface_series(m);
        let now = Instant::now();
        for (series, deltas, gauge) in [
            (
                &mut self.process_series,
                &out.proc_deltas,
                &m.process_series,
            ),
            (
                &mut self.cgroup_series,
                &out.cgroup_deltas,
                &m.cgroup_series,
            ),
        ] {
            series.apply(
                m,
                deltas.iter().map(|(name, d)| (name.as_str(), d.counts())),
                now,
            );
            gauge.set(series.named() as i64);
        }
        // One label's bytes and packets in one direction, to a pair of counter families.
        let count = |[bytes, packets]: [&prometheus::IntCounterVec; 2],
                     label: &str,
                     dir: u8,
                     (b, p): (u64, u64)| {
            bytes.with_label_values(&[label, dir_label(dir)]).inc_by(b);
            packets
                .with_label_values(&[label, dir_label(dir)])
                .inc_by(p);
        };
        for (service, d) in &out.service_deltas {
            let families = [&m.service_bytes, &m.service_packets];
            count(families, service, DIR_INGRESS, (d.rx_bytes, d.rx_packets));
            count(families, service, DIR_EGRESS, (d.tx_bytes, d.tx_packets));
        }
        for (&(proto, dir), &moved) in &out.proto_deltas {
            let name = crate::aggregate::proto_name(proto);
            count([&m.proto_bytes, &m.proto_packets], &name, dir, moved);
        }
        if let Some(tx) = &self.housekeeping {
            // Full means the thread is still on the previous tick: skip, do not queue.
            let _ = tx.try_send(Arc::new(self.names.clone()));
        }
        let counters = self.maps.read_counters();
        let mut kernel_events = std::collections::BTreeMap::new();
        for (i, name) in counter::NAMES.iter().enumerate() {
            if let Some(name) = name {
                m.kernel_events
                    .with_label_values(&[name])
                    .inc_by(counters[i].saturating_sub(self.prev_counters[i]));
                kernel_events.insert(name.to_string(), counters[i]);
            }
        }
        self.prev_counters = counters;
        m.flow_evictions
            .inc_by(tracker.evictions - self.prev_evictions);
        m.flows_expired.inc_by(tracker.expired - self.prev_expired);
        self.prev_evictions = tracker.evictions;
        self.prev_expired = tracker.expired;
        let active = tracker.flows.len();
        m.flows_active.set(active as i64);
        let (v4, v6) = tracker.flows_by_family();
        let in_use = self.tables.as_ref().map(|t| t.slots_in_use());
        let flow_maps = [
            ("flows4", v4, self.flow_capacity[0], in_use.map(|u| u[0])),
            ("flows6", v6, self.flow_capacity[1], in_use.map(|u| u[1])),
        ];
        for (map, entries, capacity, in_use) in flow_maps {
            m.map_entries.with_label_values(&[map]).set(entries as i64);
            m.map_capacity
                .with_label_values(&[map])
                .set(i64::from(capacity));
            if let Some(n) = in_use {
                m.map_in_use.with_label_values(&[map]).set(n as i64);
            }
        }
        // TCP's own quality counters: the namespace's segments sent and sent again, and,
        // every tenth drain, the round-trip time of each established connection.
        if let Some(now) = crate::sockdiag::tcp_segment_counters() {
            let prev = self.prev_segments.get_or_insert(now);
            for (kind, (new, old)) in [
                ("sent", (now.0, prev.0)),
                ("retransmitted", (now.1, prev.1)),
            ] {
                m.tcp_segments
                    .with_label_values(&[kind])
                    .inc_by(new.saturating_sub(old));
            }
            *prev = now;
        }
        for (_, q) in &established {
            m.tcp_rtt.observe(f64::from(q.rtt_us) / 1e6);
        }
        // The socket maps are counted by walking their keys: every tenth drain is enough.
        if self.drains.is_multiple_of(10) {
            for (map, entries, capacity) in self.maps.socket_map_usage() {
                m.map_entries.with_label_values(&[map]).set(entries as i64);
                m.map_capacity
                    .with_label_values(&[map])
                    .set(capacity as i64);
            }
        }

        let mut stats = NetworkStats {
            interfaces: Vec::new(),
            summary: api::Summary {
                processes: tracker.processes(),
                cgroups: tracker.cgroups(),
                services: tracker.services(),
                timestamp: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                interval_seconds: interval_s,
                ..Default::default()
            },
        };
        for (ifindex, name, f) in links {
            let t = tracker.ifaces.get(&ifindex).cloned().unwrap_or_default();
            let link_bps = f.speed * 125_000;
            if f.speed > 0 {
                m.iface_speed
                    .with_label_values(&[name.as_str()])
                    .set(link_bps as i64);
            }
            let dev = f.counters.unwrap_or_default();
            if let Some(now) = f.counters {
                let prev = self.prev_link.insert(ifindex, now);
                for (metric, dir, get) in [
                    (
                        &m.iface_errors,
                        "rx",
                        (|c| c.rx_errors) as fn(&iface::DevCounters) -> u64,
                    ),
                    (&m.iface_errors, "tx", |c| c.tx_errors),
                    (&m.iface_drops, "rx", |c| c.rx_dropped),
                    (&m.iface_drops, "tx", |c| c.tx_dropped),
                ] {
                    metric
                        .with_label_values(&[name.as_str(), dir])
                        .inc_by(counter_step(prev.as_ref().map(get), get(&now)));
                }
            }
            let utilization = |rate: f64| (f.speed > 0).then(|| rate / link_bps as f64);
            stats.summary.total_bytes_sent += t.tx_bytes;
            stats.summary.total_bytes_recv += t.rx_bytes;
            stats.summary.packets_sent += t.tx_packets;
            stats.summary.packets_recv += t.rx_packets;
            stats.interfaces.push(InterfaceStats {
                name: name.clone(),
                ifindex,
                is_up: f.is_up,
                speed: f.speed,
                mtu: f.mtu,
                bytes_sent: t.tx_bytes,
                bytes_recv: t.rx_bytes,
                packets_sent: t.tx_packets,
                packets_recv: t.rx_packets,
                errors: dev.rx_errors + dev.tx_errors,
                drops: dev.rx_dropped + dev.tx_dropped,
                errors_recv: dev.rx_errors,
                errors_sent: dev.tx_errors,
                drops_recv: dev.rx_dropped,
                drops_sent: dev.tx_dropped,
                send_rate: t.tx_bytes_rate,
                recv_rate: t.rx_bytes_rate,
                packets_sent_rate: t.tx_packets_rate,
                packets_recv_rate: t.rx_packets_rate,
                utilization_sent: utilization(t.tx_bytes_rate),
                utilization_recv: utilization(t.rx_bytes_rate),
            });
        }
        stats.interfaces.sort_by(|a, b| a.name.cmp(&b.name));

        let elapsed = t0.elapsed();
        m.drain_seconds.observe(elapsed.as_secs_f64());
        self.drains += 1;
        let mut status = base_status.clone();
        status.uptime_seconds = self.started.elapsed().as_secs_f64();
        status.maps = flow_maps
            .iter()
            .map(|&(map, entries, capacity, in_use)| MapUsage {
                name: map.into(),
                entries: entries as u64,
                capacity: u64::from(capacity),
                in_use: in_use.map(|n| n as u64),
            })
            .collect();
        // Read whole every drain anyway: full, it loses what evicted sockets sent again.
        status.maps.push(MapUsage {
            name: "tcp_retrans".into(),
            entries: retrans_sockets as u64,
            capacity: u64::from(netmon_common::TCP_RETRANS_ENTRIES),
            in_use: None,
        });
        m.map_entries
            .with_label_values(&["tcp_retrans"])
            .set(retrans_sockets as i64);
        m.map_capacity
            .with_label_values(&["tcp_retrans"])
            .set(i64::from(netmon_common::TCP_RETRANS_ENTRIES));
        status.kernel_events = kernel_events;
        status.flows_active = active as u64;
        status.flow_evictions = tracker.evictions;
        status.flows_expired = tracker.expired;
        status.last_drain_seconds = elapsed.as_secs_f64();
        if self.recent.len() == RECENT_DRAINS {
            self.recent.pop_front();
        }
        self.recent.push_back(elapsed.as_secs_f64());
        status.recent_drain_seconds = self.recent.iter().copied().collect();
        status.full_drains = self.full_scans;
        status.last_drain_full = full;
        status.drains = self.drains;
        status.threat.feeds = shared
            .feed_status
            .read()
            .expect("lock not poisoned")
            .clone();
        *shared.stats.write().expect("lock not poisoned") = stats;
        *shared.status.write().expect("lock not poisoned") = status;
        Ok(())
    }
}

/// `netmon_connections_by_risk` is recomputed every this many drains.
const RISK_EVERY: u64 = 10;

/// Connections by risk level (low, medium, high) and by the remote's country (`unknown`
/// where GeoIP does not say). A connection is its egress flow, or its ingress flow when
/// nothing went out (both directions of a tuple count once, without a set of every tuple,
/// and without a lookup per flow: see `FlowEntry::egress_twin`).
fn risk_counts(
    c: &crate::classify::Classifier,
    tracker: &crate::aggregate::Tracker,
) -> ([usize; 3], HashMap<String, usize>) {
    let mut counts = [0usize; 3];
    let mut countries: HashMap<String, usize> = HashMap::new();
    let geo = c.has_geo();
    for (k, e) in &tracker.flows {
        if k.direction == DIR_INGRESS && e.egress_twin {
            continue;
        }
        let conn = crate::classify::Conn {
            remote: crate::classify::key_ip(k.family, k.remote_addr),
            local_port: k.local_port,
            remote_port: k.remote_port,
            proto: k.proto,
            process: e.owner.as_ref().map(|o| o.comm.as_str()),
        };
        // Without a GeoIP database every country is unknown: no lookup per connection.
        let level = if geo {
            c.level_and_country(conn, |cc| {
                let cc = cc.unwrap_or("unknown");
                match countries.get_mut(cc) {
                    Some(n) => *n += 1,
                    None => {
                        countries.insert(cc.to_string(), 1);
                    }
                }
            })
        } else {
            c.level(conn)
        };
        counts[level as usize] += 1;
    }
    if !geo && counts.iter().sum::<usize>() > 0 {
        countries.insert("unknown".into(), counts.iter().sum());
    }
    (counts, countries)
}

/// Sets `netmon_hook_info` to the hooks in `hooks`, removing the series of those in `old`
/// that are no longer among them (an interface's, when it has gone).
fn publish_hooks(metrics: &crate::metrics::Metrics, old: &[load::Hook], hooks: &[load::Hook]) {
    let labels = |h: &load::Hook| [h.purpose.clone(), h.kind.clone(), h.target.clone()];
    for h in old {
        if !hooks.iter().any(|n| labels(n) == labels(h)) {
            let l = labels(h);
            let _ = metrics.hook_info.remove_label_values(&[
                l[0].as_str(),
                l[1].as_str(),
                l[2].as_str(),
            ]);
        }
    }
    for h in hooks {
        metrics
            .hook_info
            .with_label_values(&[h.purpose.as_str(), h.kind.as_str(), h.target.as_str()])
            .set(i64::from(h.active));
    }
}

/// Interfaces that come and go while the daemon runs. Without `--iface`, every interface
/// that is up and not a loopback is monitored, those that appear (or come up) later too;
/// named ones are attached again when they come back. Looked at after a drain when the
/// kernel sent a link notification since the one before.
struct InterfaceWatch {
    events: iface::LinkEvents,
    /// `--iface`'s names; empty: the default set.
    named: Vec<String>,
    /// Interfaces (name, ifindex) that could not be attached: not tried again while that
    /// name has that index.
    refused: HashSet<(String, u32)>,
    /// Not looked yet: the first look does not wait for a notification (an interface may
    /// have come between the start's and the subscription).
    first: bool,
    /// The default set's interfaces left out at the last look, as stacked on others (each
    /// said in the log when it first is).
    stacked: Vec<api::Stacked>,
}

impl InterfaceWatch {
    /// `stacked`: those the start left out (and said so).
    fn new(named: Vec<String>, stacked: Vec<api::Stacked>) -> Self {
        let events = iface::LinkEvents::open().unwrap_or_else(|e| {
            warn!(
                "cannot subscribe to link notifications ({e}): the interfaces are looked at \
                 after every drain"
            );
            iface::LinkEvents::always()
        });
        Self {
            events,
            named,
            refused: HashSet::new(),
            first: true,
            stacked,
        }
    }

    /// Forgets the monitored interfaces that have gone (their name no longer has their
    /// index) and attaches to those that are wanted and not monitored; `status` and the hook
    /// metrics follow.
    fn look(
        &mut self,
        attached: &mut load::Attached,
        drain: &mut Drain,
        status: &mut Status,
        metrics: &crate::metrics::Metrics,
    ) {
        let first = std::mem::take(&mut self.first);
        if !self.events.changed() && !first {
            return;
        }
        drain
            .maps
            .owners()
            .set_local(crate::aggregate::LocalAddrs::new(iface::local_addresses()));
        let old_hooks = attached.hooks.clone();
        let mut changed = false;
        let gone: Vec<u32> = attached
            .interfaces
            .iter()
            .filter(|i| iface::ifindex(&i.name).ok() != Some(i.ifindex))
            .map(|i| i.ifindex)
            .collect();
        // Detached, its counting stopped; its speed is no more (its counters' series stay
        // for the series TTL).
        let mut forget = |attached: &mut load::Attached, ifindex: u32| {
            let i = attached.forget_interface(ifindex)?;
            drain.iface_gone(ifindex);
            let _ = metrics.iface_speed.remove_label_values(&[i.name.as_str()]);
            changed = true;
            Some(i)
        };
        for ifindex in gone {
            if let Some(i) = forget(attached, ifindex) {
                let what = format!(
                    "interface {} (ifindex {}) is gone; monitored again if it comes back",
                    i.name, i.ifindex
                );
                // One of the default set (a container's veth) comes and goes as a matter of
                // course; one named on the command line is worth a warning.
                if self.named.is_empty() {
                    info!("{what}");
                } else {
                    warn!("{what}");
                }
            }
        }
        let wanted = if self.named.is_empty() {
            let (wanted, stacked) = iface::default_set();
            let mut now_stacked = Vec::new();
            for (name, below) in stacked {
                // Stacked since it was attached (a bridge that got a port, a bond a slave):
                // counted below it from now on.
                if let Some(i) = attached.interfaces.iter().find(|i| i.name == name) {
                    forget(attached, i.ifindex);
                }
                if !self.stacked.iter().any(|s| s.name == name) {
                    info!("{}", stacked_note(&name, &below));
                }
                now_stacked.push(api::Stacked { name, below });
            }
            status.stacked.clone_from(&now_stacked);
            self.stacked = now_stacked;
            wanted
        } else {
            self.named.clone()
        };
        for name in wanted {
            let Ok(ifindex) = iface::ifindex(&name) else {
                continue;
            };
            if attached.interfaces.iter().any(|i| i.ifindex == ifindex)
                || self.refused.contains(&(name.clone(), ifindex))
            {
                continue;
            }
            match attached.attach_interface(&name) {
                Ok(i) => {
                    info!("interface {name} (ifindex {ifindex}) appeared: monitored");
                    drain.iface_added(i);
                    changed = true;
                }
                Err(e) => {
                    warn!("interface {name} (ifindex {ifindex}) is not monitored: {e:#}");
                    self.refused.insert((name, ifindex));
                }
            }
        }
        if changed {
            status.interfaces = attached.interfaces.clone();
            status.hooks = attached.hooks.clone();
            publish_hooks(metrics, &old_hooks, &attached.hooks);
        }
    }
}

/// The log's note on an interface of the default set left out for the devices `below` it.
fn stacked_note(name: &str, below: &[String]) -> String {
    format!(
        "interface {name} is not monitored itself: its frames pass {}, below it, and are \
         counted there (monitored again if nothing below it is up)",
        below.join(", ")
    )
}

/// The drain's clock: a first tick one `interval` from now, ticks late by a slow drain
/// delayed rather than bunched.
async fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(interval);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t.tick().await;
    t
}

/// Puts a prepared reload in force (nothing here fails or waits: see `reload::Prepared`):
/// the settings that apply while running (the threat configuration, `anonymize`, the API
/// token, `interval`, `idle_timeout`) are recorded in `running`; returns the names of the
/// others that changed, which wait for a restart.
fn reload(
    running: &mut RunConfig,
    prepared: crate::reload::Prepared,
    drain: &mut Drain,
    shared: &Arc<Shared>,
) -> Vec<&'static str> {
    let crate::reload::Prepared { new, threat } = prepared;
    let later = crate::reload::restart_only_changes(running, &new);
    drain.threat.apply(&new.threat, threat, shared);
    *shared.anonymize.write().expect("lock not poisoned") = new.anonymize;
    *shared.api_token.write().expect("lock not poisoned") = new.api_token.clone();
    running.threat = new.threat;
    running.anonymize = new.anonymize;
    running.api_token = new.api_token;
    running.interval = new.interval;
    running.idle_timeout = new.idle_timeout;
    drain.idle_ns = new.idle_timeout.as_nanos() as u64;
    later
}

/// The configuration read again for a reload.
pub type Reread = Arc<dyn Fn() -> Result<RunConfig> + Send + Sync>;

/// SIGHUP's work off the drain loop: one reload made ready at a time on a thread of its
/// own (the configuration read again and what it names opened), handed to the loop, which
/// puts it in force; a SIGHUP while one is being made is taken once it is done.
struct Reloads {
    reread: Reread,
    tx: tokio::sync::mpsc::UnboundedSender<Result<crate::reload::Prepared>>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<crate::reload::Prepared>>,
    busy: bool,
    again: bool,
}

impl Reloads {
    fn new(reread: Reread) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            reread,
            tx,
            rx,
            busy: false,
            again: false,
        }
    }

    /// A SIGHUP: starts making a reload ready against `running`, or, while one is, notes
    /// that another is asked for.
    fn asked(&mut self, running: &RunConfig, shared: &Arc<Shared>) {
        if self.busy {
            self.again = true;
            return;
        }
        let (reread, tx, shared) = (self.reread.clone(), self.tx.clone(), shared.clone());
        let running = running.clone();
        let spawned = std::thread::Builder::new()
            .name("netmon-reload".into())
            .spawn(move || {
                let r =
                    reread().and_then(|new| crate::reload::Prepared::open(&running, new, &shared));
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            // Taken by the loop as a reload that failed.
            let _ = self.tx.send(Err(
                anyhow::Error::new(e).context("starting the reload thread")
            ));
        }
        self.busy = true;
    }

    /// The reload made ready has been taken: starts the one asked for meanwhile, if any.
    fn done(&mut self, running: &RunConfig, shared: &Arc<Shared>) {
        self.busy = false;
        if std::mem::take(&mut self.again) {
            self.asked(running, shared);
        }
    }
}

/// A reload made ready (or the error that stopped it) put in force (`reload`); the outcome
/// goes to the log, `/api/status` (`last_reload`) and the reload metrics.
fn on_prepared(
    prepared: Result<crate::reload::Prepared>,
    running: &mut RunConfig,
    drain: &mut Drain,
    shared: &Arc<Shared>,
    base_status: &mut Status,
) {
    let mut outcome = crate::api::ReloadStatus {
        at_ms: now_ms(),
        ..Default::default()
    };
    let later = match prepared {
        Ok(p) => {
            let later = reload(running, p, drain, shared);
            base_status.threat = drain.threat.status();
            outcome.applied = true;
            outcome.restart_needed = later.iter().map(|s| s.to_string()).collect();
            later
        }
        Err(e) => {
            outcome.error = Some(format!("{e:#}"));
            Vec::new()
        }
    };
    let ok = outcome.applied;
    let error = outcome.error.clone();
    base_status.last_reload = Some(outcome);
    {
        let mut st = shared.status.write().expect("lock not poisoned");
        st.threat = crate::api::ThreatStatus {
            feeds: shared
                .feed_status
                .read()
                .expect("lock not poisoned")
                .clone(),
            ..base_status.threat.clone()
        };
        st.last_reload = base_status.last_reload.clone();
    }
    let m = &shared.metrics;
    m.config_reloads
        .with_label_values(&[if ok { "applied" } else { "failed" }])
        .inc();
    m.config_last_reload_successful.set(i64::from(ok));
    // Logged once the status says it: a reader of the log finds the status in step.
    match error {
        None => {
            if !later.is_empty() {
                warn!(
                    "SIGHUP: {} changed; that takes a restart (netmon keeps running with the old value)",
                    later.join(", ")
                );
            }
            info!("SIGHUP: configuration reloaded");
        }
        Some(e) => warn!("SIGHUP: the configuration was not reloaded, the running one stays: {e}"),
    }
}

/// Runs the daemon until `shutdown` is cancelled. On SIGHUP it calls `reread` for the
/// configuration as the command line and its files now say, and applies it (`Reloads`).
pub async fn run(mut cfg: RunConfig, shutdown: CancellationToken, reread: Reread) -> Result<()> {
    // Installed first: from here a SIGHUP (whose default action ends the process) is a
    // reload, taken once the loop runs.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut stacked_at_start = Vec::new();
    let interfaces = if cfg.interfaces.is_empty() {
        let (found, stacked) = iface::default_set();
        for (name, below) in stacked {
            info!("{}", stacked_note(&name, &below));
            stacked_at_start.push(api::Stacked { name, below });
        }
        if found.is_empty() {
            anyhow::bail!(
                "no interface is up besides loopback; name one with --iface (have: {})",
                iface::all_names().join(", ")
            );
        }
        found
    } else {
        cfg.interfaces.clone()
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the API to {} (--listen)", cfg.listen))?;
    let listen = listener.local_addr()?;
    // Its clients' connections (Prometheus's scrapes, the CLI) score no "unusual port".
    cfg.threat.api_port = Some(listen.port());

    // The threat side's inputs are checked before anything is attached: a wrong path fails
    // the start with nothing left behind.
    let opened = crate::reload::Opened::open(&cfg.threat, &cfg.state_dir)?;
    let event_log = opened.event_log.clone();

    let list = DropList::new(&cfg.pin_dir, &cfg.state_dir);
    let mut drop_maps = None;
    let mut attached = load::load_and_attach(
        &LoadOptions {
            xdp_attach: cfg.xdp_attach,
            tc_mode: cfg.tc_mode,
            udp_hook: cfg.udp_hook,
            flow_table: cfg.flow_table,
            interfaces,
            sizes: cfg.sizes,
            run_dir: cfg.run_dir.clone(),
            pin_dir: cfg.pin_dir.clone(),
        },
        |ebpf| {
            // The persisted drop list is in the kernel before any program is attached: no
            // window without the bans after a restart or a reboot.
            let mut maps = DropMaps::from_ebpf(ebpf)?;
            maps.adopt_old_counters(&cfg.pin_dir);
            let state = list.apply_on_start(&mut maps)?;
            info!(
                "drop list applied: {} bans, {} allow entries ({})",
                state.bans.len(),
                state.allows.len(),
                list.state_path().display()
            );
            drop_maps = Some((maps, state));
            Ok(())
        },
    )?;
    // The interfaces' traffic counts from here: the device counters' baseline.
    let traffic: HashMap<u32, IfaceTraffic> = attached
        .interfaces
        .iter()
        .map(|i| (i.ifindex, IfaceTraffic::start(&i.name)))
        .collect();
    seed_socket_owners(&mut attached);
    // Taken only now: attaching still writes NETMON_CONFIG (the kprobe switch).
    let maps = match Maps::take(&mut attached.ebpf).and_then(|m| {
        let tables = match cfg.flow_table {
            load::FlowTable::PerCpu => Some(crate::flowtab::Tables::take(&mut attached.ebpf)?),
            load::FlowTable::Lru => None,
        };
        Ok((m, tables))
    }) {
        Ok(m) => m,
        Err(e) => {
            attached.detach();
            return Err(e.context("opening the kernel maps the daemon reads"));
        }
    };
    let (maps, tables) = maps;
    // Loading parsed the kernel's BTF (megabytes, freed now): give that memory back.
    crate::trim_heap();
    // Nothing below can fail before the loop, so every exit goes through detach().
    let (maps_d, state) = drop_maps.expect("before_attach ran");
    let mut drops = Drops {
        state_mtime: None,
        list,
        maps: maps_d,
        counts: entry_counts(&state, now_ms()),
        state,
        prev: HashMap::new(),
        names: Arc::new(monitored_names(&attached.interfaces)),
        gone: crate::metrics::GoneNames::new(cfg.process_series.ttl),
    };
    drops.state_mtime = drops.mtime();
    let shared = Arc::new(Shared {
        anonymize: RwLock::new(cfg.anonymize),
        api_token: RwLock::new(cfg.api_token.clone()),
        ..Shared::default()
    });
    {
        let mut c = crate::classify::Classifier::new(cfg.threat.clone());
        c.set_geo(opened.geo.clone());
        c.set_feeds(opened.feeds.clone());
        // The alerts of earlier runs, from the event log: listed again after a restart (or
        // a crash), and this run's ids follow theirs.
        let (earlier, bad) = crate::act::notify::EventLog::recent_alerts(
            &event_log,
            cfg.threat.alerts.log_keep,
            crate::classify::ALERTS_KEPT,
        );
        if bad > 0 {
            warn!(
                "event log {} (or its rotated files): {bad} lines are not readable events, skipped",
                event_log.display()
            );
        }
        if !earlier.is_empty() {
            info!(
                "{} alerts of earlier runs listed again, from {}",
                earlier.len(),
                event_log.display()
            );
        }
        // Not those past the event log's retention, which its response thread removes.
        let not_before = cfg
            .threat
            .alerts
            .log_max_age
            .map_or(0, |age| now_ms().saturating_sub(age.as_millis() as u64));
        c.restore(earlier, not_before);
        *shared.classifier.write().expect("lock not poisoned") = c;
    }
    let pipeline = opened.pipeline(&cfg.pin_dir, &cfg.state_dir, &shared);
    let threat = crate::reload::ThreatSide::start(opened, pipeline, &shared);
    publish_hooks(&shared.metrics, &[], &attached.hooks);
    let mut base_status = Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        listen: listen.to_string(),
        interfaces: attached.interfaces.clone(),
        stacked: stacked_at_start.clone(),
        hooks: attached.hooks.clone(),
        flow_table: cfg.flow_table,
        threat: threat.status(),
        ..Default::default()
    };
    *shared.status.write().expect("lock not poisoned") = base_status.clone();
    *shared.sockets.lock().expect("lock not poisoned") =
        Some(crate::sockdiag::Lister::new(maps.owners()));
    let mut drain = Drain {
        flow_capacity: match &tables {
            Some(t) => t.capacity().map(|n| n as u32),
            None => maps.flow_capacity(),
        },
        maps,
        tables,
        flow_bufs: Default::default(),
        dirty_keys: Vec::new(),
        prev_dirty_lost: 0,
        prev_segments: None,
        full_scans: 0,
        recent: std::collections::VecDeque::with_capacity(RECENT_DRAINS),
        risk_inputs: None,
        countries: HashMap::new(),
        last_ns: monotonic_ns(),
        idle_ns: cfg.idle_timeout.as_nanos() as u64,
        names: monitored_names(&attached.interfaces),
        gone_ifaces: crate::metrics::GoneNames::new(cfg.process_series.ttl),
        traffic,
        prev_link: HashMap::new(),
        prev_counters: [0; counter::COUNT as usize],
        prev_evictions: 0,
        prev_expired: 0,
        housekeeping: None,
        started: Instant::now(),
        drains: 0,
        process_series: crate::metrics::NamedSeries::processes(cfg.process_series),
        cgroup_series: crate::metrics::NamedSeries::cgroups(cfg.process_series),
        threat,
        feed_failures: HashMap::new(),
        retrans: Default::default(),
    };
    let mut prog_stats = ProgStats::default();

    let server = tokio::spawn(api::serve(
        listener,
        shared.clone(),
        shutdown.clone(),
        cfg.tls.clone(),
    ));
    let (tick_tx, tick_rx) = std::sync::mpsc::sync_channel(1);
    let housekeeping = match drops.spawn(shared.clone(), tick_rx) {
        Ok(h) => {
            drain.housekeeping = Some(tick_tx);
            Some(h)
        }
        Err(e) => {
            // Bans still drop and expire in the kernel; only removal from the state file
            // and the drop metrics wait for a restart.
            warn!("cannot start the drop-list thread: {e}");
            None
        }
    };
    info!(
        "netmon {} monitoring {} (API on {}://{listen})",
        env!("CARGO_PKG_VERSION"),
        attached
            .interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if cfg.tls.is_some() { "https" } else { "http" },
    );
    let mut ticker = ticker(cfg.interval).await;
    let mut watch = InterfaceWatch::new(cfg.interfaces.clone(), stacked_at_start);
    let mut running = cfg;
    let mut reloads = Reloads::new(reread);
    shared.metrics.config_last_reload_successful.set(1);
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            _ = ticker.tick() => {
                if let Err(e) = tokio::task::block_in_place(|| drain.tick(&shared, &base_status)) {
                    shutdown.cancel();
                    break Err(e.context("draining the kernel maps"));
                }
                tokio::task::block_in_place(|| {
                    watch.look(&mut attached, &mut drain, &mut base_status, &shared.metrics)
                });
                prog_stats.update(&attached.ebpf, &shared.metrics);
            }
            Some(()) = hangup.recv() => reloads.asked(&running, &shared),
            Some(prepared) = reloads.rx.recv() => {
                let interval = running.interval;
                on_prepared(prepared, &mut running, &mut drain, &shared, &mut base_status);
                reloads.done(&running, &shared);
                if running.interval != interval {
                    ticker = self::ticker(running.interval).await;
                }
            }
        }
    };
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!("API server: {e}"),
        Err(_) => warn!("API server did not stop within 5 s"),
        _ => {}
    }
    drain.threat.stop();
    drop(drain);
    if let Some(h) = housekeeping
        && h.join().is_err()
    {
        warn!("the drop-list thread panicked");
    }
    attached.detach();
    info!("detached all programs; bye");
    result
}

/// The sockets that were open before the hooks were attached are found with their
/// processes now (`sockdiag::socket_owners`), in the daemon's network namespace and in every
/// other one a process is in (a container's), and recorded as the hooks would have recorded
/// them: a TCP connection's owner by its 4-tuple (`NETMON_SOCK_PROC`), a TCP listener's by
/// its namespace and port (`NETMON_LISTEN_NS`, where the connections it accepts from now on
/// find their server as soon as their handshake completes; a namespace's identity as the
/// programs name it is learnt from a listener opened there, `probe_net`) and, in the
/// daemon's namespace, by its port alone (`NETMON_PORT_OWNER`, the fallback where the
/// kernel gives no socket's namespace); and, where UDP senders are attributed through the
/// cgroup hooks on connect() and sendmsg(), a UDP socket of the daemon's namespace as the
/// owner of its local port (`NETMON_UDP_PORTS`, which has no namespace), as the egress
/// program would make it on the socket's first frame, and one of another namespace by that
/// namespace's cookie and its port (`NETMON_UDP_NS`), as the UDP hooks would. A TCP record the hooks have written
/// since they were attached is newer than what the scan saw and is kept. A failure only
/// costs those sockets their owner.
fn seed_socket_owners(attached: &mut load::Attached) {
    let udp_hooks = attached
        .hooks
        .iter()
        .any(|h| h.purpose == "udp_send" && h.kind == "cgroup_sock_addr" && h.active);
    let t0 = std::time::Instant::now();
    let ebpf = &mut attached.ebpf;
    let seeded = (|| -> Result<[usize; 4]> {
        let own = crate::sockdiag::own_sockets()?;
        let mut others = crate::sockdiag::other_namespaces()?;
        let groups = std::iter::once(own)
            .chain(others.iter_mut().map(|ns| std::mem::take(&mut ns.sockets)))
            .collect();
        let mut owned = crate::sockdiag::socket_owners(groups)?.into_iter();
        let own = owned.next().unwrap_or_default();
        let mut n = [0usize; 4];
        if udp_hooks {
            let mut ports: aya::maps::Array<&mut aya::maps::MapData, ProcInfo> =
                aya::maps::Array::try_from(
                    ebpf.map_mut("NETMON_UDP_PORTS")
                        .context("eBPF object has no NETMON_UDP_PORTS")?,
                )?;
            for (s, owner) in &own {
                if s.proto == IPPROTO_UDP && s.local_port != 0 {
                    ports
                        .set(u32::from(s.local_port), owner, 0)
                        .with_context(|| format!("writing NETMON_UDP_PORTS[{}]", s.local_port))?;
                    n[0] += 1;
                }
            }
        }
        // The daemon's namespace's probe is opened here; another's was opened (and closed)
        // in it.
        let mut probes: std::collections::HashSet<u16> =
            others.iter().filter_map(|ns| ns.probe_port).collect();
        let own_probe = crate::sockdiag::probe_listener(&probes);
        if own_probe.is_none() {
            warn!(
                "TCP listeners open before the hooks are known by port only: no loopback \
                 listener to learn the namespace's identity"
            );
        }
        probes.extend(own_probe);
        let nets = probe_nets(ebpf, &probes)?;
        let namespaces = std::iter::once(((own_probe, None), own)).chain(
            others
                .iter()
                .map(|ns| (ns.probe_port, ns.cookie))
                .zip(owned),
        );
        for (i, ((probe, cookie), owners)) in namespaces.enumerate() {
            if let Some(net) = cookie.filter(|_| udp_hooks) {
                let udp = owners
                    .iter()
                    .filter(|(s, _)| s.proto == IPPROTO_UDP && s.local_port != 0)
                    .map(|(s, owner)| {
                        let port = PortKey {
                            proto: IPPROTO_UDP,
                            _pad: 0,
                            port: s.local_port,
                        };
                        (netmon_common::NsPortKey { net, port, _pad: 0 }, *owner)
                    });
                n[0] += insert_new(ebpf, "NETMON_UDP_NS", udp)?;
            }
            let listeners: Vec<(PortKey, ProcInfo)> = owners
                .iter()
                .filter(|(s, _)| {
                    s.proto == IPPROTO_TCP && s.state == netmon_common::tcp_state::LISTEN as u8
                })
                .map(|(s, owner)| {
                    let port = PortKey {
                        proto: IPPROTO_TCP,
                        _pad: 0,
                        port: s.local_port,
                    };
                    (port, *owner)
                })
                .collect();
            if let Some(&net) = probe.and_then(|port| nets.get(&port)) {
                let by_ns = listeners.iter().map(|&(port, owner)| {
                    let key = netmon_common::NsPortKey { net, port, _pad: 0 };
                    (key, owner)
                });
                insert_new(ebpf, "NETMON_LISTEN_NS", by_ns)?;
            }
            n[1] += listeners.len();
            if i == 0 {
                insert_new(ebpf, "NETMON_PORT_OWNER", listeners.into_iter())?;
            }
            let connections = owners
                .iter()
                .filter(|(s, _)| {
                    s.proto == IPPROTO_TCP
                        && s.state != netmon_common::tcp_state::LISTEN as u8
                        && s.remote_port != 0
                })
                .map(|(s, owner)| (s.key(), *owner));
            n[2] += insert_new(ebpf, "NETMON_SOCK_PROC", connections)?;
        }
        n[3] = others.len();
        Ok(n)
    })();
    match seeded {
        Ok([udp, listeners, connections, others]) => info!(
            "sockets open before the hooks: {connections} TCP connections, {listeners} TCP \
             listeners{} attributed, in this network namespace and {others} other ({:?})",
            if udp_hooks {
                format!(" and {udp} UDP ports")
            } else {
                String::new()
            },
            t0.elapsed()
        ),
        Err(e) => warn!("sockets open before the hooks are not attributed: {e:#}"),
    }
}

/// Network namespaces' identities as the kernel programs name them (`NsPortKey::net`, the
/// address of a `struct net`, which userspace cannot read), by the loopback port of the
/// listener the daemon opened in each (`sockdiag::probe_listener`, each on a port of its
/// own): the listen hook recorded each under its namespace and port, with the daemon's pid.
/// One pass over `NETMON_LISTEN_NS`; the probes' records are taken out again. A namespace
/// is missing where the hook recorded none (its kernel's BTF gave no offset) or is not
/// attached.
fn probe_nets(
    ebpf: &mut aya::Ebpf,
    ports: &std::collections::HashSet<u16>,
) -> Result<std::collections::HashMap<u16, u64>> {
    let me = std::process::id();
    let tcp = |port| PortKey {
        proto: IPPROTO_TCP,
        _pad: 0,
        port,
    };
    let mut by_ns: aya::maps::HashMap<_, netmon_common::NsPortKey, ProcInfo> =
        aya::maps::HashMap::try_from(
            ebpf.map_mut("NETMON_LISTEN_NS")
                .context("eBPF object has no NETMON_LISTEN_NS")?,
        )?;
    let probes: Vec<netmon_common::NsPortKey> = by_ns
        .keys()
        .flatten()
        .filter(|k| {
            k.port.proto == IPPROTO_TCP
                && ports.contains(&k.port.port)
                && by_ns.get(k, 0).is_ok_and(|o| o.pid == me)
        })
        .collect();
    for k in &probes {
        let _ = by_ns.remove(k);
    }
    let mut by_port: aya::maps::HashMap<_, PortKey, ProcInfo> = aya::maps::HashMap::try_from(
        ebpf.map_mut("NETMON_PORT_OWNER")
            .context("eBPF object has no NETMON_PORT_OWNER")?,
    )?;
    for &port in ports {
        if by_port.get(&tcp(port), 0).is_ok_and(|o| o.pid == me) {
            let _ = by_port.remove(&tcp(port));
        }
    }
    Ok(probes.iter().map(|k| (k.port.port, k.net)).collect())
}

/// Inserts `entries` into hash map `name` where it has no entry for the key yet
/// (`BPF_NOEXIST`); how many were inserted.
fn insert_new<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut aya::Ebpf,
    name: &str,
    entries: impl Iterator<Item = (K, V)>,
) -> Result<usize> {
    // BPF_NOEXIST (include/uapi/linux/bpf.h).
    const NOEXIST: u64 = 1;
    let mut map: aya::maps::HashMap<&mut aya::maps::MapData, K, V> = aya::maps::HashMap::try_from(
        ebpf.map_mut(name)
            .with_context(|| format!("eBPF object has no {name}"))?,
    )
    .with_context(|| format!("{name}: not a hash map of these keys and values"))?;
    let mut inserted = 0;
    for (k, v) in entries {
        match map.insert(k, v, NOEXIST) {
            Ok(()) => inserted += 1,
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("writing {name}")),
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::counter_step;

    #[test]
    fn counters_that_follow_kernel_totals_start_equal_and_survive_resets() {
        // Kernel totals 5, 9, 9, 2 (device recreated), 7: the counter reads 5, 9, 9, 11, 16.
        let mut prev = None;
        let mut counter = 0;
        let mut seen = Vec::new();
        for now in [5, 9, 9, 2, 7] {
            counter += counter_step(prev, now);
            prev = Some(now);
            seen.push(counter);
        }
        assert_eq!(seen, [5, 9, 9, 11, 16]);
    }

    #[test]
    fn interface_traffic_counts_from_the_baseline_and_survives_resets() {
        use super::{IfaceTraffic, iface::DevCounters};
        let dev = |rx_bytes, tx_packets| DevCounters {
            rx_bytes,
            rx_packets: rx_bytes / 100,
            tx_bytes: 3 * tx_packets,
            tx_packets,
            ..DevCounters::default()
        };
        // The device had moved traffic before the daemon started: the baseline, not counted.
        // Each reading returns what it added (the metrics' increments).
        let mut t = IfaceTraffic::default();
        assert_eq!(t.read(Some(&dev(10_000, 40))), [0; 4]);
        assert_eq!(t.total, [0; 4]);
        assert_eq!(t.read(Some(&dev(10_500, 50))), [500, 5, 30, 10]);
        assert_eq!(t.total, [500, 5, 30, 10]);
        // Unreadable (the interface is gone): nothing moves, nothing is lost.
        assert_eq!(t.read(None), [0; 4]);
        assert_eq!(t.total, [500, 5, 30, 10]);
        // Created again: its counters start over, and all they hold is new.
        assert_eq!(t.read(Some(&dev(200, 2))), [200, 2, 6, 2]);
        assert_eq!(t.total, [700, 7, 36, 12]);
        // Unreadable at the start: the first reading is the baseline.
        let mut late = IfaceTraffic::default();
        late.read(None);
        assert_eq!(late.read(Some(&dev(900, 9))), [0; 4]);
        late.read(Some(&dev(1_000, 10)));
        assert_eq!(late.total, [100, 1, 3, 1]);
    }
}
