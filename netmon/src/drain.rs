//! Stage 2: read the kernel maps. The flow map is read with `BPF_MAP_LOOKUP_BATCH` (one
//! syscall per few thousand flows, not a lookup per key) and idle flows are removed with
//! `BPF_MAP_DELETE_BATCH`; aya 0.14 has no batch API, so these are raw bpf(2) calls on the
//! map's fd. Counters are cumulative in the kernel; stage 3 turns them into deltas and rates.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use netmon_common::{
    CpuState, FlowKey, FlowKey4, FlowStats, HOOK_TC, HOOK_XDP, IPPROTO_UDP, IfaceStats, NsPortKey,
    PortKey, ProcInfo, SockKey, config, counter, has_socket_owner, is_icmp,
};

use crate::aggregate::{FlowSample, LocalAddrs, is_forwarded};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per BPF_MAP_*_BATCH call (a reader's first buffer; it grows where a hash bucket
/// holds more).
pub(crate) const BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix; the kernel reads `size` bytes and
    // writes back count/out_batch and into the buffers whose sizes match `count`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of a hash map with plain (not per-CPU) values, read with BPF_MAP_LOOKUP_BATCH
/// `*chunk` entries at a time through the reused buffers and handed to `f` one by one.
fn read_batched<K: Copy + Default, V: Copy + Default>(
    map: std::os::fd::BorrowedFd<'_>,
    keys: &mut Vec<K>,
    vals: &mut Vec<V>,
    chunk: &mut usize,
    f: impl FnMut(&K, &V),
) -> io::Result<()> {
    // A hash map's position between batches is a bucket number.
    read_batched_from::<K, V, u64>(map, keys, vals, chunk, f)
}

/// `read_batched` for any map with plain values, `T` its position between batches: a hash
/// map's is a bucket number (a u64 holds it), the other maps' (an LPM trie's) the last key
/// read (`T` = `K`).
pub(crate) fn read_batched_from<K: Copy + Default, V: Copy + Default, T: Copy + Default>(
    map: std::os::fd::BorrowedFd<'_>,
    keys: &mut Vec<K>,
    vals: &mut Vec<V>,
    chunk: &mut usize,
    mut f: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut in_token = T::default();
    let mut out_token = T::default();
    let mut first = true;
    loop {
        keys.resize(*chunk, K::default());
        vals.resize(*chunk, V::default());
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut in_token as u64 },
            out_batch: &raw mut out_token as u64,
            keys: keys.as_mut_ptr() as u64,
            values: vals.as_mut_ptr() as u64,
            count: *chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = attr.count as usize;
        for (k, v) in keys.iter().zip(vals.iter()).take(n.min(*chunk)) {
            f(k, v);
        }
        match r {
            Ok(()) => {
                in_token = out_token;
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // One hash bucket holds more entries than the buffer: grow and retry.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => *chunk *= 2,
            Err(e) => return Err(e),
        }
    }
}

/// The non-zero entries of a per-CPU array of `IfaceStats` with `entries` slots, summed over
/// CPUs, read with one BPF_MAP_LOOKUP_BATCH.
pub fn stats_array(
    map: std::os::fd::BorrowedFd<'_>,
    entries: u32,
    ncpus: usize,
) -> io::Result<Vec<(u32, IfaceStats)>> {
    const STRIDE: usize = size_of::<IfaceStats>();
    let n = entries as usize;
    let mut keys = vec![0u32; n];
    let mut vals = vec![0u8; n * STRIDE * ncpus];
    let mut out_token = 0u32;
    let mut attr = BatchAttr {
        out_batch: &mut out_token as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: vals.as_mut_ptr() as u64,
        count: entries,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    match bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        // ENOENT: the whole array came back in this one call.
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        _ => {}
    }
    let mut out = Vec::new();
    for (i, &slot) in keys.iter().enumerate().take((attr.count as usize).min(n)) {
        let mut s = IfaceStats::default();
        for cpu in 0..ncpus {
            let at = (i * ncpus + cpu) * STRIDE;
            // SAFETY: IfaceStats is plain old data of exactly STRIDE bytes.
            let v: IfaceStats =
                unsafe { std::ptr::read_unaligned(vals[at..at + STRIDE].as_ptr().cast()) };
            s.bytes += v.bytes;
            s.packets += v.packets;
        }
        if s.packets != 0 {
            out.push((slot, s));
        }
    }
    Ok(out)
}

/// Per-CPU `IfaceStats` summed.
pub fn sum_stats<'a>(per_cpu: impl IntoIterator<Item = &'a IfaceStats>) -> IfaceStats {
    per_cpu
        .into_iter()
        .fold(IfaceStats::default(), |a, v| IfaceStats {
            bytes: a.bytes + v.bytes,
            packets: a.packets + v.packets,
        })
}

/// Handles to the maps the daemon reads, taken out of the loaded object.
pub struct Maps {
    /// NETMON_FLOWS4 (IPv4 flows, `FlowKey4`) and NETMON_FLOWS6 (IPv6 flows, `FlowKey`).
    flows4: MapData,
    flows6: MapData,
    /// NETMON_CPU: per CPU, the frames each hook saw.
    cpu: PerCpuArray<MapData, CpuState>,
    counters: PerCpuArray<MapData, u64>,
    owners: std::sync::Arc<Owners>,
    dirty: aya::maps::RingBuf<MapData>,
    config: aya::maps::Array<MapData, u64>,
    epoch: u64,
    /// NETMON_TCP_RETRANS: segments sent again per TCP socket tuple.
    retrans: MapData,
}

/// The `elem` member of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Reused buffers for reading the flow maps in batches.
pub struct FlowBufs {
    keys4: Vec<FlowKey4>,
    keys6: Vec<FlowKey>,
    vals: Vec<FlowStats>,
    chunk: usize,
}

impl Default for FlowBufs {
    fn default() -> Self {
        Self {
            keys4: Vec::new(),
            keys6: Vec::new(),
            vals: Vec::new(),
            chunk: BATCH,
        }
    }
}

/// Names of the two flow maps, for messages.
const FLOWS4: &str = "NETMON_FLOWS4";
const FLOWS6: &str = "NETMON_FLOWS6";

fn lru_map(ebpf: &mut Ebpf, name: &str) -> Result<MapData> {
    match take(ebpf, name)? {
        aya::maps::Map::LruHashMap(m) => Ok(m),
        _ => anyhow::bail!("{name} is not an LRU hash map"),
    }
}

/// A flow's counters as the drain hands them on.
fn sample(key: FlowKey, v: &FlowStats) -> FlowSample {
    FlowSample {
        key,
        bytes: v.bytes,
        packets: v.packets,
        tcp_flags: v.tcp_flags,
        first_ns: v.first_seen_ns,
        last_ns: v.last_seen_ns,
    }
}

/// One BPF_MAP_LOOKUP_ELEM; `None` when the key is not in the map.
fn lookup_elem<K, V: Default>(map: &MapData, key: &K) -> Option<V> {
    let mut v = V::default();
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: &mut v as *mut V as u64,
        flags: 0,
    };
    // SAFETY: attr points at a key and a value buffer of the map's sizes (the caller passes
    // the map's own key and value types).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &mut attr as *mut ElemAttr,
            size_of::<ElemAttr>() as u32,
        )
    };
    (r == 0).then_some(v)
}

/// Writes `values[i]` under `keys[i]` (a map with plain, not per-CPU, values: a hash map, an
/// LPM trie) with BPF_MAP_UPDATE_BATCH, a few thousand per system call. On an error, how
/// many entries were written before the one the kernel refused (all those after it are not
/// written either), and the error.
pub(crate) fn update_batched<K, V>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut written = 0;
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        match update_batch(map, k, v) {
            Ok(()) => written += k.len(),
            Err((n, e)) => return Err((written + n, e)),
        }
    }
    Ok(())
}

/// One BPF_MAP_UPDATE_BATCH of `keys` with the values at `values` (the map's value size
/// each, or for a per-CPU map each CPU's, padded to 8 bytes); on an error, how many were
/// written before the refused one, and the error.
fn update_batch<K, V>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), (usize, io::Error)> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr)
        .map_err(|e| ((attr.count as usize).min(keys.len()), e))
}

/// Sets entries `slots` of a per-CPU array of `value_size`-byte values to zero on every
/// one of `ncpus` CPUs, in one BPF_MAP_UPDATE_BATCH.
pub(crate) fn zero_per_cpu_slots(
    map: &MapData,
    slots: &[u32],
    value_size: usize,
    ncpus: usize,
) -> io::Result<()> {
    if slots.is_empty() {
        return Ok(());
    }
    let zeros = vec![0u8; slots.len() * ncpus * value_size.next_multiple_of(8)];
    update_batch(map, slots, &zeros).map_err(|(_, e)| e)
}

/// Removes `keys` from a map (a hash map, an LPM trie) with BPF_MAP_DELETE_BATCH, a few
/// thousand per system call; keys it does not hold are skipped. Returns how many were
/// deleted.
pub(crate) fn delete_batched<K>(map: &MapData, name: &str, keys: &[K]) -> Result<usize> {
    let mut deleted = 0;
    for chunk in keys.chunks(BATCH) {
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        match bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => deleted += attr.count as usize,
            // A key already evicted by the LRU stops the batch at that key: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                deleted += attr.count as usize;
                let rest = &chunk[(attr.count as usize + 1).min(chunk.len())..];
                if !rest.is_empty() {
                    deleted += delete_batched(map, name, rest)?;
                }
            }
            Err(e) => return Err(e).with_context(|| format!("BPF_MAP_DELETE_BATCH on {name}")),
        }
    }
    Ok(deleted)
}

/// Adds the frames each hook saw, in the CPUs' states, to their event counters.
pub fn add_hook_packets<'a>(
    counters: &mut [u64; counter::COUNT as usize],
    per_cpu: impl IntoIterator<Item = &'a CpuState>,
) {
    for state in per_cpu {
        counters[counter::XDP_PACKETS as usize] += state.packets[HOOK_XDP];
        counters[counter::TC_PACKETS as usize] += state.packets[HOOK_TC];
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("eBPF object has no map {name}"))
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            flows4: lru_map(ebpf, FLOWS4)?,
            flows6: lru_map(ebpf, FLOWS6)?,
            cpu: PerCpuArray::try_from(take(ebpf, "NETMON_CPU")?)?,
            counters: PerCpuArray::try_from(take(ebpf, "NETMON_COUNTERS")?)?,
            owners: std::sync::Arc::new(Owners {
                sock_proc: HashMap::try_from(take(ebpf, "NETMON_SOCK_PROC")?)?,
                port_owner: HashMap::try_from(take(ebpf, "NETMON_PORT_OWNER")?)?,
                udp_ports: UdpPorts::take(ebpf)?,
                udp_ns: HashMap::try_from(take(ebpf, "NETMON_UDP_NS")?)?,
                namespaces: Default::default(),
                local: Default::default(),
            }),
            dirty: aya::maps::RingBuf::try_from(take(ebpf, "NETMON_DIRTY")?)?,
            config: aya::maps::Array::try_from(take(ebpf, "NETMON_CONFIG")?)?,
            epoch: 0,
            retrans: match take(ebpf, "NETMON_TCP_RETRANS")? {
                aya::maps::Map::LruHashMap(m) => m,
                _ => anyhow::bail!("NETMON_TCP_RETRANS is not an LRU hash map"),
            },
        })
    }

    /// Moves the programs to a new drain epoch: from now on each flow's first packet pushes
    /// its key to the dirty ring again.
    pub fn advance_epoch(&mut self) -> Result<()> {
        self.epoch = (self.epoch + 1) & u64::from(u32::MAX);
        self.config
            .set(config::EPOCH, self.epoch, 0)
            .context("writing the drain epoch to NETMON_CONFIG")
    }

    /// Appends the keys waiting in the dirty ring (flows touched since they were last taken)
    /// to `out`, IPv4 ones widened. A key may appear more than once.
    pub fn take_dirty(&mut self, out: &mut Vec<FlowKey>) {
        while let Some(item) = self.dirty.next() {
            // A record is as long as the key the program pushed: FlowKey4 or FlowKey.
            match item.len() {
                n if n == size_of::<FlowKey4>() => {
                    // SAFETY: the programs write whole FlowKey4s; unaligned read of plain data.
                    let k = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowKey4>()) };
                    out.push(k.into());
                }
                n if n == size_of::<FlowKey>() => {
                    // SAFETY: as above, for FlowKey.
                    out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowKey>()) });
                }
                _ => {}
            }
        }
    }

    /// The flows `keys` (distinct) as the kernel maps hold them now, handed to `f`; keys no
    /// longer in the map (evicted, deleted) are skipped.
    pub fn read_flows_by_key(&self, keys: &[FlowKey], mut f: impl FnMut(&FlowSample)) {
        for key in keys {
            let v = match key.narrow() {
                Some(k4) => lookup_elem::<_, FlowStats>(&self.flows4, &k4),
                None => lookup_elem::<_, FlowStats>(&self.flows6, key),
            };
            if let Some(v) = v {
                f(&sample(*key, &v));
            }
        }
    }

    /// One kernel event counter, summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Every flow in the kernel maps, read in batches and handed to `f` one by one: the
    /// daemon never holds a copy of a whole map.
    pub fn read_flows(&self, bufs: &mut FlowBufs, mut f: impl FnMut(&FlowSample)) -> Result<()> {
        read_batched(
            self.flows4.fd().as_fd(),
            &mut bufs.keys4,
            &mut bufs.vals,
            &mut bufs.chunk,
            |&key, v| f(&sample(key.into(), v)),
        )
        .with_context(|| format!("BPF_MAP_LOOKUP_BATCH on {FLOWS4}"))?;
        read_batched(
            self.flows6.fd().as_fd(),
            &mut bufs.keys6,
            &mut bufs.vals,
            &mut bufs.chunk,
            |&key, v| f(&sample(key, v)),
        )
        .with_context(|| format!("BPF_MAP_LOOKUP_BATCH on {FLOWS6}"))
    }

    /// Removes flows from the kernel maps; returns how many were deleted.
    pub fn delete_flows(&mut self, keys: &[FlowKey]) -> Result<usize> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for k in keys {
            match k.narrow() {
                Some(k4) => v4.push(k4),
                None => v6.push(*k),
            }
        }
        Ok(delete_batched(&self.flows4, FLOWS4, &v4)? + delete_batched(&self.flows6, FLOWS6, &v6)?)
    }

    /// The socket-owner maps, for lookups from other threads (the socket lister).
    pub fn owners(&self) -> std::sync::Arc<Owners> {
        self.owners.clone()
    }

    /// (metric name, entries, max_entries) of the socket-attribution maps.
    pub fn socket_map_usage(&self) -> [(&'static str, usize, u32); 2] {
        self.owners.usage()
    }

    /// max_entries of the IPv4 and the IPv6 flow map.
    pub fn flow_capacity(&self) -> [u32; 2] {
        [&self.flows4, &self.flows6].map(|m| m.info().map(|i| i.max_entries()).unwrap_or(0))
    }

    /// The kernel event counters, summed over CPUs (the frames each hook saw are in the
    /// CPUs' state).
    pub fn read_counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(v) = self.counters.get(&(i as u32), 0) {
                *slot = v.iter().sum();
            }
        }
        if let Ok(per_cpu) = self.cpu.get(&0, 0) {
            add_hook_packets(&mut out, per_cpu.iter());
        }
        out
    }

    /// The process that owned the socket behind a flow (see `Owners::owner`).
    pub fn owner(&self, key: &FlowKey) -> Option<ProcInfo> {
        self.owners.owner(key)
    }

    /// The process that owns (or owned) a socket (see `Owners::sock_owner`).
    pub fn sock_owner(&self, key: &SockKey) -> Option<ProcInfo> {
        self.owners.sock_owner(key)
    }

    /// The segments each TCP socket has sent again, as the retransmit tracepoint counted
    /// them (entries live until the LRU map needs their room), read in batches.
    pub fn tcp_retransmits(&self) -> Result<std::collections::HashMap<SockKey, u64>> {
        copy_map(&self.retrans).context("reading NETMON_TCP_RETRANS")
    }

    /// Owner lookups for one drain (see `OwnerLookup`).
    pub fn owner_lookup(&self) -> OwnerLookup<'_> {
        OwnerLookup::new(&self.owners)
    }
}

/// The socket-attribution maps the kernel hooks write: read by the drain (owners of flows)
/// and by the socket lister (owners of idle sockets), on the thread that asks.
pub struct Owners {
    sock_proc: HashMap<MapData, SockKey, ProcInfo>,
    port_owner: HashMap<MapData, PortKey, ProcInfo>,
    udp_ports: UdpPorts,
    /// Other network namespaces' UDP ports' owners, by namespace cookie and port.
    udp_ns: HashMap<MapData, NsPortKey, ProcInfo>,
    /// Which other network namespaces hold an address (their cookies).
    namespaces: std::sync::Mutex<crate::sockdiag::NamespaceAddrs>,
    /// The daemon's namespace's addresses, as it last read them.
    local: std::sync::RwLock<std::sync::Arc<LocalAddrs>>,
}

/// `NETMON_UDP_PORTS`, the owners of UDP local ports indexed by the port, mapped read-only:
/// a lookup is a read of memory, no system call.
struct UdpPorts {
    mem: crate::mapmem::MapMemory,
    _map: MapData,
}

impl UdpPorts {
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        const NAME: &str = "NETMON_UDP_PORTS";
        let map = match take(ebpf, NAME)? {
            aya::maps::Map::Array(m) => m,
            _ => anyhow::bail!("{NAME} is not an array"),
        };
        let len = netmon_common::UDP_PORT_SLOTS as usize * size_of::<ProcInfo>();
        let mem = crate::mapmem::MapMemory::new(map.fd().as_fd(), 0, len, false)
            .with_context(|| format!("mapping {NAME}"))?;
        Ok(Self { mem, _map: map })
    }

    /// The record of `port`'s owner, if one was written (a pid of 0: none).
    fn get(&self, port: u16) -> Option<ProcInfo> {
        // SAFETY: `port` < UDP_PORT_SLOTS slots of size_of::<ProcInfo>() bytes (a multiple
        // of 8, the array's element size) are mapped; the programs write them meanwhile, so
        // they are read volatile, the pid first (written last), the rest after an acquire
        // fence (a compiler fence on x86; a barrier where loads may be reordered).
        unsafe {
            let slot = self.mem.ptr().cast::<ProcInfo>().add(usize::from(port));
            if std::ptr::read_volatile(&raw const (*slot).pid) == 0 {
                return None;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            Some(std::ptr::read_volatile(slot))
        }
    }
}

/// The socket key a flow's owner is recorded under; `None` for flows no socket owns. An
/// ICMP flow's is its two addresses (ports 0), whatever its type and code: the egress
/// program records the owner of an ICMP socket there for the requests and their replies.
fn sock_key(key: &FlowKey) -> Option<SockKey> {
    let icmp = is_icmp(key.proto);
    has_socket_owner(key.proto).then(|| SockKey {
        proto: key.proto,
        local_port: if icmp { 0 } else { key.local_port },
        remote_port: if icmp { 0 } else { key.remote_port },
        local_addr: key.local_addr,
        remote_addr: key.remote_addr,
        ..Default::default()
    })
}

/// The exact 4-tuple first, then the owner of the local port (listener, UDP sender). The
/// port's owner only where the flow's local address is one this host takes traffic for
/// (`LocalAddrs`): a frame the host forwards (a container's, seen on the bridge port with
/// its destination as the local side, or leaving through the uplink with the host's address
/// put in by masquerading) belongs to no local port, and a host process that happened to
/// use its port number took it. A frame the egress program saw forwarded (`forwarded`:
/// `FLOW_FLAG_FORWARDED`, or an ingress flow to an address not the host's) is its far end's
/// (`far_end`), if that end is a socket of this host.
fn resolve(
    sk: &SockKey,
    local: &LocalAddrs,
    forwarded: bool,
    by_sock: impl Fn(&SockKey) -> Option<ProcInfo>,
    by_port: impl FnOnce(&PortKey) -> Option<ProcInfo>,
    in_ns: impl FnOnce(&[u8; 16], u16) -> Option<ProcInfo>,
) -> Option<(ProcInfo, Via)> {
    if is_icmp(sk.proto) {
        return by_sock(sk).map(|p| (p, Via::Socket));
    }
    if forwarded {
        return far_end(sk, by_sock, in_ns);
    }
    if sk.remote_port != 0
        && let Some(p) = by_sock(sk)
    {
        return Some((p, Via::Socket));
    }
    if !local.admits(&sk.local_addr) {
        return far_end(sk, by_sock, in_ns);
    }
    by_port(&PortKey {
        proto: sk.proto,
        _pad: 0,
        port: sk.local_port,
    })
    .map(|p| (p, Via::Port))
}

/// How a flow's owner was found (`resolve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// The record of the flow's socket.
    Socket,
    /// The owner of the flow's local port (a listener, a UDP sender).
    Port,
    /// The socket at the flow's remote end, in another network namespace of this host (a
    /// forwarded flow's, `far_end`): what the flow counts as received that process sent,
    /// and the other way round.
    FarEnd,
}

/// The owner of a forwarded flow: the socket at its remote end, in another network
/// namespace of this host (a container's), as that end sees the tuple. Of a forwarded
/// frame's two ends that is the one on the side of the interface it was seen on: where a
/// container's frames enter the host (its veth, a bridge port) the container, and where
/// they leave it (the uplink, unless masqueraded) the other side, if that is on this host
/// too; so each process is credited once with what it sent and received, though the host
/// sees every such frame twice. A TCP connection by its record (`by_sock`, the tuple
/// reversed), a UDP socket by its namespace and port (`in_ns`).
fn far_end(
    sk: &SockKey,
    by_sock: impl Fn(&SockKey) -> Option<ProcInfo>,
    in_ns: impl FnOnce(&[u8; 16], u16) -> Option<ProcInfo>,
) -> Option<(ProcInfo, Via)> {
    if sk.local_port == 0 || sk.remote_port == 0 {
        return None;
    }
    let found = if sk.proto == IPPROTO_UDP {
        in_ns(&sk.remote_addr, sk.remote_port)
    } else {
        by_sock(&SockKey {
            local_port: sk.remote_port,
            remote_port: sk.local_port,
            local_addr: sk.remote_addr,
            remote_addr: sk.local_addr,
            ..*sk
        })
    };
    found.map(|p| (p, Via::FarEnd))
}

impl Owners {
    /// The process that owned the socket behind a flow, as recorded by the kernel hooks:
    /// the exact 4-tuple first, then the owner of the local port (listener, UDP sender).
    pub fn owner(&self, key: &FlowKey) -> Option<ProcInfo> {
        self.resolve(&sock_key(key)?, &self.local(), is_forwarded(key))
            .map(|(p, _)| p)
    }

    pub fn sock_owner(&self, sk: &SockKey) -> Option<ProcInfo> {
        self.resolve(sk, &self.local(), false).map(|(p, _)| p)
    }

    /// The namespace's addresses as last set (`set_local`).
    pub fn local(&self) -> std::sync::Arc<LocalAddrs> {
        self.local.read().expect("lock not poisoned").clone()
    }

    /// Sets the namespace's addresses (read again whenever an interface or an address
    /// changed).
    pub fn set_local(&self, local: LocalAddrs) {
        let mut l = self.local.write().expect("lock not poisoned");
        if **l != local {
            *l = std::sync::Arc::new(local);
        }
    }

    /// `sock_owner`, and how it was found.
    fn resolve(
        &self,
        sk: &SockKey,
        local: &LocalAddrs,
        forwarded: bool,
    ) -> Option<(ProcInfo, Via)> {
        resolve(
            sk,
            local,
            forwarded,
            |k| self.sock_proc.get(k, 0).ok(),
            |k| self.port_owner(k, |k| self.port_owner.get(k, 0).ok()),
            |a, p| self.in_ns(a, p),
        )
    }

    /// The owner of UDP port `port` in the other network namespace that holds `addr`: its
    /// record (`NETMON_UDP_NS`), else the process holding a socket open there on that port
    /// (`NamespaceAddrs::live_owner`). None where no namespace or more than one has one.
    /// Where none is found, the namespaces are read again (if the last reading is old
    /// enough: `NamespaceAddrs::reread_if_due`) and asked once more.
    fn in_ns(&self, addr: &[u8; 16], port: u16) -> Option<ProcInfo> {
        let mut namespaces = self.namespaces.lock().expect("lock not poisoned");
        let ask = |namespaces: &mut crate::sockdiag::NamespaceAddrs| {
            let cookies = namespaces.cookies(addr).to_vec();
            let mut found = cookies.into_iter().filter_map(|net| {
                let key = NsPortKey {
                    net,
                    port: PortKey {
                        proto: IPPROTO_UDP,
                        _pad: 0,
                        port,
                    },
                    _pad: 0,
                };
                self.udp_ns
                    .get(&key, 0)
                    .ok()
                    .or_else(|| namespaces.live_owner(net, port))
            });
            let first = found.next();
            (
                first.is_some(),
                found.next().is_none().then_some(first).flatten(),
            )
        };
        let found = match ask(&mut namespaces) {
            (false, _) if namespaces.reread_if_due() => ask(&mut namespaces).1,
            (_, owner) => owner,
        };
        tracing::debug!(
            "UDP port {port} of {} in other namespaces: owner {:?}",
            std::net::Ipv6Addr::from(*addr),
            found.map(|p| p.pid)
        );
        found
    }

    /// A local port's owner: a UDP port's from `NETMON_UDP_PORTS`, any other from `tcp`.
    fn port_owner(
        &self,
        k: &PortKey,
        tcp: impl FnOnce(&PortKey) -> Option<ProcInfo>,
    ) -> Option<ProcInfo> {
        if k.proto == IPPROTO_UDP {
            self.udp_ports.get(k.port)
        } else {
            tcp(k)
        }
    }

    /// The two owner hash maps, copied in batches (the UDP ports' array is read in place).
    fn copy(&self) -> io::Result<OwnerCopy> {
        use aya::maps::IterableMap as _;
        Ok(OwnerCopy {
            sock: copy_map(self.sock_proc.map())?,
            port: copy_map(self.port_owner.map())?,
        })
    }

    /// The hash maps only: a UDP port's slot in `NETMON_UDP_PORTS` always takes a record (it
    /// keeps the port's last owner until another one sends from it), so that array cannot
    /// fill.
    fn usage(&self) -> [(&'static str, usize, u32); 2] {
        use aya::maps::IterableMap as _;
        let cap = |m: &MapData| m.info().map(|i| i.max_entries()).unwrap_or(0);
        [
            (
                "sock_proc",
                self.sock_proc.keys().count(),
                cap(self.sock_proc.map()),
            ),
            (
                "port_owner",
                self.port_owner.keys().count(),
                cap(self.port_owner.map()),
            ),
        ]
    }
}

/// A whole hash map with plain values, read in batches.
fn copy_map<K: Copy + Default + Eq + std::hash::Hash, V: Copy + Default>(
    map: &MapData,
) -> io::Result<std::collections::HashMap<K, V>> {
    let mut out = std::collections::HashMap::new();
    let (mut keys, mut vals, mut chunk) = (Vec::new(), Vec::new(), BATCH);
    read_batched(
        map.fd().as_fd(),
        &mut keys,
        &mut vals,
        &mut chunk,
        |k, v| {
            out.insert(*k, *v);
        },
    )?;
    Ok(out)
}

struct OwnerCopy {
    sock: std::collections::HashMap<SockKey, ProcInfo>,
    port: std::collections::HashMap<PortKey, ProcInfo>,
}

/// Owner lookups for one drain. The first `DIRECT` go to the kernel maps one at a time (up to
/// two bpf calls each; a UDP port's owner is a read of the mapped array); a drain that asks
/// for more (a full scan of a large table retries every flow without an owner) copies the
/// two owner hash maps once, in batches, and answers the rest from the copy. Both are the
/// kernel's record at this drain.
pub struct OwnerLookup<'a> {
    owners: &'a Owners,
    local: std::sync::Arc<LocalAddrs>,
    direct: usize,
    copy: Option<OwnerCopy>,
    copy_failed: bool,
}

impl<'a> OwnerLookup<'a> {
    const DIRECT: usize = 1024;

    pub fn new(owners: &'a Owners) -> Self {
        Self {
            owners,
            local: owners.local(),
            direct: 0,
            copy: None,
            copy_failed: false,
        }
    }

    /// The namespace's addresses this drain's lookups go by.
    pub fn local(&self) -> std::sync::Arc<LocalAddrs> {
        self.local.clone()
    }

    /// The owner of `key`'s socket, marked `by_port` when it is the local port's owner (a
    /// listener, a UDP sender) rather than the socket's own record.
    pub fn owner(&mut self, key: &FlowKey) -> Option<crate::aggregate::Owner> {
        let (p, via) = self.resolve(key)?;
        Some(crate::aggregate::Owner {
            by_port: via == Via::Port,
            far_end: via == Via::FarEnd,
            ..p.into()
        })
    }

    fn resolve(&mut self, key: &FlowKey) -> Option<(ProcInfo, Via)> {
        let sk = sock_key(key)?;
        let forwarded = is_forwarded(key);
        if self.copy.is_none() && !self.copy_failed && self.direct >= Self::DIRECT {
            match self.owners.copy() {
                Ok(c) => self.copy = Some(c),
                Err(e) => {
                    tracing::warn!(
                        "copying the socket-owner maps: {e}; looking owners up one by one"
                    );
                    self.copy_failed = true;
                }
            }
        }
        match &self.copy {
            Some(c) => resolve(
                &sk,
                &self.local,
                forwarded,
                |k| c.sock.get(k).copied(),
                |k| self.owners.port_owner(k, |k| c.port.get(k).copied()),
                |a, p| self.owners.in_ns(a, p),
            ),
            None => {
                self.direct += 1;
                self.owners.resolve(&sk, &self.local, forwarded)
            }
        }
    }

    /// Whether the owner maps have been copied for this drain.
    pub fn copied(&self) -> bool {
        self.copy.is_some()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Clock `clock` in nanoseconds (CLOCK_MONOTONIC_COARSE: the clock
/// `bpf_ktime_get_coarse_ns` reads).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(r, 0, "clock_gettime({clock})");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmon_common::IPPROTO_TCP;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets()
    }

    #[test]
    fn a_ports_owner_owns_only_flows_to_a_local_address_not_forwarded() {
        let owner = ProcInfo {
            pid: 7,
            ..Default::default()
        };
        let local = LocalAddrs::new([v4([10, 78, 0, 1])]);
        let key = |addr| SockKey {
            proto: IPPROTO_UDP,
            local_port: 7300,
            remote_port: 7301,
            local_addr: addr,
            remote_addr: v4([10, 77, 0, 2]),
            ..Default::default()
        };
        let by_port = |_: &PortKey| Some(owner);
        let mine = resolve(
            &key(v4([10, 78, 0, 1])),
            &local,
            false,
            |_| None,
            by_port,
            |_, _| None,
        );
        assert_eq!(mine.map(|(p, port)| (p.pid, port)), Some((7, Via::Port)));
        let forwarded = resolve(
            &key(v4([10, 78, 0, 2])),
            &local,
            false,
            |_| None,
            by_port,
            |_, _| None,
        );
        assert!(forwarded.is_none());
        // Forwarded frames the host's address was put in (masquerading): no port's either.
        let masqueraded = resolve(
            &key(v4([10, 78, 0, 1])),
            &local,
            true,
            |_| None,
            by_port,
            |_, _| None,
        );
        assert!(masqueraded.is_none());
        // The socket's own record holds whatever the address.
        let own = resolve(
            &key(v4([10, 78, 0, 2])),
            &local,
            false,
            |_| Some(owner),
            by_port,
            |_, _| None,
        );
        assert_eq!(own.map(|(p, port)| (p.pid, port)), Some((7, Via::Socket)));
    }

    /// A forwarded flow's owner is the socket at its remote end in another namespace of this
    /// host (for TCP the connection's record, the tuple reversed; for UDP the port in the
    /// namespace that holds the remote address), never the local end's or a port of the
    /// daemon's namespace.
    #[test]
    fn a_forwarded_flow_is_its_far_ends() {
        let pid = |pid| ProcInfo {
            pid,
            ..Default::default()
        };
        let local = LocalAddrs::new([v4([10, 78, 0, 1])]);
        let (server, container) = (v4([198, 18, 0, 9]), v4([10, 77, 0, 2]));
        // As seen where the container's frames enter the host: the far end is local.
        let key = |proto| SockKey {
            proto,
            local_port: 53,
            remote_port: 40000,
            local_addr: server,
            remote_addr: container,
            ..Default::default()
        };
        let host_port = |_: &PortKey| Some(pid(1));
        let tcp = |k: &SockKey| match (k.local_addr == container, k.local_port) {
            (true, 40000) => Some(pid(7)),
            (false, 53) => Some(pid(9)),
            _ => None,
        };
        let found = resolve(&key(IPPROTO_TCP), &local, true, tcp, host_port, |_, _| None);
        assert_eq!(found.map(|(p, via)| (p.pid, via)), Some((7, Via::FarEnd)));
        let in_ns = |a: &[u8; 16], port| match (a == &container, port) {
            (true, 40000) => Some(pid(8)),
            (false, 53) => Some(pid(9)),
            _ => None,
        };
        let found = resolve(&key(IPPROTO_UDP), &local, true, |_| None, host_port, in_ns);
        assert_eq!(found.map(|(p, via)| (p.pid, via)), Some((8, Via::FarEnd)));
        // Nothing at the far end: no owner, not the host's port's.
        let none = resolve(&key(IPPROTO_UDP), &local, true, tcp, host_port, |_, _| None);
        assert!(none.is_none());
        // Not forwarded: the socket's own record.
        let own = resolve(
            &key(IPPROTO_TCP),
            &LocalAddrs::new([server]),
            false,
            tcp,
            host_port,
            in_ns,
        );
        assert_eq!(own.map(|(p, via)| (p.pid, via)), Some((9, Via::Socket)));
    }
}
