//! Types shared by the kernel programs (`netmon-ebpf`) and the daemon (`netmon`).
//!
//! Every struct is `#[repr(C)]` with explicit padding, no `bool`/`Option`/enum fields, and a
//! compile-time size/offset check, because the kernel and userspace must agree on every byte.
//! Padding is spelt as integer fields, not byte arrays: zeroing a byte array in a BPF program
//! compiles to a call to a byte-wise memset on the packet path.
//! Addresses are 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so one key type
//! serves both families and dual-stack sockets match IPv4 packets. The one exception is the
//! IPv4 flow map's `FlowKey4`, kept small for the packet path and widened on read.
#![no_std]

/// `FlowKey::direction` values.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// ICMP or ICMPv6: flows without ports, keyed by type and code instead.
pub const fn is_icmp(proto: u8) -> bool {
    proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6
}

/// TCP, UDP, ICMP and ICMPv6: the protocols whose sockets' owners the hooks record, so that
/// their flows can be attributed.
pub const fn has_socket_owner(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || is_icmp(proto)
}

/// Whether an IPv4 address, as the 32-bit word a socket hook reads (network order in
/// memory), is in 127.0.0.0/8.
pub const fn is_loopback4(word: u32) -> bool {
    word.to_ne_bytes()[0] == 127
}

/// Whether an IPv6 address, as the four 32-bit words a socket hook reads (network order in
/// memory), is ::1 or an IPv4-mapped address in 127.0.0.0/8.
pub const fn is_loopback6(w: [u32; 4]) -> bool {
    if w[0] != 0 || w[1] != 0 {
        return false;
    }
    let (third, last) = (w[2].to_ne_bytes(), w[3].to_ne_bytes());
    match third {
        [0, 0, 0, 0] => matches!(last, [0, 0, 0, 1]),
        [0, 0, 0xff, 0xff] => last[0] == 127,
        _ => false,
    }
}

/// TCP flag bits as they appear in byte 13 of the TCP header (`FlowStats::tcp_flags`).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// One direction of one flow on one interface, seen from this host: for ingress the local
/// end is the packet's destination, for egress its source. `A` is the address type: 16
/// bytes in a `FlowKey`, 4 in a `FlowKey4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKeyOf<A> {
    pub ifindex: u32,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub direction: u8,
    /// IP protocol number of the transport header (after IPv6 extension headers).
    pub proto: u8,
    /// 4 or 6: the family on the wire (always 4 in a `FlowKey4`).
    pub family: u8,
    /// `FLOW_FLAG_*` bits.
    pub flags: u8,
    /// Host byte order. TCP/UDP: the port. ICMP/ICMPv6: 0.
    pub local_port: u16,
    /// Host byte order. TCP/UDP: the port. ICMP/ICMPv6: `type << 8 | code`.
    pub remote_port: u16,
    pub local_addr: A,
    pub remote_addr: A,
}

/// A flow of either family, IPv4 addresses IPv4-mapped: the IPv6 flow map's key, and the
/// daemon's for every flow.
pub type FlowKey = FlowKeyOf<[u8; 16]>;

/// An IPv4 flow as the IPv4 flow map holds it. 20 bytes against 44: the kernel hashes 5
/// words instead of 11 and compares 20 bytes on every lookup, and an element takes 24 bytes
/// less. The daemon widens it to a `FlowKey` as soon as it reads it.
pub type FlowKey4 = FlowKeyOf<[u8; 4]>;

impl<A: Copy> FlowKeyOf<A> {
    /// The same key with both addresses converted by `f`; `None` if either does not convert.
    #[inline(always)]
    pub fn map_addrs<B>(&self, f: impl Fn(A) -> Option<B>) -> Option<FlowKeyOf<B>> {
        Some(FlowKeyOf {
            ifindex: self.ifindex,
            direction: self.direction,
            proto: self.proto,
            family: self.family,
            flags: self.flags,
            local_port: self.local_port,
            remote_port: self.remote_port,
            local_addr: f(self.local_addr)?,
            remote_addr: f(self.remote_addr)?,
        })
    }
}

impl FlowKey4 {
    /// The key's five 32-bit words, as the per-CPU flow table hashes them (`tab_place`).
    pub fn words(&self) -> [u32; 5] {
        // SAFETY: FlowKey4 is five 32-bit words without padding (repr(C)).
        unsafe { core::mem::transmute(*self) }
    }
}

impl From<FlowKey4> for FlowKey {
    fn from(k: FlowKey4) -> Self {
        // Mapping an IPv4 address cannot fail.
        k.map_addrs(|a| Some(v4_mapped(a))).unwrap_or_default()
    }
}

impl FlowKey {
    /// The IPv4 flow map's key for this flow: `Some` for an IPv4 flow (family 4, both
    /// addresses IPv4-mapped), `None` for an IPv6 one.
    pub fn narrow(&self) -> Option<FlowKey4> {
        self.map_addrs(unmapped).filter(|_| self.family == 4)
    }
}

/// The IPv4 address inside an IPv4-mapped IPv6 address.
fn unmapped(a: [u8; 16]) -> Option<[u8; 4]> {
    (a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).then(|| [a[12], a[13], a[14], a[15]])
}

/// The key has no L4 ports because the packet is a non-first fragment, or its transport
/// header was truncated, or the IPv6 extension-header walk hit its bound.
pub const FLOW_FLAG_NO_PORTS: u8 = 0x01;

/// An egress flow of frames this host forwards (a container's or a VM's through a bridge or
/// the routing table, a router's): the egress program saw a frame that had been received
/// (`__sk_buff.ingress_ifindex`, the skb's `skb_iif`, is set), not one a local socket or the
/// stack made. The same frames were counted where they came in, in an ingress flow whose
/// local side (the destination) is not one of this host's addresses. Never on an ingress
/// key: at ingress the hook cannot know where a frame goes.
pub const FLOW_FLAG_FORWARDED: u8 = 0x02;

/// Counters of one `FlowKey`. Times are CLOCK_MONOTONIC nanoseconds at the kernel's tick
/// resolution (`bpf_ktime_get_coarse_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Frame bytes (Ethernet header included), as the interface counts them.
    pub bytes: u64,
    pub packets: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// OR of every TCP flag byte seen.
    pub tcp_flags: u8,
    pub _pad: u8,
    pub _pad2: u16,
    /// The drain epoch (`config::EPOCH`) in which the flow was last pushed to the dirty ring.
    pub epoch: u32,
}

/// Ways (slots) per bucket of the per-CPU flow tables (`TabBucket`).
pub const TAB_WAYS: usize = 4;

/// One flow in a per-CPU flow table (`NETMON_TAB4`, `NETMON_TAB6`; programs
/// `netmon_xdp_tab`, `netmon_tc_tab`). The programs index the table themselves: a hash of the
/// key picks a bucket in the running CPU's part of an array map, a hit is plain adds to that
/// CPU's slot, a new flow a write of one slot. Counters are cumulative while the slot holds
/// the flow. All zero: empty (no key has family 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TabSlot<K> {
    pub bytes: u64,
    pub packets: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub key: K,
    /// OR of every TCP flag byte seen.
    pub tcp_flags: u8,
    /// The daemon's (the programs never read or write it): where it keeps the slot's flow, a
    /// hint it checks against the key before use, and which may be stale after the slot is
    /// given to another flow. Zero: none.
    pub cookie: [u8; 3],
    /// The drain epoch in which the slot was last marked in the dirty bitmap.
    pub epoch: u32,
    /// Incremented before and after the slot is given to another flow (odd while it is
    /// rewritten), so a reader of the mapped table can tell a consistent copy.
    pub seq: u32,
}

/// `TAB_WAYS` slots: where a flow whose hash picks the bucket may be; a new flow takes an
/// empty slot, or else the one seen longest ago (which goes to the eviction ring first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TabBucket<K> {
    pub slots: [TabSlot<K>; TAB_WAYS],
}

/// A slot's last contents, pushed to the eviction ring when the slot is given to another
/// flow: 72 bytes for IPv4, 96 for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TabEvicted<K> {
    pub slot: TabSlot<K>,
    /// The slot's index in its table: bucket index * `TAB_WAYS` + way.
    pub index: u32,
    pub _pad: u32,
}

/// A multiply-xor hash of a key's 32-bit words (the key types are multiples of 4 bytes with
/// no padding), the same in the programs and in userspace: its high half picks an IPv6
/// ban's bucket in `NETMON_BANX6` and its place in the wide array (the per-CPU flow tables
/// use `flow_hash64`). One chain, the last word in the last multiply.
#[inline(always)]
pub fn tab_hash64(words: &[u32]) -> u64 {
    let mut h: u64 = 0;
    let mut i = 0;
    while i < words.len() {
        h = (h ^ u64::from(words[i])).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        i += 1;
    }
    h
}

/// `flow_hash64`'s multipliers: odd, otherwise random, the last one the golden ratio's
/// (Fibonacci hashing's, 2^32 / phi); a key of `n` words takes the last `n`. 32 bits each,
/// sign-extended: a BPF multiply takes such a constant as its immediate, where a 64-bit one
/// costs a load of its own (the code grew, and a pool's hit through TC cost ~8 ns more).
const FLOW_MULS: [i32; 11] = [
    0x1C9B_878F,
    0x2C48_5DC1,
    0x756A_B4AB,
    0x01D3_77BB,
    0x27F5_6209,
    0x0B57_D3C1,
    0x38DE_ADD5,
    0xFE5C_F18Fu32 as i32,
    0xAF17_9099u32 as i32,
    0x8418_970Du32 as i32,
    0x9E37_79B9u32 as i32,
];

/// The per-CPU flow tables' hash of a key's 32-bit words (at most 11: an IPv6 `FlowKey`),
/// the same in the programs and in userspace: the sum of each word times a multiplier of
/// its own (`FLOW_MULS`). Its high half picks the key's bucket, bits 16-31 make its
/// fingerprint (`tab_place_live`). The products do not wait for one another, so the bucket
/// is known a few cycles after the key's last word, where a chain of multiplies (`tab_hash64`)
/// takes one multiply's latency per word: eleven for an IPv6 key. And keys that differ in
/// the last word alone (the remote address's last 32 bits: a subnet's hosts, a scan) land as
/// evenly as Fibonacci hashing puts consecutive numbers, the chain's property: that word's
/// product is added to the same sum for all of them, and no mixing step follows. (Two
/// interleaved chains, tried before, spread such keys only as well as chance: the
/// benchmark's prefill of 100,000 flows then lost 2% of them to full buckets.)
#[inline(always)]
pub fn flow_hash64(words: &[u32]) -> u64 {
    let first = FLOW_MULS.len().saturating_sub(words.len());
    let mut h: u64 = 0;
    let mut i = 0;
    while i < words.len() {
        let m = match FLOW_MULS.get(first + i) {
            Some(m) => *m,
            None => FLOW_MULS[FLOW_MULS.len() - 1],
        };
        h = h.wrapping_add(u64::from(words[i]).wrapping_mul(i64::from(m) as u64));
        i += 1;
    }
    h
}

/// `tab_hash64`'s high half.
#[inline(always)]
pub fn tab_hash(words: &[u32]) -> u32 {
    (tab_hash64(words) >> 32) as u32
}

/// Where a key (its 32-bit words) goes in the per-CPU flow table: its bucket in `cpu`'s part
/// (each part `per_cpu` buckets, a power of two), and its 16-bit fingerprint in that
/// bucket's word of the fingerprint array (`NETMON_TABFP4`/`NETMON_TABFP6`: way `w`'s at
/// bits `16 * w`; never 0, which marks a way never used). The programs put the flow there,
/// and userspace that writes the table as they would (benchmarks) does the same.
#[inline(always)]
pub fn tab_place(words: &[u32], cpu: u32, per_cpu: u32) -> (u32, u64) {
    tab_place_live(words, cpu, per_cpu, per_cpu)
}

/// `tab_place` in a part whose first `live` buckets are in use (`live` a power of two, at
/// most `per_cpu`, as `tab_live_buckets` gives it): the programs grow a CPU's part by
/// doubling `live` (`NETMON_TABLIVE`), which leaves every key in its bucket `b` or moves it
/// to `b + live`, a bucket never used before.
#[inline(always)]
pub fn tab_place_live(words: &[u32], cpu: u32, per_cpu: u32, live: u32) -> (u32, u64) {
    let h = flow_hash64(words);
    let bucket = cpu
        .wrapping_mul(per_cpu)
        .wrapping_add((h >> 32) as u32 & live.wrapping_sub(1));
    (bucket, (h >> 16) & 0xffff | 1)
}

/// Buckets in use of a part of `per_cpu` buckets (a power of two) whose `NETMON_TABLIVE`
/// word is `word`: 0 for `TAB_START_BUCKETS` (or the whole of a smaller part), and anything
/// that is not a power of two at most `per_cpu` for the whole part. The programs, the daemon
/// and the benchmarks all read the word through this.
#[inline(always)]
pub fn tab_live_buckets(word: u64, per_cpu: u32) -> u32 {
    if word == 0 {
        return if TAB_START_BUCKETS < per_cpu {
            TAB_START_BUCKETS
        } else {
            per_cpu
        };
    }
    // Not `is_power_of_two`: the BPF backend has no popcount instruction.
    if word & (word - 1) == 0 && word <= u64::from(per_cpu) {
        word as u32
    } else {
        per_cpu
    }
}

/// Buckets a CPU's part of a per-CPU flow table starts with in use (or all of them, where
/// the part has fewer): 1,024 slots, 64 KiB of IPv4 slots. The programs double a part's
/// buckets in use when a new flow finds its bucket full of flows seen in the last
/// `TAB_GROW_MS`, up to the whole part, so that a host's flows are packed into as few pages
/// and cache lines as their number needs.
pub const TAB_START_BUCKETS: u32 = 256;

/// Words of `NETMON_TABLIVE` per CPU (one cache line): CPU `c`'s IPv4 part's buckets in use at
/// `c * TAB_LIVE_STRIDE`, its IPv6 part's at the next word; 0 for `TAB_START_BUCKETS`.
pub const TAB_LIVE_STRIDE: u32 = 8;

/// How recently (ms) the flows of a full bucket must all have been seen for a new flow there
/// to grow the part rather than take the slot seen longest ago (the programs' `TAB_GROW_MS`,
/// which tests lower).
pub const TAB_GROW_MS: u32 = 10_000;

/// Interfaces with an index below this have their drop counts in per-CPU array slots (no
/// hash lookup on the packet path); the rest go to the drop hash map.
pub const IFACE_SLOT_IFINDEXES: u32 = 256;
/// Interface slots: one per (ifindex, direction).
pub const IFACE_SLOTS: u32 = IFACE_SLOT_IFINDEXES * 2;

/// The slot of an interface and direction, if its index is small enough to have one.
#[inline(always)]
pub const fn iface_slot(ifindex: u32, direction: u8) -> Option<u32> {
    if ifindex < IFACE_SLOT_IFINDEXES {
        Some(ifindex * 2 + (direction & 1) as u32)
    } else {
        None
    }
}

impl DropKey {
    /// The key a `drop_slot` stands for.
    pub const fn from_slot(slot: u32) -> Self {
        let iface = slot / DROP_KINDS;
        Self {
            ifindex: iface / 2,
            direction: (iface % 2) as u8,
            kind: (slot % DROP_KINDS) as u8,
            _pad: 0,
        }
    }
}

/// Ban kinds with a slot of their own in the per-CPU drop array (`ban_kind::*` < this).
pub const DROP_KINDS: u32 = 4;
/// Entries of the per-CPU drop array: one per (ifindex, direction, kind).
pub const DROP_SLOTS: u32 = IFACE_SLOTS * DROP_KINDS;

/// The drop-array slot of an interface, direction and ban kind, if it has one.
#[inline(always)]
pub const fn drop_slot(ifindex: u32, direction: u8, kind: u8) -> Option<u32> {
    match iface_slot(ifindex, direction) {
        Some(s) if (kind as u32) < DROP_KINDS => Some(s * DROP_KINDS + kind as u32),
        _ => None,
    }
}

/// Per-CPU totals of frames and their bytes: the drops of one interface, direction and ban
/// kind (`NETMON_DROP_SLOTS`, `NETMON_DROPS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub bytes: u64,
    pub packets: u64,
}

/// 64-bit words of the packet programs' parse of the frame they are accounting (the eBPF
/// side's `Parsed`), which `CpuState` holds.
pub const PARSED_WORDS: usize = 6;

/// `CpuState::packets` index of the frames the ingress program saw (XDP, or the TC ingress
/// hook where netmon attaches there).
pub const HOOK_XDP: usize = 0;
/// `CpuState::packets` index of the frames the TC (egress) program saw.
pub const HOOK_TC: usize = 1;

/// The `NETMON_TC_TAIL` slot of the program that continues a TC program after a pull: the
/// egress programs' in 0 (LRU flow maps) and 1 (per-CPU tables, `tab`), the ingress
/// programs' at TC ingress in 2 and 3.
pub const fn tc_tail_slot(tab: bool, ingress: bool) -> u32 {
    tab as u32 + 2 * ingress as u32
}

/// One CPU's state for the packet programs: the one entry of the per-CPU array
/// `NETMON_CPU`, looked up once per frame, so that what every frame touches of it is one map
/// lookup and neighbouring words (a per-CPU array's entries are separate allocations, each
/// reached through a pointer of its own: a counter and the scratch space in two such arrays
/// cost a frame two lookups and their lines).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CpuState {
    /// The jiffies of the tick in which `ns` was read: the packet programs keep the coarse
    /// clock per CPU and tick.
    pub jiffies: u64,
    /// The coarse clock (CLOCK_MONOTONIC, ns) as read in tick `jiffies`.
    pub ns: u64,
    /// Frames seen, by hook (`HOOK_XDP`, `HOOK_TC`): the `counter::XDP_PACKETS` and
    /// `counter::TC_PACKETS` events.
    pub packets: [u64; 2],
    /// Scratch space: the frame being accounted's parse. Not meaningful to userspace.
    pub parsed: [u64; PARSED_WORDS],
}

impl CpuState {
    /// A CPU's state before its first frame.
    pub const ZERO: Self = Self {
        jiffies: 0,
        ns: 0,
        packets: [0; 2],
        parsed: [0; PARSED_WORDS],
    };
}

/// Who owned a socket, recorded in the kernel at the moment the socket was connected,
/// accepted or first sent on, so that attribution survives the process's exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// Thread-group id, i.e. the PID that `ps` shows.
    pub pid: u32,
    pub uid: u32,
    /// cgroup v2 id (`bpf_get_current_cgroup_id`); the inode number of the cgroup directory.
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC nanoseconds when this record was written.
    pub recorded_ns: u64,
    /// `comm`, NUL-padded.
    pub comm: [u8; 16],
}

/// A socket's full 4-tuple, from this host's side (the same orientation as `FlowKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub proto: u8,
    pub _pad: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad2: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Entries of `NETMON_UDP_NS`, the owners of other network namespaces' UDP ports (an LRU
/// map: a port's record lives until 16,384 others were written after it).
pub const UDP_NS_ENTRIES: u32 = 16384;

/// Slots of `NETMON_UDP_PORTS`, the owners of UDP local ports indexed by the port.
pub const UDP_PORT_SLOTS: u32 = 1 << 16;

/// A local port with an owner: a TCP listener (`NETMON_PORT_OWNER`) or a UDP socket that
/// sent (`NETMON_UDP_PORTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub proto: u8,
    pub _pad: u8,
    pub port: u16,
}

/// A local port in its network namespace. In `NETMON_LISTEN_NS` (TCP listeners) `net` is
/// the namespace's `struct net` address as the kernel's socket holds it, an identity only
/// (never followed), so that containers listening on the same port are told apart; in
/// `NETMON_UDP_NS` (UDP sockets of other namespaces than the daemon's) the namespace's
/// cookie (`bpf_get_netns_cookie`, `SO_NETNS_COOKIE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NsPortKey {
    pub net: u64,
    pub port: PortKey,
    pub _pad: u32,
}

/// Indexes of the kernel-side event counters (`NETMON_COUNTERS`, a per-CPU array of u64).
/// Every parse failure, map-full and fallback path bumps one of these.
pub mod counter {
    /// Frame shorter than the header it claims to carry (Ethernet, VLAN, IP, IPv6).
    pub const TRUNCATED_L3: u32 = 0;
    /// Transport header truncated: the flow is recorded without ports.
    pub const TRUNCATED_L4: u32 = 1;
    /// Not IPv4/IPv6 (ARP, LLDP, ...): counted per interface only.
    pub const NON_IP: u32 = 2;
    /// Non-first IPv4/IPv6 fragment: recorded without ports.
    pub const FRAGMENT: u32 = 3;
    /// Transport protocol other than TCP/UDP/ICMP/ICMPv6: recorded without ports.
    pub const OTHER_L4: u32 = 4;
    /// IPv6 extension-header chain longer than the walk's bound.
    pub const IPV6_EXT_LIMIT: u32 = 5;
    /// More VLAN tags than the parser unwraps.
    pub const VLAN_LIMIT: u32 = 6;
    /// IPv4 header with IHL < 5 or IPv6/IPv4 version mismatch.
    pub const BAD_L3_HEADER: u32 = 7;
    /// Insert into the flow map failed (map full with no LRU victim, or -ENOMEM).
    pub const FLOW_INSERT_FAILED: u32 = 8;
    /// Insert into the interface map failed.
    pub const IFACE_INSERT_FAILED: u32 = 9;
    /// Insert into a socket-attribution map failed.
    pub const SOCK_INSERT_FAILED: u32 = 10;
    /// A tracepoint/kprobe could not read its arguments (bpf_probe_read failed).
    pub const PROBE_READ_FAILED: u32 = 11;
    /// A TCP connection became established with no known owner (e.g. opened before netmon).
    pub const SOCK_OWNER_UNKNOWN: u32 = 12;
    /// Packets seen by the ingress program (XDP, or at TC ingress) / the TC egress program
    /// (for self-checks and cost accounting).
    pub const XDP_PACKETS: u32 = 13;
    pub const TC_PACKETS: u32 = 14;
    /// A flow key did not fit in the dirty ring: the daemon's next drain reads the whole map.
    pub const DIRTY_LOST: u32 = 15;
    /// An egress frame whose headers were not in the skb's linear data could not be handed
    /// to the program that parses it after the pull (its tail-call slot was empty): counted
    /// per interface only.
    pub const PULL_TAIL_CALL_FAILED: u32 = 16;
    /// A per-CPU flow table's slot was given to a new flow and the old flow's final counters
    /// did not fit in the eviction ring: its traffic since the last drain is lost.
    pub const EVICT_LOST: u32 = 17;
    /// Number of counters; the array's `max_entries`.
    pub const COUNT: u32 = 18;

    /// Metric label of each counter, indexed by its number (`None`: unused slot).
    pub const NAMES: [Option<&str>; COUNT as usize] = [
        Some("truncated_l3"),
        Some("truncated_l4"),
        Some("non_ip"),
        Some("fragment"),
        Some("other_l4"),
        Some("ipv6_ext_limit"),
        Some("vlan_limit"),
        Some("bad_l3_header"),
        Some("flow_insert_failed"),
        Some("iface_insert_failed"),
        Some("sock_insert_failed"),
        Some("probe_read_failed"),
        Some("sock_owner_unknown"),
        Some("xdp_packets"),
        Some("tc_packets"),
        Some("dirty_lost"),
        Some("pull_tail_call_failed"),
        Some("evict_lost"),
    ];
}

/// Indexes of `NETMON_CONFIG`, an array of u64 the daemon writes at run time.
pub mod config {
    /// Non-zero when the kprobe on `tcp_connect` is attached: the tracepoint then leaves
    /// outbound TCP to it and only handles listeners and accepted connections.
    pub const KPROBE_CONNECT_ACTIVE: u32 = 0;
    /// The drain epoch, advanced by the daemon at every drain: a flow's first packet in an
    /// epoch pushes its key to the dirty ring, so a drain reads only the flows that changed.
    pub const EPOCH: u32 = 1;
    /// Non-zero when the cgroup hooks on UDP connect() and sendmsg() are attached: the
    /// egress program then records a UDP flow's port owner from its socket's storage
    /// (`NETMON_UDP_SK`), and no program runs on every datagram sent.
    pub const UDP_SOCK_HOOKS_ACTIVE: u32 = 2;
    /// Non-zero when the daemon watches a loopback interface. Otherwise the cgroup UDP
    /// hooks record nothing for a connect or send to a loopback address (127.0.0.0/8, ::1,
    /// ::ffff:127.0.0.0/104): its frames never reach a watched interface, and the record's
    /// socket storage costs the connect ~1 µs.
    pub const LOOPBACK_WATCHED: u32 = 3;
    /// The daemon's network namespace's cookie (`SO_NETNS_COOKIE`): the cgroup UDP hooks
    /// record the owners of the sockets of every other namespace (a container's) by
    /// namespace and port (`NETMON_UDP_NS`). 0: not known (a kernel before 5.14), and then
    /// every namespace's are.
    pub const OWN_NETNS_COOKIE: u32 = 4;
    pub const COUNT: u32 = 8;
}

/// Indexes of `NETMON_DROPCFG`, the pinned array that steers the drop list.
pub mod dropcfg {
    /// The generation (1 or 2) of ban entries in force; 0: drop list empty.
    pub const GENERATION: u32 = 0;
    /// `HAS_*` bits: which drop-list maps hold entries, so the fast path skips empty ones;
    /// with them the generation in force and which of its filters and indexes are complete,
    /// copied from the other slots (`control_word`): the one slot the programs read.
    pub const FLAGS: u32 = 1;
    /// The generation whose IPv4 /16 filter (`NETMON_BAN4_L16`) covers every IPv4 ban
    /// entry: only then do the programs skip the lookups for a /16 with no bit set.
    /// 0: no complete filter, always look.
    pub const BAN4_FILTER: u32 = 2;
    /// The same for the IPv4 /24 filter (`NETMON_BAN4_L24`), which the programs consult
    /// where the /16 filter says "look". 0 (as in maps pinned by a version without it): no
    /// complete /24 filter, go by the /16 filter alone.
    pub const BAN4_L24_FILTER: u32 = 3;
    /// The generation whose exact ban arrays (`NETMON_BANX4`/`NETMON_BANX6`) index every exact
    /// ban entry of it: each is in its bucket's slots, or the bucket's first tag carries
    /// `BANX_OVERFLOW`. Only then do the programs skip the hash lookup after a miss in a
    /// bucket without the bit. 0 (and absent, in maps pinned by a version without it): look
    /// every miss up.
    pub const BANX_COMPLETE: u32 = 4;
    /// The generation whose IPv6 /32 filter (`NETMON_BAN6_L32`) covers every IPv6 ban entry,
    /// as `BAN4_FILTER`. 0 (and absent, in maps pinned by a version without it): always look.
    pub const BAN6_FILTER: u32 = 5;
    /// The generation whose wide exact ban arrays (`NETMON_BANW4`/`NETMON_BANW6`) index every
    /// exact ban entry of it that has no slot in `NETMON_BANX4`/`NETMON_BANX6`, as
    /// `BANX_COMPLETE` says for those: only then do the programs skip the hash lookup after a
    /// miss in a wide bucket without `BANX_OVERFLOW`. 0 (and absent, in maps pinned by a
    /// version without it): look every such miss up in the hash map.
    pub const BANW_COMPLETE: u32 = 6;
    /// The generation whose IPv4 host filter (`NETMON_BAN4_W24` and `NETMON_BAN4_H32`)
    /// covers every IPv4 ban entry of it: only then do the programs, where the /24 filter says
    /// "look", skip the lookups for an address whose /24 no entry covers wholly and whose bit
    /// in its /24's block is clear. 0 (and absent, in maps pinned by a version without it):
    /// go by the /16 and /24 filters alone.
    pub const BAN4_HOST_FILTER: u32 = 7;
    /// The generation whose IPv6 host filter (`NETMON_BAN6_HOST`) covers every IPv6 ban
    /// entry of it: only then do the programs, where the /32 filter says "look", skip the
    /// lookups for an address whose bits in its /32's block are all clear. 0 (and absent, in
    /// maps pinned by a version without it): go by the /32 filter alone.
    pub const BAN6_HOST_FILTER: u32 = 8;
    pub const COUNT: u32 = 9;

    /// Words of `NETMON_BAN4_L16` per generation: one bit per IPv4 /16.
    pub const L16_WORDS: u32 = 1024;

    /// Index into `NETMON_BAN4_L16` of the word holding `a`'s /16, and the bit in it.
    pub const fn l16_slot(generation: u8, a: [u8; 4]) -> (u32, u32) {
        let sixteen = (a[0] as u32) << 8 | a[1] as u32;
        (
            (generation as u32).wrapping_sub(1) * L16_WORDS + (sixteen >> 6),
            sixteen & 63,
        )
    }

    /// Words of `NETMON_BAN4_L24` per generation: one bit per IPv4 /24.
    pub const L24_WORDS: u32 = 1 << 18;

    /// Index into `NETMON_BAN4_L24` of the word holding `a`'s /24, and the bit in it.
    pub const fn l24_slot(generation: u8, a: [u8; 4]) -> (u32, u32) {
        let t24 = (a[0] as u32) << 16 | (a[1] as u32) << 8 | a[2] as u32;
        (
            (generation as u32).wrapping_sub(1) * L24_WORDS + (t24 >> 6),
            t24 & 63,
        )
    }

    /// Words of `NETMON_BAN4_H32` per generation: `H32_BLOCKS` blocks of four words, a
    /// block a bitmap of the 256 addresses of each /24 that hashes to it.
    pub const H32_WORDS: u32 = 1 << 18;
    /// Blocks of `NETMON_BAN4_H32` per generation.
    pub const H32_BLOCKS: u32 = H32_WORDS / 4;

    /// Index into `NETMON_BAN4_H32` of the word holding `a`'s bit in its /24's block, and
    /// the bit in it. The block is picked by Fibonacci hashing of the /24 (consecutive /24s
    /// land in blocks far apart); /24s that share a block share its bits, which can only make
    /// the programs look where they need not.
    pub const fn h32_slot(generation: u8, a: [u8; 4]) -> (u32, u32) {
        let t24 = (a[0] as u32) << 16 | (a[1] as u32) << 8 | a[2] as u32;
        let block = t24.wrapping_mul(0x9e37_79b1) >> (32 - H32_BLOCKS.trailing_zeros());
        (
            (generation as u32).wrapping_sub(1) * H32_WORDS + block * 4 + (a[3] as u32 >> 6),
            a[3] as u32 & 63,
        )
    }

    /// Words of `NETMON_BAN6_L32` per generation: 2^21 bits, each standing for the IPv6 /32s
    /// that hash to it.
    pub const L32_6_WORDS: u32 = 1 << 15;

    /// An IPv6 address's /32, as a number: what the /32 filter and the host filter's block
    /// are indexed by.
    #[inline(always)]
    pub const fn top32(a: &[u8; 16]) -> u32 {
        (a[0] as u32) << 24 | (a[1] as u32) << 16 | (a[2] as u32) << 8 | a[3] as u32
    }

    /// Index into `NETMON_BAN6_L32` of the word holding `a`'s /32 (hashed), and the bit in it.
    pub const fn l32_6_slot(generation: u8, a: &[u8; 16]) -> (u32, u32) {
        let top = top32(a);
        let h = top.wrapping_mul(0x9e37_79b1) >> (32 - (L32_6_WORDS.trailing_zeros() + 6));
        (
            (generation as u32).wrapping_sub(1) * L32_6_WORDS + (h >> 6),
            h & 63,
        )
    }

    /// Words of `NETMON_BAN6_HOST` per generation: `H6_BLOCKS` blocks of eight words (a
    /// cache line), a block shared by the IPv6 /32s that hash to it (`h6_block`). A block's
    /// first word holds a bit per /32 (hashed) that an entry of /32 or shorter covers wholly;
    /// its other seven hold, hashed to 448 bits (`h6_bit`), a bit per prefix of each length of
    /// `H6_LEVELS` that an entry covers or lies in (`h6_cover`).
    pub const H6_WORDS: u32 = 1 << 18;
    /// Blocks of `NETMON_BAN6_HOST` per generation.
    pub const H6_BLOCKS: u32 = H6_WORDS / 8;
    /// The prefix lengths that have bits in an IPv6 host filter block, beside whole /32s: an
    /// address is looked up when the bit of its prefix of any of these lengths is set.
    pub const H6_LEVELS: [u8; 5] = [40, 48, 56, 64, 128];

    /// An IPv6 address as two 64-bit halves, most significant first.
    #[inline(always)]
    pub const fn h6_halves(a: &[u8; 16]) -> (u64, u64) {
        let mut hi = 0u64;
        let mut lo = 0u64;
        let mut i = 0;
        while i < 8 {
            hi = hi << 8 | a[i] as u64;
            lo = lo << 8 | a[i + 8] as u64;
            i += 1;
        }
        (hi, lo)
    }

    /// Index into `NETMON_BAN6_HOST` of the first word of `a`'s /32's block (Fibonacci hashing
    /// of the /32, with another multiplier than `l32_6_slot`'s, so /32s that share a /32
    /// filter bit seldom share a block too), and the bit in that word of `a`'s /32 as a whole.
    #[inline(always)]
    pub const fn h6_block(generation: u8, a: &[u8; 16]) -> (u32, u32) {
        let top = top32(a);
        let h = top.wrapping_mul(0x85eb_ca6b);
        let shift = 32 - H6_BLOCKS.trailing_zeros();
        (
            (generation as u32).wrapping_sub(1) * H6_WORDS + (h >> shift) * 8,
            (h >> (shift - 6)) & 63,
        )
    }

    /// The word (1 to 7, from its block's first) and bit of the prefix of length `level` (of
    /// `H6_LEVELS`) of the address whose halves (`h6_halves`) are `hi` and `lo`; `h6_slot`
    /// gives the word's index in the map.
    #[inline(always)]
    pub const fn h6_bit(hi: u64, lo: u64, level: u8) -> (u32, u32) {
        let (hi, lo) = match level {
            0..64 => (hi & !(u64::MAX >> level), 0),
            64 => (hi, 0),
            65..128 => (hi, lo & !(u64::MAX >> (level - 64))),
            _ => (hi, lo),
        };
        let x = (hi ^ level as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lo;
        let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        let bit = (x * 448) >> 32;
        (1 + (bit >> 6) as u32, bit as u32 & 63)
    }

    /// Index into `NETMON_BAN6_HOST` of the word holding the bit of the prefix of length
    /// `level` of the address whose block starts at `block` (`h6_block`) and whose halves are
    /// `hi` and `lo`, and the bit.
    #[inline(always)]
    pub const fn h6_slot(block: u32, hi: u64, lo: u64, level: u8) -> (u32, u32) {
        let (word, bit) = h6_bit(hi, lo, level);
        (block + word, bit)
    }

    /// How the IPv6 host filter stands for an entry of prefix length `len` (33 to 128; an
    /// entry of /32 or shorter sets the whole-/32 bit of every /32 it covers).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum H6Cover {
        /// By the bits of its prefixes of this level, longer than or as long as the entry,
        /// at most 16 of them: exact.
        Split(u8),
        /// By the bit of the one prefix of this level, shorter than the entry, that holds it:
        /// the addresses of that prefix outside the entry are looked up too.
        Within(u8),
        /// By its /32's whole bit (an entry of /33 to /35: no level within four bits of it
        /// or above it).
        Whole,
    }

    /// `H6Cover` for an entry of /33 to /128.
    pub const fn h6_cover(len: u8) -> H6Cover {
        let mut within = 0;
        let mut i = 0;
        while i < H6_LEVELS.len() {
            let level = H6_LEVELS[i];
            if level >= len && level - len <= 4 {
                return H6Cover::Split(level);
            }
            if level <= len {
                within = level;
            }
            i += 1;
        }
        if within == 0 {
            H6Cover::Whole
        } else {
            H6Cover::Within(within)
        }
    }

    /// Calls `f` with the word and bit (indexes into `NETMON_BAN6_HOST`) of every IPv6 host
    /// filter bit that an entry `net`/`len` (/16 to /128) sets: the whole bit of every /32 an
    /// entry of /32 or shorter covers, else the bits `h6_cover` names.
    pub fn h6_each_slot(generation: u8, net: u128, len: u32, mut f: impl FnMut((u32, u32))) {
        let whole = |a: u128| h6_block(generation, &a.to_be_bytes());
        let level = |a: u128, level: u8| {
            let a = a.to_be_bytes();
            let (block, _) = h6_block(generation, &a);
            let (hi, lo) = h6_halves(&a);
            h6_slot(block, hi, lo, level)
        };
        if len <= 32 {
            let top = net >> 96;
            for p in top..top + (1u128 << (32 - len)) {
                f(whole(p << 96));
            }
            return;
        }
        match h6_cover(len as u8) {
            H6Cover::Whole => f(whole(net)),
            H6Cover::Within(l) => f(level(net, l)),
            H6Cover::Split(l) => {
                for i in 0..1u128 << (l as u32 - len) {
                    f(level(net | i << (128 - l as u32), l));
                }
            }
        }
    }

    /// The IPv6 host filter's bits for address `a` (indexes into `NETMON_BAN6_HOST`, and the
    /// bit): its /32's whole bit, then its prefixes' of each of `H6_LEVELS`. The programs
    /// skip the lookups when all are clear.
    #[inline(always)]
    pub fn h6_slots(generation: u8, a: &[u8; 16]) -> [(u32, u32); 1 + H6_LEVELS.len()] {
        let (block, whole) = h6_block(generation, a);
        let (hi, lo) = h6_halves(a);
        let mut out = [(block, whole); 1 + H6_LEVELS.len()];
        for (o, level) in out[1..].iter_mut().zip(H6_LEVELS) {
            *o = h6_slot(block, hi, lo, level);
        }
        out
    }

    pub const HAS_ALLOW_V4: u64 = 1 << 0;
    pub const HAS_ALLOW_V6: u64 = 1 << 1;
    pub const HAS_EXACT_V4: u64 = 1 << 2;
    pub const HAS_EXACT_V6: u64 = 1 << 3;
    pub const HAS_PREFIX_V4: u64 = 1 << 4;
    pub const HAS_PREFIX_V6: u64 = 1 << 5;
    pub const HAS_RATE_V4: u64 = 1 << 6;
    pub const HAS_RATE_V6: u64 = 1 << 7;
    /// The `HAS_*` bits of `FLAGS`.
    pub const HAS_MASK: u64 = 0xff;

    /// The slots that name the generation whose filter or index is complete: beside the
    /// `HAS_*` bits, `FLAGS` carries the generation in force (`generation_of`) and, for it,
    /// a bit per slot of these that names it (`complete`). The programs read that one word
    /// (one lookup, and a consistent view of every slot at once); the daemon writes it after
    /// each change to them (`control_word`).
    pub const COMPLETE_SLOTS: [u32; 7] = [
        BAN4_FILTER,
        BAN4_L24_FILTER,
        BANX_COMPLETE,
        BAN6_FILTER,
        BANW_COMPLETE,
        BAN4_HOST_FILTER,
        BAN6_HOST_FILTER,
    ];
    const GENERATION_SHIFT: u32 = 8;
    const COMPLETE_SHIFT: u32 = 16;

    /// `FLAGS` for the `HAS_*` bits `has`, `generation` in force, and the slots of
    /// `COMPLETE_SLOTS` whose value is `generation` (`complete`: their bits, `complete_bit`).
    pub const fn control_word(has: u64, generation: u8, complete: u64) -> u64 {
        has & HAS_MASK | (generation as u64) << GENERATION_SHIFT | complete
    }

    /// The bit of `FLAGS` that says slot `slot` (of `COMPLETE_SLOTS`) names the generation in
    /// force.
    pub const fn complete_bit(slot: u32) -> u64 {
        1 << (COMPLETE_SHIFT + slot)
    }

    /// The generation in force, as `FLAGS` (`word`) gives it: 0 when the drop list is
    /// empty, or `FLAGS` was written by a version that kept it in `GENERATION` alone.
    #[inline(always)]
    pub const fn generation_of(word: u64) -> u8 {
        (word >> GENERATION_SHIFT) as u8
    }

    /// Whether `FLAGS` (`word`) says the generation in force has slot `slot`'s filter or
    /// index complete.
    #[inline(always)]
    pub const fn complete(word: u64, slot: u32) -> bool {
        word & complete_bit(slot) != 0
    }
}

/// Why an entry is banned; the `reason` label of the drop metrics.
pub mod ban_kind {
    pub const MANUAL: u8 = 0;
    pub const IMPORT: u8 = 1;
    pub const AUTO: u8 = 2;
    /// Over a per-source rate limit (`netmon limit`, or the response policy's `ratelimit`).
    pub const RATELIMIT: u8 = 3;
    pub const NAMES: [&str; 4] = ["manual", "import", "auto", "ratelimit"];
}

/// A per-source rate limit (NETMON_RATE4/6, keyed by the source address), enforced on
/// ingress as GCRA (the "virtual scheduling" form of a token bucket), in packets or in bytes
/// (`unit`). Packets: a packet arriving at `now` passes when `tat_ns - now <= burst_ns`, and
/// then moves `tat_ns` on by `interval_ns`. Bytes (a bandwidth): a packet of `len` bytes
/// costs `len * interval_ns >> RATE_BYTE_SHIFT` ns, and passes when `tat_ns - now` plus its
/// cost is at most `burst_ns` (the burst in bytes times the ns per byte), which it then adds
/// to `tat_ns`. One u64 of state per source; CPUs race on it without atomics, so the limit
/// is approximate under a flood spread over CPUs (it errs towards letting a few more through).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateValue {
    /// Packets: nanoseconds per packet (1e9 / packets per second). Bytes: nanoseconds per
    /// byte in units of 2^-`RATE_BYTE_SHIFT` ns (2^16 * 1e9 / bytes per second).
    pub interval_ns: u64,
    /// Packets: (burst - 1) * interval_ns, how far ahead of now `tat_ns` may run. Bytes: the
    /// burst in bytes times the nanoseconds per byte.
    pub burst_ns: u64,
    /// Theoretical arrival time of the next packet (CLOCK_MONOTONIC, coarse).
    pub tat_ns: u64,
    /// CLOCK_MONOTONIC deadline after which the limit no longer applies; 0: never.
    pub expires_ns: u64,
    /// Dropped packets and bytes, updated atomically.
    pub packets: u64,
    pub bytes: u64,
    pub last_hit_ns: u64,
    /// `ban_kind::*` of who set it (manual or auto); drops count as `ban_kind::RATELIMIT`.
    pub kind: u8,
    /// `rate_unit::*`: what the rate counts. (A padding byte before versions with
    /// bandwidth limits, whose programs read every limit as packets.)
    pub unit: u8,
    pub _pad: [u8; 6],
}

/// What a `RateValue` counts.
pub mod rate_unit {
    pub const PACKETS: u8 = 0;
    pub const BYTES: u8 = 1;
}

/// Fractional bits of a bandwidth limit's nanoseconds per byte (`RateValue::interval_ns`):
/// 100 Gbit/s is 0.08 ns a byte.
pub const RATE_BYTE_SHIFT: u32 = 16;

/// Exact-address ban key (hash map). `generation` selects the set in force.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BanKey4 {
    pub generation: u8,
    pub _pad: u8,
    pub _pad2: u16,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BanKey6 {
    pub generation: u8,
    pub _pad: u8,
    pub _pad2: u16,
    pub addr: [u8; 16],
}

/// LPM-trie ban key data: the generation byte, then the address. Its prefix length is
/// `8 + prefix`, so a lookup only matches entries of the generation it asks for.
pub type BanPrefix4 = [u8; 5];
pub type BanPrefix6 = [u8; 17];

/// One ban entry in the kernel: expiry and hit counters. Reason, author and the rest live in
/// the daemon's state file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanValue {
    /// CLOCK_MONOTONIC nanoseconds after which the entry no longer drops; 0: never expires.
    /// The programs compare it against `bpf_ktime_get_coarse_ns` (a read of the
    /// timekeeper, no clock-source access), so an entry expires up to one kernel tick late.
    pub expires_ns: u64,
    /// Updated atomically by the programs.
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds (tick resolution) of the latest drop.
    pub last_hit_ns: u64,
    /// `ban_kind::*`.
    pub kind: u8,
    /// The entry's prefix length (32 or 128 for an address), written by userspace: a lookup
    /// in an LPM trie returns the longest prefix that covers the key, which is another
    /// entry's value when this one is absent. 0 in entries written before it existed.
    pub prefix_len: u8,
    pub _pad2: u16,
    pub _pad3: u32,
}

/// One slot of the exact IPv4 ban array (`NETMON_BANX4`): a ban the programs find without a
/// kernel hash lookup, their own index of part of `NETMON_BAN4`. `tag` is `banx4_tag`'s
/// (address, kind, in use), 0 when empty (but for `BANX_OVERFLOW`); userspace writes
/// `expires_ns` before the tag and clears the tag before anything else. Hit counters are per
/// CPU, in `NETMON_BANCNT4` (`ban_hits_index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanSlot4 {
    pub tag: u64,
    /// As `BanValue::expires_ns`: 0, never.
    pub expires_ns: u64,
}

/// Ways of a `NETMON_BANX4` bucket: one cache line of slots.
pub const BANX4_WAYS: u32 = 4;
/// Buckets of `NETMON_BANX4` per generation: 4,096 slots. An exact IPv4 ban whose bucket is
/// full is only in `NETMON_BAN4`, where the programs look next.
pub const BANX4_BUCKETS: u32 = 1024;

/// The odd multiplier of `banx4_bucket`'s hash (Fibonacci hashing: the bucket is the
/// product's top bits), which tests invert to list the addresses of one bucket.
pub const BANX4_HASH_MUL: u32 = 0x9e37_79b1;

/// The first `NETMON_BANX4` slot of `addr`'s bucket in `generation` (1 or 2).
#[inline(always)]
pub const fn banx4_bucket(generation: u8, addr: [u8; 4]) -> u32 {
    let a = u32::from_ne_bytes(addr);
    let h = a.wrapping_mul(BANX4_HASH_MUL) >> (32 - BANX4_BUCKETS.trailing_zeros());
    ((generation as u32).wrapping_sub(1) & 1) * BANX4_BUCKETS * BANX4_WAYS + h * BANX4_WAYS
}

/// A `BanSlot4` tag: the address, the ban's `ban_kind`, and a bit that makes it non-zero.
#[inline(always)]
pub const fn banx4_tag(addr: [u8; 4], kind: u8) -> u64 {
    u32::from_ne_bytes(addr) as u64 | banx_meta(kind)
}

/// The bits of a `BanSlot4` or `BanSlot6` tag that hold the ban's kind.
pub const BANX_KIND: u64 = 0xff << 32;

/// A bit of the tag of a bucket's first slot (`NETMON_BANX4`, `NETMON_BANX6`), whether that
/// slot is in use or not: some exact ban of the bucket is in `NETMON_BAN4`/`NETMON_BAN6`
/// only (the bucket was full, or the arrays were off). Set before that entry is written and
/// kept until the generation is cleared.
pub const BANX_OVERFLOW: u64 = 1 << 48;

/// One slot of the exact IPv6 ban array (`NETMON_BANX6`), as `BanSlot4` for IPv6: the
/// address in `addr`, `tag` `banx_meta`'s (kind, in use), 0 when empty (but for
/// `BANX_OVERFLOW`). Userspace writes the
/// expiry and the address before the tag and clears the tag before anything else; the
/// programs read the tag again after comparing the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanSlot6 {
    pub addr: [u8; 16],
    pub tag: u64,
    pub expires_ns: u64,
}

/// Ways of a `NETMON_BANX6` bucket: one cache line of slots.
pub const BANX6_WAYS: u32 = 2;
/// Buckets of `NETMON_BANX6` per generation: 4,096 slots.
pub const BANX6_BUCKETS: u32 = 2048;

/// The first `NETMON_BANX6` slot of `addr`'s bucket in `generation` (1 or 2).
#[inline(always)]
pub fn banx6_bucket(generation: u8, addr: &[u8; 16]) -> u32 {
    let h = tab_hash(&addr_words(addr)) & (BANX6_BUCKETS - 1);
    ((generation as u32).wrapping_sub(1) & 1) * BANX6_BUCKETS * BANX6_WAYS + h * BANX6_WAYS
}

/// A `BanSlot6` tag: the ban's `ban_kind` and a bit that makes it non-zero.
#[inline(always)]
pub const fn banx_meta(kind: u8) -> u64 {
    (kind as u64) << 32 | 1 << 40
}

/// One CPU's hit counters of one `NETMON_BANX4` or `NETMON_BANX6` slot, in `NETMON_BANCNT4`
/// or `NETMON_BANCNT6` at `ban_hits_index`. 32 bytes: never across a cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanHits {
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds (tick resolution) of this CPU's latest drop.
    pub last_hit_ns: u64,
    pub _pad: u64,
}

/// Slots of `NETMON_BANX4` (both generations).
pub const BANX4_SLOTS: u32 = 2 * BANX4_BUCKETS * BANX4_WAYS;
/// Slots of `NETMON_BANX6` (both generations).
pub const BANX6_SLOTS: u32 = 2 * BANX6_BUCKETS * BANX6_WAYS;

/// Ways of a `NETMON_BANW4` bucket: one cache line of slots, as `NETMON_BANX4`'s.
pub const BANW4_WAYS: u32 = 4;
/// Buckets of `NETMON_BANW4` per generation: 131,072 slots, for the exact IPv4 bans that
/// find no slot in `NETMON_BANX4` (of 100,000 random addresses ~9.5% find none in either,
/// simulated, and go to `NETMON_BAN4` alone).
pub const BANW4_BUCKETS: u32 = 32768;
/// Slots of `NETMON_BANW4` (both generations).
pub const BANW4_SLOTS: u32 = 2 * BANW4_BUCKETS * BANW4_WAYS;
/// Ways of a `NETMON_BANW6` bucket: one cache line of slots, as `NETMON_BANX6`'s.
pub const BANW6_WAYS: u32 = 2;
/// Buckets of `NETMON_BANW6` per generation: 65,536 slots (of 30,000 random addresses ~6%
/// find no slot in either array, of 50,000 ~15%, simulated).
pub const BANW6_BUCKETS: u32 = 32768;
/// Slots of `NETMON_BANW6` (both generations).
pub const BANW6_SLOTS: u32 = 2 * BANW6_BUCKETS * BANW6_WAYS;

/// One bucket of `NETMON_BANW4`, a map value: its slots (a cache line), then their hit
/// counters, shared by the CPUs (atomic adds, as a hash entry's: per-CPU counters for this
/// many slots would cost megabytes per CPU). A hit reads the counters next to the slots, in
/// the same page (one TLB entry, not two). Slot `i` of the array is way `i % BANW4_WAYS` of
/// bucket `i / BANW4_WAYS`. 192 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WideBucket4 {
    pub slots: [BanSlot4; BANW4_WAYS as usize],
    pub hits: [BanHits; BANW4_WAYS as usize],
}

/// One bucket of `NETMON_BANW6`, as `WideBucket4`. 128 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WideBucket6 {
    pub slots: [BanSlot6; BANW6_WAYS as usize],
    pub hits: [BanHits; BANW6_WAYS as usize],
}

/// The first `NETMON_BANW4` slot of `addr`'s bucket in `generation` (1 or 2): a hash
/// independent of `banx4_bucket`'s (murmur3's finalizer), so that the addresses that
/// overflow one bucket of `NETMON_BANX4` spread over the whole of `NETMON_BANW4`.
#[inline(always)]
pub const fn banw4_bucket(generation: u8, addr: [u8; 4]) -> u32 {
    let mut h = u32::from_ne_bytes(addr);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    ((generation as u32).wrapping_sub(1) & 1) * BANW4_BUCKETS * BANW4_WAYS
        + (h & (BANW4_BUCKETS - 1)) * BANW4_WAYS
}

/// The first `NETMON_BANW6` slot of `addr`'s bucket in `generation` (1 or 2): the hash whose
/// bits 32.. place it in `NETMON_BANX6` (`banx6_bucket`), mixed by murmur3's 64-bit
/// finalizer, so independent of those bits. (Unmixed, its top bits took only ~9,700 values
/// over 98,976 addresses that differ in their last 32 bits, against ~31,000 mixed.)
#[inline(always)]
pub fn banw6_bucket(generation: u8, addr: &[u8; 16]) -> u32 {
    let mut h = tab_hash64(&addr_words(addr));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let h = h as u32 & (BANW6_BUCKETS - 1);
    ((generation as u32).wrapping_sub(1) & 1) * BANW6_BUCKETS * BANW6_WAYS + h * BANW6_WAYS
}

/// An IPv6 address as four 32-bit words in memory order (the programs' view of it).
#[inline(always)]
fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        w[i] = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
        i += 1;
    }
    w
}

/// Where CPU `cpu`'s counters of slot `slot` of an exact ban array with `slots` slots are in
/// its counter array (`NETMON_BANCNT4`/`6`, `slots` entries per possible CPU, sized by the
/// loader): CPU-major, so that CPUs never write the same cache line, and the program's
/// lookup is one load of a plain array (a per-CPU array's is two dependent ones: its
/// element's per-CPU pointer, then the element).
#[inline(always)]
pub const fn ban_hits_index(cpu: u32, slots: u32, slot: u32) -> u32 {
    cpu * slots + slot
}

/// Key of the per-CPU drop counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub ifindex: u32,
    pub direction: u8,
    /// `ban_kind::*`.
    pub kind: u8,
    pub _pad: u16,
}

/// Offsets inside `struct sock` (its embedded `struct sock_common`), read from the running
/// kernel's BTF by the daemon and written into the programs' read-only globals before load,
/// because Rust eBPF has no CO-RE relocations.
pub mod sock_offsets {
    /// Defaults: x86_64 layout, stable since Linux 4.x.
    pub const DADDR: u32 = 0; // skc_daddr
    pub const RCV_SADDR: u32 = 4; // skc_rcv_saddr
    pub const DPORT: u32 = 12; // skc_dport (network order)
    pub const NUM: u32 = 14; // skc_num (host order)
    pub const FAMILY: u32 = 16; // skc_family
    pub const V6_DADDR: u32 = 56; // skc_v6_daddr
    pub const V6_RCV_SADDR: u32 = 72; // skc_v6_rcv_saddr
    /// A field with no default offset (outside `sock_common`): set by the loader from BTF.
    pub const UNKNOWN: u32 = u32::MAX;
}

/// Field offsets of `sock:inet_sock_set_state` and `sock:sock_send_length` records, from
/// their `format` files under tracefs; defaults are those of Linux 5.6+ on x86_64.
pub mod tp_offsets {
    pub const SS_SKADDR: u32 = 8;
    pub const SS_OLDSTATE: u32 = 16;
    pub const SS_NEWSTATE: u32 = 20;
    pub const SS_SPORT: u32 = 24;
    pub const SS_DPORT: u32 = 26;
    pub const SS_FAMILY: u32 = 28;
    pub const SS_PROTOCOL: u32 = 30;
    pub const SS_SADDR: u32 = 32;
    pub const SS_DADDR: u32 = 36;
    pub const SS_SADDR_V6: u32 = 40;
    pub const SS_DADDR_V6: u32 = 56;
    pub const SL_SK: u32 = 8;
    pub const SL_FAMILY: u32 = 16;
    pub const SL_PROTOCOL: u32 = 18;
    /// `tcp:tcp_retransmit_skb` (Linux 4.16+).
    pub const RT_SKADDR: u32 = 16;
    pub const RT_SPORT: u32 = 28;
    pub const RT_DPORT: u32 = 30;
    pub const RT_FAMILY: u32 = 32;
    pub const RT_SADDR: u32 = 34;
    pub const RT_DADDR: u32 = 38;
    pub const RT_SADDR_V6: u32 = 42;
    pub const RT_DADDR_V6: u32 = 58;
}

/// `total_retrans` in `struct tcp_sock`: the segments the socket has sent again, as TCP
/// counts them for `tcpi_total_retrans`. Its place depends on the kernel's configuration:
/// no default, the loader sets it from BTF and attaches the retransmit tracepoint only then.
pub const TCP_SOCK_OFF_TOTAL_RETRANS_UNKNOWN: u32 = u32::MAX;

/// Sockets in `NETMON_TCP_RETRANS`: each TCP socket that sent segments again, by its tuple,
/// with its `total_retrans` at its latest retransmission; read by the daemon each drain.
pub const TCP_RETRANS_ENTRIES: u32 = 16_384;

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Writes `v4` (network order bytes) as an IPv4-mapped IPv6 address.
#[inline(always)]
pub fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

macro_rules! assert_layout {
    ($t:ty, $size:expr, $( $field:ident @ $off:expr ),* ) => {
        const _: () = {
            assert!(core::mem::size_of::<$t>() == $size);
            $( assert!(core::mem::offset_of!($t, $field) == $off); )*
        };
    };
}

assert_layout!(FlowKey, 44, ifindex @ 0, direction @ 4, proto @ 5, family @ 6, flags @ 7,
    local_port @ 8, remote_port @ 10, local_addr @ 12, remote_addr @ 28);
assert_layout!(FlowKey4, 20, ifindex @ 0, direction @ 4, proto @ 5, family @ 6, flags @ 7,
    local_port @ 8, remote_port @ 10, local_addr @ 12, remote_addr @ 16);
assert_layout!(FlowStats, 40, bytes @ 0, packets @ 8, first_seen_ns @ 16, last_seen_ns @ 24,
    tcp_flags @ 32, epoch @ 36);
assert_layout!(IfaceStats, 16, bytes @ 0, packets @ 8);
assert_layout!(ProcInfo, 40, pid @ 0, uid @ 4, cgroup_id @ 8, recorded_ns @ 16, comm @ 24);
assert_layout!(SockKey, 40, proto @ 0, local_port @ 2, remote_port @ 4, local_addr @ 8,
    remote_addr @ 24);
assert_layout!(PortKey, 4, proto @ 0, port @ 2);
assert_layout!(NsPortKey, 16, net @ 0, port @ 8);
// A slot's epoch and sequence number fill one 8-byte aligned word, epoch first: where
// stores may be seen out of order, the programs publish a slot's rewrite by exchanging that
// word (`WEAK_STORE_ORDER` in netmon-ebpf).
assert_layout!(TabSlot<FlowKey4>, 64, key @ 32, epoch @ 56, seq @ 60);
assert_layout!(TabSlot<FlowKey>, 88, key @ 32, epoch @ 80, seq @ 84);
assert_layout!(BanKey4, 8, generation @ 0, addr @ 4);
assert_layout!(BanKey6, 20, generation @ 0, addr @ 4);
assert_layout!(BanValue, 40, expires_ns @ 0, packets @ 8, bytes @ 16, last_hit_ns @ 24,
    kind @ 32);
assert_layout!(RateValue, 64, interval_ns @ 0, burst_ns @ 8, tat_ns @ 16, expires_ns @ 24,
    packets @ 32, bytes @ 40, last_hit_ns @ 48, kind @ 56, unit @ 57);
assert_layout!(DropKey, 8, ifindex @ 0, direction @ 4, kind @ 5);
assert_layout!(CpuState, 80, jiffies @ 0, ns @ 8, packets @ 16, parsed @ 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] plain integers/byte arrays with explicit padding, so every
    // bit pattern is valid and there are no implicit padding bytes (checked by assert_layout).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::BanSlot4 {}
    unsafe impl aya::Pod for super::BanSlot6 {}
    unsafe impl aya::Pod for super::BanHits {}
    unsafe impl aya::Pod for super::WideBucket4 {}
    unsafe impl aya::Pod for super::WideBucket6 {}
    unsafe impl aya::Pod for super::TabBucket<super::FlowKey4> {}
    unsafe impl aya::Pod for super::TabBucket<super::FlowKey> {}
    unsafe impl aya::Pod for super::IfaceStats {}
    unsafe impl aya::Pod for super::ProcInfo {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::NsPortKey {}
    unsafe impl aya::Pod for super::BanKey4 {}
    unsafe impl aya::Pod for super::BanKey6 {}
    unsafe impl aya::Pod for super::BanValue {}
    unsafe impl aya::Pod for super::RateValue {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::CpuState {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    /// The words a socket hook reads for an address: its bytes in memory, as 32-bit loads.
    fn words6(a: std::net::Ipv6Addr) -> [u32; 4] {
        let o = a.octets();
        core::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        })
    }

    #[test]
    fn loopback_destinations_are_told_from_the_others() {
        let v4 = |s: &str| {
            is_loopback4(u32::from_ne_bytes(
                s.parse::<std::net::Ipv4Addr>().unwrap().octets(),
            ))
        };
        let v6 = |s: &str| is_loopback6(words6(s.parse().unwrap()));
        for (a, loopback) in [
            ("127.0.0.1", true),
            ("127.0.0.53", true),
            ("127.255.255.254", true),
            ("126.255.255.255", false),
            ("128.0.0.1", false),
            ("10.0.0.127", false),
            ("0.0.0.0", false),
            ("192.0.2.1", false),
        ] {
            assert_eq!(v4(a), loopback, "{a}");
        }
        for (a, loopback) in [
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:127.1.2.3", true),
            ("::", false),
            ("::2", false),
            ("::ffff:10.0.0.1", false),
            ("::127.0.0.1", false),
            ("2001:db8::1", false),
            ("fe80::1", false),
            ("1::1", false),
        ] {
            assert_eq!(v6(a), loopback, "{a}");
        }
    }

    #[test]
    fn the_control_word_keeps_the_flags_generation_and_complete_slots_apart() {
        use dropcfg::*;
        let done = complete_bit(BANX_COMPLETE) | complete_bit(BAN6_HOST_FILTER);
        let word = control_word(HAS_EXACT_V4 | HAS_RATE_V6, 2, done);
        assert_eq!(word & HAS_MASK, HAS_EXACT_V4 | HAS_RATE_V6);
        assert_eq!(generation_of(word), 2);
        for slot in COMPLETE_SLOTS {
            let want = slot == BANX_COMPLETE || slot == BAN6_HOST_FILTER;
            assert_eq!(complete(word, slot), want, "slot {slot}");
            // No complete bit is a HAS_* bit or the generation's.
            assert_eq!(
                complete_bit(slot) & control_word(HAS_MASK, u8::MAX, 0),
                0,
                "slot {slot}"
            );
        }
        // Bits beyond HAS_MASK in what a caller passes as flags do not leak.
        assert_eq!(control_word(u64::MAX, 0, 0), HAS_MASK);
        assert_eq!(generation_of(control_word(HAS_MASK, 0, 0)), 0);
    }

    /// The host filter's slots: an address's 256 neighbours in its /24 take the 256 bits of
    /// one block (four consecutive words), each generation its own half of the map, and
    /// consecutive /24s (a subnet's) blocks of their own.
    #[test]
    fn host_filter_slots_are_one_block_per_24() {
        use dropcfg::{H32_BLOCKS, H32_WORDS, h32_slot};
        for generation in [1u8, 2] {
            let base = u32::from(generation - 1) * H32_WORDS;
            let slots: std::collections::BTreeSet<_> = (0..=255u8)
                .map(|h| h32_slot(generation, [198, 51, 100, h]))
                .collect();
            assert_eq!(slots.len(), 256);
            let first = slots.first().unwrap().0;
            assert_eq!(first % 4, 0, "a block starts at a multiple of four words");
            assert!(
                slots
                    .iter()
                    .all(|&(w, b)| w >= base && w < first + 4 && b < 64)
            );
            assert!(first >= base && first + 4 <= base + H32_WORDS);
        }
        let blocks: std::collections::BTreeSet<_> = (0..4096u32)
            .map(|t| h32_slot(1, [10, (t >> 8) as u8, t as u8, 0]).0 / 4)
            .collect();
        assert_eq!(blocks.len(), 4096, "4,096 consecutive /24s, 4,096 blocks");
        assert!(blocks.iter().all(|&b| b < H32_BLOCKS));
    }

    /// The IPv6 host filter's slots: every address of a /32 has its /32's block (eight words
    /// at a multiple of eight, in its generation's half) and its bits in that block's last
    /// seven words; a prefix's bit is the same for every address in it; `h6_cover`'s choices.
    #[test]
    fn ipv6_host_filter_slots() {
        use dropcfg::{H6_LEVELS, H6_WORDS, H6Cover, h6_bit, h6_block, h6_cover, h6_halves};
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        for generation in [1u8, 2] {
            let base = u32::from(generation - 1) * H6_WORDS;
            for a in ["2001:db8::1", "2a00:1450:4001::5", "3fff:ffff::", "::1"] {
                let a = v6(a);
                let (block, whole) = h6_block(generation, &a);
                assert!(block % 8 == 0 && block >= base && block + 8 <= base + H6_WORDS);
                assert!(whole < 64);
                let mut far = a;
                far[4..].fill(0xff);
                assert_eq!(
                    h6_block(generation, &far),
                    (block, whole),
                    "one block a /32"
                );
                let (hi, lo) = h6_halves(&a);
                for level in H6_LEVELS {
                    let (word, bit) = h6_bit(hi, lo, level);
                    assert!((1..8).contains(&word) && bit < 64);
                }
            }
        }
        let a = v6("2001:db8:1:2:3:4:5:6");
        assert_eq!(
            h6_halves(&a),
            (0x2001_0db8_0001_0002, 0x0003_0004_0005_0006)
        );
        let (hi, lo) = h6_halves(&a);
        for level in H6_LEVELS {
            // The last address of the same prefix, and the first of the next.
            let (same, next) = if level <= 64 {
                let tail = u64::MAX.checked_shr(u32::from(level)).unwrap_or(0);
                ((hi | tail, u64::MAX), ((hi | tail).wrapping_add(1), 0))
            } else {
                let tail = u64::MAX.checked_shr(u32::from(level) - 64).unwrap_or(0);
                ((hi, lo | tail), (hi, (lo | tail).wrapping_add(1)))
            };
            assert_eq!(
                h6_bit(same.0, same.1, level),
                h6_bit(hi, lo, level),
                "/{level}"
            );
            let others: std::collections::BTreeSet<_> = (0..64u64)
                .map(|i| {
                    let step = |(h, l): (u64, u64)| {
                        if level <= 64 {
                            (h.wrapping_add(i << (64 - u32::from(level).min(64))), l)
                        } else {
                            (h, l.wrapping_add(i << (128 - u32::from(level))))
                        }
                    };
                    let (h, l) = step(next);
                    h6_bit(h, l, level)
                })
                .collect();
            assert!(
                others.len() > 32,
                "/{level}: neighbours spread over the block"
            );
        }
        for (len, want) in [
            (33, H6Cover::Whole),
            (35, H6Cover::Whole),
            (36, H6Cover::Split(40)),
            (40, H6Cover::Split(40)),
            (41, H6Cover::Within(40)),
            (43, H6Cover::Within(40)),
            (44, H6Cover::Split(48)),
            (48, H6Cover::Split(48)),
            (50, H6Cover::Within(48)),
            (56, H6Cover::Split(56)),
            (60, H6Cover::Split(64)),
            (64, H6Cover::Split(64)),
            (65, H6Cover::Within(64)),
            (123, H6Cover::Within(64)),
            (124, H6Cover::Split(128)),
            (128, H6Cover::Split(128)),
        ] {
            assert_eq!(h6_cover(len), want, "/{len}");
        }
    }

    #[test]
    fn flow_key4_widens_and_narrows_back() {
        let k4 = FlowKey4 {
            ifindex: 7,
            direction: DIR_EGRESS,
            proto: IPPROTO_TCP,
            family: 4,
            flags: FLOW_FLAG_NO_PORTS,
            local_port: 443,
            remote_port: 51000,
            local_addr: [192, 0, 2, 1],
            remote_addr: [198, 51, 100, 9],
        };
        let k = FlowKey::from(k4);
        assert_eq!(k.local_addr, v4_mapped([192, 0, 2, 1]));
        assert_eq!(k.remote_addr, v4_mapped([198, 51, 100, 9]));
        assert_eq!((k.ifindex, k.local_port, k.remote_port), (7, 443, 51000));
        assert_eq!(k.narrow(), Some(k4));
    }

    #[test]
    fn ipv6_flows_have_no_narrow_key() {
        let mut k = FlowKey {
            family: 6,
            local_addr: v4_mapped([10, 0, 0, 1]),
            remote_addr: v4_mapped([10, 0, 0, 2]),
            ..Default::default()
        };
        // An IPv6 packet between IPv4-mapped addresses is still an IPv6 flow.
        assert_eq!(k.narrow(), None);
        k.family = 4;
        k.remote_addr[0] = 0x20;
        assert_eq!(k.narrow(), None, "a family-4 key with a non-mapped address");
        k.remote_addr[0] = 0;
        assert!(k.narrow().is_some());
    }

    /// Doubling a part's buckets in use keeps every key in its bucket or moves it to the
    /// bucket as far past it as there were buckets in use (never used before); a count of
    /// buckets in use that is not a power of two at most the part's is taken as the part.
    #[test]
    fn flow_table_growth_moves_a_key_to_its_bucket_or_the_one_past_the_old_part() {
        const PER_CPU: u32 = 1 << 14;
        let mut moved = 0;
        for i in 0..10_000u32 {
            let words = [2, 0x0611_0004, 443 | i << 16, 0xc000_0201, 0x0a00_0000 + i];
            let mut live = TAB_START_BUCKETS;
            let (mut b, fp) = tab_place_live(&words, 3, PER_CPU, live);
            while live < PER_CPU {
                assert!((3 * PER_CPU..3 * PER_CPU + live).contains(&b));
                let (b2, fp2) = tab_place_live(&words, 3, PER_CPU, live * 2);
                assert_eq!(fp2, fp);
                assert!(b2 == b || b2 == b + live, "{b} -> {b2} at {live}");
                moved += u32::from(b2 != b);
                (b, live) = (b2, live * 2);
            }
            assert_eq!((b, fp), tab_place(&words, 3, PER_CPU));
            for odd in [3, 3 * TAB_START_BUCKETS, 2 * PER_CPU] {
                let live = tab_live_buckets(odd.into(), PER_CPU);
                assert_eq!(tab_place_live(&words, 3, PER_CPU, live), (b, fp));
            }
            let start = tab_live_buckets(0, PER_CPU);
            assert_eq!(start, TAB_START_BUCKETS);
            assert_eq!(tab_place_live(&words, 3, PER_CPU, start).1, fp);
        }
        // Six doublings per key: about half of them move it.
        assert!((25_000..35_000).contains(&moved), "{moved} moves of 60,000");
    }

    /// A part's `NETMON_TABLIVE` word is read the same everywhere: 0 for the start (or the
    /// whole of a smaller part), then the count written, and the whole part for any count
    /// that is not a power of two at most the part's.
    #[test]
    fn buckets_in_use_are_read_from_the_word_as_written() {
        let start = TAB_START_BUCKETS;
        assert_eq!(tab_live_buckets(0, 1 << 16), start);
        assert_eq!(tab_live_buckets(0, start / 4), start / 4);
        assert_eq!(tab_live_buckets(4 * u64::from(start), 1 << 16), 4 * start);
        assert_eq!(tab_live_buckets(1 << 16, 1 << 16), 1 << 16);
        for odd in [3 * u64::from(start), 1 << 17, 1 << 40, u64::MAX] {
            assert_eq!(tab_live_buckets(odd, 1 << 16), 1 << 16, "{odd}");
        }
    }

    /// Keys that differ only in the remote address or port (a scan, a busy server, clients
    /// behind one address), or in the local port, spread evenly over a CPU's buckets, IPv4
    /// and IPv6 keys alike, and keys that share a bucket rarely share a fingerprint.
    #[test]
    fn flow_table_places_spread_keys_and_fingerprints() {
        const BUCKETS: u32 = 1024;
        let v4 = |local_port: u16, remote_port: u16, remote: u32| {
            FlowKey4 {
                ifindex: 2,
                direction: DIR_EGRESS,
                proto: IPPROTO_TCP,
                family: 4,
                local_port,
                remote_port,
                local_addr: [192, 0, 2, 1],
                remote_addr: remote.to_be_bytes(),
                ..Default::default()
            }
            .words()
            .to_vec()
        };
        let v6 = |remote_port: u16, net: u32, host: u32| {
            let mut remote = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            remote[4..8].copy_from_slice(&net.to_be_bytes());
            remote[12..].copy_from_slice(&host.to_be_bytes());
            let key = FlowKey {
                ifindex: 2,
                direction: DIR_INGRESS,
                proto: IPPROTO_UDP,
                family: 6,
                local_port: 53,
                remote_port,
                local_addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                remote_addr: remote,
                ..Default::default()
            };
            // SAFETY: a FlowKey is eleven 32-bit words without padding (repr(C)).
            unsafe { core::mem::transmute::<FlowKey, [u32; 11]>(key) }.to_vec()
        };
        let n = 100_000u32;
        let sets: [(&str, std::vec::Vec<std::vec::Vec<u32>>); 5] = [
            (
                "IPv4, remote addresses and ports",
                (0..n)
                    .map(|i| v4(443, (i % 7 * 1000) as u16, 0x0a00_0000 + i / 7))
                    .collect(),
            ),
            (
                "IPv4, 100 clients' ports",
                (0..n)
                    .map(|i| v4(443, (20_000 + i / 100) as u16, 0xc633_6400 + i % 100))
                    .collect(),
            ),
            (
                "IPv4, a scan of local ports",
                (0..n)
                    .map(|i| v4(i as u16, 5555, 0xcb00_7100 + (i >> 16)))
                    .collect(),
            ),
            (
                "IPv6, remote /32s and ports",
                (0..n)
                    .map(|i| v6((i % 7 * 1000) as u16, i / 7, 1))
                    .collect(),
            ),
            (
                "IPv6, a subnet's hosts",
                (0..n).map(|i| v6(40_000, 1, i)).collect(),
            ),
        ];
        for (what, keys) in sets {
            let mut load = vec![0u32; BUCKETS as usize];
            let mut prints = std::collections::HashSet::new();
            let mut shared = 0;
            for words in &keys {
                let (bucket, fp) = tab_place(words, 1, BUCKETS);
                assert!((BUCKETS..2 * BUCKETS).contains(&bucket), "CPU 1's part");
                assert!(fp != 0 && fp <= 0xffff);
                load[(bucket - BUCKETS) as usize] += 1;
                shared += u32::from(!prints.insert((bucket, fp)));
            }
            let mean = n / BUCKETS;
            let (min, max) = (load.iter().min().unwrap(), load.iter().max().unwrap());
            assert!(
                *min > mean / 2 && *max < mean * 3 / 2,
                "{what}: bucket loads {min}..{max}"
            );
            // ~98 keys a bucket, 2^15 fingerprints (the low bit is always set): ~150 pairs
            // for a uniform hash. A shared fingerprint only costs a key compare in that slot.
            assert!(
                shared < 400,
                "{what}: {shared} keys share a bucket and a fingerprint"
            );
        }
    }
}
