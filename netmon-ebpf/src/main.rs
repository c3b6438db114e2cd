//! netmon's kernel programs.
//!
//! - `netmon_xdp_tab` (XDP, ingress) and `netmon_tc_tab` (TC/TCX, egress) count every frame
//!   per interface (per-CPU) and per flow (in the running CPU's part of the per-CPU flow
//!   tables, plain adds), and drop frames the drop list or a rate limit says to drop.
//!   `netmon_xdp` and `netmon_tc_egress` do the same with the kernel's LRU hash maps as the
//!   flow store (shared entries, atomic adds; `--flow-table lru`). `netmon_tc_tab_pulled`
//!   and `netmon_tc_pulled` are egress's continuations, by tail call, for frames whose
//!   headers had to be pulled into the skb's linear data.
//! - `netmon_sock_state` (tracepoint `sock:inet_sock_set_state`), `netmon_tcp_connect`
//!   (kprobe `tcp_connect`), `netmon_sock_send` (tracepoint `sock:sock_send_length`) and
//!   `netmon_udp_sendmsg` (kprobe `udp_sendmsg`/`udpv6_sendmsg`) record which process owns a
//!   socket, at socket time. The daemon attaches the kprobes where the kernel has kprobes and
//!   falls back to the tracepoints where it has not.
// Built for bpfel-unknown-none by `cargo xtask build`; a host build (e.g. `cargo clippy
// --workspace`) compiles it as an empty program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map calls take `impl Borrow`; references keep 40-byte keys off the BPF stack"
)]

mod parse;

use core::sync::atomic::{Ordering, compiler_fence};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC,
        xdp_action,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns,
        bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_get_netns_cookie,
        generated::bpf_sk_storage_get,
    },
    macros::{
        btf_map, cgroup_sock, cgroup_sock_addr, classifier, kprobe, map, raw_tracepoint,
        tracepoint, xdp,
    },
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
        lpm_trie::Key,
    },
    programs::{
        ProbeContext, RawTracePointContext, SockAddrContext, SockContext, TcContext,
        TracePointContext, XdpContext,
    },
};
use netmon_common::{
    AF_INET, AF_INET6, BANW4_SLOTS, BANW4_WAYS, BANW6_SLOTS, BANW6_WAYS, BANX_KIND, BANX_OVERFLOW,
    BANX4_SLOTS, BANX4_WAYS, BANX6_SLOTS, BANX6_WAYS, BanHits, BanKey4, BanKey6, BanPrefix4,
    BanPrefix6, BanSlot4, BanSlot6, BanValue, CpuState, DIR_EGRESS, DIR_INGRESS, DROP_SLOTS,
    DropKey, FLOW_FLAG_FORWARDED, FlowKey, FlowKey4, FlowStats, HOOK_TC, HOOK_XDP, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IfaceStats, NsPortKey, PARSED_WORDS, PortKey,
    ProcInfo, RATE_BYTE_SHIFT, RateValue, SockKey, TAB_LIVE_STRIDE, TAB_WAYS, TabBucket,
    TabEvicted, TabSlot, WideBucket4, WideBucket6, ban_kind, config, counter, drop_slot, dropcfg,
    is_icmp, rate_unit, sock_offsets, tab_live_buckets, tab_place_live, tcp_state, tp_offsets,
    v4_mapped,
};
use parse::{Addr, NOTE_NONE, Packet, Parsed, addr_bytes, parse, parse_fast};

// ---------------------------------------------------------------------------------------------
// Maps. Sizes are defaults; the daemon sets them from its configuration before load.

/// Per-flow counters of IPv6 flows with `--flow-table lru` (`netmon_xdp`, `netmon_tc_egress`;
/// the daemon shrinks the map to one entry otherwise). LRU because the key space is
/// unbounded. The value sits inline in the element (not per-CPU): one cache line fewer to
/// miss per packet, one value instead of one per possible CPU to zero on insert, to copy out
/// on every drain and to preallocate (a per-CPU value would take 64x the memory on a 64-CPU
/// host); counters are updated with atomic adds (a flow and direction is rarely on two CPUs
/// at once, so they are uncontended).
#[map]
static NETMON_FLOWS6: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(65536, 0);

/// The same for IPv4 flows, under a 20-byte key (`FlowKey4`) rather than the 44-byte
/// IPv4-mapped one: fewer words to hash and compare on every packet, a smaller element.
#[map]
static NETMON_FLOWS4: LruHashMap<FlowKey4, FlowStats> = LruHashMap::with_max_entries(65536, 0);

/// Slot 0: `netmon_tc_pulled`, which `netmon_tc_egress` tail-calls after pulling headers
/// that were not in the skb's linear data; slot 1: `netmon_tc_tab_pulled`, the same for
/// `netmon_tc_tab`; slots 2 and 3 the same for the ingress programs at TC ingress
/// (`netmon_common::tc_tail_slot`). Filled by the loader (the slots of the programs it
/// attaches).
#[map]
static NETMON_TC_TAIL: ProgramArray = ProgramArray::with_max_entries(4, 0);

/// Keys of the flows touched in the current drain epoch, each pushed once per epoch (on its
/// first packet after the daemon advanced `config::EPOCH`), so that a drain reads only what
/// changed. When it is full the key is counted in `counter::DIRTY_LOST` and the daemon reads
/// the whole flow map instead.
#[map]
static NETMON_DIRTY: RingBuf = RingBuf::with_byte_size(DIRTY_RING_BYTES, 0);

/// 2 MiB: ~37,000 IPv6 flow keys (44 bytes + an 8-byte record header) or ~65,000 IPv4 ones
/// (20 + 8 + 4 of alignment) per drain; more flows touched in one interval make that drain a
/// full read. The daemon tells the two kinds of record apart by their length. The kernel
/// maps the whole ring into the daemon (twice: the data area is mapped back to back), so it
/// counts 4 MiB of RSS.
const DIRTY_RING_BYTES: u32 = 2 << 20;

/// `BPF_RB_NO_WAKEUP`: the daemon reads the ring on its own schedule, so no record needs to
/// wake it.
const RB_NO_WAKEUP: u64 = 1;

/// Event and error counters, indexed by `netmon_common::counter`.
#[map]
static NETMON_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Run-time switches written by the daemon, indexed by `netmon_common::config`.
#[map]
static NETMON_CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

/// Socket 4-tuple -> owning process, written when a TCP connection is established.
#[map]
static NETMON_SOCK_PROC: LruHashMap<SockKey, ProcInfo> = LruHashMap::with_max_entries(65536, 0);

/// Socket 4-tuple -> the segments it has sent again, TCP's own count (`total_retrans`, as
/// of its latest retransmission); LRU, since sockets come and go: the daemon reads it whole
/// every drain and counts what each entry moved.
#[map]
static NETMON_TCP_RETRANS: LruHashMap<SockKey, u64> =
    LruHashMap::with_max_entries(netmon_common::TCP_RETRANS_ENTRIES, 0);

/// Local port -> owner of TCP listeners (their accepted connections inherit it), the last
/// to listen on the port in any network namespace: the daemon's fallback for a flow without
/// a socket record.
#[map]
static NETMON_PORT_OWNER: LruHashMap<PortKey, ProcInfo> = LruHashMap::with_max_entries(16384, 0);

/// (network namespace, local port) -> owner of TCP listeners: where an accepted connection
/// finds its server, so that two containers listening on one port are told apart. Written
/// beside `NETMON_PORT_OWNER` when BTF gave the socket's namespace field (`SK_OFF_NET`).
#[map]
static NETMON_LISTEN_NS: LruHashMap<NsPortKey, ProcInfo> = LruHashMap::with_max_entries(16384, 0);

/// UDP local port -> the process that last sent from it, indexed by the port: a new UDP
/// flow's owner is plain stores into its slot, with no hash, lock or LRU list (an insert
/// into an LRU hash cost ~0.8-1.4 us of the egress program on the AMD hosts). A pid of 0:
/// none recorded. The daemon reads it mapped (`BPF_F_MMAPABLE`).
#[map]
static NETMON_UDP_PORTS: Array<ProcInfo> =
    Array::with_max_entries(netmon_common::UDP_PORT_SLOTS, BPF_F_MMAPABLE);

/// A UDP socket's owner, kept on the socket itself (socket local storage): the process that
/// last connected it or sent from it with an address (the cgroup hooks `netmon_udp_connect4/6`,
/// `netmon_udp_sendmsg4/6` write it), and the local port and drain epoch the egress program
/// last made that process the owner of the port in. The egress program reaches it from the
/// frame's socket (`bpf_sk_storage_get`: pointers followed, no cookie, no hashing), on a UDP
/// flow's first packet of each drain epoch, so a stream of datagrams from a connected socket
/// runs no program in the sender. A socket's storage goes with the socket: nothing fills up
/// or is evicted however many sockets a host has.
#[repr(C)]
struct UdpSockOwner {
    owner: ProcInfo,
    /// The local port and drain epoch `owner` was last recorded for (port 0: never).
    port: u32,
    epoch: u32,
    /// The local port `owner` was last recorded for in `NETMON_UDP_NS` (0: never), or
    /// `NS_OWN` for a socket of the daemon's network namespace, which is never recorded
    /// there.
    ns_port: u32,
    _pad: u32,
}

/// `UdpSockOwner::ns_port` of a socket in the daemon's own network namespace.
const NS_OWN: u32 = u32::MAX;

#[btf_map]
static NETMON_UDP_SK: SkStorage<UdpSockOwner> = SkStorage::new();

/// (network namespace cookie, UDP local port) -> the process that owned a UDP socket of
/// another network namespace than the daemon's (a container's): written by the cgroup UDP
/// hooks once the socket has a port (an addressed send after the first, a connect of a
/// bound socket) and when the socket is closed (`netmon_udp_release`). A container's
/// datagrams reach the host's interfaces without their socket, so the egress program never
/// sees who sent them; the daemon finds the namespace by the flow's container-side address
/// and looks the port up here.
#[map]
static NETMON_UDP_NS: LruHashMap<NsPortKey, ProcInfo> =
    LruHashMap::with_max_entries(netmon_common::UDP_NS_ENTRIES, 0);

/// The process that created an ICMP socket (a ping socket or a raw ICMP/ICMPv6 one), kept
/// with the socket by `netmon_icmp_sock`. The egress program copies it to `NETMON_SOCK_PROC`
/// under the addresses of an ICMP flow the socket starts (`icmp_owner_from_socket`).
#[btf_map]
static NETMON_ICMP_SK: SkStorage<ProcInfo> = SkStorage::new();

/// `struct sock *` -> the process that called connect(), between SYN_SENT (process context,
/// source port not yet chosen) and ESTABLISHED (softirq, tuple complete).
#[map]
static NETMON_SK_OWNER: LruHashMap<u64, ProcInfo> = LruHashMap::with_max_entries(16384, 0);

// ---------------------------------------------------------------------------------------------
// The drop list. Pinned under the daemon's bpffs directory, so that the CLI edits it with or
// without a running daemon and a restarted daemon finds it intact. Keys carry a generation
// byte: a bulk import fills the generation not in force, then flips NETMON_DROPCFG.

/// Exact IPv4 addresses.
#[map]
static NETMON_BAN4: HashMap<BanKey4, BanValue> = HashMap::pinned(262_144, BPF_F_NO_PREALLOC);
/// Exact IPv4 bans the programs index themselves (`netmon_common::banx4_bucket`): 4-way
/// buckets of `BanSlot4`, `BANX4_BUCKETS` per generation, holding as many of NETMON_BAN4's
/// entries as fit. One cache line and no kernel hash lookup for a banned address; a ban
/// whose bucket is full is found in NETMON_BAN4. Mappable: userspace writes slots with
/// ordered stores (expiry, then tag).
#[map]
static NETMON_BANX4: Array<BanSlot4> = Array::pinned(BANX4_SLOTS, BPF_F_MMAPABLE);
/// NETMON_BANX4's hit counters, one part per possible CPU (`ban_hits_index`; the loader
/// sizes it, `BANX4_SLOTS` entries per CPU): a flood from a banned address drops on every
/// CPU without the CPUs contending for one entry's counters. A plain array, not a per-CPU
/// one: a per-CPU array's element is a separate allocation reached through a pointer, two
/// dependent loads (cache misses, for a pool of banned sources) where this is one.
/// Mappable: userspace reads and zeroes the counters in place.
#[map]
static NETMON_BANCNT4: Array<BanHits> = Array::pinned(BANX4_SLOTS, BPF_F_MMAPABLE);
/// The same for exact IPv6 bans: 2-way buckets of 32-byte `BanSlot6`.
#[map]
static NETMON_BANX6: Array<BanSlot6> = Array::pinned(BANX6_SLOTS, BPF_F_MMAPABLE);
#[map]
static NETMON_BANCNT6: Array<BanHits> = Array::pinned(BANX6_SLOTS, BPF_F_MMAPABLE);
#[map]
static NETMON_BAN6: HashMap<BanKey6, BanValue> = HashMap::pinned(262_144, BPF_F_NO_PREALLOC);
/// The wide exact ban arrays: the exact bans that find no slot in `NETMON_BANX4`/`6` (whose
/// bucket then carries `BANX_OVERFLOW`, which sends the programs here), in buckets of their
/// own hash (`banw4_bucket`, `banw6_bucket`) that hold their slots' hit counters too
/// (`WideBucket4`/`6`), so that a list of tens of thousands of addresses still drops without
/// a kernel hash lookup.
#[map]
static NETMON_BANW4: Array<WideBucket4> = Array::pinned(BANW4_SLOTS / BANW4_WAYS, BPF_F_MMAPABLE);
#[map]
static NETMON_BANW6: Array<WideBucket6> = Array::pinned(BANW6_SLOTS / BANW6_WAYS, BPF_F_MMAPABLE);
/// Prefixes (longest match), key data `[generation, address...]`.
#[map]
static NETMON_BANPFX4: LpmTrie<BanPrefix4, BanValue> = LpmTrie::pinned(262_144, 0);
#[map]
static NETMON_BANPFX6: LpmTrie<BanPrefix6, BanValue> = LpmTrie::pinned(262_144, 0);
/// One bit per IPv4 /16 and generation (`dropcfg::l16_slot`): set when an IPv4 ban entry
/// (exact or prefix) of that generation overlaps the /16. A clear bit lets a packet skip the
/// drop-list lookups (a cold hash bucket, a trie walk); a set bit only means "look". Bits are
/// set before the entry is inserted and stay after it is removed (until the generation is
/// cleared), so the filter never hides an entry.
#[map]
static NETMON_BAN4_L16: Array<u64> = Array::pinned(2 * dropcfg::L16_WORDS, 0);
/// The same at /24 (`dropcfg::l24_slot`; 2 MiB per generation), consulted where the /16 bit
/// is set: with a large list most /16s hold an entry, most /24s do not. One cold word
/// instead of the allow trie, the exact-match bucket and the prefix trie walk. Mappable:
/// userspace sets its bits with stores rather than a syscall per word.
#[map]
static NETMON_BAN4_L24: Array<u64> = Array::pinned(2 * dropcfg::L24_WORDS, BPF_F_MMAPABLE);
/// The IPv4 host filter, consulted where the /24 filter says "look" (the address's /24
/// holds entries): one bit per /24 (`dropcfg::l24_slot`; 2 MiB per generation), set when an
/// IPv4 ban entry of /24 or shorter covers the whole /24 ...
#[map]
static NETMON_BAN4_W24: Array<u64> = Array::pinned(2 * dropcfg::L24_WORDS, BPF_F_MMAPABLE);
/// ... and where none does, one bit per address in its /24's block (`dropcfg::h32_slot`;
/// 2 MiB per generation), set for every address an entry of /25 to /32 covers. A clear bit
/// (and a clear whole-/24 bit) lets the address skip the exact-match buckets and the prefix
/// trie walk: two bitmap words instead.
#[map]
static NETMON_BAN4_H32: Array<u64> = Array::pinned(2 * dropcfg::H32_WORDS, BPF_F_MMAPABLE);
/// The IPv6 counterpart (`dropcfg::l32_6_slot`; 256 KiB per generation): one bit per hashed
/// IPv6 /32, set for every /32 an IPv6 ban entry overlaps (all of them for a prefix shorter
/// than /16). A clear bit lets a packet skip the array's bucket and the prefix trie walk.
#[map]
static NETMON_BAN6_L32: Array<u64> = Array::pinned(2 * dropcfg::L32_6_WORDS, BPF_F_MMAPABLE);
/// The IPv6 host filter, consulted where the /32 filter says "look": a cache line per hashed
/// /32 (`dropcfg::h6_block`; 32,768 blocks, 2 MiB per generation) holding a bit for the /32
/// as a whole, set when an entry of /32 or shorter covers it, and hashed bits for the /40,
/// /48, /56, /64 and /128 that entries longer than /32 cover or lie in (`dropcfg::h6_bit`,
/// `dropcfg::h6_cover`). All of an address's bits clear: no entry covers it, and it skips
/// the exact-match buckets and the prefix trie walk for that one line.
#[map]
static NETMON_BAN6_HOST: Array<u64> = Array::pinned(2 * dropcfg::H6_WORDS, BPF_F_MMAPABLE);
/// Allow list: checked first, wins over every ban. Value: unused.
#[map]
static NETMON_ALLOW4: LpmTrie<[u8; 4], u64> = LpmTrie::pinned(65_536, 0);
#[map]
static NETMON_ALLOW6: LpmTrie<[u8; 16], u64> = LpmTrie::pinned(65_536, 0);
/// Generation in force and which maps are non-empty (`netmon_common::dropcfg`).
/// Per-source rate limits (ingress), keyed by the source address: `netmon limit` and the
/// response policy's `ratelimit` action. Not generation-switched (they are never bulk
/// imported).
#[map]
static NETMON_RATE4: HashMap<[u8; 4], RateValue> = HashMap::pinned(65_536, BPF_F_NO_PREALLOC);
#[map]
static NETMON_RATE6: HashMap<[u8; 16], RateValue> = HashMap::pinned(65_536, BPF_F_NO_PREALLOC);
#[map]
static NETMON_DROPCFG: Array<u64> = Array::pinned(dropcfg::COUNT, 0);
/// Dropped packets and bytes per interface, direction and ban kind, for interfaces with an
/// index too large for NETMON_DROP_SLOTS.
#[map]
static NETMON_DROPS: PerCpuHashMap<DropKey, IfaceStats> = PerCpuHashMap::pinned(1024, 0);
/// Dropped packets and bytes indexed by `netmon_common::drop_slot`: an array lookup.
#[map]
static NETMON_DROP_SLOTS: PerCpuArray<IfaceStats> = PerCpuArray::pinned(DROP_SLOTS, 0);

// ---------------------------------------------------------------------------------------------
// Read-only globals set by the loader (EbpfLoader::set_global) from the running kernel's BTF
// and tracefs format files. The defaults are the x86_64 layouts of Linux 5.6+.

#[unsafe(no_mangle)]
static SK_OFF_DADDR: u32 = sock_offsets::DADDR;
#[unsafe(no_mangle)]
static SK_OFF_RCV_SADDR: u32 = sock_offsets::RCV_SADDR;
#[unsafe(no_mangle)]
static SK_OFF_DPORT: u32 = sock_offsets::DPORT;
#[unsafe(no_mangle)]
static SK_OFF_NUM: u32 = sock_offsets::NUM;
#[unsafe(no_mangle)]
static SK_OFF_FAMILY: u32 = sock_offsets::FAMILY;
#[unsafe(no_mangle)]
static SK_OFF_V6_DADDR: u32 = sock_offsets::V6_DADDR;
#[unsafe(no_mangle)]
static SK_OFF_V6_RCV_SADDR: u32 = sock_offsets::V6_RCV_SADDR;
/// `sk_protocol`, past `sock_common`, where the layout depends on the kernel's configuration:
/// there is no default, and the loader attaches the raw tracepoint that reads it only when
/// BTF gave the offset.
#[unsafe(no_mangle)]
static SK_OFF_PROTOCOL: u32 = sock_offsets::UNKNOWN;
/// `skc_net.net`, the socket's network namespace (`NETMON_LISTEN_NS`); UNKNOWN without BTF.
#[unsafe(no_mangle)]
static SK_OFF_NET: u32 = sock_offsets::UNKNOWN;

#[unsafe(no_mangle)]
static TP_SS_SKADDR: u32 = tp_offsets::SS_SKADDR;
#[unsafe(no_mangle)]
static TP_SS_OLDSTATE: u32 = tp_offsets::SS_OLDSTATE;
#[unsafe(no_mangle)]
static TP_SS_NEWSTATE: u32 = tp_offsets::SS_NEWSTATE;
#[unsafe(no_mangle)]
static TP_SS_SPORT: u32 = tp_offsets::SS_SPORT;
#[unsafe(no_mangle)]
static TP_SS_DPORT: u32 = tp_offsets::SS_DPORT;
#[unsafe(no_mangle)]
static TP_SS_FAMILY: u32 = tp_offsets::SS_FAMILY;
#[unsafe(no_mangle)]
static TP_SS_PROTOCOL: u32 = tp_offsets::SS_PROTOCOL;
#[unsafe(no_mangle)]
static TP_SS_SADDR: u32 = tp_offsets::SS_SADDR;
#[unsafe(no_mangle)]
static TP_SS_DADDR: u32 = tp_offsets::SS_DADDR;
#[unsafe(no_mangle)]
static TP_SS_SADDR_V6: u32 = tp_offsets::SS_SADDR_V6;
#[unsafe(no_mangle)]
static TP_SS_DADDR_V6: u32 = tp_offsets::SS_DADDR_V6;
#[unsafe(no_mangle)]
static TP_RT_SKADDR: u32 = tp_offsets::RT_SKADDR;
#[unsafe(no_mangle)]
static TP_RT_SPORT: u32 = tp_offsets::RT_SPORT;
#[unsafe(no_mangle)]
static TP_RT_DPORT: u32 = tp_offsets::RT_DPORT;
#[unsafe(no_mangle)]
static TP_RT_FAMILY: u32 = tp_offsets::RT_FAMILY;
#[unsafe(no_mangle)]
static TP_RT_SADDR: u32 = tp_offsets::RT_SADDR;
#[unsafe(no_mangle)]
static TP_RT_DADDR: u32 = tp_offsets::RT_DADDR;
#[unsafe(no_mangle)]
static TP_RT_SADDR_V6: u32 = tp_offsets::RT_SADDR_V6;
#[unsafe(no_mangle)]
static TP_RT_DADDR_V6: u32 = tp_offsets::RT_DADDR_V6;
/// `struct tcp_sock`'s `total_retrans`, from BTF (no default: see netmon-common).
#[unsafe(no_mangle)]
static TCP_SOCK_OFF_TOTAL_RETRANS: u32 = netmon_common::TCP_SOCK_OFF_TOTAL_RETRANS_UNKNOWN;
#[unsafe(no_mangle)]
static TP_SL_SK: u32 = tp_offsets::SL_SK;
#[unsafe(no_mangle)]
static TP_SL_PROTOCOL: u32 = tp_offsets::SL_PROTOCOL;

/// Reads a loader-set global; volatile so that the compiler does not fold the default in.
#[inline(always)]
fn global(v: &'static u32) -> usize {
    // SAFETY: `v` is a valid static.
    unsafe { core::ptr::read_volatile(v) as usize }
}

/// An all-zero value, for the padding of map keys and values: written as whole-word stores
/// rather than a byte-array memset, which the BPF backend turns into a call.
#[inline(always)]
fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for netmon_common's plain-old-data types, valid when all zero.
    unsafe { core::mem::zeroed() }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = NETMON_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU; programs on one CPU do not interleave here.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn config(index: u32) -> u64 {
    NETMON_CONFIG.get(index).copied().unwrap_or(0)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions. CLOCK_MONOTONIC, as userspace reads it.
    unsafe { bpf_ktime_get_ns() }
}

/// This CPU's state for the packet programs (`netmon_common::CpuState`): its last read of
/// the coarse clock and the jiffies it was read in (`coarse_now_in`), the frames each hook
/// saw (which the daemon reads) and the frame being accounted's parse (`account`).
#[map]
static NETMON_CPU: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

// The parse lives in `CpuState::parsed`, whole 64-bit words (`Parsed::reset` writes words:
// the map value is 8-byte aligned, and so is the field).
const _: () = assert!(core::mem::size_of::<Parsed>() == 8 * PARSED_WORDS);
const _: () = assert!(core::mem::offset_of!(CpuState, parsed) % 8 == 0);

/// CLOCK_MONOTONIC at tick resolution (Linux 5.11+), the timekeeper's last update: flow
/// times only need to be good to a few milliseconds against a one-second drain. The coarse
/// clock changes once a tick, and so do the jiffies, which the verifier turns into one load
/// (a 64-bit JIT inlines `bpf_jiffies64`); so the helper, a call into the kernel whose return
/// costs ~18 ns on hosts with the Speculative-Return-Stack-Overflow mitigation (the AMD
/// hosts' "Safe RET"), runs once per tick and CPU, and every other packet of the tick reads
/// the value this CPU kept. A value kept by a CPU that read the jiffies of a tick before the
/// timekeeper's update of it is at most that one tick old, as the coarse clock itself is.
///
/// `t`: this CPU's state (`NETMON_CPU`'s entry), which the caller has looked up; the packet
/// programs read the clock once per frame (`account`).
#[inline(always)]
fn coarse_now_in(t: *mut CpuState) -> u64 {
    // SAFETY: helper without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    // SAFETY: this CPU's slot. A program that interrupts another on this CPU between the two
    // stores below sees the older jiffies, not this tick's, and reads the clock itself.
    unsafe {
        if (*t).jiffies == jiffies {
            return (*t).ns;
        }
        let ns = bpf_ktime_get_coarse_ns();
        (*t).ns = ns;
        compiler_fence(Ordering::SeqCst);
        (*t).jiffies = jiffies;
        ns
    }
}

/// Counts a frame for its hook (`HOOK_XDP`, `HOOK_TC`) in this CPU's state. (Per-interface
/// totals are the device's own counters, which the daemon reads: counting them here cost
/// every frame a line of its own, ~10 ns on the benchmark's AMD host.)
#[inline(always)]
fn count_frame(cpu: *mut CpuState, hook: usize) {
    // SAFETY: this CPU's entry; the packet programs on one CPU do not interleave (they run
    // with bottom halves off). `hook` is HOOK_XDP or HOOK_TC.
    unsafe { (*cpu).packets[hook] += 1 };
}

/// Adds a frame to `key`'s per-CPU totals in `map`, creating the entry on first use.
#[inline(always)]
fn add_to_stats<K>(map: &PerCpuHashMap<K, IfaceStats>, key: &K, len: u64, frames: u64) {
    match map.get_ptr_mut(key) {
        Some(s) => {
            // SAFETY: this CPU's slot; programs on one CPU do not interleave here.
            unsafe {
                (*s).bytes += len;
                (*s).packets += frames;
            }
        }
        None => {
            let s = IfaceStats {
                bytes: len,
                packets: frames,
            };
            if map.insert(key, &s, BPF_ANY as u64).is_err() {
                bump(counter::IFACE_INSERT_FAILED);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic accounting.

// The packet programs' own functions are `#[inline(always)]`: aya's macros wrap each in its
// section's entry point, and LLVM, left to choose, made a grown body a function of its own,
// entered by a BPF-to-BPF call whose return costs as much as a helper's with the AMD hosts'
// return mitigation (a test fails on any such call).
#[xdp]
#[inline(always)]
pub fn netmon_xdp(ctx: XdpContext) -> u32 {
    xdp_main::<false>(&ctx)
}

/// `netmon_xdp` with the per-CPU flow table (`NETMON_TAB4`/`NETMON_TAB6`) as its flow store.
#[xdp]
#[inline(always)]
pub fn netmon_xdp_tab(ctx: XdpContext) -> u32 {
    xdp_main::<true>(&ctx)
}

/// Ingress: `TAB` picks the flow store (see `account`).
#[inline(always)]
fn xdp_main<const TAB: bool>(ctx: &XdpContext) -> u32 {
    // SAFETY: ctx.ctx is the kernel-provided xdp_md.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let packet = Packet {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    // A per-CPU array's entry 0 always exists.
    let Some(cpu) = NETMON_CPU.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    let len = (packet.end - packet.data) as u64;
    count_frame(cpu, HOOK_XDP);
    if account::<TAB>(cpu, ifindex, DIR_INGRESS, len, &packet, false, &mut 0, None) == Verdict::Drop
    {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Bytes of headers a pull brings into the linear part of an skb: Ethernet, two VLAN tags,
/// IPv6 and a few extension headers, TCP.
const TC_PULL_LEN: u32 = 192;

#[classifier]
#[inline(always)]
pub fn netmon_tc_egress(ctx: TcContext) -> i32 {
    tc_main::<false, false>(&ctx)
}

/// `netmon_tc_egress` with the per-CPU flow table as its flow store; its continuation after a
/// pull is `netmon_tc_tab_pulled`.
#[classifier]
#[inline(always)]
pub fn netmon_tc_tab(ctx: TcContext) -> i32 {
    tc_main::<true, false>(&ctx)
}

/// The ingress program at the TC ingress hook, for an interface where XDP would run in
/// generic mode (a veth; a driver without native XDP): generic XDP copies every frame whose
/// skb lacks XDP's 256 bytes of headroom, or is cloned or paged, into a new head before the
/// program runs (4x the program's own cost for a 64-byte datagram into a veth end), and its
/// switch, once on, runs on every frame every device receives. At TC ingress the program
/// reads the skb as it is. Counted and dropped as `netmon_xdp` does; its frames are the
/// ingress hook's (`HOOK_XDP`).
#[classifier]
#[inline(always)]
pub fn netmon_tc_ingress(ctx: TcContext) -> i32 {
    tc_main::<false, true>(&ctx)
}

/// `netmon_tc_ingress` with the per-CPU flow table as its flow store; its continuation
/// after a pull is `netmon_tci_tab_pulled`.
#[classifier]
#[inline(always)]
pub fn netmon_tci_tab(ctx: TcContext) -> i32 {
    tc_main::<true, true>(&ctx)
}

/// Egress, or with `INGRESS` the ingress program at TC ingress: `TAB` picks the flow store
/// (see `account`).
#[inline(always)]
fn tc_main<const TAB: bool, const INGRESS: bool>(ctx: &TcContext) -> i32 {
    // A per-CPU array's entry 0 always exists.
    let Some(cpu) = NETMON_CPU.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: ctx.skb.skb is the kernel-provided __sk_buff.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count_frame(cpu, if INGRESS { HOOK_XDP } else { HOOK_TC });
    match tc_account::<TAB, INGRESS>(cpu, ctx, ifindex, len, true) {
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Pull => pull_and_continue::<TAB, INGRESS>(ctx, len),
        // TC_ACT_UNSPEC (TCX_NEXT): let the next program, or the default action, decide.
        Verdict::Pass => TC_ACT_UNSPEC,
    }
}

/// `account` for an egress frame, then, for a UDP frame that starts its flow (or its drain
/// epoch), the sender from its socket's storage; with `INGRESS`, for a frame received.
#[inline(always)]
fn tc_account<const TAB: bool, const INGRESS: bool>(
    cpu: *mut CpuState,
    ctx: &TcContext,
    ifindex: u32,
    len: u32,
    may_pull: bool,
) -> Verdict {
    let packet = Packet {
        data: ctx.data(),
        end: ctx.data_end(),
    };
    let mut udp_port = 0;
    let verdict = account::<TAB>(
        cpu,
        ifindex,
        if INGRESS { DIR_INGRESS } else { DIR_EGRESS },
        u64::from(len),
        &packet,
        may_pull,
        &mut udp_port,
        Some(ctx),
    );
    if !INGRESS && verdict == Verdict::Pass {
        udp_owner_from_socket(ctx, udp_port);
    }
    verdict
}

/// The storage `map` keeps on the socket that sent the frame of `ctx` (looked up, never
/// created); null where the frame has no socket (forwarded), the socket is not a full one, or
/// it has no storage in `map`.
#[inline(always)]
fn frame_sock_storage<T>(ctx: &TcContext, map: &SkStorage<T>) -> *mut T {
    // SAFETY: the program's own skb; `sk` is its socket or null.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: a helper on a socket the verifier has checked; nothing is created.
    unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(map).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<T>()
}

/// An outgoing ICMP frame that starts its flow (or its drain epoch) from a socket whose
/// creator `netmon_icmp_sock` recorded: that process becomes the owner of the flow's two
/// addresses for the protocol (`NETMON_SOCK_PROC`, ports 0), so the requests and the replies
/// between them are its. A frame of a socket created before the daemon, or of none
/// (forwarded, or the kernel's own replies), records nothing.
#[inline(always)]
fn icmp_owner_from_socket(ctx: &TcContext, proto: u8, local: &Addr, remote: &Addr) {
    let owner = frame_sock_storage(ctx, &NETMON_ICMP_SK);
    if owner.is_null() {
        return;
    }
    // The first word (protocol, ports 0, padding) as one 64-bit store: zeros field by field
    // are merged into a call of memset, a function of the program.
    let mut key = core::mem::MaybeUninit::<SockKey>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: writes of a SockKey's every byte (the layout is asserted in netmon-common: the
    // protocol, a pad byte, two ports and a pad word, then the two 16-byte addresses), so it
    // is initialised when read.
    let key = unsafe {
        k.cast::<u64>().write(u64::from(proto));
        (&raw mut (*k).local_addr).write(addr_bytes(*local));
        (&raw mut (*k).remote_addr).write(addr_bytes(*remote));
        key.assume_init_ref()
    };
    // SAFETY: the socket's storage, live for the program run.
    insert_sock(key, unsafe { &*owner });
}

/// cgroup `sock_create`, on the cgroup v2 root: the process creating an ICMP or ICMPv6
/// socket (ping's datagram socket, or a raw one) goes into the socket's storage
/// (`NETMON_ICMP_SK`); other sockets cost the protocol's compare. Always 1: the socket is
/// created.
#[cgroup_sock(sock_create)]
pub fn netmon_icmp_sock(ctx: SockContext) -> i32 {
    // SAFETY: the kernel-provided bpf_sock of the socket being created.
    let proto = unsafe { (*ctx.sock).protocol };
    if proto == u32::from(IPPROTO_ICMP) || proto == u32::from(IPPROTO_ICMPV6) {
        let mut owner = current_proc();
        // SAFETY: the hook's own socket (the context); the storage is created with
        // `owner`'s bytes.
        let s = unsafe {
            bpf_sk_storage_get(
                core::ptr::from_ref(&NETMON_ICMP_SK).cast_mut().cast(),
                ctx.sock.cast(),
                (&raw mut owner).cast(),
                u64::from(aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE),
            )
        };
        if s.is_null() {
            bump(counter::SOCK_INSERT_FAILED);
        }
    }
    1
}

/// `netmon_tc_egress` when the headers were not in the skb's linear data and had to be
/// pulled: entered by tail call (a program of its own, verified on its own: a second inlined
/// copy of the accounting path would double what the verifier explores), the frame already
/// counted for its hook.
#[classifier]
#[inline(always)]
pub fn netmon_tc_pulled(ctx: TcContext) -> i32 {
    tc_pulled::<false, false>(&ctx)
}

/// `netmon_tc_pulled` for `netmon_tc_tab`.
#[classifier]
#[inline(always)]
pub fn netmon_tc_tab_pulled(ctx: TcContext) -> i32 {
    tc_pulled::<true, false>(&ctx)
}

/// `netmon_tc_pulled` for `netmon_tc_ingress`.
#[classifier]
#[inline(always)]
pub fn netmon_tci_pulled(ctx: TcContext) -> i32 {
    tc_pulled::<false, true>(&ctx)
}

/// `netmon_tc_pulled` for `netmon_tci_tab`.
#[classifier]
#[inline(always)]
pub fn netmon_tci_tab_pulled(ctx: TcContext) -> i32 {
    tc_pulled::<true, true>(&ctx)
}

#[inline(always)]
fn tc_pulled<const TAB: bool, const INGRESS: bool>(ctx: &TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the kernel-provided __sk_buff.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    // A per-CPU array's entry 0 always exists.
    let Some(cpu) = NETMON_CPU.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    if tc_account::<TAB, INGRESS>(cpu, ctx, ifindex, len, false) == Verdict::Drop {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

/// The headers of `ctx` run past its linear data (they are in paged fragments): pulls them
/// in and continues in `netmon_tc_pulled`. Only then: a pull makes the skb head private, and
/// a locally sent TCP segment is a clone (kept for retransmission) with all its headers
/// linear, so pulling every packet would copy every segment's head (hundreds of ns each).
/// A failed pull only means the next program parses less; the packet goes out either way.
#[inline(always)]
fn pull_and_continue<const TAB: bool, const INGRESS: bool>(ctx: &TcContext, len: u32) -> i32 {
    let want = if len < TC_PULL_LEN { len } else { TC_PULL_LEN };
    let _ = ctx.pull_data(want);
    // SAFETY: slots 0 and 1 hold netmon_tc_pulled and netmon_tc_tab_pulled, 2 and 3
    // netmon_tci_pulled and netmon_tci_tab_pulled (`tc_tail_slot`), classifiers like this
    // one; the call does not return when it succeeds.
    unsafe { NETMON_TC_TAIL.tail_call(ctx, netmon_common::tc_tail_slot(TAB, INGRESS)) };
    bump(counter::PULL_TAIL_CALL_FAILED);
    TC_ACT_UNSPEC
}

/// What `account` decided for a frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// The drop list says to drop it.
    Drop,
    /// Nothing recorded yet: the headers end past the linear data, pull and call again.
    Pull,
}

/// Records a frame in its flow (the caller has counted it for its hook in `cpu`, this CPU's
/// state, where the parse goes too), or says to drop it. `may_pull`: when the headers run
/// past the packet's linear data (`len` is the whole frame), return `Verdict::Pull` before
/// recording anything. `TAB`: the flow goes to the per-CPU flow tables, else to the
/// kernel's LRU flow maps. `udp_port` is set to the local port of an outgoing UDP frame that
/// is its flow's first, or first in the drain epoch (the egress program then asks whose
/// socket sent it: `udp_owner_from_socket`). `tc`: the TC program's context (None for XDP):
/// a GSO or GRO skb counts as the frames it stands for (`wire_frames`), and through the
/// egress program's an outgoing ICMP frame that starts its flow, or its drain epoch, records
/// its socket's creator (`icmp_owner_from_socket`).
#[must_use = "the caller must drop or pull the packet when this says so"]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into its three callers; the hooks' facts are passed as they come"
)]
#[inline(always)]
fn account<const TAB: bool>(
    cpu: *mut CpuState,
    ifindex: u32,
    direction: u8,
    len: u64,
    packet: &Packet,
    may_pull: bool,
    udp_port: &mut u16,
    tc: Option<&TcContext>,
) -> Verdict {
    let cut = may_pull && ((packet.end - packet.data) as u64) < len;
    // The whole parse comes first, the drop list after it: once parsed, no packet pointer or
    // header offset is live. And the parse goes to this CPU's scratch entry, not the stack,
    // read back from there once it is done: the verifier does not track what a map value
    // holds, so it sees one state after every one of the parser's ~30 paths (VLAN tags, IPv4
    // options, IPv6 extension headers, a protocol without ports) and checks the rest of the
    // program once per family instead of once per path. (On the stack, the constants each
    // path left there, its family, a protocol's zero ports, a note, kept those states apart:
    // netmon_tc_tab took 217,415 processed instructions, ~88,000 without them; the daemon's
    // start pays the verifier a third of the time it did.) A banned packet pays for the
    // transport header's one bounds check and load as well as the addresses.
    // SAFETY: `cpu` is this CPU's entry (the caller's lookup); `parsed` is PARSED_WORDS
    // 8-byte aligned words, a Parsed's size (asserted above). Only `account` uses it, and
    // the packet programs on one CPU do not interleave (they run with bottom halves off).
    let parsed = unsafe { (&raw mut (*cpu).parsed).cast::<Parsed>() };
    // The common frame first, in one pass (`parse_fast`); every other frame, and one whose
    // headers are not all in the linear data, through the general parser.
    // SAFETY: as above.
    if !unsafe { parse_fast(packet, parsed) } {
        let out = unsafe {
            Parsed::reset(parsed);
            &mut *parsed
        };
        if let Err(c) = parse(packet, out) {
            if cut && c == counter::TRUNCATED_L3 {
                return Verdict::Pull;
            }
            bump(c);
            return Verdict::Pass;
        }
    }
    // The compiler must load what it uses of the parse from the map value, never forward
    // the parser's values: an empty asm block that, for all it knows, writes memory.
    // SAFETY: no instructions.
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
    // SAFETY: as above.
    let p = unsafe { &*parsed };
    if cut && p.note == counter::TRUNCATED_L4 {
        return Verdict::Pull;
    }
    let ingress = direction == DIR_INGRESS;
    let wire = match tc {
        Some(ctx) => wire_frames(ctx, ingress, len, p),
        None => Wire {
            bytes: len,
            frames: 1,
        },
    };
    // Ingress drops what comes from a banned source, egress what goes to a banned
    // destination: a banned host can neither reach this host nor be reached.
    // The clock is read once per frame, here: a ban's expiry and last hit, a rate limit and
    // the flow all take this reading. (Read where each used it, its two outcomes, the kept
    // value or the helper's, were explored again at every read: ~20,000 more processed
    // instructions for netmon_tc_tab.)
    let now = coarse_now_in(cpu);
    // The drop list's one control word: which maps hold entries, the generation in force
    // and which of its filters are complete (`dropcfg::control_word`), one lookup where there
    // were up to seven (the cache-hot drop ~5 ns less; the verifier keeps more of the drop
    // check's outcomes apart: netmon_tc_tab ~51,000 processed instructions, ~36,000 before).
    let flags = dropcfg(dropcfg::FLAGS);
    if flags & dropcfg::HAS_MASK != 0 {
        let peer = if direction == DIR_INGRESS {
            &p.src
        } else {
            &p.dst
        };
        if let Some(ban) = banned(flags, p.family, peer, now) {
            record_drop(ban, ifindex, direction, wire);
            return Verdict::Drop;
        }
        if direction == DIR_INGRESS
            && flags & (dropcfg::HAS_RATE_V4 | dropcfg::HAS_RATE_V6) != 0
            && over_rate(flags, p.family, &p.src, ifindex, wire, now)
        {
            return Verdict::Drop;
        }
    }
    if p.note != NOTE_NONE {
        bump(p.note);
    }
    let (local_port, remote_port) = if ingress {
        (p.dport, p.sport)
    } else {
        (p.sport, p.dport)
    };
    let remote_port = if p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6 {
        p.icmp
    } else {
        remote_port
    };
    // An egress frame that was received first (a container's, a routed or bridged one)
    // has the receiving device's index in its skb; one a local socket or the stack made has
    // 0. Its flow is marked, and no local socket's owner is looked for (below).
    let key_flags = match tc {
        Some(ctx) if !ingress && forwarded(ctx) => p.flags | FLOW_FLAG_FORWARDED,
        _ => p.flags,
    };
    let epoch = config(config::EPOCH) as u32;
    let pkt = FlowPacket {
        len: wire.bytes,
        frames: wire.frames,
        now,
        tcp_flags: p.tcp_flags,
        epoch,
    };
    // Each family's key reads the address words it needs, no more: an IPv4 key the last
    // word of each, an IPv6 key all eight.
    let fresh = if p.family == 4 {
        let (local_addr, remote_addr) = if ingress {
            (p.dst[3], p.src[3])
        } else {
            (p.src[3], p.dst[3])
        };
        let key = FlowKey4 {
            ifindex,
            direction,
            proto: p.proto,
            family: 4,
            flags: key_flags,
            local_port,
            remote_port,
            local_addr: local_addr.to_ne_bytes(),
            remote_addr: remote_addr.to_ne_bytes(),
        };
        if TAB {
            tab_record(&NETMON_TAB4, &NETMON_TABFP4, &NETMON_MARK4, 0, &key, &pkt)
        } else {
            record_flow(&NETMON_FLOWS4, &key, &pkt)
        }
    } else {
        let (local_addr, remote_addr) = if ingress {
            (&p.dst, &p.src)
        } else {
            (&p.src, &p.dst)
        };
        let key = FlowKey {
            ifindex,
            direction,
            proto: p.proto,
            family: p.family,
            flags: key_flags,
            local_port,
            remote_port,
            local_addr: addr_bytes(*local_addr),
            remote_addr: addr_bytes(*remote_addr),
        };
        if TAB {
            tab_record(&NETMON_TAB6, &NETMON_TABFP6, &NETMON_MARK6, 1, &key, &pkt)
        } else {
            record_flow(&NETMON_FLOWS6, &key, &pkt)
        }
    };
    // (The skb's field read again, not a flag kept in a register across the update.)
    if fresh
        && !ingress
        && let Some(ctx) = tc
        && !forwarded(ctx)
    {
        // Read from the parse again, here only: values kept from before the flow's update
        // would live in registers (or the stack) across all of it on every frame.
        // SAFETY: as above; nothing has written the parse since.
        let (proto, src, dst) = unsafe { ((*parsed).proto, (*parsed).src, (*parsed).dst) };
        if proto == IPPROTO_UDP {
            *udp_port = local_port;
        } else if is_icmp(proto) {
            // Egress: the local end is the source.
            icmp_owner_from_socket(ctx, proto, &src, &dst);
        }
    }
    Verdict::Pass
}

/// Whether the frame of a TC program's `ctx` was received by a device of this host before
/// (`ingress_ifindex`, the skb's `skb_iif`, is set where a device received it and stays
/// 0 for one a local socket or the stack made): at egress, a frame the host forwards.
#[inline(always)]
fn forwarded(ctx: &TcContext) -> bool {
    // SAFETY: the program's own __sk_buff.
    unsafe { (*ctx.skb.skb).ingress_ifindex != 0 }
}

/// One frame as a flow entry counts it.
#[derive(Clone, Copy)]
struct FlowPacket {
    /// Bytes on the wire (`Wire`).
    len: u64,
    /// Frames on the wire: 1, or a GSO/GRO skb's segments.
    frames: u64,
    now: u64,
    tcp_flags: u8,
    epoch: u32,
}

/// A frame as the wire carries it. An skb can stand for many: TCP (and UDP with
/// `UDP_SEGMENT`) hands the device one GSO skb of up to 64 KiB that the NIC, or the stack in
/// software after the egress hook, cuts into segments, each with the headers again; GRO merges
/// received segments into one skb before the TC ingress hook. A NIC's counters, and the peer,
/// see the segments.
#[derive(Clone, Copy)]
struct Wire {
    bytes: u64,
    frames: u64,
}

/// The frames and bytes a TC program's skb of `len` bytes stands for (`Wire`). Egress: the
/// kernel's own count, made for the queue's accounting before the egress hook runs
/// (`wire_len`: the skb's length plus the headers of every segment after the first; the
/// segment count in `gso_segs`). Ingress: a GRO skb's `gso_segs`, each segment with the
/// headers the skb begins with (Ethernet, IPv4 or IPv6, TCP or UDP: read here, a GRO skb's
/// only cost), or, where the sender left the count out (a tap's frames from a guest, whose
/// virtio header gives the segment size only), the count that size gives. Every frame pays
/// a word of the skb on egress (`wire_len` is in its control block) and one of its shared
/// info at TC ingress (`gso_size`, at the end of the data, a line the stack has touched).
#[inline(always)]
fn wire_frames(ctx: &TcContext, ingress: bool, len: u64, p: &Parsed) -> Wire {
    let plain = Wire {
        bytes: len,
        frames: 1,
    };
    let skb = ctx.skb.skb;
    if !ingress {
        // SAFETY: the program's own __sk_buff.
        let wire = u64::from(unsafe { (*skb).wire_len });
        if wire <= len {
            return plain;
        }
        // SAFETY: as above.
        let segs = u64::from(unsafe { (*skb).gso_segs });
        // Not GSO: a program before this one (another tool's, at TCX) made the frame shorter
        // since the kernel's count.
        if segs <= 1 {
            return plain;
        }
        return Wire {
            bytes: wire,
            frames: segs,
        };
    }
    // SAFETY: as above.
    let size = u64::from(unsafe { (*skb).gso_size });
    if size == 0 {
        return plain;
    }
    // The headers each segment had: the IPv4 header's length and the TCP header's are in the
    // frame; anything else (a VLAN tag still in the frame, IPv6 extension headers) is
    // counted in frames, not in header bytes.
    let l3 = parse::ETH_HLEN;
    let Ok(h) = ctx.load::<[u8; 10]>(l3 - 2) else {
        return plain;
    };
    let ethertype = u16::from_be_bytes([h[0], h[1]]);
    let ip = match (p.family, ethertype) {
        (4, 0x0800) => usize::from(h[2] & 0x0f) * 4,
        (6, 0x86dd) if h[8] == p.proto => 40,
        _ => 0,
    };
    let l4 = match p.proto {
        IPPROTO_TCP if ip != 0 => match ctx.load::<u8>(l3 + ip + 12) {
            Ok(off) => usize::from(off >> 4) * 4,
            Err(_) => 0,
        },
        IPPROTO_UDP if ip != 0 => 8,
        _ => 0,
    };
    let hdr = if l4 == 0 { 0 } else { (l3 + ip + l4) as u64 };
    // SAFETY: as above.
    let mut segs = u64::from(unsafe { (*skb).gso_segs });
    if segs == 0 && hdr != 0 && len > hdr {
        segs = (len - hdr).div_ceil(size);
    }
    if segs <= 1 {
        return plain;
    }
    Wire {
        bytes: len + (segs - 1) * hdr,
        frames: segs,
    }
}

/// Adds a frame to `key`'s entry in `map`, creating it (and pushing the key to the dirty
/// ring) on the flow's first frame. True for the flow's first frame, or its first in the
/// drain epoch.
#[inline(always)]
fn record_flow<K>(map: &LruHashMap<K, FlowStats>, key: &K, pkt: &FlowPacket) -> bool {
    if let Some(s) = map.get_ptr_mut(key) {
        return update_flow(s, key, pkt);
    }
    let s = FlowStats {
        bytes: pkt.len,
        packets: pkt.frames,
        first_seen_ns: pkt.now,
        last_seen_ns: pkt.now,
        tcp_flags: pkt.tcp_flags,
        epoch: pkt.epoch,
        ..zeroed()
    };
    // NOEXIST: if another CPU inserted the same flow since the lookup, add to its entry
    // rather than overwrite it.
    if map.insert(key, &s, BPF_NOEXIST as u64).is_ok() {
        push_dirty(key);
        true
    } else {
        match map.get_ptr_mut(key) {
            Some(s) => update_flow(s, key, pkt),
            None => {
                bump(counter::FLOW_INSERT_FAILED);
                false
            }
        }
    }
}

#[inline(always)]
fn push_dirty<K>(key: &K) {
    if NETMON_DIRTY.output::<K>(key, RB_NO_WAKEUP).is_err() {
        bump(counter::DIRTY_LOST);
    }
}

/// Adds a packet to a flow entry: atomic adds for the counters; the times and flags are
/// plain stores (a concurrent writer on another CPU stores an equally recent time, and may at
/// worst hide one packet's flag bits until the next packet of the flow).
#[inline(always)]
fn update_flow<K>(s: *mut FlowStats, key: &K, pkt: &FlowPacket) -> bool {
    let FlowPacket {
        len,
        frames,
        now,
        tcp_flags,
        epoch,
    } = *pkt;
    // SAFETY: `s` points at a live, 8-byte aligned map value for this program run.
    let first_in_epoch = unsafe {
        atomic_add(&raw mut (*s).bytes, len);
        atomic_add(&raw mut (*s).packets, frames);
        (*s).last_seen_ns = now;
        if tcp_flags & !(*s).tcp_flags != 0 {
            (*s).tcp_flags |= tcp_flags;
        }
        // Two CPUs may both see the old epoch and push the key twice: the daemon dedups.
        let first = (*s).epoch != epoch;
        if first {
            (*s).epoch = epoch;
        }
        first
    };
    if first_in_epoch {
        push_dirty(key);
    }
    first_in_epoch
}

// ---------------------------------------------------------------------------------------------
// Per-CPU flow tables: the flow store of `netmon_xdp_tab`/`netmon_tc_tab`, which the daemon
// attaches with `--flow-table per-cpu`.

/// Buckets per CPU in `NETMON_TAB4`/`NETMON_TAB6`: a power of two, at least 64, set by the
/// loader, which sizes each table to (possible CPUs) x this and each dirty bitmap to a bit
/// per bucket.
#[unsafe(no_mangle)]
static TAB_BUCKETS: u32 = 64;

/// Non-zero where the CPU may make stores visible out of program order (arm64 and every
/// other architecture but x86), set by the loader: a slot's rewrite then publishes its
/// sequence number with fully ordered exchanges and a bucket's mark with a fully ordered
/// atomic OR, so that a reader on another CPU that sees the mark sees the slot's counters,
/// and one that sees an even sequence number sees the whole slot it stands for; a UDP port's
/// owner record (`own_udp_port`) gets its pid, written last, by an exchange too. On x86
/// plain stores keep that order for free; the verifier knows this read-only value and
/// removes the branch not taken (what stays is the compiler's register allocation for both
/// paths: a few dozen instructions, no difference `netmon-bench compare` could measure).
#[unsafe(no_mangle)]
static WEAK_STORE_ORDER: u32 = 0;

/// How recently (ms) every flow of a full bucket must have been seen for a new flow there to
/// grow its CPU's part of the table (`NETMON_TABLIVE`) rather than evict the one seen longest
/// ago; the loader may lower it (tests).
#[unsafe(no_mangle)]
static TAB_GROW_MS: u32 = netmon_common::TAB_GROW_MS;

/// Buckets in use of each CPU's part of `NETMON_TAB4` and `NETMON_TAB6`
/// (`netmon_common::TAB_LIVE_STRIDE` words per CPU, one cache line: IPv4's, IPv6's; 0 until
/// the part first grows, for `TAB_START_BUCKETS`). A key's bucket is its hash masked to the
/// buckets in use (`tab_place_live`), so a host's flows fill as few pages and cache lines as
/// their number needs rather than being scattered over the whole part; `tab_record` doubles
/// it when a new flow meets a bucket full of active flows. Written by the programs alone,
/// each CPU its own line, as the table; sized by the loader; the daemon reads it mapped.
#[map]
static NETMON_TABLIVE: Array<u64> = Array::with_max_entries(64 * TAB_LIVE_STRIDE, BPF_F_MMAPABLE);

/// IPv4 flows: CPU `c`'s buckets are `c * TAB_BUCKETS ..`. Mappable, so the daemon reads it
/// in place, without a system call per bucket.
#[map]
static NETMON_TAB4: Array<TabBucket<FlowKey4>> = Array::with_max_entries(64, BPF_F_MMAPABLE);
/// IPv6 flows, as `NETMON_TAB4`.
#[map]
static NETMON_TAB6: Array<TabBucket<FlowKey>> = Array::with_max_entries(64, BPF_F_MMAPABLE);
/// One word per bucket of `NETMON_TAB4`: its ways' fingerprints (`tab_place`), 16 bits
/// each, 0 for a way never used. 8 bytes per 256-byte bucket, so it stays in the cache where
/// the table does not: a packet of a new flow learns from it that its flow is not in the
/// bucket and which way is free without reading the bucket's slots, and writes the new slot
/// without reading it (a never-used slot is all zero, its sequence number too). Written by
/// the programs alone (each CPU its own part), as the table.
#[map]
static NETMON_TABFP4: Array<u64> = Array::with_max_entries(64, BPF_F_MMAPABLE);
/// The same for `NETMON_TAB6`.
#[map]
static NETMON_TABFP6: Array<u64> = Array::with_max_entries(64, BPF_F_MMAPABLE);
/// One bit per bucket of `NETMON_TAB4`, set by a slot's first packet in each drain epoch:
/// the buckets the daemon's next drain reads.
#[map]
static NETMON_MARK4: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// The same for `NETMON_TAB6`.
#[map]
static NETMON_MARK6: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Slots given to another flow (their bucket was full): the old flow's final counters
/// (`TabEvicted`), so that eviction loses no count.
#[map]
static NETMON_EVICTED: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Whether the slot key at `a` is `key`, compared as 32-bit words (key types are whole
/// words without padding).
#[inline(always)]
fn same_key<K>(a: *const K, key: &K) -> bool {
    let a = a.cast::<u32>();
    let b = core::ptr::from_ref(key).cast::<u32>();
    let mut i = 0;
    while i < size_of::<K>() / 4 {
        // SAFETY: both point at a whole K, 4-byte aligned.
        if unsafe { *a.add(i) != *b.add(i) } {
            return false;
        }
        i += 1;
    }
    true
}

/// Adds a frame to `key`'s slot in this CPU's part of `map`, giving it a slot when it has
/// none: no kernel hash lookup, no lock, no atomic instruction. `fps` is the table's
/// fingerprint array, `dirty` its bitmap, `family` its word in `NETMON_TABLIVE` (0 IPv4, 1
/// IPv6). True for the slot's first frame, or its first in the drain epoch.
#[inline(always)]
fn tab_record<K: Copy>(
    map: &Array<TabBucket<K>>,
    fps: &Array<u64>,
    dirty: &Array<u64>,
    family: u32,
    key: &K,
    pkt: &FlowPacket,
) -> bool {
    // SAFETY: a K is whole 32-bit words.
    let words = unsafe {
        core::slice::from_raw_parts(core::ptr::from_ref(key).cast::<u32>(), size_of::<K>() / 4)
    };
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let per_cpu = global(&TAB_BUCKETS) as u32;
    let lv = NETMON_TABLIVE.get_ptr_mut(cpu * TAB_LIVE_STRIDE + family);
    // SAFETY: this CPU's word; only this CPU's programs write it, and they do not
    // interleave (below).
    let live = match lv {
        Some(l) => tab_live_buckets(unsafe { *l }, per_cpu),
        // No word for this CPU: the whole part, which never grows.
        None => per_cpu,
    };
    let (mut index, fp) = tab_place_live(words, cpu, per_cpu, live);
    let (Some(mut b), Some(mut fw)) = (map.get_ptr_mut(index), fps.get_ptr_mut(index)) else {
        bump(counter::FLOW_INSERT_FAILED);
        return false;
    };
    // SAFETY: `b` is this CPU's bucket, live for the program run. Only this CPU's programs
    // write it, and they do not interleave on the packet path (XDP and TC run with
    // preemption and bottom halves off for the frame); the daemon only reads it.
    unsafe {
        let mut slots = (&raw mut (*b).slots).cast::<TabSlot<K>>();
        // Only a way whose fingerprint matches can hold the flow: the others' slots are not
        // read.
        let mut prints = *fw;
        let mut free = TAB_WAYS;
        let mut way = 0;
        while way < TAB_WAYS {
            let f = (prints >> (16 * way)) & 0xffff;
            if f == fp {
                let s = slots.add(way);
                if same_key(&raw const (*s).key, key) {
                    (*s).bytes += pkt.len;
                    (*s).packets += pkt.frames;
                    (*s).last_seen_ns = pkt.now;
                    if pkt.tcp_flags & !(*s).tcp_flags != 0 {
                        (*s).tcp_flags |= pkt.tcp_flags;
                    }
                    if (*s).epoch != pkt.epoch {
                        (*s).epoch = pkt.epoch;
                        mark_dirty(dirty, index);
                        return true;
                    }
                    return false;
                }
            } else if f == 0 && free == TAB_WAYS {
                free = way;
            }
            way += 1;
        }
        let mut victim = 0;
        if free == TAB_WAYS {
            // Full: a copy left behind by a flow that moved goes, or else the slot seen
            // longest ago, unless it was seen so recently that the part is too small for the
            // flows it holds: then the part doubles, and a key whose bucket moves goes to its
            // new one, never used before. (The flows of this bucket that move take a slot in
            // theirs on their next frame, and leave copies here that the next new flows of
            // this bucket take first.)
            let oldest;
            (victim, oldest) = victim_way(slots, cpu, per_cpu, live, index);
            if let Some(l) = lv
                && live < per_cpu
                // Seen after the window's start (0 until the window has passed since boot):
                // a copy's 0 never is, however recently the host booted.
                && oldest > pkt.now.saturating_sub(global(&TAB_GROW_MS) as u64 * 1_000_000)
            {
                *l = u64::from(live * 2);
                let (moved, _) = tab_place_live(words, cpu, per_cpu, live * 2);
                if moved != index
                    && let (Some(b2), Some(fw2)) = (map.get_ptr_mut(moved), fps.get_ptr_mut(moved))
                {
                    (index, b, fw) = (moved, b2, fw2);
                    slots = (&raw mut (*b).slots).cast::<TabSlot<K>>();
                    prints = *fw;
                    free = free_way(prints);
                }
                if free == TAB_WAYS {
                    // The key stays (or its new bucket is not empty, which only a writer
                    // other than the programs makes): of this bucket, a flow whose bucket
                    // the doubling moved goes first.
                    victim = victim_way(slots, cpu, per_cpu, live * 2, index).0;
                }
            }
        }
        let (victim, seq) = if free < TAB_WAYS {
            // Never used: all zero, its sequence number too; written without being read.
            (free, 0u32)
        } else {
            // The slot's last counters go to the eviction ring: copied a word at a time (a
            // struct copy becomes a call of memmove, a function of the program, and its
            // return).
            let s = slots.add(victim);
            let mut gone = core::mem::MaybeUninit::<TabEvicted<K>>::uninit();
            let g = gone.as_mut_ptr();
            copy_words(
                (&raw mut (*g).slot).cast::<u64>(),
                s.cast::<u64>(),
                size_of::<TabSlot<K>>() / 8,
            );
            (*g).index = index * TAB_WAYS as u32 + victim as u32;
            (*g)._pad = 0;
            if NETMON_EVICTED
                .output::<TabEvicted<K>>(gone.assume_init_ref(), RB_NO_WAKEUP)
                .is_err()
            {
                bump(counter::EVICT_LOST);
            }
            (victim, (*s).seq)
        };
        let s = slots.add(victim);
        // An odd sequence number tells a reader the slot is being rewritten; the stores in
        // between stay between: compiler fences, and x86 keeps stores in order; elsewhere the
        // sequence number goes out with the epoch (the two fill one word) by exchanges, which
        // the BPF memory model makes fully ordered.
        let weak = global(&WEAK_STORE_ORDER) != 0;
        let word = (&raw mut (*s).epoch).cast::<u64>();
        if weak {
            xchg(word, epoch_seq(pkt.epoch, seq.wrapping_add(1)));
        } else {
            core::ptr::write_volatile(&raw mut (*s).seq, seq.wrapping_add(1));
        }
        compiler_fence(Ordering::SeqCst);
        (*s).key = *key;
        (*s).bytes = pkt.len;
        (*s).packets = pkt.frames;
        (*s).first_seen_ns = pkt.now;
        (*s).last_seen_ns = pkt.now;
        (*s).tcp_flags = pkt.tcp_flags;
        (*s).epoch = pkt.epoch;
        compiler_fence(Ordering::SeqCst);
        if weak {
            xchg(word, epoch_seq(pkt.epoch, seq.wrapping_add(2)));
        } else {
            core::ptr::write_volatile(&raw mut (*s).seq, seq.wrapping_add(2));
        }
        *fw = (prints & !(0xffff << (16 * victim))) | fp << (16 * victim);
    }
    mark_dirty(dirty, index);
    true
}

/// Copies `n` 64-bit words from `src` to `dst`, one load and one store each: volatile, so
/// that LLVM does not make the loop a call of memcpy.
///
/// # Safety
/// Both point at `n` valid, 8-byte aligned words.
#[inline(always)]
unsafe fn copy_words(dst: *mut u64, src: *const u64, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller's promise.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

/// The first way of a bucket whose fingerprint (in `prints`) is 0, never used; `TAB_WAYS`
/// when there is none.
#[inline(always)]
fn free_way(prints: u64) -> usize {
    let mut way = 0;
    while way < TAB_WAYS {
        if (prints >> (16 * way)) & 0xffff == 0 {
            return way;
        }
        way += 1;
    }
    TAB_WAYS
}

/// The way of bucket `index` (at `slots`, in CPU `cpu`'s part of `per_cpu` buckets, `live`
/// of them in use) that a new flow takes when the bucket is full: one holding a key whose
/// bucket is another now (a copy a flow left behind when the part grew: it is no longer
/// counted), with 0 as when it was seen (never recent, which the part does not grow for),
/// where the part can still grow; else the one seen longest ago, and when.
///
/// # Safety
/// `slots` points at a live bucket's `TAB_WAYS` slots.
#[inline(always)]
unsafe fn victim_way<K>(
    slots: *const TabSlot<K>,
    cpu: u32,
    per_cpu: u32,
    live: u32,
    index: u32,
) -> (usize, u64) {
    let mut victim = 0;
    let mut oldest = u64::MAX;
    let mut way = 0;
    while way < TAB_WAYS {
        // SAFETY: the caller's promise; a K is whole 32-bit words.
        let (seen, words) = unsafe {
            let s = slots.add(way);
            let words = core::slice::from_raw_parts(
                (&raw const (*s).key).cast::<u32>(),
                size_of::<K>() / 4,
            );
            ((*s).last_seen_ns, words)
        };
        // Only a part that can still grow asks: in a whole part, such copies are not
        // seen again and go as the slots seen longest ago.
        if live < per_cpu && tab_place_live(words, cpu, per_cpu, live).0 != index {
            return (way, 0);
        }
        if seen < oldest {
            oldest = seen;
            victim = way;
        }
        way += 1;
    }
    (victim, oldest)
}

/// Sets bucket `index`'s bit in a dirty bitmap. A plain read-modify-write: the daemon swaps
/// words to zero meanwhile, and at worst reads a bucket twice; it never misses one (the bit
/// is set after its swap or was in what it swapped out). Where stores may be seen out of
/// order (`WEAK_STORE_ORDER`), a fully ordered atomic OR, so that the slot's stores before
/// it are seen first.
#[inline(always)]
fn mark_dirty(dirty: &Array<u64>, index: u32) {
    if let Some(w) = dirty.get_ptr_mut(index / 64) {
        let bit = 1u64 << (index % 64);
        // SAFETY: a live map value, 8-byte aligned.
        unsafe {
            if *w & bit == 0 {
                if global(&WEAK_STORE_ORDER) != 0 {
                    fetch_or(w, bit);
                } else {
                    *w |= bit;
                }
            }
        }
    }
}

/// A slot's epoch and sequence number as the 64-bit word they share (their layout is
/// asserted in netmon-common; little-endian: the epoch is the low half).
#[inline(always)]
fn epoch_seq(epoch: u32, seq: u32) -> u64 {
    u64::from(epoch) | u64::from(seq) << 32
}

/// Defines `unsafe fn $name(dst: *mut u64, val: u64)`: the value-returning BPF atomic
/// instruction `$insn` on the u64 at `dst` (a valid, 8-byte aligned map value field, which
/// the caller guarantees), the value it returns discarded. Value-returning BPF atomics are
/// fully ordered, as the kernel's `xchg()` (Linux 5.12+; arm64 JITs them to SWPAL/LDSETAL,
/// or an exclusive pair and a DMB). Host builds, which only type-check this, run `$host`.
macro_rules! fully_ordered_u64 {
    ($(#[$doc:meta])* $name:ident, $insn:literal, |$dst:ident, $val:ident| $host:expr) => {
        $(#[$doc])*
        #[inline(always)]
        unsafe fn $name($dst: *mut u64, $val: u64) {
            #[cfg(target_arch = "bpf")]
            // SAFETY: the caller guarantees `dst` is a valid, 8-byte aligned map value field.
            unsafe {
                core::arch::asm!(
                    $insn,
                    dst = in(reg) $dst,
                    val = inout(reg) $val => _,
                    options(nostack)
                );
            }
            #[cfg(not(target_arch = "bpf"))]
            // SAFETY: as above.
            unsafe {
                $host
            }
        }
    };
}

fully_ordered_u64!(
    /// `*dst = val` (BPF_ATOMIC | BPF_XCHG).
    xchg,
    "{val} = xchg_64({dst} + 0, {val})",
    |dst, val| core::ptr::write_volatile(dst, val)
);

fully_ordered_u64!(
    /// `*dst |= val` (BPF_ATOMIC | BPF_OR | BPF_FETCH).
    fetch_or,
    "{val} = atomic_fetch_or((u64 *)({dst} + 0), {val})",
    |dst, val| *dst |= val
);

#[inline(always)]
fn dropcfg(index: u32) -> u64 {
    NETMON_DROPCFG.get(index).copied().unwrap_or(0)
}

/// The entry, unless it has expired at `now` (the frame's clock reading). TTLs are enforced here,
/// against the kernel clock, so an expired ban stops dropping even while no daemon is
/// running to remove it. The coarse clock costs a few ns where a precise read costs ~30 (a
/// clock-source access); a ban ends at most one tick late. CLOCK_MONOTONIC stops in
/// suspend, so there a running daemon's wall-clock expiry is what removes the entry on time.
#[inline(always)]
fn live(v: *mut BanValue, now: u64) -> Option<*mut BanValue> {
    // SAFETY: `v` points at a map value the kernel keeps alive for this program run.
    let expires = unsafe { (*v).expires_ns };
    (expires == 0 || now < expires).then_some(v)
}

/// The ban entry that matches `addr`, unless an allow entry covers it. `flags`: the drop
/// list's control word (`dropcfg::FLAGS`), with `HAS_*` bits set. The allow list is consulted
/// only against a ban found: it only matters there, and most addresses have none, so they
/// skip its trie.
#[inline(always)]
fn banned(flags: u64, family: u8, words: &Addr, now: u64) -> Option<Ban> {
    let generation = dropcfg::generation_of(flags);
    if family == 4 {
        let a = words[3].to_ne_bytes();
        // No ban entry in the address's /16 or /24: nothing to look up. Most traffic takes
        // this exit: it saves the exact-match bucket (cold in a large table) and the trie walk.
        if !ban4_may_match(flags, generation, a) {
            return None;
        }
        let ban = ban4(flags, generation, a, now)?;
        if flags & dropcfg::HAS_ALLOW_V4 != 0 && NETMON_ALLOW4.get(Key::new(32, a)).is_some() {
            return None;
        }
        Some(ban)
    } else {
        let addr = &addr_bytes(*words);
        if !ban6_may_match(flags, generation, addr) {
            return None;
        }
        let ban = ban6(flags, generation, addr, now)?;
        if flags & dropcfg::HAS_ALLOW_V6 != 0 && NETMON_ALLOW6.get(Key::new(128, *addr)).is_some() {
            return None;
        }
        Some(ban)
    }
}

/// Whether a miss in a wide exact ban array's bucket (`NETMON_BANW4`/`6`) needs the hash
/// lookup after it: unless the wide arrays of the generation in force are complete
/// (`dropcfg::BANW_COMPLETE`, as `flags` says) and the bucket never overflowed, the entry
/// may be in the hash map alone.
#[inline(always)]
fn wide_may_be_hashed(flags: u64, overflowed: bool) -> bool {
    overflowed || !dropcfg::complete(flags, dropcfg::BANW_COMPLETE)
}

/// `a`'s live ban entry in `generation`, exact or prefix, allow list aside.
#[inline(always)]
fn ban4(flags: u64, generation: u8, a: [u8; 4], now: u64) -> Option<Ban> {
    if flags & dropcfg::HAS_EXACT_V4 != 0 {
        let first = netmon_common::banx4_bucket(generation, a);
        let narrow = exact4(
            |way| NETMON_BANX4.get_ptr(first + way),
            |way| {
                // SAFETY: helper without preconditions.
                let cpu = unsafe { bpf_get_smp_processor_id() };
                let at = netmon_common::ban_hits_index(cpu, BANX4_SLOTS, first + way);
                NETMON_BANCNT4.get_ptr_mut(at)
            },
            false,
            BANX4_WAYS,
            a,
            now,
        );
        let exact = match narrow {
            Exact::Miss { overflowed } if narrow_may_be_past(flags, overflowed) => {
                wide4(generation, a, now)
            }
            Exact::Miss { .. } => Exact::Absent,
            hit => hit,
        };
        match exact {
            Exact::Hit(ban) => return Some(ban),
            Exact::Miss { overflowed } if wide_may_be_hashed(flags, overflowed) => {
                let key = BanKey4 {
                    generation,
                    addr: a,
                    ..zeroed()
                };
                if let Some(v) = NETMON_BAN4.get_ptr_mut(&key).and_then(|v| live(v, now)) {
                    return Some(Ban::entry(v, now));
                }
            }
            _ => {}
        }
    }
    if flags & dropcfg::HAS_PREFIX_V4 != 0 {
        let key = Key::new(8 + 32, [generation, a[0], a[1], a[2], a[3]]);
        if let Some(v) = NETMON_BANPFX4.get(key) {
            return live(core::ptr::from_ref(v).cast_mut(), now).map(|v| Ban::entry(v, now));
        }
    }
    None
}

/// `addr`'s live ban entry in `generation`, exact or prefix, allow list aside.
#[inline(always)]
fn ban6(flags: u64, generation: u8, addr: &[u8; 16], now: u64) -> Option<Ban> {
    if flags & dropcfg::HAS_EXACT_V6 != 0 {
        let first = netmon_common::banx6_bucket(generation, addr);
        let narrow = exact6(
            |way| NETMON_BANX6.get_ptr(first + way),
            |way| {
                // SAFETY: helper without preconditions.
                let cpu = unsafe { bpf_get_smp_processor_id() };
                let at = netmon_common::ban_hits_index(cpu, BANX6_SLOTS, first + way);
                NETMON_BANCNT6.get_ptr_mut(at)
            },
            false,
            BANX6_WAYS,
            addr,
            now,
        );
        let exact = match narrow {
            Exact::Miss { overflowed } if narrow_may_be_past(flags, overflowed) => {
                wide6(generation, addr, now)
            }
            Exact::Miss { .. } => Exact::Absent,
            hit => hit,
        };
        match exact {
            Exact::Hit(ban) => return Some(ban),
            Exact::Miss { overflowed } if wide_may_be_hashed(flags, overflowed) => {
                let key = BanKey6 {
                    generation,
                    addr: *addr,
                    ..zeroed()
                };
                if let Some(v) = NETMON_BAN6.get_ptr_mut(&key).and_then(|v| live(v, now)) {
                    return Some(Ban::entry(v, now));
                }
            }
            _ => {}
        }
    }
    if flags & dropcfg::HAS_PREFIX_V6 != 0 {
        let mut data = [0u8; 17];
        data[0] = generation;
        let mut i = 0;
        while i < 16 {
            data[i + 1] = addr[i];
            i += 1;
        }
        if let Some(v) = NETMON_BANPFX6.get(Key::new(8 + 128, data)) {
            return live(core::ptr::from_ref(v).cast_mut(), now).map(|v| Ban::entry(v, now));
        }
    }
    None
}

/// What an exact ban array's bucket says of an address.
enum Exact {
    /// A live ban in one of its slots.
    Hit(Ban),
    /// None (or an expired one); `overflowed`: the bucket's `BANX_OVERFLOW` bit.
    Miss { overflowed: bool },
    /// None, and no other map can hold one (`narrow_may_be_past` said so).
    Absent,
}

/// Whether, after a miss in a bucket of `NETMON_BANX4`/`6`, the ban may be in the wide array:
/// the bucket overflowed, or the arrays of the generation in force are not complete
/// (`dropcfg::BANX_COMPLETE`, as `flags` says).
#[inline(always)]
fn narrow_may_be_past(flags: u64, overflowed: bool) -> bool {
    overflowed || !dropcfg::complete(flags, dropcfg::BANX_COMPLETE)
}

/// `a`'s live slot in its bucket of `NETMON_BANW4`, if it has one.
#[inline(always)]
fn wide4(generation: u8, a: [u8; 4], now: u64) -> Exact {
    let at = netmon_common::banw4_bucket(generation, a) / BANW4_WAYS;
    let Some(b) = NETMON_BANW4.get_ptr_mut(at) else {
        return Exact::Miss { overflowed: true };
    };
    // SAFETY: `b` is a live map value; `way` < BANW4_WAYS, the length of both arrays.
    exact4(
        |way| Some(unsafe { (&raw const (*b).slots).cast::<BanSlot4>().add(way as usize) }),
        |way| Some(unsafe { (&raw mut (*b).hits).cast::<BanHits>().add(way as usize) }),
        true,
        BANW4_WAYS,
        a,
        now,
    )
}

/// `a`'s live slot in its bucket of `NETMON_BANW6`, if it has one.
#[inline(always)]
fn wide6(generation: u8, a: &[u8; 16], now: u64) -> Exact {
    let at = netmon_common::banw6_bucket(generation, a) / BANW6_WAYS;
    let Some(b) = NETMON_BANW6.get_ptr_mut(at) else {
        return Exact::Miss { overflowed: true };
    };
    // SAFETY: `b` is a live map value; `way` < BANW6_WAYS, the length of both arrays.
    exact6(
        |way| Some(unsafe { (&raw const (*b).slots).cast::<BanSlot6>().add(way as usize) }),
        |way| Some(unsafe { (&raw mut (*b).hits).cast::<BanHits>().add(way as usize) }),
        true,
        BANW6_WAYS,
        a,
        now,
    )
}

/// A ban that matched, with the time it was checked at: an entry of a ban map, or a slot of
/// an exact ban array with its counters (this CPU's of a `NETMON_BANX4`/`6` slot; the
/// slot's own of a `NETMON_BANW4`/`6` slot, which every CPU adds to).
struct Ban {
    /// The ban map entry that matched; null for a slot of an exact ban array.
    entry: *mut BanValue,
    /// The slot's counters; null for an entry (or if the loader sized them short).
    hits: *mut BanHits,
    /// Whether other CPUs add to `hits` too (a wide array's slot).
    shared: bool,
    /// The slot's ban kind (an entry holds its own).
    kind: u8,
    /// When it was checked.
    now: u64,
}

impl Ban {
    /// Every field is set on every path, so that the compiler never carries an undefined
    /// register into code the verifier checks: with an enum, it did (an unset payload field
    /// of the other variant, spilled around a helper call: "R5 !read_ok").
    #[inline(always)]
    fn entry(v: *mut BanValue, now: u64) -> Ban {
        Ban {
            entry: v,
            hits: core::ptr::null_mut(),
            shared: false,
            kind: 0,
            now,
        }
    }
}

/// A live ban in a slot whose tag matched: `None` when it has expired. The counters are
/// looked up here, in code that names their map: where one lookup served both families'
/// maps, the verifier could not inline it (a map pointer that differs between paths), and
/// the generic helper's call cost the drop ~20 ns with everything in the caches.
///
/// `hits`: the slot's counters (this CPU's of a narrow array's slot, or the wide bucket's
/// `shared` ones), found only for a live ban.
#[inline(always)]
fn fast_hit(
    hits: impl FnOnce() -> Option<*mut BanHits>,
    shared: bool,
    tag: u64,
    expires: *const u64,
    now: u64,
) -> Exact {
    compiler_fence(Ordering::SeqCst);
    // SAFETY: a live map value.
    let expires = unsafe { core::ptr::read_volatile(expires) };
    if expires != 0 && now >= expires {
        // An expired ban is in the hash map too, equally expired: nothing to look up.
        return Exact::Miss { overflowed: false };
    }
    Exact::Hit(Ban {
        entry: core::ptr::null_mut(),
        hits: hits().unwrap_or(core::ptr::null_mut()),
        shared,
        kind: (tag >> 32) as u8,
        now,
    })
}

/// `a`'s live slot in a bucket of NETMON_BANX6 or NETMON_BANW6 (`ways` slots, way `w` at
/// `slot(w)`), if it has one; `hits(w)` its counters, `shared` or not (`fast_hit`). Each
/// call site names its maps: the verifier inlines a lookup whose map is the same on every
/// path.
#[inline(always)]
fn exact6(
    slot: impl Fn(u32) -> Option<*const BanSlot6>,
    hits: impl Fn(u32) -> Option<*mut BanHits>,
    shared: bool,
    ways: u32,
    a: &[u8; 16],
    now: u64,
) -> Exact {
    let want = a.as_ptr().cast::<u32>();
    let mut overflowed = true;
    let mut way = 0;
    while way < ways {
        let Some(s) = slot(way) else {
            return Exact::Miss { overflowed: true };
        };
        // SAFETY: a live map value; userspace writes the tag last and clears it first, and
        // the tag is read again after the address.
        unsafe {
            let tag = core::ptr::read_volatile(&raw const (*s).tag);
            if way == 0 {
                overflowed = tag & BANX_OVERFLOW != 0;
            }
            if tag & !BANX_OVERFLOW != 0 {
                compiler_fence(Ordering::SeqCst);
                let have = (&raw const (*s).addr).cast::<u32>();
                let mut same = true;
                let mut i = 0;
                while i < 4 {
                    same &= core::ptr::read_volatile(have.add(i))
                        == core::ptr::read_unaligned(want.add(i));
                    i += 1;
                }
                compiler_fence(Ordering::SeqCst);
                if same && core::ptr::read_volatile(&raw const (*s).tag) == tag {
                    return fast_hit(|| hits(way), shared, tag, &raw const (*s).expires_ns, now);
                }
            }
        }
        way += 1;
    }
    Exact::Miss { overflowed }
}

/// `a`'s live slot in a bucket of NETMON_BANX4 or NETMON_BANW4, as `exact6`.
#[inline(always)]
fn exact4(
    slot: impl Fn(u32) -> Option<*const BanSlot4>,
    hits: impl Fn(u32) -> Option<*mut BanHits>,
    shared: bool,
    ways: u32,
    a: [u8; 4],
    now: u64,
) -> Exact {
    let want = netmon_common::banx4_tag(a, 0);
    let mut overflowed = true;
    let mut way = 0;
    while way < ways {
        let Some(s) = slot(way) else {
            return Exact::Miss { overflowed: true };
        };
        // SAFETY: a live map value; userspace writes it with ordered stores, the tag last.
        let tag = unsafe { core::ptr::read_volatile(&raw const (*s).tag) };
        if way == 0 {
            overflowed = tag & BANX_OVERFLOW != 0;
        }
        // The kind and the overflow bit are in the tag: compared without them.
        if tag & !(BANX_KIND | BANX_OVERFLOW) == want {
            // SAFETY: as above.
            return fast_hit(
                || hits(way),
                shared,
                tag,
                // SAFETY: as above.
                unsafe { &raw const (*s).expires_ns },
                now,
            );
        }
        way += 1;
    }
    Exact::Miss { overflowed }
}

/// Whether an IPv4 ban entry (exact or prefix) of `generation`, the one in force, may cover
/// `a`: false only where one of that generation's complete filters (`flags` says which)
/// proves none does: `a`'s /16 bit is clear, or its /24 bit is, or (the host filter) no entry
/// covers its whole /24 and `a`'s bit in its /24's block is clear.
#[inline(always)]
fn ban4_may_match(flags: u64, generation: u8, a: [u8; 4]) -> bool {
    if generation == 0 || !dropcfg::complete(flags, dropcfg::BAN4_FILTER) {
        return true;
    }
    let (word, bit) = dropcfg::l16_slot(generation, a);
    match NETMON_BAN4_L16.get(word) {
        Some(w) if (*w >> bit) & 1 == 0 => return false,
        Some(_) => {}
        None => return true,
    }
    // The /24 filter's slot is the whole-/24 bitmap's too.
    let (word24, bit24) = dropcfg::l24_slot(generation, a);
    if dropcfg::complete(flags, dropcfg::BAN4_L24_FILTER) {
        match NETMON_BAN4_L24.get(word24) {
            Some(w) if (*w >> bit24) & 1 == 0 => return false,
            Some(_) => {}
            None => return true,
        }
    }
    if !dropcfg::complete(flags, dropcfg::BAN4_HOST_FILTER) {
        return true;
    }
    match NETMON_BAN4_W24.get(word24) {
        Some(w) if (*w >> bit24) & 1 == 0 => {}
        _ => return true,
    }
    let (word, bit) = dropcfg::h32_slot(generation, a);
    match NETMON_BAN4_H32.get(word) {
        Some(w) => (*w >> bit) & 1 != 0,
        None => true,
    }
}

/// Whether an IPv6 ban entry of `generation`, the one in force, may cover `a`: false only
/// where one of that generation's complete filters (`flags` says which) proves none does: the bit of `a`'s /32 is clear, or (the
/// host filter) every bit of `a` in its /32's block is: the /32's whole bit and those of its
/// prefixes of each of `dropcfg::H6_LEVELS`.
#[inline(always)]
fn ban6_may_match(flags: u64, generation: u8, a: &[u8; 16]) -> bool {
    if generation == 0 || !dropcfg::complete(flags, dropcfg::BAN6_FILTER) {
        return true;
    }
    let (word, bit) = dropcfg::l32_6_slot(generation, a);
    match NETMON_BAN6_L32.get(word) {
        Some(w) if (*w >> bit) & 1 == 0 => return false,
        Some(_) => {}
        None => return true,
    }
    if !dropcfg::complete(flags, dropcfg::BAN6_HOST_FILTER) {
        return true;
    }
    for (word, bit) in dropcfg::h6_slots(generation, a) {
        match NETMON_BAN6_HOST.get(word) {
            Some(w) if (*w >> bit) & 1 == 0 => {}
            _ => return true,
        }
    }
    false
}

/// Whether a packet from `src` is over its source's rate limit (and so is dropped and
/// counted). GCRA: see `netmon_common::RateValue`. Allow entries win here too.
#[inline(always)]
fn over_rate(flags: u64, family: u8, src: &Addr, ifindex: u32, wire: Wire, now: u64) -> bool {
    let len = wire.bytes;
    let v = if family == 4 {
        let a = src[3].to_ne_bytes();
        if flags & dropcfg::HAS_RATE_V4 == 0
            || (flags & dropcfg::HAS_ALLOW_V4 != 0 && NETMON_ALLOW4.get(Key::new(32, a)).is_some())
        {
            return false;
        }
        NETMON_RATE4.get_ptr_mut(&a)
    } else {
        let a = addr_bytes(*src);
        if flags & dropcfg::HAS_RATE_V6 == 0
            || (flags & dropcfg::HAS_ALLOW_V6 != 0 && NETMON_ALLOW6.get(Key::new(128, a)).is_some())
        {
            return false;
        }
        NETMON_RATE6.get_ptr_mut(&a)
    };
    let Some(v) = v else {
        return false;
    };
    // SAFETY: `v` points at a map value the kernel keeps alive for this program run, 8-byte
    // aligned and writable.
    unsafe {
        let expires = (*v).expires_ns;
        if expires != 0 && now >= expires {
            return false;
        }
        let tat = (*v).tat_ns;
        let tat = if tat > now { tat } else { now };
        let interval = (*v).interval_ns;
        // A packet takes its interval; a byte limit's packet its length's worth, which must
        // fit in the burst with it. A GRO skb is its frames: all but its first must fit too.
        let (cost, ahead) = if (*v).unit == rate_unit::BYTES {
            let c = (len * interval) >> RATE_BYTE_SHIFT;
            (c, tat - now + c)
        } else {
            (
                interval * wire.frames,
                tat - now + interval * (wire.frames - 1),
            )
        };
        if ahead > (*v).burst_ns {
            atomic_add(&raw mut (*v).packets, wire.frames);
            atomic_add(&raw mut (*v).bytes, len);
            (*v).last_hit_ns = now;
            count_drop(ifindex, DIR_INGRESS, ban_kind::RATELIMIT, wire);
            return true;
        }
        (*v).tat_ns = tat + cost;
    }
    false
}

/// `*dst += val` as one BPF atomic instruction (BPF_ATOMIC | BPF_ADD, "XADD"): the BPF
/// target's `core` offers no atomic read-modify-write, but the instruction set has had this
/// one since Linux 3.18.
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, val: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the caller guarantees `dst` is a valid, 8-byte aligned map value field.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({dst} + 0) += {val}",
            dst = in(reg) dst,
            val = in(reg) val,
            options(nostack)
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above (host builds only type-check this).
    unsafe {
        *dst += val;
    }
}

/// Counts a drop on the ban (an entry's counters atomically: any CPU may hit it; a
/// NETMON_BANX4/6 slot's in this CPU's part of its counters) and per interface and kind.
#[inline(always)]
fn record_drop(ban: Ban, ifindex: u32, direction: u8, wire: Wire) {
    let Wire { bytes: len, frames } = wire;
    let Ban {
        entry,
        hits,
        shared,
        kind,
        now,
    } = ban;
    // SAFETY: map values live for the program run and are 8-byte aligned; the kernel maps
    // them writable. A slot's counters that are not shared are this CPU's: only this CPU's
    // programs write them, and they do not interleave on the packet path.
    let kind = unsafe {
        if !entry.is_null() {
            atomic_add(&raw mut (*entry).packets, frames);
            atomic_add(&raw mut (*entry).bytes, len);
            (*entry).last_hit_ns = now;
            (*entry).kind
        } else {
            if !hits.is_null() {
                if shared {
                    atomic_add(&raw mut (*hits).packets, frames);
                    atomic_add(&raw mut (*hits).bytes, len);
                } else {
                    (*hits).packets += frames;
                    (*hits).bytes += len;
                }
                (*hits).last_hit_ns = now;
            }
            kind
        }
    };
    count_drop(ifindex, direction, kind, wire);
}

/// Counts a drop per interface, direction and kind: an array slot, or the hash for the rest.
#[inline(always)]
fn count_drop(ifindex: u32, direction: u8, kind: u8, wire: Wire) {
    let Wire { bytes: len, frames } = wire;
    if let Some(slot) = drop_slot(ifindex, direction, kind) {
        if let Some(s) = NETMON_DROP_SLOTS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot.
            unsafe {
                (*s).packets += frames;
                (*s).bytes += len;
            }
        }
        return;
    }
    let key = DropKey {
        ifindex,
        direction,
        kind,
        ..zeroed()
    };
    add_to_stats(&NETMON_DROPS, &key, len, frames);
}

// ---------------------------------------------------------------------------------------------
// Socket -> process.

#[inline(always)]
fn current_proc() -> ProcInfo {
    let pid_tgid = bpf_get_current_pid_tgid();
    ProcInfo {
        pid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        // SAFETY: helper without preconditions (cgroup v2 id of the current task).
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        recorded_ns: now_ns(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
fn insert_sock(key: &SockKey, owner: &ProcInfo) {
    if NETMON_SOCK_PROC.insert(key, owner, BPF_ANY as u64).is_err() {
        bump(counter::SOCK_INSERT_FAILED);
    }
}

#[tracepoint]
pub fn netmon_sock_state(ctx: TracePointContext) -> u32 {
    if try_sock_state(&ctx).is_err() {
        bump(counter::PROBE_READ_FAILED);
    }
    0
}

#[inline(always)]
fn read_tp<T>(ctx: &TracePointContext, off: &'static u32) -> Result<T, i32> {
    // SAFETY: the offset comes from the tracepoint's format file (or its known default) and
    // bpf_probe_read_kernel checks the address.
    unsafe { ctx.read_at::<T>(global(off)) }
}

/// A field of a tracepoint record at `off` (a loader-set global), loaded directly from the
/// context when the running kernel's offset is the default `D`. Context loads must have
/// their offset in the instruction, so only a compile-time offset can be read in place; the
/// loader-set global is a read-only constant to the verifier, which keeps one branch. A
/// kernel with another layout reads through bpf_probe_read.
#[inline(always)]
fn tp_field<T: Copy, const D: u32>(ctx: &TracePointContext, off: &'static u32) -> Result<T, i32> {
    if global(off) == D as usize {
        // SAFETY: the tracepoint's format file puts the field at D, inside the record; the
        // verifier checks the access against the record's size.
        Ok(unsafe { core::ptr::read_volatile((ctx.as_ptr() as usize + D as usize) as *const T) })
    } else {
        read_tp(ctx, off)
    }
}

fn try_sock_state(ctx: &TracePointContext) -> Result<(), i32> {
    let protocol: u16 = read_tp(ctx, &TP_SS_PROTOCOL)?;
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let old: i32 = read_tp(ctx, &TP_SS_OLDSTATE)?;
    let new: i32 = read_tp(ctx, &TP_SS_NEWSTATE)?;
    let skaddr: u64 = read_tp(ctx, &TP_SS_SKADDR)?;
    match new {
        // connect(): process context, but the source port may still be 0 (tcp_v4_connect
        // sets SYN_SENT before inet_hash_connect picks it). Remember the owner by socket.
        tcp_state::SYN_SENT
            if old == tcp_state::CLOSE
                && config(config::KPROBE_CONNECT_ACTIVE) == 0
                && NETMON_SK_OWNER
                    .insert(&skaddr, &current_proc(), BPF_ANY as u64)
                    .is_err() =>
        {
            bump(counter::SOCK_INSERT_FAILED);
        }
        // listen(): process context (inet_csk_listen_start); the port is bound.
        tcp_state::LISTEN => {
            let port: u16 = read_tp(ctx, &TP_SS_SPORT)?;
            let key = PortKey {
                proto: IPPROTO_TCP,
                _pad: 0,
                port,
            };
            let owner = current_proc();
            if NETMON_PORT_OWNER
                .insert(&key, &owner, BPF_ANY as u64)
                .is_err()
            {
                bump(counter::SOCK_INSERT_FAILED);
            }
            if let Some(net) = sock_net(skaddr)?
                && NETMON_LISTEN_NS
                    .insert(&ns_port(net, key), &owner, BPF_ANY as u64)
                    .is_err()
            {
                bump(counter::SOCK_INSERT_FAILED);
            }
        }
        // Usually softirq context: the tuple is complete, the current task is unrelated.
        tcp_state::ESTABLISHED => {
            let key = sock_key_from_tp(ctx)?;
            // SAFETY: the value is copied out at once.
            if let Some(owner) = unsafe { NETMON_SK_OWNER.get(&skaddr) } {
                let owner = *owner;
                insert_sock(&key, &owner);
                let _ = NETMON_SK_OWNER.remove(&skaddr);
            } else if old == tcp_state::SYN_RECV {
                // Passive open: the accepting server is the owner of the listener in the
                // socket's namespace (of the last one on the port where BTF gave no
                // namespace: the listener of another namespace on the same port is then
                // taken for it).
                let pkey = PortKey {
                    proto: IPPROTO_TCP,
                    _pad: 0,
                    port: key.local_port,
                };
                // SAFETY: the values are copied out at once.
                let listener = match sock_net(skaddr)? {
                    Some(net) => unsafe { NETMON_LISTEN_NS.get(&ns_port(net, pkey)) },
                    None => unsafe { NETMON_PORT_OWNER.get(&pkey) },
                };
                match listener {
                    Some(owner) => {
                        let owner = *owner;
                        insert_sock(&key, &owner);
                    }
                    None => bump(counter::SOCK_OWNER_UNKNOWN),
                }
            } else if config(config::KPROBE_CONNECT_ACTIVE) == 0 {
                bump(counter::SOCK_OWNER_UNKNOWN);
            }
        }
        tcp_state::CLOSE => {
            let _ = NETMON_SK_OWNER.remove(&skaddr);
        }
        _ => {}
    }
    Ok(())
}

/// The network namespace of the socket at `sk` (its `struct net` address), where the loader
/// found the field in BTF.
#[inline(always)]
fn sock_net(sk: u64) -> Result<Option<u64>, i32> {
    if global(&SK_OFF_NET) == sock_offsets::UNKNOWN as usize {
        return Ok(None);
    }
    read_sk::<u64>(sk, &SK_OFF_NET).map(Some)
}

#[inline(always)]
fn ns_port(net: u64, port: PortKey) -> NsPortKey {
    NsPortKey { net, port, _pad: 0 }
}

/// Where a TCP tracepoint's record keeps the socket's tuple (the loader-set offsets of its
/// sport, dport, family, saddr, daddr, saddr_v6 and daddr_v6 fields).
struct TpTuple {
    sport: &'static u32,
    dport: &'static u32,
    family: &'static u32,
    saddr: &'static u32,
    daddr: &'static u32,
    saddr_v6: &'static u32,
    daddr_v6: &'static u32,
}

fn sock_key_from_tp(ctx: &TracePointContext) -> Result<SockKey, i32> {
    tp_sock_key(
        ctx,
        &TpTuple {
            sport: &TP_SS_SPORT,
            dport: &TP_SS_DPORT,
            family: &TP_SS_FAMILY,
            saddr: &TP_SS_SADDR,
            daddr: &TP_SS_DADDR,
            saddr_v6: &TP_SS_SADDR_V6,
            daddr_v6: &TP_SS_DADDR_V6,
        },
    )
}

#[inline(always)]
fn tp_sock_key(ctx: &TracePointContext, at: &TpTuple) -> Result<SockKey, i32> {
    let family: u16 = read_tp(ctx, at.family)?;
    let (local_addr, remote_addr) = if family == AF_INET {
        let s: [u8; 4] = read_tp(ctx, at.saddr)?;
        let d: [u8; 4] = read_tp(ctx, at.daddr)?;
        (v4_mapped(s), v4_mapped(d))
    } else {
        // AF_INET6, dual-stack sockets included: their v4 peers are already ::ffff:a.b.c.d.
        (
            read_tp::<[u8; 16]>(ctx, at.saddr_v6)?,
            read_tp::<[u8; 16]>(ctx, at.daddr_v6)?,
        )
    };
    Ok(SockKey {
        proto: IPPROTO_TCP,
        _pad: 0,
        // Both are host order in these tracepoints (ntohs in their TP_fast_assign).
        local_port: read_tp(ctx, at.sport)?,
        remote_port: read_tp(ctx, at.dport)?,
        _pad2: 0,
        local_addr,
        remote_addr,
    })
}

/// `tcp:tcp_retransmit_skb`: a TCP socket sent (or, on newer kernels, tried to send) an
/// skb of its write queue again, in softirq or the owner's context (the current task is
/// unrelated). Records the socket's own count of segments sent again, `total_retrans`, which
/// TCP has updated by then: the count `tcpi_total_retrans` and the namespace's
/// `RetransSegs` add up, failed sends included, which no count of these events matches.
#[tracepoint]
pub fn netmon_tcp_retransmit(ctx: TracePointContext) -> u32 {
    if try_tcp_retransmit(&ctx).is_err() {
        bump(counter::PROBE_READ_FAILED);
    }
    0
}

fn try_tcp_retransmit(ctx: &TracePointContext) -> Result<(), i32> {
    let key = tp_sock_key(
        ctx,
        &TpTuple {
            sport: &TP_RT_SPORT,
            dport: &TP_RT_DPORT,
            family: &TP_RT_FAMILY,
            saddr: &TP_RT_SADDR,
            daddr: &TP_RT_DADDR,
            saddr_v6: &TP_RT_SADDR_V6,
            daddr_v6: &TP_RT_DADDR_V6,
        },
    )?;
    let sk: u64 = read_tp(ctx, &TP_RT_SKADDR)?;
    let total: u32 = read_sk(sk, &TCP_SOCK_OFF_TOTAL_RETRANS)?;
    // Under the socket's lock: one writer per socket at a time.
    if NETMON_TCP_RETRANS
        .insert(&key, &u64::from(total), BPF_ANY as u64)
        .is_err()
    {
        bump(counter::SOCK_INSERT_FAILED);
    }
    Ok(())
}

/// A field at `off` (a loader-set global, from BTF) of the socket at `sk`.
#[inline(always)]
fn read_sk<T>(sk: u64, off: &'static u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address; offsets come from BTF.
    unsafe { bpf_probe_read_kernel((sk as usize + global(off)) as *const T) }
}

/// kprobe on `tcp_connect(struct sock *sk)`: called by tcp_v4/v6_connect after the source
/// port is chosen, in the connecting process's context, so the whole tuple and the owner are
/// known at once.
#[kprobe]
pub fn netmon_tcp_connect(ctx: ProbeContext) -> u32 {
    if try_tcp_connect(&ctx).is_err() {
        bump(counter::PROBE_READ_FAILED);
    }
    0
}

fn try_tcp_connect(ctx: &ProbeContext) -> Result<(), i32> {
    let sk: u64 = ctx.arg(0).ok_or(-1)?;
    let family: u16 = read_sk(sk, &SK_OFF_FAMILY)?;
    let (local_addr, remote_addr) = if family == AF_INET {
        (
            v4_mapped(read_sk(sk, &SK_OFF_RCV_SADDR)?),
            v4_mapped(read_sk(sk, &SK_OFF_DADDR)?),
        )
    } else {
        (
            read_sk(sk, &SK_OFF_V6_RCV_SADDR)?,
            read_sk(sk, &SK_OFF_V6_DADDR)?,
        )
    };
    let key = SockKey {
        proto: IPPROTO_TCP,
        _pad: 0,
        local_port: read_sk(sk, &SK_OFF_NUM)?,
        remote_port: u16::from_be(read_sk(sk, &SK_OFF_DPORT)?),
        _pad2: 0,
        local_addr,
        remote_addr,
    };
    insert_sock(&key, &current_proc());
    Ok(())
}

/// The UDP socket this CPU last recorded a sender for, and the sends since: see
/// `record_udp_sender`.
#[derive(Clone, Copy)]
struct LastSender {
    /// The socket's address.
    sk: u64,
    pid: u32,
    sends: u32,
}

/// Per CPU: the last UDP socket and process recorded, so that a stream of sends from one
/// socket (a DNS server, an iperf3 -u) costs a per-CPU array read per send, not kernel
/// memory reads and a hash lookup.
#[map]
static NETMON_LAST_SENDER: PerCpuArray<LastSender> = PerCpuArray::with_max_entries(1, 0);

/// After this many sends from the cached socket, the port's owner entry is checked again
/// (it may have been evicted from NETMON_PORT_OWNER, or the socket freed and its memory
/// reused by the same process).
const SENDER_RECHECK: u32 = 1024;

/// Whether `sk` is the UDP socket this CPU last recorded for `pid`, and its owner needs no
/// recheck yet (a send from it then costs this per-CPU array read and nothing else).
#[inline(always)]
fn sender_cached(sk: u64, pid: u32) -> bool {
    let Some(c) = NETMON_LAST_SENDER.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not interleave here.
    unsafe {
        if (*c).sk == sk && (*c).pid == pid && (*c).sends < SENDER_RECHECK {
            (*c).sends += 1;
            return true;
        }
    }
    false
}

/// Records the owner of a UDP socket's local port, once per (port, process).
#[inline(always)]
fn record_udp_sender(sk: u64) -> Result<(), i32> {
    record_udp_sender_if(sk, || Ok(true))
}

/// `record_udp_sender` for a socket that `is_udp` says is a UDP socket, asked only past the
/// cache (which only ever holds UDP sockets).
#[inline(always)]
fn record_udp_sender_if(sk: u64, is_udp: impl FnOnce() -> Result<bool, i32>) -> Result<(), i32> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if sender_cached(sk, pid) || !is_udp()? {
        return Ok(());
    }
    record_udp_sender_slow(sk, pid)
}

/// `record_udp_sender` past the cache: the port's owner entry, and the cache set to `sk`.
#[inline(always)]
fn record_udp_sender_slow(sk: u64, pid: u32) -> Result<(), i32> {
    let port: u16 = read_sk(sk, &SK_OFF_NUM)?;
    if port == 0 {
        return Ok(());
    }
    if own_udp_port(port, pid, None, true) {
        remember_sender(sk, pid);
    }
    Ok(())
}

/// Makes `pid` the owner of local UDP port `port`, unless it is already (`check`; else the
/// slot is written without being read first, for a caller that knows the pair is new to it),
/// with the record `owner` (None: the current process's, read only if it is written). False
/// when the entry could not be written (counted).
#[inline(always)]
fn own_udp_port(port: u16, pid: u32, owner: Option<&ProcInfo>, check: bool) -> bool {
    let Some(slot) = NETMON_UDP_PORTS.get_ptr_mut(u32::from(port)) else {
        bump(counter::SOCK_INSERT_FAILED);
        return false;
    };
    // SAFETY: a live map value, 8-byte aligned. A reader may find a record mixed while it is
    // rewritten (or while two CPUs record the same port at once); the pid goes last, so a
    // slot written for the first time is never read with a pid before its other fields:
    // after a compiler fence on x86, which keeps stores in order, and elsewhere
    // (`WEAK_STORE_ORDER`) by a fully ordered exchange of the word of the pid and the uid.
    unsafe {
        if check && (*slot).pid == pid {
            return true;
        }
        let o = match owner {
            Some(o) => *o,
            None => current_proc(),
        };
        (*slot).cgroup_id = o.cgroup_id;
        (*slot).recorded_ns = o.recorded_ns;
        (*slot).comm = o.comm;
        if global(&WEAK_STORE_ORDER) != 0 {
            xchg(
                slot.cast::<u64>(),
                u64::from(o.pid) | u64::from(o.uid) << 32,
            );
        } else {
            (*slot).uid = o.uid;
            compiler_fence(Ordering::SeqCst);
            core::ptr::write_volatile(&raw mut (*slot).pid, o.pid);
        }
    }
    true
}

/// Sets this CPU's last-sender cache (`sender_cached`) to socket `sk` (its address) and
/// `pid`. A hook run in a task that preempted this one on this CPU may write it too
/// (tracepoints run preemptible): at worst the cache then names a pair that was not
/// recorded, and such a send goes unrecorded until the socket's next recheck
/// (`SENDER_RECHECK`).
#[inline(always)]
fn remember_sender(sk: u64, pid: u32) {
    if let Some(c) = NETMON_LAST_SENDER.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, written whole.
        unsafe { *c = LastSender { sk, pid, sends: 0 } };
    }
}

/// Raw tracepoint `sock_send_length(struct sock *sk, int ret, int flags)` (Linux 6.3+):
/// every sendmsg, in the sender's context, with the socket as its argument. Preferred to the
/// tracepoint of the same name where BTF gives `sk_protocol`'s offset: a tracepoint first
/// builds its record in a perf buffer for every send, which cost as much as the program.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn netmon_sock_send_raw(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let r = record_udp_sender_if(sk, || {
        let protocol: u16 = read_sk(sk, &SK_OFF_PROTOCOL)?;
        // A netlink socket can have protocol 17 too.
        Ok(protocol == IPPROTO_UDP as u16 && {
            let family: u16 = read_sk(sk, &SK_OFF_FAMILY)?;
            family == AF_INET || family == AF_INET6
        })
    });
    if r.is_err() {
        bump(counter::PROBE_READ_FAILED);
    }
    0
}

/// Tracepoint `sock:sock_send_length` (Linux 6.3+): every sendmsg, in the sender's context.
#[tracepoint]
pub fn netmon_sock_send(ctx: TracePointContext) -> u32 {
    // Every sendmsg of every socket comes here: the record is read in place (a load from
    // the context, not a bpf_probe_read call per field).
    let r = (|| -> Result<(), i32> {
        let protocol: u16 = tp_field::<_, { tp_offsets::SL_PROTOCOL }>(&ctx, &TP_SL_PROTOCOL)?;
        if protocol != IPPROTO_UDP as u16 {
            return Ok(());
        }
        record_udp_sender(tp_field::<_, { tp_offsets::SL_SK }>(&ctx, &TP_SL_SK)?)
    })();
    if r.is_err() {
        bump(counter::PROBE_READ_FAILED);
    }
    0
}

/// cgroup `connect4`/`connect6` (a UDP socket connected: its sends then come without an
/// address, and run no hook) and `sendmsg4`/`sendmsg6` (a send with an address, on an
/// unconnected socket), attached to the cgroup v2 root so every process's sockets come here:
/// the caller goes into the socket's storage (`NETMON_UDP_SK`), and the egress program makes
/// it the owner of the port the socket's datagrams leave from. A stream of addressed sends on
/// one socket costs the storage's lookup and a compare. A connect or send to a loopback
/// address (`to_loopback`, asked only then) records nothing unless the daemon watches a
/// loopback interface (`config::LOOPBACK_WATCHED`): the storage's creation is most of the
/// hook's cost (~0.7 of ~1.1 µs per connect on the benchmark's AMD host), and a socket per
/// request to a local resolver or cache is common. Always 1: the call goes on.
#[inline(always)]
fn udp_sock_owner(ctx: &SockAddrContext, to_loopback: impl FnOnce() -> bool) -> i32 {
    // SAFETY: the kernel-provided context; `protocol` is readable in every sock_addr hook.
    if unsafe { (*ctx.sock_addr).protocol } != u32::from(IPPROTO_UDP) {
        return 1;
    }
    if config(config::LOOPBACK_WATCHED) == 0 && to_loopback() {
        return 1;
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the kernel-provided context: `sk`, the hook's socket, is never null here, and
    // its `src_port` (host order; 0 until the socket is bound) is readable.
    let bound = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_port };
    // SAFETY: the hook's own socket.
    let s = unsafe { NETMON_UDP_SK.get_ptr_mut(ctx) };
    if s.is_null() {
        // SAFETY: the hook's context, as the helper takes it.
        let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
        let mut fresh = UdpSockOwner {
            owner: current_proc(),
            port: 0,
            epoch: 0,
            ns_port: if cookie == own_netns() { NS_OWN } else { 0 },
            _pad: 0,
        };
        if fresh.ns_port == 0 && bound != 0 {
            record_udp_ns(cookie, bound, &fresh.owner);
            fresh.ns_port = bound;
        }
        // SAFETY: as above; the storage is created with `fresh`'s bytes.
        if unsafe { NETMON_UDP_SK.get_or_insert_ptr_mut(ctx, Some(&mut fresh)) }.is_null() {
            bump(counter::SOCK_INSERT_FAILED);
        }
        return 1;
    }
    // SAFETY: the socket's storage, live while the socket is. Another process sharing the
    // socket may write it at once: the egress program may then read a record mixed from
    // the two, for one frame, as a reader of a port's slot may (`own_udp_port`).
    unsafe {
        if (*s).owner.pid != pid {
            (*s).owner = current_proc();
            (*s).port = 0;
            if (*s).ns_port != NS_OWN {
                (*s).ns_port = 0;
            }
        }
        if (*s).ns_port != NS_OWN && bound != 0 && (*s).ns_port != bound {
            record_udp_ns(
                bpf_get_netns_cookie(ctx.sock_addr.cast()),
                bound,
                &(*s).owner,
            );
            (*s).ns_port = bound;
        }
    }
    1
}

/// The daemon's network namespace's cookie (`config::OWN_NETNS_COOKIE`; 0: not known, and
/// then no socket is taken for one of it).
#[inline(always)]
fn own_netns() -> u64 {
    let c = config(config::OWN_NETNS_COOKIE);
    if c == 0 { u64::MAX } else { c }
}

/// Records `owner` as the owner of UDP port `port` of the network namespace whose cookie is
/// `cookie` (`NETMON_UDP_NS`).
#[inline(always)]
fn record_udp_ns(cookie: u64, port: u32, owner: &ProcInfo) {
    let key = NsPortKey {
        net: cookie,
        port: PortKey {
            proto: IPPROTO_UDP,
            _pad: 0,
            port: port as u16,
        },
        _pad: 0,
    };
    if NETMON_UDP_NS.insert(&key, owner, BPF_ANY as u64).is_err() {
        bump(counter::SOCK_INSERT_FAILED);
    }
}

/// cgroup `sock_release`, on the cgroup v2 root: a UDP socket of another network namespace
/// than the daemon's whose owner the UDP hooks recorded (`NETMON_UDP_SK`) leaves that owner
/// in `NETMON_UDP_NS` under its port as it closes, if it was not there yet: a container's
/// short-lived sockets (a resolver's, one per query) are gone before the daemon's next
/// drain looks for their datagrams' sender. Other sockets cost the protocol's compare, or a
/// storage lookup that finds nothing. Always 1.
#[cgroup_sock(sock_release)]
pub fn netmon_udp_release(ctx: SockContext) -> i32 {
    // SAFETY: the kernel-provided bpf_sock of the socket being released.
    if unsafe { (*ctx.sock).protocol } != u32::from(IPPROTO_UDP) {
        return 1;
    }
    // This hook's context gives no port (`src_port` is a bind hook's): `skc_num`, read from
    // the socket the context is.
    let bound = u32::from(read_sk::<u16>(ctx.sock as u64, &SK_OFF_NUM).unwrap_or(0));
    if bound == 0 {
        return 1;
    }
    // SAFETY: the hook's own socket (the context); looked up, never created.
    let s = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&NETMON_UDP_SK).cast_mut().cast(),
            ctx.sock.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<UdpSockOwner>();
    if s.is_null() {
        return 1;
    }
    // SAFETY: the socket's storage, live while the socket is.
    unsafe {
        if (*s).ns_port != NS_OWN && (*s).ns_port != bound {
            record_udp_ns(bpf_get_netns_cookie(ctx.sock.cast()), bound, &(*s).owner);
        }
    }
    1
}

/// Whether the IPv4 destination of a `connect4`/`sendmsg4` context is in 127.0.0.0/8.
#[inline(always)]
fn to_loopback4(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel-provided context; `user_ip4` (network order) is readable in the
    // IPv4 hooks.
    netmon_common::is_loopback4(unsafe { (*ctx.sock_addr).user_ip4 })
}

/// Whether the IPv6 destination of a `connect6`/`sendmsg6` context is ::1 or an IPv4-mapped
/// address in 127.0.0.0/8.
#[inline(always)]
fn to_loopback6(ctx: &SockAddrContext) -> bool {
    // SAFETY: the kernel-provided context; `user_ip6` (network order, 32-bit words) is
    // readable in the IPv6 hooks, a word at a time.
    let w = unsafe {
        let a = &raw const (*ctx.sock_addr).user_ip6;
        [(*a)[0], (*a)[1], (*a)[2], (*a)[3]]
    };
    netmon_common::is_loopback6(w)
}

#[cgroup_sock_addr(connect4)]
pub fn netmon_udp_connect4(ctx: SockAddrContext) -> i32 {
    udp_sock_owner(&ctx, || to_loopback4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn netmon_udp_connect6(ctx: SockAddrContext) -> i32 {
    udp_sock_owner(&ctx, || to_loopback6(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn netmon_udp_sendmsg4(ctx: SockAddrContext) -> i32 {
    udp_sock_owner(&ctx, || to_loopback4(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn netmon_udp_sendmsg6(ctx: SockAddrContext) -> i32 {
    udp_sock_owner(&ctx, || to_loopback6(&ctx))
}

/// An outgoing UDP frame from local port `port` (0: none), its flow's first or first in the
/// drain epoch: when the cgroup hooks are on, the process they saw connect its socket or send
/// from it becomes the port's owner, once per socket, port and drain epoch. A frame without a
/// socket (forwarded) or whose socket they never saw (opened and connected before the daemon
/// started: the daemon records those ports' owners itself) records nothing.
#[inline(always)]
fn udp_owner_from_socket(ctx: &TcContext, port: u16) {
    if port == 0 || config(config::UDP_SOCK_HOOKS_ACTIVE) == 0 {
        return;
    }
    let s = frame_sock_storage(ctx, &NETMON_UDP_SK);
    if s.is_null() {
        return;
    }
    let epoch = config(config::EPOCH) as u32;
    // SAFETY: the socket's storage, live for the program run. Frames of one socket on two
    // CPUs at once may both record the port: the same owner, twice.
    unsafe {
        let same_port = (*s).port == u32::from(port);
        if same_port && (*s).epoch == epoch {
            return;
        }
        // A port this socket never recorded (its first frame, mostly) is written without
        // reading its slot first: the slot is a cold line then, and a store does not wait
        // for it as a load does.
        if own_udp_port(port, (*s).owner.pid, Some(&(*s).owner), same_port) {
            (*s).port = u32::from(port);
            (*s).epoch = epoch;
        }
    }
}

/// kprobe on `udp_sendmsg`/`udpv6_sendmsg(struct sock *sk, ...)`: kernels with kprobes.
#[kprobe]
pub fn netmon_udp_sendmsg(ctx: ProbeContext) -> u32 {
    let r = match ctx.arg::<u64>(0) {
        Some(sk) => record_udp_sender(sk),
        None => Err(-1),
    };
    if r.is_err() {
        bump(counter::PROBE_READ_FAILED);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Benchmark references (`cargo xtask bench`): never attached by the daemon.

/// An XDP program that does nothing: the baseline that benchmarks subtract.
#[xdp]
pub fn netmon_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// A TC program that does nothing: the egress baseline.
#[classifier]
pub fn netmon_tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Parses as `netmon_xdp` does and touches no map: the cost of parsing alone.
#[xdp]
pub fn netmon_xdp_parse(ctx: XdpContext) -> u32 {
    parse_only(ctx.data(), ctx.data_end());
    xdp_action::XDP_PASS
}

/// Parses as `netmon_tc_egress` does and touches no map.
#[classifier]
pub fn netmon_tc_parse(ctx: TcContext) -> i32 {
    parse_only(ctx.data(), ctx.data_end());
    TC_ACT_UNSPEC
}

#[inline(always)]
fn parse_only(data: usize, end: usize) {
    let packet = Packet { data, end };
    let mut p = Parsed::new();
    // As `account` parses: the common frame in one pass, the others by the general parser.
    // SAFETY: a Parsed on the stack (8-byte aligned: its repr).
    let r = if unsafe { parse_fast(&packet, &raw mut p) } {
        Ok(())
    } else {
        parse(&packet, &mut p)
    };
    // Keep the parse: its result is otherwise unused and would be optimised away. By value,
    // field by field: a reference would make the struct live in memory, zeroed by a memset
    // call (a byte loop) that the real programs do not make.
    let _ = core::hint::black_box((
        p.family,
        p.proto,
        p.flags,
        p.tcp_flags,
        p.src,
        p.dst,
        p.sport,
        p.dport,
        p.icmp,
        p.note,
        r.is_ok(),
    ));
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
