//! Stage 3: turn cumulative kernel counters into per-interval deltas and rates, per flow,
//! per interface and per process; track flow lifetime, attribution and expiry.
//!
//! Pure logic over plain data: the kernel is behind the `lookup` closure, so all of this is
//! unit-tested without root.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use netmon_common::{
    DIR_EGRESS, DIR_INGRESS, FLOW_FLAG_FORWARDED, FlowKey, IPPROTO_TCP, IPPROTO_UDP, ProcInfo,
    SockKey, has_socket_owner, is_icmp, tcp_flags,
};
use serde::Serialize;

/// One flow as read from the kernel, summed over CPUs. Counters are cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowSample {
    pub key: FlowKey,
    pub bytes: u64,
    pub packets: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub tcp_flags: u8,
}

/// The process that owned a socket, as the kernel recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    /// The cgroup's path in the v2 hierarchy (`cgroups`), where it could be named.
    pub cgroup: Option<Arc<str>>,
    pub comm: String,
    /// Found as the owner of the flow's local port (a listener, a UDP sender), not by the
    /// socket's own record.
    #[serde(skip)]
    pub by_port: bool,
    /// Found at the flow's remote end (a socket of another network namespace of this host,
    /// the flow seen as it crosses the host): what the flow received, this process sent,
    /// and the other way round (`owner_direction`).
    #[serde(skip)]
    pub far_end: bool,
}

/// The direction `direction`'s traffic counts in for its owner's totals: the other one
/// where the owner is the flow's far end (`Owner::far_end`).
fn owner_direction(owner: Option<&Arc<Owner>>, direction: u8) -> u8 {
    match owner {
        Some(o) if o.far_end => {
            if direction == DIR_INGRESS {
                DIR_EGRESS
            } else {
                DIR_INGRESS
            }
        }
        _ => direction,
    }
}

impl From<ProcInfo> for Owner {
    fn from(p: ProcInfo) -> Self {
        let end = p.comm.iter().position(|&b| b == 0).unwrap_or(p.comm.len());
        Self {
            pid: p.pid,
            uid: p.uid,
            cgroup_id: p.cgroup_id,
            cgroup: crate::cgroups::path(p.cgroup_id),
            comm: String::from_utf8_lossy(&p.comm[..end]).into_owned(),
            by_port: false,
            far_end: false,
        }
    }
}

/// Process label for traffic whose socket owner is not known.
pub const UNKNOWN_PROCESS: &str = "unknown";
/// cgroup label for traffic whose socket owner is not known, or whose cgroup could not be
/// named (removed before the daemon looked, or no cgroup v2 hierarchy).
pub const UNKNOWN_CGROUP: &str = "unknown";

/// Process and cgroup label for traffic the host forwards (`FlowEntry::forwarded`) whose
/// socket is no process's in any of the host's namespaces: a container's unconnected UDP,
/// a VM's, a router's traffic.
pub const FORWARDED_PROCESS: &str = "forwarded";

/// The process and cgroup labels of traffic owned by `owner`; without one, of traffic the
/// host forwards (`forwarded`) or whose owner is not known.
fn labels(owner: Option<&Arc<Owner>>, forwarded: bool) -> (&str, &str) {
    match owner {
        Some(o) => (
            o.comm.as_str(),
            o.cgroup.as_deref().unwrap_or(UNKNOWN_CGROUP),
        ),
        None if forwarded => (FORWARDED_PROCESS, FORWARDED_PROCESS),
        None => (UNKNOWN_PROCESS, UNKNOWN_CGROUP),
    }
}

/// Whether the egress program saw `key`'s frames forwarded (`FLOW_FLAG_FORWARDED`).
pub fn is_forwarded(key: &FlowKey) -> bool {
    key.flags & FLOW_FLAG_FORWARDED != 0
}

/// The addresses a frame may be for this host, by which a local port's owner may own it
/// (IPv4 ones mapped into IPv6): the namespace's interface addresses and broadcast
/// addresses, and every loopback and multicast address. Empty (not read yet, or unreadable):
/// every address, as before there was a check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocalAddrs(std::collections::HashSet<[u8; 16]>);

impl LocalAddrs {
    pub fn new(addrs: impl IntoIterator<Item = [u8; 16]>) -> Self {
        Self(addrs.into_iter().collect())
    }

    pub fn admits(&self, a: &[u8; 16]) -> bool {
        if self.0.is_empty() || self.0.contains(a) {
            return true;
        }
        match a {
            // IPv4-mapped: 127/8, 224/4 and the limited broadcast address.
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b, ..] => {
                *b == 127 || *b & 0xf0 == 224 || a[12..] == [255; 4]
            }
            // ::1 and ff00::/8.
            _ => a[0] == 0xff || *a == std::net::Ipv6Addr::LOCALHOST.octets(),
        }
    }
}

/// A flow as the daemon tracks it; its key is the table's key.
#[derive(Debug, Clone)]
pub struct FlowEntry {
    pub bytes: u64,
    pub packets: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub tcp_flags: u8,
    /// For an ingress flow: the table also holds the egress flow of the same tuple, so the
    /// connection is counted by that one (kept by `Tracker::link_twin`).
    pub egress_twin: bool,
    /// Frames this host forwards: an egress flow the egress program marked
    /// (`FLOW_FLAG_FORWARDED`), or an ingress flow to an address that is not the host's
    /// (`LocalAddrs`, as the daemon knew them when the flow came). Without an owner (a
    /// container's TCP socket is found by its tuple) its traffic is `FORWARDED_PROCESS`'s,
    /// not `UNKNOWN_PROCESS`'s.
    pub forwarded: bool,
    /// Its owner is to be looked for again at the end of this drain (see `settle`).
    recheck: bool,
    /// Bytes/s and packets/s over the last interval.
    pub rate_bps: f64,
    pub rate_pps: f64,
    /// Shared: cloning a flow for a snapshot copies a pointer, not the command name.
    pub owner: Option<Arc<Owner>>,
    /// Traffic not yet credited to a process (waiting for attribution).
    pending_bytes: u64,
    pending_packets: u64,
    /// u16 (wrapping back to `EAGER_TRIES`): with the flags above it fits the word that a
    /// u32 and four flags would overflow, 8 bytes a flow.
    attrib_tries: u16,
    seen_tick: u64,
    /// In `Tracker::pending` (saves a lookup of the set for every flow that is not).
    waiting: bool,
    /// With the per-CPU tables: what the daemon last read of the flow's slot (the first it
    /// was read in; others, on other CPUs, are kept in `SlotBook`). Here, so that a drain
    /// finds both the flow and its slot's last counters in one place.
    pub(crate) slot: Seen,
}

// A flow's entry in the daemon's table: 8 bytes more is 8 MB more at a million flows.
const _: () = assert!(size_of::<FlowEntry>() == 112);

/// What the daemon last read of one slot of a per-CPU flow table: which tenancy of the slot
/// (`seq`: the programs move it on whenever they give the slot to a flow) and its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The slot's index in its table; `NO_SLOT`: none.
    pub index: u32,
    pub seq: u32,
    pub bytes: u64,
    pub packets: u64,
}

/// `Seen::index` of a flow without a slot.
pub const NO_SLOT: u32 = u32::MAX;

impl Seen {
    pub const NONE: Self = Self {
        index: NO_SLOT,
        seq: 0,
        bytes: 0,
        packets: 0,
    };
}

/// Per-process totals, keyed by command name (never by PID: bounded label cardinality).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcTotals {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Bytes/s credited during the last interval.
    pub rx_rate: f64,
    pub tx_rate: f64,
    /// TCP segments its sockets sent again.
    pub tcp_retransmits: u64,
    pub last_active_ns: u64,
}

/// Per-interface totals and rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IfaceTotals {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes_rate: f64,
    pub tx_bytes_rate: f64,
    pub rx_packets_rate: f64,
    pub tx_packets_rate: f64,
}

/// Attribution is tried on the first few ticks of a flow (the kernel records the owner when
/// the connection is established, which may be a tick after its first packet), then
/// occasionally, so that unattributable flows do not cost a lookup every second.
const EAGER_TRIES: u16 = 5;
/// Drains in which a TCP flow takes only its socket's own record, not the local port's
/// owner: an accepted connection's record is written when the handshake completes, which a
/// drain may fall between its first packet and; the port's owner (the last to listen on the
/// port, in any network namespace) is the fallback once that has had its chance.
const TCP_EXACT_TRIES: u16 = 2;
const RETRY_EVERY: u16 = 30;

fn should_try(tries: u16) -> bool {
    tries < EAGER_TRIES || tries.is_multiple_of(RETRY_EVERY)
}

/// The same tuple in the other direction.
pub fn twin_key(key: &FlowKey) -> FlowKey {
    FlowKey {
        direction: if key.direction == DIR_EGRESS {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        },
        ..*key
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    /// An IndexMap: a flow keeps its index while it is in the table (removing a flow moves
    /// the last one into its place), so a drain finds a flow by the index it left in the
    /// flow's per-CPU table slot (`flowtab`) without hashing its key.
    pub flows: indexmap::IndexMap<FlowKey, FlowEntry, foldhash::fast::RandomState>,
    pub procs: BTreeMap<String, ProcTotals>,
    /// Per cgroup path (the systemd unit, container or pod), as `procs`.
    pub cgroups: BTreeMap<String, ProcTotals>,
    /// Per application protocol (`service_of`): a few dozen at most.
    pub services: BTreeMap<String, ProcTotals>,
    pub ifaces: BTreeMap<u32, IfaceTotals>,
    /// Flows that vanished from the kernel map without the daemon deleting them: LRU
    /// evictions under pressure.
    pub evictions: u64,
    /// Flows the daemon removed for being idle.
    pub expired: u64,
    /// How many of `flows` are IPv4 (the rest are IPv6): each family has a kernel map.
    flows_v4: usize,
    tick: u64,
    /// Flows with traffic not yet credited to a process: retried every tick, read or not.
    pending: std::collections::HashSet<FlowKey, foldhash::fast::RandomState>,
    /// Bumped when a flow enters or leaves the table or gets its owner (see `generation`).
    generation: u64,
    /// Per-CPU table slots not kept in their flow's entry, per family (IPv4, IPv6).
    pub(crate) books: [crate::flowtab::SlotBook; 2],
    /// The namespace's addresses, by which an ingress flow is seen to be forwarded
    /// (`FlowEntry::forwarded`); empty: none is.
    local: Arc<LocalAddrs>,
}

/// Byte/packet deltas credited to a process during one tick, for the metrics stage.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcDelta {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub tcp_retransmits: u64,
}

impl ProcDelta {
    /// In `NamedSeries::apply`'s order.
    pub fn counts(&self) -> [u64; 5] {
        [
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
            self.tcp_retransmits,
        ]
    }
}

/// Turns TCP's own count of the segments each socket sent again (`NETMON_TCP_RETRANS`: a
/// socket's `total_retrans` as of its latest reported retransmission, read whole each drain;
/// and, every tenth drain, the count sock_diag's `tcp_info` gives for each established
/// connection) into what each socket sent again since the previous drain.
#[derive(Debug, Default)]
pub struct RetransCounts {
    prev: HashMap<SockKey, Counted>,
    drains: u64,
}

/// What is known of one socket's count.
#[derive(Debug, Clone, Copy)]
struct Counted {
    /// Its count in the map when last read.
    map: u64,
    /// What has been credited for it: the map's count, or sock_diag's where that is more.
    counted: u64,
    /// The drain it was last seen at, in the map or in sock_diag's list.
    drain: u64,
}

/// Drains a socket gone from the map is remembered for: the LRU map evicts the sockets that
/// retransmitted longest ago, and one that then retransmits again comes back with its whole
/// count, of which only what is past the remembered one is new.
const RETRANS_FORGET_DRAINS: u64 = 600;

impl RetransCounts {
    /// The sockets whose count moved since the last call, and by how much, from the map's
    /// counts `now` and sock_diag's `listed` (empty on most drains). A socket seen for the
    /// first time brings its whole count (one older than the daemon, what it sent again
    /// before); a map count smaller than the map's last one is another socket of the same
    /// tuple (its port reused), and all of it is new. sock_diag's count can be ahead of the
    /// map's: TCP counts an attempt its qdisc or device refuses, which the tracepoint reports
    /// only on kernels whose event has an `err` field (not 6.1 or 6.12), so the map's count
    /// misses refused attempts after the last reported one; what sock_diag adds is credited
    /// once, and the lagging map adds nothing until it passes it.
    pub fn deltas(
        &mut self,
        now: HashMap<SockKey, u64>,
        listed: &[(SockKey, u64)],
    ) -> Vec<(SockKey, u64)> {
        self.drains += 1;
        let drain = self.drains;
        let fresh = Counted {
            map: 0,
            counted: 0,
            drain,
        };
        // One entry per socket: one in the map and in sock_diag's list can move in both.
        let mut out: HashMap<SockKey, u64> = HashMap::new();
        let mut credit = |k: SockKey, c: &mut Counted, n: u64| {
            if n > c.counted {
                *out.entry(k).or_default() += n - c.counted;
                c.counted = n;
            }
            c.drain = drain;
        };
        for (k, n) in now {
            let c = self.prev.entry(k).or_insert(fresh);
            if n < c.map {
                *c = fresh;
            }
            c.map = n;
            credit(k, c, n);
        }
        // Only sockets that sent something again: a server's many other connections are not
        // remembered.
        for &(k, n) in listed.iter().filter(|(_, n)| *n > 0) {
            credit(k, self.prev.entry(k).or_insert(fresh), n);
        }
        self.prev
            .retain(|_, c| drain - c.drain <= RETRANS_FORGET_DRAINS);
        out.into_iter().collect()
    }
}

#[derive(Debug, Default)]
pub struct TickOutput {
    /// Idle flows to delete from the kernel map.
    pub expired: Vec<FlowKey>,
    pub proc_deltas: BTreeMap<String, ProcDelta>,
    /// Per cgroup path, as `proc_deltas`.
    pub cgroup_deltas: BTreeMap<String, ProcDelta>,
    /// (protocol number, direction) -> (bytes, packets) moved during this tick.
    pub proto_deltas: BTreeMap<(u8, u8), (u64, u64)>,
    /// Per application protocol (`service_of`), as `proc_deltas`.
    pub service_deltas: BTreeMap<String, ProcDelta>,
    pub evicted: u64,
    /// Flows the kernel map held at this drain.
    pub seen: usize,
    /// Flows seen for the first time, with the TCP flags of their first drain: the
    /// connection attempts the classifier looks at.
    pub new_flows: Vec<(FlowKey, u8)>,
}

/// A drain in progress: `Tracker::begin_tick`, `apply_sample` for every flow as it is read
/// from the kernel (no buffer of the whole map), then `finish_tick`.
#[derive(Debug)]
pub struct TickState {
    out: TickOutput,
    interval_s: f64,
    credits: Credits,
    protos: Protos,
    services: Services,
}

/// A cgroup's totals leave `Tracker::cgroups` after this long without traffic.
pub const CGROUP_IDLE_NS: u64 = 3_600_000_000_000;

/// Idle flows are looked for on full drains and every this many ticks.
pub const SWEEP_EVERY: u64 = 10;

/// Credits a flow's pending traffic to its owner once the owner is known (or attribution has
/// been tried long enough); tries the kernel's socket records on the first ticks of a flow,
/// then occasionally. Returns true while traffic still waits.
#[allow(clippy::too_many_arguments)]
fn settle(
    key: &FlowKey,
    e: &mut FlowEntry,
    ledger: &mut Ledger<'_>,
    credits: &mut Credits,
    interval_s: f64,
    lookup: &mut impl FnMut(&FlowKey) -> Option<Owner>,
    generation: &mut u64,
) -> bool {
    let attributable = has_socket_owner(key.proto);
    if e.owner.is_none() && attributable {
        if should_try(e.attrib_tries) {
            // A forwarded flow is asked for as one (`FLOW_FLAG_FORWARDED`): no local port's.
            let probe = FlowKey {
                flags: key.flags | if e.forwarded { FLOW_FLAG_FORWARDED } else { 0 },
                ..*key
            };
            let found = lookup(&probe).filter(|o| {
                !(o.by_port && key.proto == IPPROTO_TCP && e.attrib_tries < TCP_EXACT_TRIES)
            });
            // Datagrams received on a UDP port that has an owner may be the replies to
            // datagrams the host masquerades (sent on from its address and that port),
            // whose forwarded egress flow the same drain may bring after them: the port's
            // owner is taken at the end of the drain (`recheck`), when `Tracker::twin_forwarded`
            // can tell, not on the flow's first try.
            e.owner = if found.as_ref().is_some_and(|o| o.by_port)
                && key.direction == DIR_INGRESS
                && key.proto == IPPROTO_UDP
                && e.attrib_tries == 0
            {
                e.recheck = true;
                None
            } else {
                found.map(Arc::new)
            };
            *generation += u64::from(e.owner.is_some());
        }
        e.attrib_tries = e.attrib_tries.checked_add(1).unwrap_or(EAGER_TRIES);
    }
    let settled = e.owner.is_some() || e.attrib_tries >= EAGER_TRIES || !attributable;
    if e.pending_bytes == 0 && e.pending_packets == 0 {
        return false;
    }
    if !settled {
        return true;
    }
    credits.add(
        ledger,
        interval_s,
        labels(e.owner.as_ref(), e.forwarded),
        owner_direction(e.owner.as_ref(), key.direction),
        e.pending_bytes,
        e.pending_packets,
        e.last_ns,
    );
    e.pending_bytes = 0;
    e.pending_packets = 0;
    false
}

/// What a run of consecutive flows of one process (command name and cgroup) credits it,
/// added to the per-process and per-cgroup maps when a flow of another process comes (or the
/// drain ends): four ordered-map lookups by name per run instead of per flow.
#[derive(Debug, Default)]
struct Credits {
    name: String,
    cgroup: String,
    open: bool,
    rx: (u64, u64),
    tx: (u64, u64),
    last_ns: u64,
}

/// Where a drain credits traffic: per command name and per cgroup path, the totals (the
/// tracker's) and this drain's deltas (its output).
struct Ledger<'a> {
    procs: &'a mut BTreeMap<String, ProcTotals>,
    cgroups: &'a mut BTreeMap<String, ProcTotals>,
    out: &'a mut TickOutput,
}

impl Credits {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        ledger: &mut Ledger<'_>,
        interval_s: f64,
        (name, cgroup): (&str, &str),
        direction: u8,
        bytes: u64,
        packets: u64,
        last_ns: u64,
    ) {
        if !self.open || self.name != name || self.cgroup != cgroup {
            self.flush(ledger, interval_s);
            self.name.clear();
            self.name.push_str(name);
            self.cgroup.clear();
            self.cgroup.push_str(cgroup);
            self.open = true;
        }
        let d = if direction == DIR_INGRESS {
            &mut self.rx
        } else {
            &mut self.tx
        };
        d.0 += bytes;
        d.1 += packets;
        self.last_ns = self.last_ns.max(last_ns);
    }

    fn flush(&mut self, ledger: &mut Ledger<'_>, interval_s: f64) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        for (direction, (bytes, packets)) in [
            (DIR_INGRESS, std::mem::take(&mut self.rx)),
            (DIR_EGRESS, std::mem::take(&mut self.tx)),
        ] {
            if bytes > 0 || packets > 0 {
                for (totals, deltas, label) in [
                    (&mut *ledger.procs, &mut ledger.out.proc_deltas, &self.name),
                    (
                        &mut *ledger.cgroups,
                        &mut ledger.out.cgroup_deltas,
                        &self.cgroup,
                    ),
                ] {
                    credit(
                        totals,
                        deltas,
                        label,
                        direction,
                        bytes,
                        packets,
                        interval_s,
                        self.last_ns,
                    );
                }
            }
        }
        self.last_ns = 0;
    }
}

/// The application protocol of traffic no well-known port names.
pub const OTHER_SERVICE: &str = "other";

/// The application protocol a TCP or UDP port is registered for (IANA's well-known and
/// common registered ports), as the seed's protocol distribution (HTTP, HTTPS, FTP, SSH...)
/// names them.
fn service_port(proto: u8, port: u16) -> Option<&'static str> {
    let tcp = proto == IPPROTO_TCP;
    Some(match port {
        20 | 21 if tcp => "ftp",
        22 if tcp => "ssh",
        23 if tcp => "telnet",
        25 if tcp => "smtp",
        53 => "dns",
        67 | 68 if !tcp => "dhcp",
        69 if !tcp => "tftp",
        80 if tcp => "http",
        110 if tcp => "pop3",
        123 if !tcp => "ntp",
        143 if tcp => "imap",
        161 | 162 if !tcp => "snmp",
        179 if tcp => "bgp",
        389 => "ldap",
        // QUIC (HTTP/3) over UDP as well.
        443 => "https",
        445 if tcp => "smb",
        465 | 587 if tcp => "smtp-submission",
        514 if !tcp => "syslog",
        636 if tcp => "ldaps",
        853 => "dns-over-tls",
        993 if tcp => "imaps",
        995 if tcp => "pop3s",
        1194 => "openvpn",
        2049 => "nfs",
        3306 if tcp => "mysql",
        3389 => "rdp",
        5432 if tcp => "postgresql",
        5672 if tcp => "amqp",
        6379 if tcp => "redis",
        8080 if tcp => "http-alt",
        9092 if tcp => "kafka",
        27017 if tcp => "mongodb",
        51820 if !tcp => "wireguard",
        _ => return None,
    })
}

/// The application protocol of a flow: the service its lower well-known port names (a
/// server's port is the registered one, a client's ephemeral), else `other` (ICMP, ports
/// no entry names, flows recorded without ports).
pub fn service_of(proto: u8, local_port: u16, remote_port: u16) -> &'static str {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return OTHER_SERVICE;
    }
    let (lo, hi) = (local_port.min(remote_port), local_port.max(remote_port));
    service_port(proto, lo)
        .or_else(|| service_port(proto, hi))
        .unwrap_or(OTHER_SERVICE)
}

/// One drain's traffic per (service, direction): a short list searched by the name's
/// address (a drain sees few services), so that a flow costs no map lookup.
#[derive(Debug, Default)]
struct Services {
    seen: Vec<(&'static str, u8, u64, u64)>,
}

impl Services {
    fn add(&mut self, service: &'static str, direction: u8, bytes: u64, packets: u64) {
        match self
            .seen
            .iter_mut()
            .find(|(s, d, ..)| std::ptr::eq(*s, service) && *d == direction)
        {
            Some(e) => {
                e.2 += bytes;
                e.3 += packets;
            }
            None => self.seen.push((service, direction, bytes, packets)),
        }
    }
}

/// Protocol totals of a run of consecutive flows of one (protocol, direction), added to the
/// drain's map when another comes (or the drain ends).
#[derive(Debug, Default)]
struct Protos {
    open: Option<(u8, u8)>,
    bytes: u64,
    packets: u64,
}

impl Protos {
    fn add(
        &mut self,
        map: &mut BTreeMap<(u8, u8), (u64, u64)>,
        key: (u8, u8),
        bytes: u64,
        packets: u64,
    ) {
        if self.open != Some(key) {
            self.flush(map);
            self.open = Some(key);
        }
        self.bytes += bytes;
        self.packets += packets;
    }

    fn flush(&mut self, map: &mut BTreeMap<(u8, u8), (u64, u64)>) {
        if let Some(key) = self.open.take() {
            let p = map.entry(key).or_default();
            p.0 += std::mem::take(&mut self.bytes);
            p.1 += std::mem::take(&mut self.packets);
        }
    }
}

impl Tracker {
    /// Applies one drain. `interval_s` is the time since the previous drain; `idle_ns` the
    /// idle timeout; `lookup` asks the kernel maps for a flow's owner.
    pub fn apply_flows(
        &mut self,
        samples: &[FlowSample],
        now_ns: u64,
        interval_s: f64,
        idle_ns: u64,
        mut lookup: impl FnMut(&FlowKey) -> Option<Owner>,
    ) -> TickOutput {
        let mut st = self.begin_tick(interval_s);
        for s in samples {
            self.apply_sample(&mut st, s, &mut lookup);
        }
        self.finish_tick(st, now_ns, idle_ns, true, lookup)
    }

    /// Starts a drain; `interval_s` is the time since the previous one.
    pub fn begin_tick(&mut self, interval_s: f64) -> TickState {
        self.tick += 1;
        for p in self
            .procs
            .values_mut()
            .chain(self.cgroups.values_mut())
            .chain(self.services.values_mut())
        {
            p.rx_rate = 0.0;
            p.tx_rate = 0.0;
        }
        TickState {
            out: TickOutput::default(),
            interval_s: if interval_s > 0.0 { interval_s } else { 1.0 },
            credits: Credits::default(),
            protos: Protos::default(),
            services: Services::default(),
        }
    }

    /// Applies one flow as read from the kernel map (cumulative counters).
    pub fn apply_sample(
        &mut self,
        st: &mut TickState,
        s: &FlowSample,
        lookup: impl FnMut(&FlowKey) -> Option<Owner>,
    ) {
        self.apply(st, s, false, lookup);
    }

    /// Applies one slot's growth since the last drain (`s.bytes` and `s.packets` are
    /// increases, as the per-CPU tables give them; the daemon's drain takes them through
    /// `flowtab::Sink`, which finds the flow by its slot's cookie), on top of what the table
    /// holds. A flow counted on several CPUs comes once per CPU in a drain: the later ones
    /// add to the first (its rates, its pending traffic) instead of replacing it.
    pub fn apply_delta(
        &mut self,
        st: &mut TickState,
        s: &FlowSample,
        lookup: impl FnMut(&FlowKey) -> Option<Owner>,
    ) {
        self.apply(st, s, true, lookup);
    }

    /// `apply_sample` (`delta` false) or `apply_delta`: one lookup (one hash) of the flow.
    fn apply(
        &mut self,
        st: &mut TickState,
        s: &FlowSample,
        delta: bool,
        lookup: impl FnMut(&FlowKey) -> Option<Owner>,
    ) {
        let (i, new) = self.entry_index(&s.key, s.first_ns, s.last_ns);
        self.apply_at(st, i, new, s, delta, lookup);
    }

    /// The index of `key`'s flow, inserting it (first and last seen at `first_ns`, `last_ns`)
    /// if the table has none; true: inserted.
    pub(crate) fn entry_index(
        &mut self,
        key: &FlowKey,
        first_ns: u64,
        last_ns: u64,
    ) -> (usize, bool) {
        match self.flows.entry(*key) {
            indexmap::map::Entry::Occupied(o) => (o.index(), false),
            indexmap::map::Entry::Vacant(v) => {
                self.flows_v4 += usize::from(key.family == 4);
                let i = v.index();
                v.insert(FlowEntry {
                    bytes: 0,
                    packets: 0,
                    first_ns,
                    last_ns,
                    tcp_flags: 0,
                    egress_twin: false,
                    forwarded: is_forwarded(key)
                        || (key.direction == DIR_INGRESS && !self.local.admits(&key.local_addr)),
                    recheck: false,
                    rate_bps: 0.0,
                    rate_pps: 0.0,
                    owner: None,
                    pending_bytes: 0,
                    pending_packets: 0,
                    attrib_tries: 0,
                    seen_tick: 0,
                    waiting: false,
                    slot: Seen::NONE,
                });
                (i, true)
            }
        }
    }

    /// Applies `s` to the flow at index `i` (`new`: just inserted; `s.key` is its key).
    pub(crate) fn apply_at(
        &mut self,
        st: &mut TickState,
        i: usize,
        new: bool,
        s: &FlowSample,
        delta: bool,
        mut lookup: impl FnMut(&FlowKey) -> Option<Owner>,
    ) {
        let tick = self.tick;
        let interval_s = st.interval_s;
        let twin_forwarded = self.twin_forwarded(&s.key, &self.flows[i]);
        let out = &mut st.out;
        let e = &mut self.flows[i];
        e.forwarded |= twin_forwarded;
        // A second slot of the flow in this drain (another CPU's).
        let again = delta && e.seen_tick == tick;
        let (db, dp) = if delta {
            (s.bytes, s.packets)
        } else if s.bytes >= e.bytes && s.packets >= e.packets {
            (s.bytes - e.bytes, s.packets - e.packets)
        } else {
            // Counters only grow while the kernel entry lives; smaller means it was evicted
            // and re-created since the last drain, so all of it is new.
            (s.bytes, s.packets)
        };
        e.bytes = if delta { e.bytes + db } else { s.bytes };
        e.packets = if delta { e.packets + dp } else { s.packets };
        if s.first_ns != 0 && (e.first_ns == 0 || s.first_ns < e.first_ns) {
            e.first_ns = s.first_ns;
        }
        e.last_ns = e.last_ns.max(s.last_ns);
        e.tcp_flags |= s.tcp_flags;
        // Rates hold for the drain that set them (`seen_tick`): a flow not seen since has
        // none, without a pass over the flows that moved before (see `rates`).
        let (bps, pps) = (db as f64 / interval_s, dp as f64 / interval_s);
        if again {
            e.rate_bps += bps;
            e.rate_pps += pps;
        } else {
            e.rate_bps = bps;
            e.rate_pps = pps;
            out.seen += 1;
        }
        e.seen_tick = tick;
        if db > 0 || dp > 0 {
            st.protos.add(
                &mut out.proto_deltas,
                (s.key.proto, s.key.direction),
                db,
                dp,
            );
            st.services.add(
                service_of(s.key.proto, s.key.local_port, s.key.remote_port),
                s.key.direction,
                db,
                dp,
            );
        }
        e.pending_bytes += db;
        e.pending_packets += dp;
        let wait = if again && e.owner.is_none() {
            // The first slot's apply tried for an owner this drain: the traffic waits with
            // the rest of the flow's.
            true
        } else {
            settle(
                &s.key,
                e,
                &mut Ledger {
                    procs: &mut self.procs,
                    cgroups: &mut self.cgroups,
                    out,
                },
                &mut st.credits,
                interval_s,
                &mut lookup,
                &mut self.generation,
            )
        };
        if wait != e.waiting {
            e.waiting = wait;
            if wait {
                self.pending.insert(s.key);
            } else {
                self.pending.remove(&s.key);
            }
        }
        if new {
            self.generation += 1;
            out.new_flows.push((s.key, s.tcp_flags));
            self.link_twin(&s.key, true);
        }
    }

    /// The drain number (`begin_tick` counts them).
    pub(crate) fn tick(&self) -> u64 {
        self.tick
    }

    /// The index of `key`'s flow: `cookie` - 1 when that is it (a per-CPU table slot's
    /// cookie, see `flowtab`), else looked up.
    pub(crate) fn find(&self, key: &FlowKey, cookie: u32) -> Option<usize> {
        let i = (cookie as usize).wrapping_sub(1);
        match self.flows.get_index(i) {
            Some((k, _)) if k == key => Some(i),
            _ => self.flows.get_index_of(key),
        }
    }

    /// Starts fetching the flow at index `i` from memory (a drain reads it soon).
    pub(crate) fn prefetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some((k, e)) = self.flows.get_index(i) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            for (p, len) in [
                ((k as *const FlowKey).cast::<i8>(), size_of::<FlowKey>()),
                ((e as *const FlowEntry).cast::<i8>(), size_of::<FlowEntry>()),
            ] {
                for off in (0..len).step_by(64) {
                    // SAFETY: a prefetch hint within a live entry; it loads nothing.
                    unsafe { _mm_prefetch(p.wrapping_add(off), _MM_HINT_T0) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Removes `k`'s flow (the last flow takes its index). A per-CPU table slot it still held
    /// stays known (`SlotBook`): a later packet of the flow in that slot counts only what it
    /// adds.
    fn remove_flow(&mut self, k: &FlowKey) -> Option<FlowEntry> {
        let e = self.flows.swap_remove(k)?;
        self.flows_v4 -= usize::from(k.family == 4);
        if e.waiting {
            self.pending.remove(k);
        }
        self.link_twin(k, false);
        if e.slot.index != NO_SLOT {
            self.books[usize::from(k.family != 4)].orphan(e.slot, self.tick);
        }
        Some(e)
    }

    /// A flow's byte and packet rates over the last interval: zero unless the last drain
    /// saw it move.
    pub fn rates(&self, key: &FlowKey) -> Option<(f64, f64)> {
        self.flows.get(key).map(|e| self.current_rates(e))
    }

    fn current_rates(&self, e: &FlowEntry) -> (f64, f64) {
        if e.seen_tick == self.tick {
            (e.rate_bps, e.rate_pps)
        } else {
            (0.0, 0.0)
        }
    }

    /// Whether `key`, an ingress flow `e` still looking for its owner, is the other
    /// direction of a flow the egress program saw forwarded (the same tuple on the same
    /// interface: the replies to masqueraded traffic, or destination-NAT'd requests, which
    /// arrive addressed to the host): then its frames are forwarded too. A lookup of the
    /// table only on the drains that try for an owner.
    fn twin_forwarded(&self, key: &FlowKey, e: &FlowEntry) -> bool {
        key.direction == DIR_INGRESS
            && !e.forwarded
            && e.owner.is_none()
            && should_try(e.attrib_tries)
            && has_socket_owner(key.proto)
            && self.flows.contains_key(&FlowKey {
                direction: DIR_EGRESS,
                flags: key.flags | FLOW_FLAG_FORWARDED,
                ..*key
            })
    }

    /// Sets the namespace's addresses that new flows are judged by (`FlowEntry::forwarded`).
    pub fn set_local(&mut self, local: Arc<LocalAddrs>) {
        self.local = local;
    }

    /// Flows in the table by family: (IPv4, IPv6), as the two kernel maps hold them.
    pub fn flows_by_family(&self) -> (usize, usize) {
        (self.flows_v4, self.flows.len() - self.flows_v4)
    }

    /// Changes whenever the set of flows or an owner changed: what a count of connections
    /// by risk depends on, besides the classifier (`Classifier::generation`).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Keeps `FlowEntry::egress_twin` of `key`'s ingress side true exactly while the table
    /// holds both directions: called when `key` entered the table (`added`) or left it.
    fn link_twin(&mut self, key: &FlowKey, added: bool) {
        let twin = twin_key(key);
        if key.direction == DIR_EGRESS {
            if let Some(t) = self.flows.get_mut(&twin) {
                t.egress_twin = added;
            }
        } else if added
            && self.flows.contains_key(&twin)
            && let Some(e) = self.flows.get_mut(key)
        {
            e.egress_twin = true;
        }
    }

    /// Ends a drain. `full`: every flow of the kernel map was applied, so a flow not seen was
    /// evicted by the kernel; otherwise only the flows that changed were (the dirty ring), and
    /// the others are as they were. Flows whose traffic still waits for an owner are retried
    /// either way, rates of flows not seen drop to zero, and idle flows are listed for
    /// deletion (on full drains and every `SWEEP_EVERY` ticks).
    pub fn finish_tick(
        &mut self,
        st: TickState,
        now_ns: u64,
        idle_ns: u64,
        full: bool,
        mut lookup: impl FnMut(&FlowKey) -> Option<Owner>,
    ) -> TickOutput {
        let tick = self.tick;
        let TickState {
            mut out,
            interval_s,
            mut credits,
            mut protos,
            services,
        } = st;
        protos.flush(&mut out.proto_deltas);
        for (service, direction, bytes, packets) in services.seen {
            credit(
                &mut self.services,
                &mut out.service_deltas,
                service,
                direction,
                bytes,
                packets,
                interval_s,
                now_ns,
            );
        }
        // The flows still waiting that this drain did not see: looked up by key when few,
        // found in one pass over the table when many (a burst of new flows waits for owners
        // for a few drains; a lookup per flow would miss the cache for each).
        // (And those seen whose owner is to be looked for again now: see `settle`.)
        let waiting: Vec<FlowKey> = if self.pending.len() > self.flows.len() / 16 {
            self.flows
                .iter()
                .filter(|(_, e)| e.waiting && (e.seen_tick != tick || e.recheck))
                .map(|(k, _)| *k)
                .collect()
        } else {
            self.pending.iter().copied().collect()
        };
        for k in waiting {
            let Some(i) = self.flows.get_index_of(&k) else {
                self.pending.remove(&k);
                continue;
            };
            let e = &self.flows[i];
            if e.seen_tick == tick && !e.recheck {
                continue;
            }
            let twin_forwarded = self.twin_forwarded(&k, e);
            let e = &mut self.flows[i];
            e.forwarded |= twin_forwarded;
            e.recheck = false;
            if !settle(
                &k,
                e,
                &mut Ledger {
                    procs: &mut self.procs,
                    cgroups: &mut self.cgroups,
                    out: &mut out,
                },
                &mut credits,
                interval_s,
                &mut lookup,
                &mut self.generation,
            ) {
                e.waiting = false;
                self.pending.remove(&k);
            }
        }
        let mut gone = Vec::new();
        if full || tick.is_multiple_of(SWEEP_EVERY) {
            for (k, e) in &self.flows {
                if full && e.seen_tick != tick {
                    gone.push(*k);
                } else if now_ns.saturating_sub(e.last_ns) > idle_ns {
                    out.expired.push(*k);
                }
            }
        }
        for k in &gone {
            self.remove_flow(k);
        }
        out.evicted = gone.len() as u64;
        self.generation += out.evicted + out.expired.len() as u64;
        self.evictions += out.evicted;
        let expired = std::mem::take(&mut out.expired);
        for k in &expired {
            if let Some(e) = self.remove_flow(k)
                && (e.pending_bytes > 0 || e.pending_packets > 0)
            {
                credits.add(
                    &mut Ledger {
                        procs: &mut self.procs,
                        cgroups: &mut self.cgroups,
                        out: &mut out,
                    },
                    interval_s,
                    labels(e.owner.as_ref(), e.forwarded),
                    owner_direction(e.owner.as_ref(), k.direction),
                    e.pending_bytes,
                    e.pending_packets,
                    e.last_ns,
                );
            }
        }
        credits.flush(
            &mut Ledger {
                procs: &mut self.procs,
                cgroups: &mut self.cgroups,
                out: &mut out,
            },
            interval_s,
        );
        out.expired = expired;
        if full || tick.is_multiple_of(SWEEP_EVERY) {
            // cgroups come and go (each container, pod or transient unit has a path of its
            // own): one silent for `CGROUP_IDLE_NS` leaves the totals, which would otherwise
            // grow with every cgroup the host ever ran.
            self.cgroups
                .retain(|_, c| now_ns.saturating_sub(c.last_active_ns) <= CGROUP_IDLE_NS);
        }
        for b in &mut self.books {
            b.forget_pending(tick);
        }
        self.expired += out.expired.len() as u64;
        out
    }

    /// Applies the per-interface cumulative totals read from the kernel; an interface with
    /// none (gone) leaves the table.
    pub fn apply_ifaces(&mut self, totals: &[(u32, u8, u64, u64)], interval_s: f64) {
        let interval_s = if interval_s > 0.0 { interval_s } else { 1.0 };
        self.ifaces
            .retain(|ifindex, _| totals.iter().any(|t| t.0 == *ifindex));
        for t in self.ifaces.values_mut() {
            t.rx_bytes_rate = 0.0;
            t.tx_bytes_rate = 0.0;
            t.rx_packets_rate = 0.0;
            t.tx_packets_rate = 0.0;
        }
        for &(ifindex, direction, bytes, packets) in totals {
            let t = self.ifaces.entry(ifindex).or_default();
            let (b, p, br, pr) = if direction == DIR_INGRESS {
                (
                    &mut t.rx_bytes,
                    &mut t.rx_packets,
                    &mut t.rx_bytes_rate,
                    &mut t.rx_packets_rate,
                )
            } else {
                (
                    &mut t.tx_bytes,
                    &mut t.tx_packets,
                    &mut t.tx_bytes_rate,
                    &mut t.tx_packets_rate,
                )
            };
            *br = bytes.saturating_sub(*b) as f64 / interval_s;
            *pr = packets.saturating_sub(*p) as f64 / interval_s;
            *b = bytes;
            *p = packets;
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site pair; a struct adds nothing"
)]
fn credit(
    procs: &mut BTreeMap<String, ProcTotals>,
    deltas: &mut BTreeMap<String, ProcDelta>,
    name: &str,
    direction: u8,
    bytes: u64,
    packets: u64,
    interval_s: f64,
    last_ns: u64,
) {
    // Allocates a name only for a process not seen before.
    if !procs.contains_key(name) {
        procs.insert(name.to_string(), ProcTotals::default());
    }
    if !deltas.contains_key(name) {
        deltas.insert(name.to_string(), ProcDelta::default());
    }
    let (Some(p), Some(d)) = (procs.get_mut(name), deltas.get_mut(name)) else {
        unreachable!("inserted above");
    };
    if direction == DIR_INGRESS {
        p.rx_bytes += bytes;
        p.rx_packets += packets;
        p.rx_rate += bytes as f64 / interval_s;
        d.rx_bytes += bytes;
        d.rx_packets += packets;
    } else {
        p.tx_bytes += bytes;
        p.tx_packets += packets;
        p.tx_rate += bytes as f64 / interval_s;
        d.tx_bytes += bytes;
        d.tx_packets += packets;
    }
    p.last_active_ns = p.last_active_ns.max(last_ns);
}

/// An address as stored in the maps (IPv4-mapped for IPv4) to a display address.
pub fn to_ip(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The key form of an address: IPv4 as IPv4-mapped IPv6, like the flow and socket keys.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One row of the connection table: both directions of one socket 4-tuple, over every
/// monitored interface, merged with the socket's state and owner.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub local_address: String,
    pub remote_address: String,
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6` or the protocol number.
    #[serde(rename = "type")]
    pub kind: String,
    /// ICMP/ICMPv6 `type/code`; the addresses then carry no port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type_code: Option<String>,
    pub status: String,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub uid: Option<u32>,
    pub cgroup_id: Option<u64>,
    /// The owner's cgroup path (the systemd unit, container or pod it runs in).
    pub cgroup: Option<String>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    /// Bytes/s over the last interval.
    pub send_rate: f64,
    pub recv_rate: f64,
    /// Seconds between the first and the latest packet (0 for sockets without traffic).
    pub duration: f64,
    pub tcp_flags: String,
    /// Frames this host forwards, not its own (`FlowEntry::forwarded`): a container's, a
    /// VM's, a router's. Left out of the row when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forwarded: bool,
    /// Risk level, score and every reason with its points (`classify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<crate::classify::score::Assessment>,
    /// What TCP measures of the connection, for a TCP socket of this host's: round-trip
    /// time, its variation, segments sent and retransmitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_quality: Option<crate::sockdiag::TcpQuality>,
    /// Country and ASN of the remote, where GeoIP databases are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo: Option<crate::classify::geo::GeoInfo>,
    /// What the classifier scores: remote address, local and remote port, protocol.
    #[serde(skip)]
    pub tuple: (std::net::IpAddr, u16, u16, u8),
}

impl Connection {
    /// The row as the classifier scores it.
    pub fn scored(&self) -> crate::classify::Conn<'_> {
        let (remote, local_port, remote_port, proto) = self.tuple;
        crate::classify::Conn {
            remote,
            local_port,
            remote_port,
            proto,
            process: self.process.as_deref(),
        }
    }
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

pub fn flags_string(f: u8) -> String {
    [
        (tcp_flags::SYN, 'S'),
        (tcp_flags::ACK, 'A'),
        (tcp_flags::PSH, 'P'),
        (tcp_flags::FIN, 'F'),
        (tcp_flags::RST, 'R'),
        (tcp_flags::URG, 'U'),
    ]
    .iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, c)| *c)
    .collect()
}

/// A socket as sock_diag reports it (stage 2b), keyed like a flow.
#[derive(Debug, Clone)]
pub struct SocketRow {
    pub proto: u8,
    pub local_addr: [u8; 16],
    pub local_port: u16,
    pub remote_addr: [u8; 16],
    pub remote_port: u16,
    pub state: String,
    pub inode: u32,
    pub uid: u32,
    pub owner: Option<Owner>,
    /// What TCP measures of the connection (round-trip time, retransmissions).
    pub quality: Option<crate::sockdiag::TcpQuality>,
}

/// A connection's tuple: protocol, local address and port, remote address and port.
pub type ConnKey = (u8, [u8; 16], u16, [u8; 16], u16);

impl SocketRow {
    pub fn tuple(&self) -> ConnKey {
        (
            self.proto,
            self.local_addr,
            self.local_port,
            self.remote_addr,
            self.remote_port,
        )
    }
}

/// The connection a flow belongs to (both directions of a tuple make one).
fn flow_tuple(k: &FlowKey) -> ConnKey {
    (
        k.proto,
        k.local_addr,
        k.local_port,
        k.remote_addr,
        k.remote_port,
    )
}

fn sockaddr(addr: [u8; 16], port: u16) -> String {
    SocketAddr::new(to_ip(addr), port).to_string()
}

fn new_connection(proto: u8, local: ([u8; 16], u16), remote: ([u8; 16], u16)) -> Connection {
    let (local_address, remote_address, icmp) = if is_icmp(proto) {
        // ICMP has no ports: the key's remote "port" is type << 8 | code.
        (
            to_ip(local.0).to_string(),
            to_ip(remote.0).to_string(),
            Some(format!("{}/{}", remote.1 >> 8, remote.1 & 0xff)),
        )
    } else {
        (
            sockaddr(local.0, local.1),
            sockaddr(remote.0, remote.1),
            None,
        )
    };
    Connection {
        local_address,
        remote_address,
        kind: proto_name(proto),
        icmp_type_code: icmp,
        status: String::new(),
        pid: None,
        process: None,
        uid: None,
        cgroup_id: None,
        cgroup: None,
        bytes_sent: 0,
        bytes_recv: 0,
        packets_sent: 0,
        packets_recv: 0,
        send_rate: 0.0,
        recv_rate: 0.0,
        duration: 0.0,
        tcp_flags: String::new(),
        forwarded: false,
        risk: None,
        tcp_quality: None,
        geo: None,
        tuple: (to_ip(remote.0), local.1, remote.1, proto),
    }
}

/// Keeps the `n` busiest of `conns` (by the last interval's rate, then by bytes), busiest
/// first.
pub fn keep_busiest(conns: &mut Vec<Connection>, n: usize) {
    let activity = |c: &Connection| (c.send_rate + c.recv_rate, c.bytes_sent + c.bytes_recv);
    let busier = |a: &Connection, b: &Connection| busier_first(activity(a), activity(b));
    if n < conns.len() {
        conns.select_nth_unstable_by(n, busier);
        conns.truncate(n);
    }
    conns.sort_by(busier);
}

/// What ranks a flow's connection among the others (`keep_busiest`): its tuple, its send
/// and receive rates and its bytes. 64 bytes a flow, where a copy of the flow and its row
/// in the connection table come to several hundred.
pub type FlowActivity = (ConnKey, f64, f64, u64);

/// The tuples (sorted) of the `n` connections that `keep_busiest` would keep of the table
/// that `flows` (`Tracker::flow_activity`) and `sockets` make, and how many connections
/// that table has in all: the rows worth building when only the busiest are asked for.
pub fn busiest_tuples(
    mut flows: Vec<FlowActivity>,
    sockets: &[SocketRow],
    n: usize,
) -> (Vec<ConnKey>, usize) {
    flows.extend(sockets.iter().map(|s| (s.tuple(), 0.0, 0.0, 0)));
    // Stable, and summed in the table's order: each connection's rates come out exactly as
    // `connections` adds them up, so the ranking is the same.
    flows.sort_by_key(|a| a.0);
    flows.dedup_by(|later, first| {
        let same = later.0 == first.0;
        if same {
            first.1 += later.1;
            first.2 += later.2;
            first.3 += later.3;
        }
        same
    });
    let total = flows.len();
    let activity = |f: &FlowActivity| (f.1 + f.2, f.3);
    if n < flows.len() {
        flows.select_nth_unstable_by(n, |a, b| busier_first(activity(a), activity(b)));
        flows.truncate(n);
    }
    let mut tuples: Vec<ConnKey> = flows.into_iter().map(|f| f.0).collect();
    tuples.sort_unstable();
    (tuples, total)
}

fn set_owner(c: &mut Connection, o: &Owner) {
    c.pid = Some(o.pid);
    c.process = Some(o.comm.clone());
    c.uid = Some(o.uid);
    c.cgroup_id = Some(o.cgroup_id);
    c.cgroup = o.cgroup.as_deref().map(str::to_owned);
}

impl Tracker {
    /// The connection table: flows merged per 4-tuple, joined with the sockets that carry
    /// no traffic (listeners, TIME_WAIT...).
    pub fn connections(&self, sockets: &[SocketRow]) -> Vec<Connection> {
        let mut parts = self.flow_parts_where(&TupleFilter::default());
        let mut sockets = sockets.to_vec();
        connection_rows(&mut parts, &mut sockets).collect()
    }

    /// What the connection table takes of each flow whose connection `f` admits, in the
    /// table's order: a copy for building the rows outside the drain, cheap (owners are
    /// shared, ~100 bytes a flow), so that the drain waits only for the copy. Rates are the
    /// current ones (zero for a flow the last drain did not see move).
    pub fn flow_parts_where(&self, f: &TupleFilter) -> Vec<FlowPart> {
        self.flow_parts(self.flows.len(), |k| f.admits(&flow_tuple(k)))
    }

    /// `flow_parts_where` of the flows of these connections only (`tuples` sorted).
    pub fn flow_parts_of(&self, tuples: &[ConnKey]) -> Vec<FlowPart> {
        // A connection has a flow each way, more where it crosses more interfaces.
        self.flow_parts(2 * tuples.len(), |k| {
            tuples.binary_search(&flow_tuple(k)).is_ok()
        })
    }

    /// `room`: as many as the copy will hold, or more. Given at the start, not grown by
    /// doubling: a large vector's pages are mapped as they are written, so room a filter
    /// leaves unused costs no memory.
    fn flow_parts(&self, room: usize, want: impl Fn(&FlowKey) -> bool) -> Vec<FlowPart> {
        let mut parts = Vec::with_capacity(room);
        let chosen = self.flows.iter().filter(|(k, _)| want(k));
        parts.extend(chosen.enumerate().map(|(order, (k, e))| FlowPart {
            tuple: flow_tuple(k),
            ingress: k.direction == DIR_INGRESS,
            forwarded: e.forwarded,
            tcp_flags: e.tcp_flags,
            order: order as u32,
            bytes: e.bytes,
            packets: e.packets,
            rate_bps: self.current_rates(e).0,
            first_ns: e.first_ns,
            last_ns: e.last_ns,
            owner: e.owner.clone(),
        }));
        parts
    }

    /// Every flow's `FlowActivity`, in the table's order (which `busiest_tuples` keeps).
    pub fn flow_activity(&self) -> Vec<FlowActivity> {
        self.flow_activity_where(&TupleFilter::default())
    }

    /// `flow_activity` of the flows whose connection `f` admits.
    pub fn flow_activity_where(&self, f: &TupleFilter) -> Vec<FlowActivity> {
        // Room for every flow (see `flow_parts`).
        let mut activity = Vec::with_capacity(self.flows.len());
        let chosen = self.flows.iter().filter(|(k, _)| f.admits(&flow_tuple(k)));
        activity.extend(chosen.map(|(k, e)| {
            let (rate, _) = self.current_rates(e);
            let (sent, recv) = if k.direction == DIR_INGRESS {
                (0.0, rate)
            } else {
                (rate, 0.0)
            };
            (flow_tuple(k), sent, recv, e.bytes)
        }));
        activity
    }
}

/// What a connection's row takes of one of its flows (`Tracker::flow_parts_where`).
#[derive(Clone, Debug)]
pub struct FlowPart {
    pub tuple: ConnKey,
    pub ingress: bool,
    pub forwarded: bool,
    pub tcp_flags: u8,
    /// Its place in the copy: a connection's flows are summed in the table's order.
    order: u32,
    pub bytes: u64,
    pub packets: u64,
    /// Bytes/s over the last interval.
    pub rate_bps: f64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub owner: Option<Arc<Owner>>,
}

/// What a connection's tuple must be for a request to want it (`/api/network-stats`'s
/// `remote`, `port` and `proto`): every criterion given holds. The same for every flow of
/// a connection, so the flows can be chosen before the rows are built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TupleFilter {
    /// The remote address is in this network.
    pub remote: Option<crate::act::net::Net>,
    /// The local or the remote port is this (never an ICMP connection).
    pub port: Option<u16>,
    /// The protocol number; ICMP (1) stands for ICMPv6 (58) too.
    pub proto: Option<u8>,
}

impl TupleFilter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn admits(&self, t: &ConnKey) -> bool {
        let &(proto, _, local_port, remote, remote_port) = t;
        self.remote
            .as_ref()
            .is_none_or(|n| n.contains(to_ip(remote)))
            && self
                .port
                .is_none_or(|p| !is_icmp(proto) && (local_port == p || remote_port == p))
            && self
                .proto
                .is_none_or(|p| p == proto || (is_icmp(p) && is_icmp(proto)))
    }
}

/// The connection table of `parts` and `sockets` (see `Tracker::connections`), one row at
/// a time, in tuple order: `parts` and `sockets` are sorted by tuple first (a connection's
/// flows, and its sockets, keep their order), so that a row is built, written out and
/// freed before the next, and a table of a million connections is never in memory whole.
pub fn connection_rows<'a>(
    parts: &'a mut [FlowPart],
    sockets: &'a mut [SocketRow],
) -> ConnectionRows<'a> {
    parts.sort_unstable_by(|a, b| a.tuple.cmp(&b.tuple).then(a.order.cmp(&b.order)));
    sockets.sort_by_key(SocketRow::tuple);
    ConnectionRows {
        parts: parts.iter().peekable(),
        sockets: sockets.iter().peekable(),
    }
}

/// `connection_rows`' iterator.
pub struct ConnectionRows<'a> {
    parts: std::iter::Peekable<std::slice::Iter<'a, FlowPart>>,
    sockets: std::iter::Peekable<std::slice::Iter<'a, SocketRow>>,
}

impl Iterator for ConnectionRows<'_> {
    type Item = Connection;

    fn next(&mut self) -> Option<Connection> {
        let tuple = match (
            self.parts.peek().map(|p| p.tuple),
            self.sockets.peek().map(|s| s.tuple()),
        ) {
            (None, None) => return None,
            (Some(f), Some(s)) => f.min(s),
            (Some(t), None) | (None, Some(t)) => t,
        };
        let (proto, local_addr, local_port, remote_addr, remote_port) = tuple;
        let mut c = new_connection(proto, (local_addr, local_port), (remote_addr, remote_port));
        // The TCP flags of the row, OR-ed over its flows.
        let mut flags = 0;
        let mut flows = 0;
        while let Some(p) = self.parts.next_if(|p| p.tuple == tuple) {
            flows += 1;
            if p.ingress {
                c.bytes_recv += p.bytes;
                c.packets_recv += p.packets;
                c.recv_rate += p.rate_bps;
            } else {
                c.bytes_sent += p.bytes;
                c.packets_sent += p.packets;
                c.send_rate += p.rate_bps;
            }
            c.duration = c
                .duration
                .max(p.last_ns.saturating_sub(p.first_ns) as f64 / 1e9);
            flags |= p.tcp_flags;
            c.forwarded |= p.forwarded;
            if c.pid.is_none()
                && let Some(o) = &p.owner
            {
                set_owner(&mut c, o);
            }
        }
        if flows > 0 {
            c.tcp_flags = flags_string(flags);
            // Without a socket (closed, or not in this namespace) the state is inferred.
            c.status = match c.kind.as_str() {
                "TCP" if flags & (tcp_flags::RST | tcp_flags::FIN) != 0 => "CLOSED",
                "TCP" => "UNKNOWN",
                _ => "NONE",
            }
            .to_string();
        }
        let mut socket_only = flows == 0;
        while let Some(s) = self.sockets.next_if(|s| s.tuple() == tuple) {
            if socket_only {
                c.uid = Some(s.uid);
                socket_only = false;
            }
            c.status = s.state.clone();
            c.tcp_quality = s.quality;
            if c.pid.is_none()
                && let Some(o) = &s.owner
            {
                set_owner(&mut c, o);
            }
        }
        Some(c)
    }
}

impl Tracker {
    /// Credits `segs` TCP segments sent again by a socket of `owner` (None: not known) to
    /// its command name and cgroup, in the totals and in this tick's `out`.
    pub fn credit_retransmits(
        &mut self,
        out: &mut TickOutput,
        owner: Option<&Owner>,
        segs: u64,
        now_ns: u64,
    ) {
        let (name, cgroup) = owner.map_or((UNKNOWN_PROCESS, UNKNOWN_CGROUP), |o| {
            (
                o.comm.as_str(),
                o.cgroup.as_deref().unwrap_or(UNKNOWN_CGROUP),
            )
        });
        for (totals, deltas, label) in [
            (&mut self.procs, &mut out.proc_deltas, name),
            (&mut self.cgroups, &mut out.cgroup_deltas, cgroup),
        ] {
            let t = totals.entry(label.to_string()).or_default();
            t.tcp_retransmits += segs;
            t.last_active_ns = t.last_active_ns.max(now_ns);
            deltas.entry(label.to_string()).or_default().tcp_retransmits += segs;
        }
    }

    /// Per-process totals and rates, busiest first.
    pub fn processes(&self) -> Vec<ProcessRow> {
        busiest(&self.procs, |process, traffic| ProcessRow {
            process,
            traffic,
        })
    }

    /// Per-cgroup totals and rates, busiest first.
    pub fn cgroups(&self) -> Vec<CgroupRow> {
        busiest(&self.cgroups, |cgroup, traffic| CgroupRow {
            cgroup,
            traffic,
        })
    }

    /// Per application protocol totals and rates, busiest first.
    pub fn services(&self) -> Vec<ServiceRow> {
        busiest(&self.services, |service, traffic| ServiceRow {
            service,
            traffic,
        })
    }
}

/// Orders (rate, bytes) pairs busiest first: by rate, then by bytes.
fn busier_first(a: (f64, u64), b: (f64, u64)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(b.1.cmp(&a.1))
}

/// The rows of `totals`, busiest first (by the last interval's rate, then by bytes).
fn busiest<R>(totals: &BTreeMap<String, ProcTotals>, row: impl Fn(String, Traffic) -> R) -> Vec<R> {
    let mut rows: Vec<(String, Traffic)> = totals
        .iter()
        .map(|(name, t)| {
            let traffic = Traffic {
                bytes_sent: t.tx_bytes,
                bytes_recv: t.rx_bytes,
                packets_sent: t.tx_packets,
                packets_recv: t.rx_packets,
                send_rate: t.tx_rate,
                recv_rate: t.rx_rate,
                tcp_retransmits: t.tcp_retransmits,
            };
            (name.clone(), traffic)
        })
        .collect();
    let activity = |t: &Traffic| (t.send_rate + t.recv_rate, t.bytes_sent + t.bytes_recv);
    rows.sort_by(|(_, a), (_, b)| busier_first(activity(a), activity(b)));
    rows.into_iter().map(|(name, t)| row(name, t)).collect()
}

/// What a process or a cgroup moved, in `/api/network-stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    /// Bytes/s credited during the last interval.
    pub send_rate: f64,
    pub recv_rate: f64,
    /// TCP segments its sockets sent again (lost, or taken for lost).
    pub tcp_retransmits: u64,
}

/// One process (by command name) in `/api/network-stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRow {
    pub process: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// One application protocol (`service_of`: http, https, ssh, dns...) in
/// `/api/network-stats`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    pub service: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// One cgroup (by path: a systemd unit, a container, a pod) in `/api/network-stats`.
#[derive(Debug, Clone, Serialize)]
pub struct CgroupRow {
    pub cgroup: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[cfg(test)]
mod tests {
    use netmon_common::{DIR_EGRESS, IPPROTO_ICMP, v4_mapped};

    use super::*;

    fn key(dir: u8, lport: u16) -> FlowKey {
        FlowKey {
            ifindex: 2,
            direction: dir,
            proto: IPPROTO_TCP,
            family: 4,
            flags: 0,
            local_port: lport,
            remote_port: 80,
            local_addr: v4_mapped([198, 18, 0, 1]),
            remote_addr: v4_mapped([198, 18, 0, 2]),
        }
    }

    fn sample(k: FlowKey, bytes: u64, packets: u64, last: u64) -> FlowSample {
        FlowSample {
            key: k,
            bytes,
            packets,
            first_ns: 1_000,
            last_ns: last,
            tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
        }
    }

    fn owner(pid: u32, comm: &str) -> Owner {
        Owner {
            pid,
            uid: 0,
            cgroup_id: 1,
            cgroup: None,
            comm: comm.into(),
            by_port: false,
            far_end: false,
        }
    }

    /// A TCP socket from 198.18.0.1:`lport` to 198.18.0.2:80 in `state`.
    fn socket(lport: u16, state: &str) -> SocketRow {
        SocketRow {
            proto: IPPROTO_TCP,
            local_addr: v4_mapped([198, 18, 0, 1]),
            local_port: lport,
            remote_addr: v4_mapped([198, 18, 0, 2]),
            remote_port: 80,
            state: state.into(),
            inode: 1,
            uid: 0,
            owner: None,
            quality: None,
        }
    }

    const SEC: u64 = 1_000_000_000;

    /// One drain of per-CPU table deltas: `(sample, owner known)` per slot that grew.
    fn delta_tick(t: &mut Tracker, deltas: &[FlowSample], now: u64) -> TickOutput {
        let mut st = t.begin_tick(1.0);
        for d in deltas {
            t.apply_delta(&mut st, d, |_| Some(owner(42, "iperf3")));
        }
        t.finish_tick(st, now, 60 * SEC, false, |_| Some(owner(42, "iperf3")))
    }

    #[test]
    fn deltas_of_one_flow_from_several_cpus_add_up() {
        let mut t = Tracker::default();
        let k = key(DIR_EGRESS, 40000);
        // CPU 0 and CPU 1 both counted the new flow in the first drain.
        let out = delta_tick(
            &mut t,
            &[sample(k, 1000, 10, SEC), sample(k, 500, 5, SEC)],
            SEC,
        );
        assert_eq!(out.new_flows.len(), 1);
        assert_eq!(out.proc_deltas["iperf3"].tx_bytes, 1500);
        assert_eq!(out.proto_deltas[&(IPPROTO_TCP, DIR_EGRESS)], (1500, 15));
        let e = &t.flows[&k];
        assert_eq!((e.bytes, e.packets), (1500, 15));
        assert_eq!(t.rates(&k).unwrap().0, 1500.0);
        // Next drain: growth only, from one CPU, and the totals go on from 1,500.
        let out = delta_tick(&mut t, &[sample(k, 200, 2, 2 * SEC)], 2 * SEC);
        assert!(out.new_flows.is_empty());
        assert_eq!(out.proc_deltas["iperf3"].tx_bytes, 200);
        let e = &t.flows[&k];
        assert_eq!((e.bytes, e.packets), (1700, 17));
        assert_eq!(t.rates(&k).unwrap(), (200.0, 2.0));
    }

    /// Credits and protocol totals are gathered over runs of flows of one process or
    /// protocol: flows of two processes, both directions and two protocols, interleaved in
    /// one drain, still credit each exactly what it moved.
    #[test]
    fn interleaved_processes_and_protocols_are_credited_exactly() {
        let mut t = Tracker::default();
        let flow = |i: u16| {
            let mut k = key(
                if i.is_multiple_of(3) {
                    DIR_INGRESS
                } else {
                    DIR_EGRESS
                },
                30000 + i,
            );
            if i.is_multiple_of(4) {
                k.proto = IPPROTO_UDP;
            }
            k
        };
        let comm = |k: &FlowKey| {
            if k.local_port.is_multiple_of(2) {
                "even"
            } else {
                "odd"
            }
        };
        // The same command name in several cgroups, and one cgroup with both names.
        let cgroup =
            |k: &FlowKey| ["/a.slice/x.service", "/b.slice", "/"][k.local_port as usize % 3];
        let samples: Vec<FlowSample> = (0..40u16)
            .map(|i| sample(flow(i), 100 + u64::from(i), 1 + u64::from(i % 5), SEC))
            .collect();
        let out = t.apply_flows(&samples, SEC, 1.0, 60 * SEC, |k| {
            Some(Owner {
                cgroup: Some(cgroup(k).into()),
                ..owner(1, comm(k))
            })
        });
        let mut want_procs: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
        let mut want_cgroups = want_procs.clone();
        let mut want_protos: BTreeMap<(u8, u8), (u64, u64)> = BTreeMap::new();
        for s in &samples {
            for w in [
                want_procs.entry(comm(&s.key)).or_default(),
                want_cgroups.entry(cgroup(&s.key)).or_default(),
            ] {
                if s.key.direction == DIR_INGRESS {
                    w.0 += s.bytes;
                    w.1 += s.packets;
                } else {
                    w.2 += s.bytes;
                    w.3 += s.packets;
                }
            }
            let p = want_protos
                .entry((s.key.proto, s.key.direction))
                .or_default();
            p.0 += s.bytes;
            p.1 += s.packets;
        }
        assert_eq!(want_cgroups.len(), 3);
        for (want, deltas, totals) in [
            (&want_procs, &out.proc_deltas, &t.procs),
            (&want_cgroups, &out.cgroup_deltas, &t.cgroups),
        ] {
            assert_eq!(deltas.len(), want.len());
            for (name, &(rx_b, rx_p, tx_b, tx_p)) in want {
                let d = &deltas[*name];
                assert_eq!(
                    (d.rx_bytes, d.rx_packets, d.tx_bytes, d.tx_packets),
                    (rx_b, rx_p, tx_b, tx_p),
                    "{name}"
                );
                let p = &totals[*name];
                assert_eq!((p.rx_bytes, p.tx_bytes), (rx_b, tx_b), "{name}");
                assert_eq!((p.rx_rate, p.tx_rate), (rx_b as f64, tx_b as f64), "{name}");
            }
        }
        assert_eq!(out.proto_deltas, want_protos);
    }

    /// A cgroup silent for an hour leaves the totals (a command name stays).
    #[test]
    fn silent_cgroups_leave_the_totals() {
        let mut t = Tracker::default();
        let owned = |cg: &str| {
            Some(Owner {
                cgroup: Some(cg.into()),
                ..owner(1, "app")
            })
        };
        let (a, b) = (key(DIR_EGRESS, 41000), key(DIR_EGRESS, 41001));
        t.apply_flows(&[sample(a, 100, 1, SEC)], SEC, 1.0, u64::MAX, |_| {
            owned("/gone.scope")
        });
        let late = SEC + CGROUP_IDLE_NS;
        t.apply_flows(&[sample(b, 100, 1, late)], late, 1.0, u64::MAX, |_| {
            owned("/kept.scope")
        });
        assert!(
            t.cgroups.contains_key("/gone.scope"),
            "an hour exactly: kept"
        );
        t.apply_flows(&[], late + SEC, 1.0, u64::MAX, |_| None);
        assert!(!t.cgroups.contains_key("/gone.scope"));
        assert_eq!(t.cgroups["/kept.scope"].tx_bytes, 100);
        assert_eq!(t.procs["app"].tx_bytes, 200);
    }

    /// Flows waiting for an owner that a drain did not read are retried in that drain's
    /// finish, whether the waiting flows are few (looked up by key) or many (one pass).
    #[test]
    fn waiting_flows_are_retried_when_few_and_when_many() {
        for n in [2u16, 200] {
            let mut t = Tracker::default();
            // 400 flows, `n` of them without an owner for now.
            let samples: Vec<FlowSample> = (0..400u16)
                .map(|i| sample(key(DIR_EGRESS, 20000 + i), 10, 1, SEC))
                .collect();
            dirty_tick(&mut t, &samples, SEC, |k| {
                (k.local_port >= 20000 + n).then(|| owner(7, "known"))
            });
            assert_eq!(t.procs["known"].tx_bytes, 10 * u64::from(400 - n));
            assert_eq!(t.pending.len(), usize::from(n));
            // A drain that reads nothing; the owners are known now.
            let out = dirty_tick(&mut t, &[], 2 * SEC, |_| Some(owner(8, "late")));
            assert_eq!(
                out.proc_deltas["late"].tx_bytes,
                10 * u64::from(n),
                "{n} waiting"
            );
            assert_eq!(t.flows.len(), 400);
            assert!(t.flows.values().all(|e| e.owner.is_some() && !e.waiting));
            assert!(t.pending.is_empty());
        }
    }

    #[test]
    fn deltas_rates_and_process_credit() {
        let mut t = Tracker::default();
        let k = key(DIR_EGRESS, 40000);
        let out = t.apply_flows(&[sample(k, 1000, 10, SEC)], SEC, 1.0, 60 * SEC, |_| {
            Some(owner(42, "curl"))
        });
        assert_eq!(out.proc_deltas["curl"].tx_bytes, 1000);
        let out = t.apply_flows(
            &[sample(k, 3500, 20, 2 * SEC)],
            2 * SEC,
            0.5,
            60 * SEC,
            |_| panic!("owner is cached"),
        );
        assert_eq!(out.proc_deltas["curl"].tx_bytes, 2500);
        let e = &t.flows[&k];
        assert_eq!(e.rate_bps, 5000.0);
        assert_eq!(e.rate_pps, 20.0);
        assert_eq!(t.procs["curl"].tx_bytes, 3500);
        assert_eq!(t.procs["curl"].tx_packets, 20);
        assert_eq!(t.procs["curl"].tx_rate, 5000.0);
    }

    /// A drain of the dirty flows only: `samples` are the flows that changed.
    fn dirty_tick(
        t: &mut Tracker,
        samples: &[FlowSample],
        now: u64,
        lookup: impl FnMut(&FlowKey) -> Option<Owner> + Copy,
    ) -> TickOutput {
        let mut st = t.begin_tick(1.0);
        for s in samples {
            t.apply_sample(&mut st, s, lookup);
        }
        t.finish_tick(st, now, 60 * SEC, false, lookup)
    }

    #[test]
    fn dirty_drains_keep_unchanged_flows_and_full_drains_see_evictions() {
        let mut t = Tracker::default();
        let (a, b) = (key(DIR_EGRESS, 40000), key(DIR_EGRESS, 40001));
        let curl = |_: &FlowKey| Some(owner(42, "curl"));
        t.apply_flows(
            &[sample(a, 1000, 10, SEC), sample(b, 500, 5, SEC)],
            SEC,
            1.0,
            60 * SEC,
            curl,
        );
        // Only `a` changed: `b` keeps its totals, its rate drops to zero, nothing is evicted.
        let out = dirty_tick(&mut t, &[sample(a, 3000, 20, 2 * SEC)], 2 * SEC, curl);
        assert_eq!(out.evicted, 0);
        assert_eq!(t.rates(&a).unwrap().0, 2000.0);
        assert_eq!((t.flows[&b].bytes, t.rates(&b).unwrap().0), (500, 0.0));
        assert_eq!(t.procs["curl"].tx_bytes, 3000 + 500);
        // A full drain that does not see `b`: the kernel evicted it.
        let out = t.apply_flows(
            &[sample(a, 3000, 20, 2 * SEC)],
            3 * SEC,
            1.0,
            60 * SEC,
            curl,
        );
        assert_eq!(out.evicted, 1);
        assert!(!t.flows.contains_key(&b));
        assert_eq!(t.rates(&a).unwrap().0, 0.0);
    }

    #[test]
    fn pending_traffic_is_attributed_even_when_its_flow_is_not_read_again() {
        let mut t = Tracker::default();
        let k = key(DIR_EGRESS, 40002);
        // The only packets arrive before the kernel recorded the owner...
        let out = dirty_tick(&mut t, &[sample(k, 300, 3, SEC)], SEC, |_| None);
        assert!(out.proc_deltas.is_empty(), "held until attributed");
        // ...and the flow never changes again, so no drain reads it; the owner shows up.
        let out = dirty_tick(&mut t, &[], 2 * SEC, |_| Some(owner(9, "shortlived")));
        assert_eq!(out.proc_deltas["shortlived"].tx_bytes, 300);
        assert!(t.pending.is_empty());
    }

    #[test]
    fn idle_flows_expire_on_dirty_drains_every_sweep() {
        let mut t = Tracker::default();
        let k = key(DIR_EGRESS, 40003);
        t.apply_flows(&[sample(k, 100, 1, SEC)], SEC, 1.0, 60 * SEC, |_| None);
        let mut expired = Vec::new();
        for i in 0..SWEEP_EVERY {
            let out = dirty_tick(&mut t, &[], (62 + i) * SEC, |_| None);
            expired.extend(out.expired);
        }
        assert_eq!(expired, vec![k], "found within one sweep period");
    }

    #[test]
    fn late_attribution_credits_pending_traffic() {
        let mut t = Tracker::default();
        let k = key(DIR_INGRESS, 8080);
        // First tick: the SYN arrived before the kernel recorded the accepting server.
        let out = t.apply_flows(&[sample(k, 74, 1, SEC)], SEC, 1.0, 60 * SEC, |_| None);
        assert!(out.proc_deltas.is_empty(), "held until attributed");
        let out = t.apply_flows(
            &[sample(k, 200, 3, 2 * SEC)],
            2 * SEC,
            1.0,
            60 * SEC,
            |_| Some(owner(7, "server")),
        );
        assert_eq!(out.proc_deltas["server"].rx_bytes, 200);
        assert_eq!(out.proc_deltas["server"].rx_packets, 3);
        assert!(!t.procs.contains_key(UNKNOWN_PROCESS));
    }

    /// A TCP flow takes its socket's own record; the local port's owner (the last to listen
    /// on the port, maybe in another network namespace) only once the record has had
    /// `TCP_EXACT_TRIES` drains to appear.
    #[test]
    fn a_tcp_flow_waits_for_its_own_socket_record_before_the_ports_owner() {
        let by_port = |pid, comm: &str| Owner {
            by_port: true,
            ..owner(pid, comm)
        };
        let k = key(DIR_INGRESS, 8080);
        // The record comes at the second drain: it is the owner, not the port's.
        let mut t = Tracker::default();
        let out = t.apply_flows(&[sample(k, 74, 1, SEC)], SEC, 1.0, 60 * SEC, |_| {
            Some(by_port(9, "other-ns"))
        });
        assert!(
            out.proc_deltas.is_empty(),
            "held for the socket's own record"
        );
        let out = t.apply_flows(
            &[sample(k, 200, 3, 2 * SEC)],
            2 * SEC,
            1.0,
            60 * SEC,
            |_| Some(owner(7, "server")),
        );
        assert_eq!(out.proc_deltas["server"].rx_bytes, 200);
        assert!(!t.procs.contains_key("other-ns"));
        // No record ever (a socket older than the daemon): the port's owner after that.
        let mut t = Tracker::default();
        for i in 1..=u64::from(TCP_EXACT_TRIES) {
            let out = t.apply_flows(
                &[sample(k, 100 * i, i, i * SEC)],
                i * SEC,
                1.0,
                60 * SEC,
                |_| Some(by_port(9, "listener")),
            );
            assert!(out.proc_deltas.is_empty(), "drain {i}");
        }
        let n = u64::from(TCP_EXACT_TRIES) + 1;
        let out = t.apply_flows(
            &[sample(k, 100 * n, n, n * SEC)],
            n * SEC,
            1.0,
            60 * SEC,
            |_| Some(by_port(9, "listener")),
        );
        assert_eq!(out.proc_deltas["listener"].rx_bytes, 100 * n);
        // UDP takes its port's owner at once (it is how UDP senders are known).
        let mut t = Tracker::default();
        let u = FlowKey {
            proto: IPPROTO_UDP,
            ..k
        };
        let out = t.apply_flows(&[sample(u, 50, 1, SEC)], SEC, 1.0, 60 * SEC, |_| {
            Some(by_port(5, "dns"))
        });
        assert_eq!(out.proc_deltas["dns"].rx_bytes, 50);
    }

    #[test]
    fn unattributable_traffic_goes_to_unknown_after_eager_tries() {
        let mut t = Tracker::default();
        let k = key(DIR_INGRESS, 9999);
        let mut lookups = 0;
        for i in 1..=EAGER_TRIES as u64 {
            t.apply_flows(
                &[sample(k, 100 * i, i, i * SEC)],
                i * SEC,
                1.0,
                60 * SEC,
                |_| {
                    lookups += 1;
                    None
                },
            );
        }
        assert_eq!(lookups, EAGER_TRIES);
        assert_eq!(t.procs[UNKNOWN_PROCESS].rx_bytes, 100 * EAGER_TRIES as u64);
        assert_eq!(t.cgroups[UNKNOWN_CGROUP].rx_bytes, 100 * EAGER_TRIES as u64);
        // Then only every RETRY_EVERY ticks.
        let mut more = 0;
        for i in 0..10 {
            let n = EAGER_TRIES as u64 + 1 + i;
            t.apply_flows(
                &[sample(k, 100 * n, n, n * SEC)],
                n * SEC,
                1.0,
                60 * SEC,
                |_| {
                    more += 1;
                    None
                },
            );
        }
        assert!(more <= 1, "{more} lookups in 10 ticks");
    }

    #[test]
    fn local_addrs_admit_the_hosts_loopback_multicast_and_broadcast_addresses() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
        let local = LocalAddrs::new([
            v4_mapped([10, 78, 0, 1]),
            v4_mapped([10, 78, 0, 255]),
            v6("fd00::1"),
        ]);
        for a in [
            v4_mapped([10, 78, 0, 1]),
            v4_mapped([10, 78, 0, 255]),
            v4_mapped([127, 0, 0, 2]),
            v4_mapped([224, 0, 0, 251]),
            v4_mapped([239, 1, 2, 3]),
            v4_mapped([255, 255, 255, 255]),
            v6("fd00::1"),
            v6("::1"),
            v6("ff02::fb"),
        ] {
            assert!(local.admits(&a), "{a:?}");
        }
        for a in [
            v4_mapped([10, 78, 0, 2]),
            v4_mapped([10, 77, 0, 2]),
            v6("fd00::2"),
        ] {
            assert!(!local.admits(&a), "{a:?}");
        }
        // Not read (yet): every address.
        assert!(LocalAddrs::default().admits(&v4_mapped([10, 77, 0, 2])));
    }

    /// Forwarded frames without an owner are the `forwarded` process's and cgroup's, not
    /// `unknown`'s: an egress flow the program marked, and an ingress flow to an address that
    /// is not the host's. An ingress flow to the host's address stays `unknown`'s, and a
    /// forwarded flow whose socket is found (a container's connection) is its process's.
    #[test]
    fn forwarded_traffic_without_an_owner_is_labelled_forwarded() {
        let mut t = Tracker::default();
        // 198.18.0.1 is the host's (`key`'s local address); 198.18.0.9 a container's.
        t.set_local(Arc::new(LocalAddrs::new([v4_mapped([198, 18, 0, 1])])));
        let marked = FlowKey {
            flags: FLOW_FLAG_FORWARDED,
            ..key(DIR_EGRESS, 1)
        };
        let to_other = FlowKey {
            local_addr: v4_mapped([198, 18, 0, 9]),
            ..key(DIR_INGRESS, 2)
        };
        let to_host = key(DIR_INGRESS, 3);
        let owned = FlowKey {
            flags: FLOW_FLAG_FORWARDED,
            ..key(DIR_EGRESS, 4)
        };
        for i in 1..=EAGER_TRIES as u64 {
            let samples =
                [marked, to_other, to_host, owned].map(|k| sample(k, 100 * i, i, i * SEC));
            t.apply_flows(&samples, i * SEC, 1.0, 60 * SEC, |k| {
                (k == &owned).then(|| owner(7, "app"))
            });
        }
        let n = EAGER_TRIES as u64;
        let fwd = &t.procs[FORWARDED_PROCESS];
        assert_eq!((fwd.tx_bytes, fwd.rx_bytes), (100 * n, 100 * n));
        let fwd = &t.cgroups[FORWARDED_PROCESS];
        assert_eq!((fwd.tx_bytes, fwd.rx_bytes), (100 * n, 100 * n));
        assert_eq!(
            (
                t.procs[UNKNOWN_PROCESS].tx_bytes,
                t.procs[UNKNOWN_PROCESS].rx_bytes
            ),
            (0, 100 * n)
        );
        assert_eq!(t.procs["app"].tx_bytes, 100 * n);
        let flagged: Vec<bool> = [marked, to_other, to_host, owned]
            .iter()
            .map(|k| t.flows[k].forwarded)
            .collect();
        assert_eq!(flagged, [true, true, false, true]);
        let rows = t.connections(&[]);
        let row = |local: &str| {
            rows.iter()
                .find(|c| c.local_address == local)
                .unwrap_or_else(|| panic!("{local} in {rows:?}"))
        };
        assert!(row("198.18.0.1:1").forwarded);
        assert!(row("198.18.0.9:2").forwarded);
        assert!(!row("198.18.0.1:3").forwarded);
        assert_eq!(row("198.18.0.1:4").process.as_deref(), Some("app"));
        let json = serde_json::to_value(row("198.18.0.1:1")).unwrap();
        assert_eq!(json["forwarded"], true);
        let json = serde_json::to_value(row("198.18.0.1:3")).unwrap();
        assert!(json.get("forwarded").is_none(), "{json}");
    }

    /// Datagrams received on a UDP port that a process owns are that process's, found in the
    /// drain that brought them; unless the same drain also brings, after them, a forwarded
    /// egress flow of the same tuple: then they are the replies to datagrams the host
    /// masquerades (sent on from its address and that port), and forwarded too. The lookup
    /// for a forwarded flow says so (`FLOW_FLAG_FORWARDED`), and a port's owner never owns
    /// one (`drain::resolve`): here the lookup plays that part.
    #[test]
    fn replies_to_masqueraded_datagrams_are_not_the_udp_ports_owners() {
        let udp = |dir, lport| FlowKey {
            proto: IPPROTO_UDP,
            ..key(dir, lport)
        };
        let by_port = |k: &FlowKey| {
            (!is_forwarded(k)).then(|| Owner {
                by_port: true,
                ..owner(5, "dns")
            })
        };
        let mut t = Tracker::default();
        let served = udp(DIR_INGRESS, 53);
        t.apply_flows(&[sample(served, 100, 1, SEC)], SEC, 1.0, 60 * SEC, by_port);
        assert_eq!(t.flows[&served].owner.as_ref().map(|o| o.pid), Some(5));
        assert_eq!(t.procs["dns"].rx_bytes, 100);

        let mut t = Tracker::default();
        let replies = udp(DIR_INGRESS, 40000);
        let masqueraded = FlowKey {
            flags: FLOW_FLAG_FORWARDED,
            ..udp(DIR_EGRESS, 40000)
        };
        for i in 1..=EAGER_TRIES as u64 {
            let samples = [
                sample(replies, 100 * i, i, i * SEC),
                sample(masqueraded, 100 * i, i, i * SEC),
            ];
            t.apply_flows(&samples, i * SEC, 1.0, 60 * SEC, by_port);
        }
        let n = EAGER_TRIES as u64;
        assert!(t.flows[&replies].owner.is_none());
        assert!(t.flows[&replies].forwarded);
        assert!(!t.procs.contains_key("dns"), "{:?}", t.procs);
        let fwd = &t.procs[FORWARDED_PROCESS];
        assert_eq!((fwd.rx_bytes, fwd.tx_bytes), (100 * n, 100 * n));
    }

    #[test]
    fn eviction_and_idle_expiry() {
        let mut t = Tracker::default();
        let a = key(DIR_EGRESS, 1);
        let b = key(DIR_EGRESS, 2);
        t.apply_flows(
            &[sample(a, 10, 1, SEC), sample(b, 10, 1, SEC)],
            SEC,
            1.0,
            5 * SEC,
            |_| None,
        );
        // `a` vanished without us deleting it: an LRU eviction.
        let out = t.apply_flows(&[sample(b, 10, 1, SEC)], 2 * SEC, 1.0, 5 * SEC, |_| None);
        assert_eq!(out.evicted, 1);
        assert_eq!(t.evictions, 1);
        // `b` idle past the timeout: expired and handed back for deletion.
        let out = t.apply_flows(&[sample(b, 10, 1, SEC)], 7 * SEC, 1.0, 5 * SEC, |_| None);
        assert_eq!(out.expired, vec![b]);
        assert!(t.flows.is_empty());
        assert_eq!(t.expired, 1);
    }

    /// `egress_twin` follows the table whichever direction arrives first and whichever
    /// leaves first (LRU eviction on a full drain, or idle expiry).
    #[test]
    fn ingress_flows_know_whether_their_egress_side_is_held() {
        let twin = |t: &Tracker, k: &FlowKey| t.flows[k].egress_twin;
        // A full drain of these samples at `now`, one-minute idle timeout, no owners.
        let drain = |t: &mut Tracker, samples: &[FlowSample], now: u64| {
            t.apply_flows(samples, now, 1.0, 60 * SEC, |_| None)
        };
        let mut t = Tracker::default();
        let (inn, out) = (key(DIR_INGRESS, 1), key(DIR_EGRESS, 1));
        let other_in = key(DIR_INGRESS, 2);
        // Ingress first, then its egress side: the ingress entry learns of it.
        drain(
            &mut t,
            &[sample(inn, 10, 1, SEC), sample(other_in, 1, 1, SEC)],
            SEC,
        );
        assert!(!twin(&t, &inn));
        drain(
            &mut t,
            &[
                sample(inn, 10, 1, SEC),
                sample(out, 10, 1, SEC),
                sample(other_in, 1, 1, SEC),
            ],
            2 * SEC,
        );
        assert!(twin(&t, &inn));
        assert!(
            !twin(&t, &other_in),
            "another tuple's egress side does not count"
        );
        // The egress side evicted by the kernel: the flag goes with it.
        drain(
            &mut t,
            &[sample(inn, 10, 1, SEC), sample(other_in, 1, 1, SEC)],
            3 * SEC,
        );
        assert!(!t.flows.contains_key(&out));
        assert!(!twin(&t, &inn));
        // Egress first this time (it comes back), ingress already held: flag set again.
        drain(
            &mut t,
            &[
                sample(inn, 10, 1, SEC),
                sample(out, 5, 1, 4 * SEC),
                sample(other_in, 1, 1, SEC),
            ],
            4 * SEC,
        );
        assert!(twin(&t, &inn));
        // The egress side idle past the timeout while the ingress side is active.
        let out_ = drain(
            &mut t,
            &[
                sample(inn, 20, 2, 70 * SEC),
                sample(out, 5, 1, 4 * SEC),
                sample(other_in, 2, 2, 70 * SEC),
            ],
            70 * SEC,
        );
        assert_eq!(out_.expired, vec![out]);
        assert!(!twin(&t, &inn));
        // A new ingress flow whose egress side the table already holds.
        let mut t = Tracker::default();
        drain(&mut t, &[sample(out, 10, 1, SEC)], SEC);
        drain(
            &mut t,
            &[sample(out, 10, 1, SEC), sample(inn, 10, 1, 2 * SEC)],
            2 * SEC,
        );
        assert!(twin(&t, &inn));
    }

    #[test]
    fn recreated_entry_counts_from_zero() {
        let mut t = Tracker::default();
        let k = key(DIR_EGRESS, 5);
        t.apply_flows(&[sample(k, 1000, 10, SEC)], SEC, 1.0, 60 * SEC, |_| {
            Some(owner(1, "a"))
        });
        // Evicted and re-created between drains: smaller counters are all new traffic.
        let out = t.apply_flows(
            &[sample(k, 300, 2, 2 * SEC)],
            2 * SEC,
            1.0,
            60 * SEC,
            |_| None,
        );
        assert_eq!(out.proc_deltas["a"].tx_bytes, 300);
        assert_eq!(t.procs["a"].tx_bytes, 1300);
    }

    #[test]
    fn connection_table_merges_directions_and_sockets() {
        let mut t = Tracker::default();
        let tx = key(DIR_EGRESS, 40000);
        let rx = key(DIR_INGRESS, 40000);
        t.apply_flows(
            &[
                sample(tx, 500, 5, 3 * SEC),
                FlowSample {
                    last_ns: 4 * SEC,
                    ..sample(rx, 700, 6, 0)
                },
            ],
            4 * SEC,
            1.0,
            60 * SEC,
            |_| Some(owner(99, "client")),
        );
        let listener = SocketRow {
            proto: IPPROTO_TCP,
            local_addr: [0; 16],
            local_port: 22,
            remote_addr: [0; 16],
            remote_port: 0,
            state: "LISTEN".into(),
            inode: 1,
            uid: 0,
            owner: Some(owner(1, "sshd")),
            quality: None,
        };
        let established = SocketRow {
            local_addr: v4_mapped([198, 18, 0, 1]),
            local_port: 40000,
            remote_addr: v4_mapped([198, 18, 0, 2]),
            remote_port: 80,
            state: "ESTABLISHED".into(),
            owner: None,
            quality: Some(crate::sockdiag::TcpQuality {
                rtt_us: 250,
                rtt_var_us: 40,
                retrans_segments: 3,
                sent_segments: 120,
            }),
            ..listener.clone()
        };
        let conns = t.connections(&[listener, established]);
        assert_eq!(conns.len(), 2, "{conns:#?}");
        let c = conns
            .iter()
            .find(|c| c.local_address == "198.18.0.1:40000")
            .unwrap();
        assert_eq!(c.remote_address, "198.18.0.2:80");
        assert_eq!((c.bytes_sent, c.bytes_recv), (500, 700));
        assert_eq!((c.packets_sent, c.packets_recv), (5, 6));
        assert_eq!(c.status, "ESTABLISHED");
        assert_eq!(
            c.tcp_quality.map(|q| (q.rtt_us, q.retrans_segments)),
            Some((250, 3))
        );
        assert_eq!(c.pid, Some(99));
        assert_eq!(c.process.as_deref(), Some("client"));
        assert_eq!(c.kind, "TCP");
        // From the earliest first packet (1 us) to the latest last packet (4 s).
        assert_eq!(c.duration, (4 * SEC - 1_000) as f64 / 1e9);
        let l = conns.iter().find(|c| c.status == "LISTEN").unwrap();
        assert_eq!(l.local_address, "[::]:22");
        assert_eq!(l.process.as_deref(), Some("sshd"));
        assert_eq!(l.bytes_sent + l.bytes_recv, 0);
    }

    /// The rows come one per tuple, in tuple order, whatever order the flows and sockets
    /// are in: a socket without traffic makes a row between the flows' rows, a tuple's flows
    /// on two interfaces and its two sockets make one row.
    #[test]
    fn connection_rows_come_in_tuple_order() {
        let mut t = Tracker::default();
        let on = |ifindex: u32, k: FlowKey| FlowKey { ifindex, ..k };
        t.apply_flows(
            &[
                sample(key(DIR_EGRESS, 3000), 30, 1, SEC),
                sample(on(7, key(DIR_EGRESS, 1000)), 5, 1, SEC),
                sample(key(DIR_EGRESS, 1000), 10, 1, SEC),
                sample(key(DIR_INGRESS, 1000), 20, 2, SEC),
            ],
            SEC,
            1.0,
            60 * SEC,
            |k| Some(owner(k.ifindex, "app")),
        );
        let sockets = [
            socket(3000, "TIME_WAIT"),
            SocketRow {
                uid: 33,
                ..socket(2000, "SYN_SENT")
            },
            socket(3000, "ESTABLISHED"),
        ];
        let rows: Vec<(u16, u64, u64, String, Option<u32>)> = t
            .connections(&sockets)
            .into_iter()
            .map(|c| (c.tuple.1, c.bytes_sent, c.bytes_recv, c.status, c.pid))
            .collect();
        assert_eq!(
            rows,
            [
                // The first of its flows in the table's order with an owner gives it.
                (1000, 15, 20, "UNKNOWN".to_string(), Some(7)),
                (2000, 0, 0, "SYN_SENT".to_string(), None),
                (3000, 30, 0, "ESTABLISHED".to_string(), Some(2)),
            ]
        );
        assert_eq!(t.connections(&sockets)[1].uid, Some(33));
    }

    /// `keep_busiest` keeps the N busiest by rate, then bytes, busiest first.
    #[test]
    fn the_busiest_connections_are_kept_in_order() {
        let conn = |port: u16, rate: f64, bytes: u64| Connection {
            send_rate: rate,
            bytes_recv: bytes,
            ..new_connection(IPPROTO_TCP, ([0; 16], port), ([0; 16], 80))
        };
        let all = vec![
            conn(1, 0.0, 10),
            conn(2, 5.0, 0),
            conn(3, 0.0, 500),
            conn(4, 9.0, 1),
            conn(5, 5.0, 7),
        ];
        let ports = |c: &[Connection]| c.iter().map(|c| c.tuple.1).collect::<Vec<_>>();
        for (n, want) in [
            (0, vec![]),
            (2, vec![4, 5]),
            (4, vec![4, 5, 2, 3]),
            (9, vec![4, 5, 2, 3, 1]),
        ] {
            let mut c = all.clone();
            keep_busiest(&mut c, n);
            assert_eq!(ports(&c), want, "n = {n}");
        }
    }

    /// Choosing the busiest tuples first (`busiest_tuples`, `flow_parts_of`) gives the
    /// rows, order and total that building the whole table and keeping its busiest do.
    #[test]
    fn the_busiest_tuples_make_the_busiest_rows() {
        let mut t = Tracker::default();
        // 40 connections: even ports send and receive, odd ones only send; in the second
        // drain a third of them are idle (rate 0, ranked by bytes).
        let flows = |drain: u64| -> Vec<FlowSample> {
            (0..40u16)
                .flat_map(|i| {
                    let moved = drain == 1 || i % 3 != 0;
                    let bytes = 1_000 * u64::from(i + 1) * if moved { drain } else { 1 };
                    let tx = sample(key(DIR_EGRESS, 1000 + i), bytes, drain, drain * SEC);
                    let rx = sample(
                        key(DIR_INGRESS, 1000 + i),
                        bytes / 2 + 7,
                        drain,
                        drain * SEC,
                    );
                    if i % 2 == 0 { vec![tx, rx] } else { vec![tx] }
                })
                .collect()
        };
        for drain in 1..=2 {
            t.apply_flows(&flows(drain), drain * SEC, 1.0, 60 * SEC, |_| {
                Some(owner(7, "app"))
            });
        }
        // Sockets of two busy connections, and one with no traffic (a row of its own, last).
        let sockets = vec![
            socket(1003, "ESTABLISHED"),
            socket(1030, "CLOSE_WAIT"),
            socket(2000, "LISTEN"),
        ];
        let full = t.connections(&sockets);
        assert_eq!(full.len(), 41);
        let rows = |c: &[Connection]| {
            c.iter()
                .map(|c| (c.tuple.1, c.status.clone(), c.bytes_sent + c.bytes_recv))
                .collect::<Vec<_>>()
        };
        for n in [0, 1, 5, 13, 40, 41, 100] {
            let mut want = full.clone();
            keep_busiest(&mut want, n);
            let (tuples, total) = busiest_tuples(t.flow_activity(), &sockets, n);
            assert_eq!(total, 41, "n = {n}");
            assert_eq!(tuples.len(), n.min(41), "n = {n}");
            let mut socks: Vec<SocketRow> = sockets
                .iter()
                .filter(|s| tuples.binary_search(&s.tuple()).is_ok())
                .cloned()
                .collect();
            let mut parts = t.flow_parts_of(&tuples);
            let mut got: Vec<Connection> = connection_rows(&mut parts, &mut socks).collect();
            keep_busiest(&mut got, n);
            assert_eq!(rows(&got), rows(&want), "n = {n}");
        }
    }

    /// A socket's segments sent again count once each, to its process and cgroup, across
    /// drains, evictions from the kernel's map and a tuple's next socket.
    #[test]
    fn retransmits_are_credited_once_to_the_sockets_owner() {
        let sock = |port: u16| SockKey {
            proto: IPPROTO_TCP,
            local_port: port,
            remote_port: 80,
            ..Default::default()
        };
        let mut counts = RetransCounts::default();
        let mut t = Tracker::default();
        let owner = Owner {
            cgroup: Some("/app.slice".into()),
            ..owner(5, "app")
        };
        let mut drain = |now: &[(u16, u64)], want: &[(u16, u64)]| {
            let mut got = counts.deltas(now.iter().map(|&(p, n)| (sock(p), n)).collect(), &[]);
            got.sort_by_key(|(k, _)| k.local_port);
            let got: Vec<(u16, u64)> = got.iter().map(|(k, n)| (k.local_port, *n)).collect();
            assert_eq!(got, want, "after {now:?}");
            let mut out = TickOutput::default();
            for (_, n) in &got {
                t.credit_retransmits(&mut out, Some(&owner), *n, SEC);
            }
            out
        };
        let out = drain(&[(1, 3), (2, 1)], &[(1, 3), (2, 1)]);
        assert_eq!(out.proc_deltas["app"].tcp_retransmits, 4);
        assert_eq!(out.cgroup_deltas["/app.slice"].tcp_retransmits, 4);
        // Unchanged: nothing; one more on socket 1; socket 2 evicted from the map.
        drain(&[(1, 3), (2, 1)], &[]);
        drain(&[(1, 4)], &[(1, 1)]);
        // Socket 2 back with its whole count: only what is past the remembered 1 is new.
        drain(&[(1, 4), (2, 3)], &[(2, 2)]);
        // A smaller count: the tuple's next socket, all of it new.
        drain(&[(1, 2), (2, 3)], &[(1, 2)]);
        // Forgotten after RETRANS_FORGET_DRAINS drains out of the map: its count is new.
        for _ in 0..=RETRANS_FORGET_DRAINS {
            drain(&[(1, 2)], &[]);
        }
        drain(&[(1, 2), (2, 3)], &[(2, 3)]);
        assert_eq!(t.procs["app"].tcp_retransmits, 12);
        assert_eq!(t.cgroups["/app.slice"].tcp_retransmits, 12);
        let rows = t.processes();
        assert_eq!(rows[0].traffic.tcp_retransmits, 12);
        // Without an owner: the unknown process and cgroup.
        let mut out = TickOutput::default();
        t.credit_retransmits(&mut out, None, 2, SEC);
        assert_eq!(out.proc_deltas[UNKNOWN_PROCESS].tcp_retransmits, 2);
        assert_eq!(out.cgroup_deltas[UNKNOWN_CGROUP].tcp_retransmits, 2);
    }

    /// sock_diag's count of a socket (TCP's `tcpi_total_retrans`) ahead of the map's, as
    /// when an attempt its device refused went unreported after the last reported one: what
    /// it adds is credited once, and the map adds only what passes it.
    #[test]
    fn a_sockets_count_from_sock_diag_ahead_of_the_maps_is_credited_once() {
        let sock = |port: u16| SockKey {
            proto: IPPROTO_TCP,
            local_port: port,
            ..Default::default()
        };
        let mut counts = RetransCounts::default();
        let drain = |counts: &mut RetransCounts,
                     map: &[(u16, u64)],
                     listed: &[(u16, u64)]|
         -> Vec<(u16, u64)> {
            let listed: Vec<(SockKey, u64)> = listed.iter().map(|&(p, n)| (sock(p), n)).collect();
            let mut got: Vec<(u16, u64)> = counts
                .deltas(map.iter().map(|&(p, n)| (sock(p), n)).collect(), &listed)
                .into_iter()
                .map(|(k, n)| (k.local_port, n))
                .collect();
            got.sort();
            got
        };
        assert_eq!(drain(&mut counts, &[(1, 16)], &[(1, 17)]), [(1, 17)]);
        // The map still behind: nothing; its next reported retransmission: what is new.
        assert_eq!(drain(&mut counts, &[(1, 16)], &[]), []);
        assert_eq!(drain(&mut counts, &[(1, 16)], &[(1, 17)]), []);
        assert_eq!(drain(&mut counts, &[(1, 19)], &[]), [(1, 2)]);
        // Listed only (every attempt refused, or older than the daemon): all of it; then in
        // the map at that count: nothing.
        assert_eq!(drain(&mut counts, &[], &[(2, 3)]), [(2, 3)]);
        assert_eq!(drain(&mut counts, &[(2, 3)], &[(2, 3)]), []);
        // Moving in both in one drain: one entry.
        assert_eq!(drain(&mut counts, &[(2, 4)], &[(2, 6)]), [(2, 3)]);
        // Connections that never sent anything again are not remembered.
        drain(&mut counts, &[], &[(3, 0), (4, 0)]);
        assert_eq!(counts.prev.len(), 2);
        // The tuple's next socket: a map count below the map's last, all of it new.
        assert_eq!(drain(&mut counts, &[(1, 5)], &[]), [(1, 5)]);
    }

    /// A flow counts to the application protocol of its lower well-known port, in the
    /// drain's deltas, the totals and the rows.
    #[test]
    fn flows_count_to_their_application_protocol() {
        for (proto, local, remote, want) in [
            (IPPROTO_TCP, 40000, 443, "https"),
            (IPPROTO_TCP, 22, 51000, "ssh"),
            (IPPROTO_TCP, 80, 3306, "http"),
            (IPPROTO_UDP, 53, 53, "dns"),
            (IPPROTO_UDP, 40000, 443, "https"),
            (IPPROTO_UDP, 40000, 22, OTHER_SERVICE),
            (IPPROTO_TCP, 40000, 8081, OTHER_SERVICE),
            (IPPROTO_TCP, 0, 0, OTHER_SERVICE),
            (IPPROTO_ICMP, 0, 0, OTHER_SERVICE),
        ] {
            assert_eq!(
                service_of(proto, local, remote),
                want,
                "{proto} {local} {remote}"
            );
        }
        let mut t = Tracker::default();
        let web = key(DIR_EGRESS, 40000);
        let web_in = key(DIR_INGRESS, 40000);
        let tls = FlowKey {
            remote_port: 443,
            ..key(DIR_EGRESS, 40001)
        };
        let out = t.apply_flows(
            &[
                sample(web, 1000, 10, SEC),
                sample(web_in, 300, 3, SEC),
                sample(tls, 700, 7, SEC),
            ],
            SEC,
            1.0,
            60 * SEC,
            |_| None,
        );
        assert_eq!(out.service_deltas["http"].tx_bytes, 1000);
        assert_eq!(out.service_deltas["http"].rx_bytes, 300);
        assert_eq!(out.service_deltas["https"].tx_packets, 7);
        let out = t.apply_flows(
            &[sample(web, 1500, 15, 2 * SEC), sample(tls, 700, 7, SEC)],
            2 * SEC,
            1.0,
            60 * SEC,
            |_| None,
        );
        assert_eq!(out.service_deltas["http"].tx_bytes, 500);
        assert!(!out.service_deltas.contains_key("https"), "{out:?}");
        let rows = t.services();
        assert_eq!(rows[0].service, "http");
        assert_eq!(
            (rows[0].traffic.bytes_sent, rows[0].traffic.bytes_recv),
            (1500, 300)
        );
        assert_eq!(rows[0].traffic.send_rate, 500.0);
        assert_eq!(
            (rows[1].service.as_str(), rows[1].traffic.bytes_sent),
            ("https", 700)
        );
        assert_eq!(rows[1].traffic.send_rate, 0.0);
    }

    #[test]
    fn icmp_rows_have_no_ports_take_their_sockets_owner_and_processes_sort_by_rate() {
        let mut t = Tracker::default();
        let ping = FlowKey {
            proto: IPPROTO_ICMP,
            local_port: 0,
            remote_port: 8 << 8,
            ..key(DIR_EGRESS, 0)
        };
        let a = key(DIR_EGRESS, 1);
        let b = key(DIR_INGRESS, 2);
        t.apply_flows(
            &[
                sample(ping, 98, 1, SEC),
                sample(a, 100, 1, SEC),
                sample(b, 900, 2, SEC),
            ],
            SEC,
            1.0,
            60 * SEC,
            |k| match k.local_port {
                _ if is_icmp(k.proto) => Some(owner(3, "ping")),
                1 => Some(owner(1, "small")),
                _ => Some(owner(1, "big")),
            },
        );
        let conns = t.connections(&[]);
        let c = conns.iter().find(|c| c.kind == "ICMP").unwrap();
        assert_eq!(
            (c.local_address.as_str(), c.remote_address.as_str()),
            ("198.18.0.1", "198.18.0.2")
        );
        assert_eq!(c.icmp_type_code.as_deref(), Some("8/0"));
        assert_eq!(c.pid, Some(3), "the ICMP socket's owner");
        let p = t.processes();
        assert_eq!(p[0].process, "big");
        assert_eq!(
            (p[0].traffic.bytes_recv, p[0].traffic.recv_rate),
            (900, 900.0)
        );
        assert_eq!(p[1].process, "small");
        assert_eq!(p[2].process, "ping", "the ICMP flow's bytes");
        assert_eq!(p[2].traffic.bytes_sent, 98);
    }

    #[test]
    fn interface_rates() {
        let mut t = Tracker::default();
        t.apply_ifaces(&[(3, DIR_INGRESS, 1000, 10), (3, DIR_EGRESS, 50, 1)], 1.0);
        t.apply_ifaces(&[(3, DIR_INGRESS, 3000, 30), (3, DIR_EGRESS, 50, 1)], 2.0);
        let i = &t.ifaces[&3];
        assert_eq!((i.rx_bytes, i.rx_packets), (3000, 30));
        assert_eq!(i.rx_bytes_rate, 1000.0);
        assert_eq!(i.rx_packets_rate, 10.0);
        assert_eq!(i.tx_bytes_rate, 0.0);
        // Gone: out of the table.
        t.apply_ifaces(&[(4, DIR_INGRESS, 10, 1), (4, DIR_EGRESS, 0, 0)], 1.0);
        assert_eq!(t.ifaces.keys().collect::<Vec<_>>(), [&4]);
    }

    #[test]
    fn addresses_display_by_family() {
        assert_eq!(sockaddr(v4_mapped([127, 0, 0, 1]), 80), "127.0.0.1:80");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(sockaddr(v6, 443), "[::1]:443");
        assert_eq!(flags_string(0x12), "SA");
    }
}
