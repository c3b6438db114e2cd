//! The drop list in the kernel: the pinned maps the XDP/TC programs consult, and the
//! operations that keep them equal to the state file, including the generation flip that
//! replaces an imported set atomically.

use std::{
    collections::HashSet,
    mem::size_of,
    os::fd::AsFd as _,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::drain::{delete_batched, monotonic_ns};

use anyhow::{Context as _, Result, bail};
use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, lpm_trie::Key,
    lpm_trie::LpmTrie,
};
use netmon_common::{
    BANW4_SLOTS, BANW4_WAYS, BANW6_SLOTS, BANW6_WAYS, BANX_KIND, BANX_OVERFLOW, BANX4_SLOTS,
    BANX4_WAYS, BANX6_SLOTS, BANX6_WAYS, BanHits, BanKey4, BanKey6, BanPrefix4, BanPrefix6,
    BanValue, DIR_EGRESS, DIR_INGRESS, DROP_SLOTS, DropKey, IfaceStats, RATE_BYTE_SHIFT, RateValue,
    ban_kind, dropcfg, rate_unit,
};

use super::{
    net::Net,
    state::{BanEntry, LimitEntry, Rate, State, now_ms},
};

/// The maps the drop list owns, pinned by these names under the pin directory.
pub const PINNED_MAPS: [&str; 23] = [
    "NETMON_BAN4",
    "NETMON_BANX4",
    "NETMON_BANCNT4",
    "NETMON_BANX6",
    "NETMON_BANCNT6",
    "NETMON_BANW4",
    "NETMON_BANW6",
    "NETMON_BAN6",
    "NETMON_BANPFX4",
    "NETMON_BANPFX6",
    "NETMON_ALLOW4",
    "NETMON_ALLOW6",
    "NETMON_DROPCFG",
    "NETMON_DROPS",
    "NETMON_DROP_SLOTS",
    "NETMON_RATE4",
    "NETMON_RATE6",
    "NETMON_BAN4_L16",
    "NETMON_BAN4_L24",
    "NETMON_BAN4_W24",
    "NETMON_BAN4_H32",
    "NETMON_BAN6_L32",
    "NETMON_BAN6_HOST",
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Whether this process was started in a mount namespace of its own, as under `ip netns
/// exec` (or `unshare -m`): one that its parent's (else PID 1's, where the parent's cannot be
/// read) is not. A filesystem it mounts is then seen by no process outside it. `false`
/// where that cannot be told.
fn in_private_mount_namespace() -> bool {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    // SAFETY: no preconditions.
    let parent = unsafe { libc::getppid() }.to_string();
    let Some(me) = ns("self") else {
        return false;
    };
    ns(&parent)
        .or_else(|| ns("1"))
        .is_some_and(|other| other != me)
}

/// Makes sure `pin_dir` exists on a bpffs, mounting /sys/fs/bpf when that is where it
/// belongs and nothing is mounted there (not mounted at boot on some machines). Refused in
/// a mount namespace of its own (`ip netns exec` remounts /sys, so /sys/fs/bpf has no bpffs
/// there): every bpffs mount is a new, empty instance, so maps pinned on one would be this
/// process's alone, and a ban written there would reach no daemon.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe) {
        let sysfs_bpf = Path::new("/sys/fs/bpf");
        if pin_dir.starts_with(sysfs_bpf) && !is_bpffs(sysfs_bpf) {
            if in_private_mount_namespace() {
                bail!(
                    "no bpffs on /sys/fs/bpf in this mount namespace (`ip netns exec` remounts \
                     /sys): a drop list pinned at {} would be this command's alone, out of \
                     reach of the daemon and of the CLI in any other. Mount a bpffs where both \
                     see it (e.g. `mount -t bpf bpf /run/netmon-bpf` outside the namespace) and \
                     give its directory as --pin-dir (or NETMON_PIN_DIR) to `netmon run` and to \
                     the CLI",
                    pin_dir.display()
                );
            }
            std::fs::create_dir_all(sysfs_bpf).ok();
            let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
            let (src, tgt, fs) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
            // SAFETY: valid NUL-terminated strings, no data.
            if unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) }
                != 0
            {
                return Err(std::io::Error::last_os_error())
                    .context("mounting bpffs on /sys/fs/bpf (needed to pin the drop list)");
            }
        } else {
            bail!(
                "{} is not on a bpffs, so the drop list cannot be pinned there: mount one \
                 (`mount -t bpf bpf DIR`) or choose a --pin-dir under /sys/fs/bpf",
                pin_dir.display()
            );
        }
    }
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating the pin directory {}", pin_dir.display()))
}

/// Whether a loaded program uses the drop list pinned at `pin_dir` (a running daemon's, or
/// one a killed daemon left attached): if none does, the list drops nothing. `None` where
/// that cannot be told (nothing pinned there, or the programs cannot be listed).
pub fn enforced(pin_dir: &Path) -> Option<bool> {
    let id = aya::maps::MapInfo::from_pin(pin_dir.join("NETMON_DROPCFG"))
        .ok()?
        .id();
    for p in aya::programs::loaded_programs() {
        match p {
            Ok(p) => {
                if p.map_ids()
                    .ok()
                    .flatten()
                    .is_some_and(|ids| ids.contains(&id))
                {
                    return Some(true);
                }
            }
            Err(e) if listing_refused(&e) => return None,
            // Unloaded since it was listed.
            Err(_) => {}
        }
    }
    Some(false)
}

/// The error of a program listing that the kernel refused (BPF_PROG_GET_NEXT_ID: some
/// containers and sandboxes), not of one program unloaded while listed.
fn listing_refused(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::SyscallError(s) if s.call == "bpf_prog_get_next_id")
}

/// Whether this process may list the loaded programs, which `enforced` needs.
pub fn programs_listable() -> bool {
    !aya::programs::loaded_programs().any(|p| p.as_ref().is_err_and(listing_refused))
}

/// Which maps hold entries, for `dropcfg::FLAGS`.
pub fn flags_for(state: &State, now_ms: u64) -> u64 {
    let mut f = 0;
    for b in state.live_bans(now_ms) {
        f |= match (b.net.is_v4(), b.net.is_host()) {
            (true, true) => dropcfg::HAS_EXACT_V4,
            (false, true) => dropcfg::HAS_EXACT_V6,
            (true, false) => dropcfg::HAS_PREFIX_V4,
            (false, false) => dropcfg::HAS_PREFIX_V6,
        };
    }
    for a in &state.allows {
        f |= if a.net.is_v4() {
            dropcfg::HAS_ALLOW_V4
        } else {
            dropcfg::HAS_ALLOW_V6
        };
    }
    for l in state.live_limits(now_ms) {
        f |= if l.net.is_v4() {
            dropcfg::HAS_RATE_V4
        } else {
            dropcfg::HAS_RATE_V6
        };
    }
    f
}

/// Entries per kernel map: exact v4, exact v6, prefix v4, prefix v6.
pub fn counts(bans: &[BanEntry]) -> [usize; 4] {
    let mut c = [0; 4];
    for b in bans {
        c[match (b.net.is_v4(), b.net.is_host()) {
            (true, true) => 0,
            (false, true) => 1,
            (true, false) => 2,
            (false, false) => 3,
        }] += 1;
    }
    c
}

/// A wall-clock expiry as a kernel deadline; 0 (never) for permanent entries, and 1 (long
/// past) for entries already expired.
fn kernel_expiry(expires_ms: Option<u64>, now_ms: u64, now_mono: u64) -> u64 {
    match expires_ms {
        None => 0,
        Some(e) if e <= now_ms => 1,
        Some(e) => now_mono + (e - now_ms) * 1_000_000,
    }
}

fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Ignores "no such entry": removing what is already gone is success.
fn removed(r: Result<(), MapError>) -> Result<()> {
    match r {
        Err(e) if !not_found(&e) => Err(e.into()),
        _ => Ok(()),
    }
}

pub struct DropMaps {
    ban4: HashMap<MapData, BanKey4, BanValue>,
    ban6: HashMap<MapData, BanKey6, BanValue>,
    pfx4: LpmTrie<MapData, BanPrefix4, BanValue>,
    pfx6: LpmTrie<MapData, BanPrefix6, BanValue>,
    allow4: LpmTrie<MapData, [u8; 4], u64>,
    allow6: LpmTrie<MapData, [u8; 16], u64>,
    cfg: Array<MapData, u64>,
    drops: PerCpuHashMap<MapData, DropKey, IfaceStats>,
    drop_slots: MapData,
    rate4: HashMap<MapData, [u8; 4], RateValue>,
    rate6: HashMap<MapData, [u8; 16], RateValue>,
    /// The filters in front of the lookups: IPv4 /16 and /24, the IPv4 host filter's two
    /// bitmaps, IPv6 /32, the IPv6 host filter (NETMON_BAN4_L16, NETMON_BAN4_L24,
    /// NETMON_BAN4_W24, NETMON_BAN4_H32, NETMON_BAN6_L32, NETMON_BAN6_HOST).
    filters: [BitFilter; 6],
    /// The programs' own index of exact bans: IPv4, IPv6 (NETMON_BANX4/6, NETMON_BANCNT4/6).
    fast: [FastBans; 2],
    /// Its wide part, for the exact bans that find no slot there: IPv4, IPv6
    /// (NETMON_BANW4/6).
    wide: [FastBans; 2],
    /// max_entries of ban4, ban6, pfx4, pfx6.
    capacity: [usize; 4],
    /// Where the exact bans written since the last `sync` or `swap` began went
    /// (`exact_placement`).
    placed: [usize; 3],
    /// While a swap writes the generation not in force: its hash map and trie entries on
    /// their way in, a batch at a time (`write_pending`).
    pending: Option<Pending>,
}

/// Ban entries bound for the hash maps and tries of a generation not in force, written with
/// BPF_MAP_UPDATE_BATCH (`DropMaps::write_pending`): an import of 100,000 entries made a
/// system call per entry. Their exact ban array slots are written at once: the programs
/// read neither before the generation is put in force.
#[derive(Default)]
struct Pending {
    ban4: Batch<BanKey4>,
    ban6: Batch<BanKey6>,
    pfx4: Batch<Key<BanPrefix4>>,
    pfx6: Batch<Key<BanPrefix6>>,
}

impl Pending {
    /// Entries held: `write_ban_entry` writes them out past `PENDING_MAX`.
    fn len(&self) -> usize {
        self.ban4.keys.len() + self.ban6.keys.len() + self.pfx4.keys.len() + self.pfx6.keys.len()
    }
}

/// Entries a swap holds before writing them out (under 100 bytes each: their memory stays
/// bounded).
const PENDING_MAX: usize = 16_384;

/// One map's pending entries: keys, values and, to name a failing entry, their networks.
struct Batch<K> {
    keys: Vec<K>,
    values: Vec<BanValue>,
    nets: Vec<Net>,
}

impl<K> Default for Batch<K> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            nets: Vec::new(),
        }
    }
}

impl<K: aya::Pod> Batch<K> {
    fn push(&mut self, key: K, value: BanValue, net: Net) {
        self.keys.push(key);
        self.values.push(value);
        self.nets.push(net);
    }

    /// Writes the entries into `map` with BPF_MAP_UPDATE_BATCH and, from the first one the
    /// kernel refused (or, where it has no batch update for the map, all), one at a time with
    /// `insert`, whose error names the ban. Empties the batch.
    fn write<M: aya::maps::IterableMap<K, BanValue>>(
        &mut self,
        map: &mut M,
        mut insert: impl FnMut(&mut M, &K, &BanValue) -> Result<(), MapError>,
    ) -> Result<()> {
        let done = match crate::drain::update_batched(map.map(), &self.keys, &self.values) {
            Ok(()) => self.keys.len(),
            Err((written, _)) => written,
        };
        for ((k, v), net) in self
            .keys
            .iter()
            .zip(&self.values)
            .zip(&self.nets)
            .skip(done)
        {
            insert(map, k, v)
                .with_context(|| format!("writing the ban on {net} into the kernel map"))?;
        }
        self.keys.clear();
        self.values.clear();
        self.nets.clear();
        Ok(())
    }
}

/// NETMON_BANX4 and NETMON_BANX6: as many exact bans as fit in their buckets, each also in
/// NETMON_BAN4 or NETMON_BAN6 (written there first, removed from here first, so the programs
/// never drop on a slot whose entry is gone). Their hit counters are the entry's plus the
/// slot's per-CPU ones (NETMON_BANCNT4/6); a slot's counters are zeroed when a ban takes it.
/// A ban that finds no slot sets its bucket's `BANX_OVERFLOW` bit before its entry is
/// written (`reserve`), so that once a generation is declared complete
/// (`dropcfg::BANX_COMPLETE`) a miss in a bucket without the bit needs no lookup after it.
/// The wide arrays NETMON_BANW4/6, where the programs look next, work the same way for the
/// bans that found no slot here (`dropcfg::BANW_COMPLETE`), with counters shared by the
/// CPUs in each bucket (`WideBucket4`/`6`); only a ban that finds no slot in either is in the
/// hash map alone.
struct FastBans {
    layout: &'static Layout,
    /// The slots: mapped for the maps' life (128 or 256 KiB), or, for the wide arrays (12 and
    /// 8 MiB with their counters), while they are written or read (`map_slots` to
    /// `release`), since a mapping counts in this process's RSS.
    mem: Option<crate::mapmem::MapMemory>,
    /// The map itself: programs loaded after the maps were taken out of the object refer to
    /// it by this fd.
    slots: MapData,
    /// The per-CPU counters of a narrow array's slots (a wide array's are in its buckets).
    hits: Option<BanCounters>,
    /// Off: bans go to the hash map only (`DropMaps::set_fast`: benchmarks measure that
    /// path).
    enabled: bool,
    /// Whether this version's programs read `BANX_OVERFLOW` bits here: false for maps pinned
    /// by a version without them (its NETMON_DROPCFG has no `BANX_COMPLETE` slot), whose
    /// programs would take a bit alone for a slot in use.
    overflow_bits: bool,
}

/// NETMON_BANCNT4 or NETMON_BANCNT6: the hit counters of an exact ban array's slots, one
/// `BanHits` per slot and possible CPU (`netmon_common::ban_hits_index`), written by the
/// programs with plain adds (each CPU its own). Mapped on first use until `release`: a
/// mapping of a BPF array has all its pages present at once (`slots` x 32 bytes per CPU),
/// all of them in this process's RSS.
struct BanCounters {
    name: &'static str,
    map: MapData,
    slots: u32,
    ncpus: u32,
    view: Option<crate::mapmem::MapMemory>,
}

/// 64-bit words of a `BanHits`.
const HIT_WORDS: usize = size_of::<BanHits>() / size_of::<u64>();

impl BanCounters {
    fn new(name: &'static str, map: Map, slots: usize) -> Result<Self> {
        let Map::Array(map) = map else {
            bail!("{name} is not an array");
        };
        let ncpus = crate::mapmem::possible_cpus()?;
        let info = map.info()?;
        let want = ncpus * slots;
        if info.max_entries() as usize != want || info.value_size() as usize != size_of::<BanHits>()
        {
            bail!(
                "{name} has {} entries of {} bytes, {want} of {} expected ({slots} per possible \
                 CPU; a loader must size it with netmon::act::droplist::size_ban_counters)",
                info.max_entries(),
                info.value_size(),
                size_of::<BanHits>()
            );
        }
        Ok(Self {
            name,
            map,
            slots: slots as u32,
            ncpus: ncpus as u32,
            view: None,
        })
    }

    /// Every CPU's counters, as words.
    fn words(&mut self) -> Result<&[AtomicU64]> {
        let total = (self.ncpus * self.slots) as usize * HIT_WORDS;
        if self.view.is_none() {
            let mem = crate::mapmem::MapMemory::new(
                self.map.fd().as_fd(),
                0,
                total * size_of::<u64>(),
                true,
            )
            .with_context(|| format!("mapping {}", self.name))?;
            self.view = Some(mem);
        }
        let mem = self.view.as_ref().expect("mapped above");
        // SAFETY: `total` aligned words at the mapping's start (the map's size checked in
        // `new`), shared with the programs: atomics for every access.
        Ok(unsafe { std::slice::from_raw_parts(mem.ptr().cast::<AtomicU64>(), total) })
    }

    /// CPU `cpu`'s counters of slot `i`.
    fn cpu_words(words: &[AtomicU64], slots: u32, cpu: u32, i: u32) -> &[AtomicU64] {
        let at = netmon_common::ban_hits_index(cpu, slots, i) as usize * HIT_WORDS;
        &words[at..at + HIT_WORDS]
    }

    /// Slot `i`'s counters, summed over CPUs.
    fn read(&mut self, i: u32) -> Result<BanHits> {
        let (slots, ncpus) = (self.slots, self.ncpus);
        let words = self.words()?;
        Ok(sum_hits((0..ncpus).map(|cpu| {
            let w = Self::cpu_words(words, slots, cpu, i);
            [0, 1, 2].map(|k| w[k].load(Ordering::Relaxed))
        })))
    }

    /// Zeroes slot `i`'s counters on every CPU (before a ban takes the slot).
    fn zero(&mut self, i: u32) -> Result<()> {
        let (slots, ncpus) = (self.slots, self.ncpus);
        let words = self.words()?;
        for cpu in 0..ncpus {
            for w in Self::cpu_words(words, slots, cpu, i) {
                w.store(0, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Adds `h` to slot `i`'s counters (the first CPU's).
    fn add(&mut self, i: u32, h: BanHits) -> Result<()> {
        let slots = self.slots;
        let w = Self::cpu_words(self.words()?, slots, 0, i);
        w[0].fetch_add(h.packets, Ordering::Relaxed);
        w[1].fetch_add(h.bytes, Ordering::Relaxed);
        w[2].fetch_max(h.last_hit_ns, Ordering::Relaxed);
        Ok(())
    }

    fn release(&mut self) {
        self.view = None;
    }
}

/// Per-CPU counters of one slot, each (packets, bytes, latest drop), summed: the latest drop
/// is the latest of them. For this version's counters and an older version's alike.
fn sum_hits(per_cpu: impl IntoIterator<Item = [u64; 3]>) -> BanHits {
    per_cpu
        .into_iter()
        .fold(BanHits::default(), |a, h| BanHits {
            packets: a.packets + h[0],
            bytes: a.bytes + h[1],
            last_hit_ns: a.last_hit_ns.max(h[2]),
            _pad: 0,
        })
}

/// The hit counters' maps of versions before NETMON_BANCNT4/6 (IPv4, IPv6): per-CPU arrays
/// of (packets, bytes, latest drop) at the slots' own indexes.
const OLD_COUNTERS: [&str; 2] = ["NETMON_BANHIT4", "NETMON_BANHIT6"];

/// Sizes NETMON_BANCNT4/6 for this machine's possible CPUs: every loader of the object that
/// creates them (the maps are pinned: the first load on a boot does).
pub fn size_ban_counters(loader: &mut aya::EbpfLoader<'_>) -> Result<()> {
    let ncpus = crate::mapmem::possible_cpus()? as u32;
    loader
        .map_max_entries("NETMON_BANCNT4", ncpus * BANX4_SLOTS)
        .map_max_entries("NETMON_BANCNT6", ncpus * BANX6_SLOTS);
    Ok(())
}

/// One family's slot array: `BanSlot4` (the address in the tag) or `BanSlot6`.
struct Layout {
    name: &'static str,
    /// Its per-CPU hit counters' map; None for a wide array, whose map values are whole
    /// buckets (`WideBucket4`/`6`: the slots, then their shared counters), mapped only while
    /// in use.
    counters: Option<&'static str>,
    /// Slots in both generations.
    slots: usize,
    ways: u32,
    /// 64-bit words per slot, and where the tag and the expiry are among them (a `BanSlot6`
    /// starts with its address's two words).
    words: usize,
    tag_at: usize,
    expires_at: usize,
    /// The first slot of an address's bucket in a generation.
    bucket: fn(u8, &[u8; 16]) -> u32,
}

const LAYOUT4: Layout = Layout {
    name: "NETMON_BANX4",
    counters: Some("NETMON_BANCNT4"),
    slots: BANX4_SLOTS as usize,
    ways: BANX4_WAYS,
    words: 2,
    tag_at: 0,
    expires_at: 1,
    bucket: |g, a| netmon_common::banx4_bucket(g, v4_of(a)),
};

const LAYOUT6: Layout = Layout {
    name: "NETMON_BANX6",
    counters: Some("NETMON_BANCNT6"),
    slots: BANX6_SLOTS as usize,
    ways: BANX6_WAYS,
    words: 4,
    tag_at: 2,
    expires_at: 3,
    bucket: netmon_common::banx6_bucket,
};

const WIDE4: Layout = Layout {
    name: "NETMON_BANW4",
    counters: None,
    slots: BANW4_SLOTS as usize,
    ways: BANW4_WAYS,
    bucket: |g, a| netmon_common::banw4_bucket(g, v4_of(a)),
    ..LAYOUT4
};

const WIDE6: Layout = Layout {
    name: "NETMON_BANW6",
    counters: None,
    slots: BANW6_SLOTS as usize,
    ways: BANW6_WAYS,
    bucket: netmon_common::banw6_bucket,
    ..LAYOUT6
};

/// Where `write_ban_entry` puts a single-address ban besides the hash map (the index of its
/// count in `DropMaps::placed`).
#[derive(Clone, Copy)]
enum Placement {
    Narrow,
    Wide,
    HashOnly,
}

/// An IPv4 address in the first 4 of 16 bytes (`fast_key`).
fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// An IPv6 address's two 64-bit words, in memory order.
fn v6_words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes(a[..8].try_into().expect("8 bytes")),
        u64::from_ne_bytes(a[8..].try_into().expect("8 bytes")),
    ]
}

impl Layout {
    fn wide(&self) -> bool {
        self.counters.is_none()
    }

    /// The map's values: slots, or a wide array's buckets.
    fn values(&self) -> usize {
        if self.wide() {
            self.slots / self.ways as usize
        } else {
            self.slots
        }
    }

    /// 64-bit words per map value.
    fn value_words(&self) -> usize {
        if self.wide() {
            self.ways as usize * (self.words + HIT_WORDS)
        } else {
            self.words
        }
    }

    /// Where slot `i`'s words start in the mapped values.
    fn slot_at(&self, i: u32) -> usize {
        if self.wide() {
            let ways = self.ways as usize;
            let (b, w) = (i as usize / ways, i as usize % ways);
            b * self.value_words() + w * self.words
        } else {
            i as usize * self.words
        }
    }

    /// Where the counters of a wide array's slot `i` start in the mapped values.
    fn hits_at(&self, i: u32) -> usize {
        let ways = self.ways as usize;
        let (b, w) = (i as usize / ways, i as usize % ways);
        b * self.value_words() + ways * self.words + w * HIT_WORDS
    }
}

impl FastBans {
    fn new(
        layout: &'static Layout,
        slots: Map,
        hits: Option<Map>,
        overflow_bits: bool,
    ) -> Result<Self> {
        let hits = match (layout.counters, hits) {
            (Some(name), Some(map)) => Some(BanCounters::new(name, map, layout.slots)?),
            _ => None,
        };
        let name = layout.name;
        let Map::Array(slots) = slots else {
            bail!("{name} is not an array");
        };
        let info = slots.info()?;
        let (values, bytes) = (layout.values(), layout.value_words() * size_of::<u64>());
        if info.max_entries() as usize != values || info.value_size() as usize != bytes {
            bail!(
                "{name} has {} entries of {} bytes, {values} of {bytes} expected (pinned by \
                 another version of netmon? remove it and start the daemon again)",
                info.max_entries(),
                info.value_size(),
            );
        }
        let mut fast = Self {
            layout,
            mem: None,
            slots,
            hits,
            enabled: true,
            overflow_bits,
        };
        if !layout.wide() {
            fast.map_slots()?;
        }
        Ok(fast)
    }

    /// Maps the slots, if they are not mapped.
    fn map_slots(&mut self) -> Result<()> {
        if self.mem.is_none() {
            let l = self.layout;
            self.mem = Some(
                crate::mapmem::MapMemory::new(
                    self.slots.fd().as_fd(),
                    0,
                    l.values() * l.value_words() * size_of::<u64>(),
                    true,
                )
                .with_context(|| format!("mapping {}", l.name))?,
            );
        }
        Ok(())
    }

    /// Unmaps the counters, and the slots of a wide array.
    fn release(&mut self) {
        if let Some(h) = &mut self.hits {
            h.release();
        }
        if self.layout.wide() {
            self.mem = None;
        }
    }

    /// A wide array's slot `i`'s counters: shared with the programs, which add to them.
    fn wide_hits(&self, i: u32) -> &[AtomicU64] {
        let at = self.layout.hits_at(i);
        &self.words()[at..at + HIT_WORDS]
    }

    /// Slot `i`'s counters, summed over CPUs where they are per CPU.
    fn read_hits(&mut self, i: u32) -> Result<BanHits> {
        match &mut self.hits {
            Some(h) => h.read(i),
            None => Ok(sum_hits([
                [0, 1, 2].map(|k| self.wide_hits(i)[k].load(Ordering::Relaxed))
            ])),
        }
    }

    /// Zeroes slot `i`'s counters (before a ban takes the slot).
    fn zero_hits(&mut self, i: u32) -> Result<()> {
        match &mut self.hits {
            Some(h) => h.zero(i),
            None => {
                for w in self.wide_hits(i) {
                    w.store(0, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    /// The mapped values, as words.
    fn words(&self) -> &[AtomicU64] {
        let l = self.layout;
        let mem = self
            .mem
            .as_ref()
            .expect("map_slots before any slot is read");
        // SAFETY: the mapping holds this many aligned words (the map's size checked in
        // `new`), shared with the programs: atomics for every access.
        unsafe {
            std::slice::from_raw_parts(mem.ptr().cast::<AtomicU64>(), l.values() * l.value_words())
        }
    }

    /// Adds the counters of an older version's per-CPU map pinned at `path` (same slots) to
    /// the slots' own; returns how many slots had any.
    fn adopt(&mut self, path: &Path) -> Result<usize> {
        let old: PerCpuArray<MapData, [u64; 3]> = PerCpuArray::try_from(Map::PerCpuArray(
            MapData::from_pin(path).context("opening it")?,
        ))
        .context("not a per-CPU array of 24-byte counters")?;
        let mut n = 0;
        for i in 0..old.len().min(self.layout.slots as u32) {
            let sum = sum_hits(old.get(&i, 0)?.iter().copied());
            if sum.packets != 0 || sum.bytes != 0 {
                self.hits
                    .as_mut()
                    .context("a wide array has no per-CPU counters")?
                    .add(i, sum)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Slot `i`'s words: shared with the programs, which only read them. The slots must be
    /// mapped (`map_slots`; the narrow arrays' always are).
    fn slot(&self, i: u32) -> &[AtomicU64] {
        assert!((i as usize) < self.layout.slots);
        let at = self.layout.slot_at(i);
        &self.words()[at..at + self.layout.words]
    }

    fn tag(&self, i: u32) -> u64 {
        self.slot(i)[self.layout.tag_at].load(Ordering::Acquire)
    }

    /// Writes slot `i`'s tag, keeping its `BANX_OVERFLOW` bit (set on a bucket's first slot).
    fn set_tag(&self, i: u32, tag: u64) {
        let keep = self.tag(i) & BANX_OVERFLOW;
        self.slot(i)[self.layout.tag_at].store(tag | keep, Ordering::SeqCst);
    }

    /// Whether slot `i` holds no ban.
    fn is_free(&self, i: u32) -> bool {
        self.tag(i) & !BANX_OVERFLOW == 0
    }

    /// Whether slot `i` holds `addr`.
    fn holds(&self, i: u32, addr: &[u8; 16]) -> bool {
        let tag = self.tag(i) & !BANX_OVERFLOW;
        if self.layout.words == 2 {
            tag & !BANX_KIND == netmon_common::banx4_tag(v4_of(addr), 0)
        } else {
            let s = self.slot(i);
            tag != 0
                && v6_words(addr)
                    .iter()
                    .zip(s)
                    .all(|(w, a)| a.load(Ordering::Acquire) == *w)
        }
    }

    /// The slots of `addr`'s bucket in `generation` (none for another generation).
    fn bucket(&self, generation: u8, addr: &[u8; 16]) -> std::ops::Range<u32> {
        if generation != 1 && generation != 2 {
            return 0..0;
        }
        let first = (self.layout.bucket)(generation, addr);
        first..first + self.layout.ways
    }

    /// The slot holding `addr` in `generation`, if any.
    fn find(&self, generation: u8, addr: &[u8; 16]) -> Option<u32> {
        self.bucket(generation, addr).find(|&i| self.holds(i, addr))
    }

    /// Before `addr`'s ban entry is written into the hash map: whether `put` will find a slot
    /// for it in `generation`; where not (the bucket is full, or the arrays are off), marks
    /// the bucket overflowed, so that the programs look further on a miss.
    fn reserve(&mut self, generation: u8, addr: &[u8; 16]) -> Result<bool> {
        let mut bucket = self.bucket(generation, addr);
        let Some(first) = bucket.clone().next() else {
            return Ok(false);
        };
        self.map_slots()?;
        if self.enabled && bucket.any(|i| self.holds(i, addr) || self.is_free(i)) {
            return Ok(true);
        }
        let tag = self.tag(first);
        if self.overflow_bits && tag & BANX_OVERFLOW == 0 {
            self.slot(first)[self.layout.tag_at].store(tag | BANX_OVERFLOW, Ordering::SeqCst);
        }
        Ok(false)
    }

    /// The slot holding `addr` in `generation`, if any, mapping the slots to look.
    fn lookup(&mut self, generation: u8, addr: &[u8; 16]) -> Result<Option<u32>> {
        self.map_slots()?;
        Ok(self.find(generation, addr))
    }

    /// Whether `generation`'s bucket holding `addr` has overflowed (`reserve`).
    fn overflowed(&mut self, generation: u8, addr: &[u8; 16]) -> Result<bool> {
        self.map_slots()?;
        Ok(self
            .bucket(generation, addr)
            .next()
            .is_some_and(|first| self.tag(first) & BANX_OVERFLOW != 0))
    }

    /// Puts `addr`'s ban (`kind`, `expires_ns`) in `generation`'s slots: in place if it has
    /// one (its counters kept), else in a free slot of its bucket (counters zeroed first);
    /// nowhere when the bucket is full (`reserve` marked it).
    fn put(&mut self, generation: u8, addr: &[u8; 16], kind: u8, expires_ns: u64) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.map_slots()?;
        let l = self.layout;
        let tag = if l.words == 2 {
            netmon_common::banx4_tag(v4_of(addr), kind)
        } else {
            netmon_common::banx_meta(kind)
        };
        if let Some(i) = self.find(generation, addr) {
            self.slot(i)[l.expires_at].store(expires_ns, Ordering::SeqCst);
            self.set_tag(i, tag);
            return Ok(());
        }
        let Some(i) = self.bucket(generation, addr).find(|&i| self.is_free(i)) else {
            return Ok(());
        };
        self.zero_hits(i)?;
        let s = self.slot(i);
        s[l.expires_at].store(expires_ns, Ordering::SeqCst);
        if l.words == 4 {
            for (w, a) in v6_words(addr).into_iter().zip(s) {
                a.store(w, Ordering::SeqCst);
            }
        }
        self.set_tag(i, tag);
        Ok(())
    }

    /// Takes `addr` out of `generation`'s slots (its bucket's overflow bit stays).
    fn remove(&mut self, generation: u8, addr: &[u8; 16]) -> Result<()> {
        if let Some(i) = self.lookup(generation, addr)? {
            self.set_tag(i, 0);
        }
        Ok(())
    }

    /// Empties `generation`'s slots, overflow bits included: for a generation that holds no
    /// ban and is not declared complete.
    fn clear(&mut self, generation: u8) -> Result<()> {
        if generation != 1 && generation != 2 {
            return Ok(());
        }
        self.map_slots()?;
        let per_generation = self.layout.slots as u32 / 2;
        let first = (u32::from(generation) - 1) * per_generation;
        for i in first..first + per_generation {
            if self.tag(i) != 0 {
                self.slot(i)[self.layout.tag_at].store(0, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// A bitmap over the prefixes of one length, one per generation: IPv4 /16s or /24s (of
/// those, for the host filter, the /24s an entry covers wholly), IPv4 addresses in blocks
/// of hashed /24s, hashed IPv6 /32s, or IPv6 prefixes in blocks of hashed /32s. A bit is
/// set before any ban entry of that generation that it stands for is inserted and stays
/// until the generation is cleared, so a clear bit proves there is no entry there once the
/// filter is declared complete (`complete_at` in NETMON_DROPCFG holds that generation).
struct BitFilter {
    words: FilterWords,
    kind: FilterKind,
    /// The NETMON_DROPCFG slot naming the generation whose filter is complete.
    complete_at: u32,
}

/// Which prefixes a filter's bits stand for.
#[derive(Clone, Copy)]
enum FilterKind {
    /// IPv4 prefixes of this length (16 or 24), one bit each (`dropcfg::l16_slot`,
    /// `l24_slot`), set for every such prefix an entry overlaps.
    V4(u8),
    /// IPv4 /24s, one bit each (`l24_slot`), set for every /24 an entry of /24 or shorter
    /// covers: the host filter's first half.
    V4Whole,
    /// IPv4 addresses, one bit each in a block of their /24's hash (`dropcfg::h32_slot`),
    /// set for every address an entry of /25 to /32 covers: the host filter's second half.
    V4Hosts,
    /// IPv6 /32s, hashed to 2^21 bits (`dropcfg::l32_6_slot`).
    V6,
    /// IPv6 /32s and the prefixes of `dropcfg::H6_LEVELS` in them, hashed into a block per
    /// hashed /32 (`dropcfg::h6_block`, `h6_bit`): the IPv6 host filter.
    V6Hosts,
}

impl FilterKind {
    fn name(self) -> String {
        match self {
            FilterKind::V4(bits) => format!("IPv4 /{bits}"),
            FilterKind::V4Whole => "IPv4 whole-/24".into(),
            FilterKind::V4Hosts => "IPv4 host".into(),
            FilterKind::V6 => "IPv6 /32".into(),
            FilterKind::V6Hosts => "IPv6 host".into(),
        }
    }

    /// Whether `net` is of the filter's family.
    fn family_of(self, net: &Net) -> bool {
        !matches!(self, FilterKind::V6 | FilterKind::V6Hosts) == net.is_v4()
    }

    /// Words per generation.
    fn words(self) -> u32 {
        match self {
            FilterKind::V4(bits) => 1 << (bits - 6),
            FilterKind::V4Whole => dropcfg::L24_WORDS,
            FilterKind::V4Hosts => dropcfg::H32_WORDS,
            FilterKind::V6 => dropcfg::L32_6_WORDS,
            FilterKind::V6Hosts => dropcfg::H6_WORDS,
        }
    }

    /// Calls `f` with each word and the mask of its bits that stand for a prefix of the
    /// filter's length that `net` overlaps (for the IPv4 host filter's halves: every /24 it
    /// covers wholly, or every address of a prefix of /25 to /32; for the IPv6 host filter:
    /// the whole bit of every /32 a prefix of /32 or shorter covers, else the bits
    /// `dropcfg::h6_cover` names), as the programs compute them (both sides share the slot
    /// functions). The IPv4 bits of a prefix are a run (consecutive /16s, /24s and addresses
    /// of a /24 are consecutive bits), given a word at a time: a /16 is four words of the /24
    /// filter, not 256 calls. False, and no call, where that is more than the filter has bits
    /// (an IPv6 prefix shorter than /16: every bit).
    fn each_slot(self, generation: u8, net: &Net, mut f: impl FnMut(u32, u64)) -> bool {
        let o = net.octets();
        let top = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
        let len = u32::from(net.prefix());
        let mut one = |(w, bit): (u32, u32)| f(w, 1 << bit);
        match self {
            _ if !self.family_of(net) => {}
            FilterKind::V4(bits) => {
                let bits = u32::from(bits);
                let slot = if bits == 16 {
                    dropcfg::l16_slot
                } else {
                    dropcfg::l24_slot
                };
                let first = slot(generation, top.to_be_bytes());
                each_word_of_run(first, 1 << bits.saturating_sub(len), f);
            }
            // The /24s a prefix of /24 or shorter covers are those it overlaps: the /24
            // filter's slots.
            FilterKind::V4Whole if len <= 24 => {
                return FilterKind::V4(24).each_slot(generation, net, f);
            }
            FilterKind::V4Hosts if len > 24 => {
                let first = dropcfg::h32_slot(generation, top.to_be_bytes());
                each_word_of_run(first, 1 << (32 - len), f);
            }
            FilterKind::V4Whole | FilterKind::V4Hosts => {}
            FilterKind::V6 | FilterKind::V6Hosts if len < 16 => return false,
            FilterKind::V6 => {
                let top = u64::from(top);
                for p in top..top + (1u64 << 32u32.saturating_sub(len)) {
                    one(dropcfg::l32_6_slot(
                        generation,
                        &(u128::from(p) << 96).to_be_bytes(),
                    ));
                }
            }
            FilterKind::V6Hosts => {
                let net = u128::from_be_bytes(o.as_slice().try_into().unwrap_or_default());
                dropcfg::h6_each_slot(generation, net, len, one);
            }
        }
        true
    }
}

/// Calls `f` once per word of the run of `n` consecutive bits that starts at bit `bit` of
/// word `word`, with the mask of the run's bits in that word.
fn each_word_of_run((word, bit): (u32, u32), n: u64, mut f: impl FnMut(u32, u64)) {
    let (mut w, mut b, mut left) = (word, u64::from(bit), n);
    while left > 0 {
        let take = left.min(64 - b);
        let ones = if take == 64 {
            u64::MAX
        } else {
            (1 << take) - 1
        };
        f(w, ones << b);
        (w, b, left) = (w + 1, 0, left - take);
    }
}

/// A rate as the programs read it (`RateValue`): its interval, its burst in nanoseconds and
/// its unit.
fn rate_words(rate: Rate) -> (u64, u64, u8) {
    const SEC_NS: u64 = 1_000_000_000;
    match rate {
        Rate::Packets { pps, burst } => {
            let interval = SEC_NS / u64::from(pps.max(1));
            (
                interval,
                interval * u64::from(burst.max(1) - 1),
                rate_unit::PACKETS,
            )
        }
        Rate::Bytes {
            bytes_per_sec,
            burst_bytes,
        } => {
            let per_sec = u128::from(bytes_per_sec.max(1));
            let interval = (u128::from(SEC_NS) << RATE_BYTE_SHIFT) / per_sec;
            let burst = u128::from(burst_bytes) * u128::from(SEC_NS) / per_sec;
            (
                u64::try_from(interval).unwrap_or(u64::MAX),
                u64::try_from(burst).unwrap_or(u64::MAX),
                rate_unit::BYTES,
            )
        }
    }
}

/// How a filter's words are reached.
enum FilterWords {
    /// The IPv4 /16 filter (1,024 words per generation): a lookup and an update per word. Its
    /// map predates mappable maps, and one pinned by an older version stays in use until
    /// reboot.
    Syscalls(Array<MapData, u64>),
    /// The others, BPF_F_MMAPABLE arrays: their words are stores into their pages, mapped for
    /// the length of one write (an import touches most of the IPv4 /24 filter's 2 MiB, which
    /// mapped for good would count in the daemon's RSS). Held as the MapData itself, not a
    /// copy of its fd: programs loaded after the maps were taken out of the object refer to
    /// the map by it.
    Mapped(MapData),
}

impl BitFilter {
    fn new(map: Map, kind: FilterKind) -> Result<Self> {
        let name = kind.name();
        let Map::Array(map) = map else {
            anyhow::bail!("the {name} filter map is not an array");
        };
        let complete_at = match kind {
            FilterKind::V4(16) => dropcfg::BAN4_FILTER,
            FilterKind::V4(_) => dropcfg::BAN4_L24_FILTER,
            FilterKind::V4Whole | FilterKind::V4Hosts => dropcfg::BAN4_HOST_FILTER,
            FilterKind::V6 => dropcfg::BAN6_FILTER,
            FilterKind::V6Hosts => dropcfg::BAN6_HOST_FILTER,
        };
        let slots = map.info()?.max_entries();
        let words = if matches!(kind, FilterKind::V4(16)) {
            FilterWords::Syscalls(Array::try_from(Map::Array(map))?)
        } else {
            FilterWords::Mapped(map)
        };
        if slots != 2 * kind.words() {
            anyhow::bail!(
                "the {name} filter map has {slots} slots, {} expected (pinned by another \
                 version of netmon? remove it and start the daemon again)",
                2 * kind.words()
            );
        }
        Ok(Self {
            words,
            kind,
            complete_at,
        })
    }

    fn base(&self, generation: u8) -> u32 {
        u32::from(generation)
            .wrapping_sub(1)
            .wrapping_mul(self.kind.words())
    }

    /// Runs `f` on `generation`'s words: the map's own, or (`Syscalls`) a copy written back
    /// word by word where `f` changed it, before this returns.
    fn with_words<T>(&mut self, generation: u8, f: impl FnOnce(&[AtomicU64]) -> T) -> Result<T> {
        let (base, n) = (self.base(generation), self.kind.words());
        let name = self.kind.name();
        let fd = match &mut self.words {
            FilterWords::Syscalls(map) => {
                let old: Vec<u64> = (base..base + n)
                    .map(|i| map.get(&i, 0).unwrap_or(0))
                    .collect();
                let words: Vec<AtomicU64> = old.iter().map(|&w| AtomicU64::new(w)).collect();
                let out = f(&words);
                for ((i, w), o) in (base..).zip(&words).zip(old) {
                    let w = w.load(Ordering::Relaxed);
                    if w != o {
                        map.set(i, w, 0)
                            .with_context(|| format!("updating the {name} filter"))?;
                    }
                }
                return Ok(out);
            }
            FilterWords::Mapped(map) => map.fd().as_fd(),
        };
        let total = 2 * n as usize;
        // The map's value area (the map is BPF_F_MMAPABLE, its size checked in `new`),
        // unmapped at the end of this call.
        let mem = crate::mapmem::MapMemory::new(fd, 0, total * size_of::<u64>(), true)
            .with_context(|| {
                format!(
                    "mapping the {name} filter (a map pinned by another version of netmon? \
                     remove it and start the daemon again)"
                )
            })?;
        // SAFETY: `total` words at the mapping's start, shared with the kernel programs,
        // which only read them: atomics for every access.
        let all = unsafe { std::slice::from_raw_parts(mem.ptr().cast::<AtomicU64>(), total) };
        Ok(f(&all[base as usize..(base + n) as usize]))
    }

    /// Sets the bits of `generation` that the entries of `bans` (of the filter's family)
    /// overlap.
    fn cover(&mut self, generation: u8, bans: &[&BanEntry]) -> Result<()> {
        let kind = self.kind;
        // Nothing of this family: the words are not even read (an IPv6 ban would otherwise
        // read the IPv4 /16 filter word by word and map the /24 one).
        if (generation != 1 && generation != 2) || !bans.iter().any(|b| kind.family_of(&b.net)) {
            return Ok(());
        }
        let base = self.base(generation);
        self.with_words(generation, |words| {
            for b in bans {
                // Before the entry is written (by a later syscall): SeqCst.
                let set = |w: u32, mask: u64| {
                    words[(w - base) as usize].fetch_or(mask, Ordering::SeqCst);
                };
                if !kind.each_slot(generation, &b.net, set) {
                    for w in words {
                        w.store(u64::MAX, Ordering::SeqCst);
                    }
                }
            }
        })
    }

    fn clear(&mut self, generation: u8) -> Result<()> {
        if generation != 1 && generation != 2 {
            return Ok(());
        }
        self.with_words(generation, |words| {
            for w in words {
                if w.load(Ordering::Relaxed) != 0 {
                    w.store(0, Ordering::SeqCst);
                }
            }
        })
    }
}

fn open_pinned(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

impl DropMaps {
    /// Opens the pinned maps under `pin_dir`, creating and pinning them first if this is
    /// the first use (no daemon has run since boot).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        ensure_bpffs(pin_dir)?;
        if PINNED_MAPS.iter().any(|m| !pin_dir.join(m).exists()) {
            create_pinned(pin_dir)?;
        }
        let mut maps = std::collections::HashMap::new();
        for name in PINNED_MAPS {
            maps.insert(name, open_pinned(pin_dir, name)?);
        }
        let mut maps = Self::from_maps(|n| maps.remove(n).expect("opened above"))?;
        maps.adopt_old_counters(pin_dir);
        Ok(maps)
    }

    /// Adds the hit counters that a previous version's pinned NETMON_BANHIT4/6 hold into
    /// NETMON_BANCNT4/6, then removes those pins: an upgrade without a reboot keeps every
    /// exact ban's hit counts. Failures are logged (the counts stay in the old pin, renamed),
    /// never fatal: the drop list works without them.
    pub fn adopt_old_counters(&mut self, pin_dir: &Path) {
        for (f, name) in OLD_COUNTERS.into_iter().enumerate() {
            let path = pin_dir.join(name);
            // Renamed first, so that of two processes doing this at once only one adds (no dot
            // in the name: bpffs refuses those).
            let taken = pin_dir.join(format!("{name}_adopting_{}", std::process::id()));
            match std::fs::rename(&path, &taken) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!("cannot take over {}: {e}", path.display());
                    continue;
                }
            }
            match self.fast[f].adopt(&taken) {
                Ok(n) => {
                    tracing::info!("{name}: hit counters of {n} exact bans carried over");
                    if let Err(e) = std::fs::remove_file(&taken) {
                        tracing::warn!("removing {}: {e}", taken.display());
                    }
                }
                Err(e) => tracing::warn!(
                    "hit counters left in {} (a pin of an older netmon): {e:#}",
                    taken.display()
                ),
            }
        }
        self.release_counters();
    }

    /// Takes the drop-list maps out of a loaded object (the daemon's programs share them).
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self> {
        Self::from_maps(|n| {
            ebpf.take_map(n)
                .expect("the eBPF object has every drop-list map")
        })
    }

    fn from_maps(mut take: impl FnMut(&str) -> Map) -> Result<Self> {
        let cfg: Array<MapData, u64> = Array::try_from(take("NETMON_DROPCFG"))?;
        let overflow_bits = cfg.len() > dropcfg::BANX_COMPLETE;
        let mut capacity = [0; 4];
        let mut sized = |i: usize, m: Map| -> Map {
            if let Map::HashMap(d) | Map::LpmTrie(d) = &m {
                capacity[i] = d.info().map(|i| i.max_entries() as usize).unwrap_or(0);
            }
            m
        };
        let ban4 = HashMap::try_from(sized(0, take("NETMON_BAN4")))?;
        let ban6 = HashMap::try_from(sized(1, take("NETMON_BAN6")))?;
        let pfx4 = LpmTrie::try_from(sized(2, take("NETMON_BANPFX4")))?;
        let pfx6 = LpmTrie::try_from(sized(3, take("NETMON_BANPFX6")))?;
        Ok(Self {
            ban4,
            ban6,
            pfx4,
            pfx6,
            allow4: LpmTrie::try_from(take("NETMON_ALLOW4"))?,
            allow6: LpmTrie::try_from(take("NETMON_ALLOW6"))?,
            cfg,
            drops: PerCpuHashMap::try_from(take("NETMON_DROPS"))?,
            drop_slots: match take("NETMON_DROP_SLOTS") {
                Map::PerCpuArray(m) => m,
                _ => anyhow::bail!("NETMON_DROP_SLOTS is not a per-CPU array"),
            },
            rate4: HashMap::try_from(take("NETMON_RATE4"))?,
            rate6: HashMap::try_from(take("NETMON_RATE6"))?,
            filters: [
                BitFilter::new(take("NETMON_BAN4_L16"), FilterKind::V4(16))?,
                BitFilter::new(take("NETMON_BAN4_L24"), FilterKind::V4(24))?,
                BitFilter::new(take("NETMON_BAN4_W24"), FilterKind::V4Whole)?,
                BitFilter::new(take("NETMON_BAN4_H32"), FilterKind::V4Hosts)?,
                BitFilter::new(take("NETMON_BAN6_L32"), FilterKind::V6)?,
                BitFilter::new(take("NETMON_BAN6_HOST"), FilterKind::V6Hosts)?,
            ],
            fast: [
                FastBans::new(
                    &LAYOUT4,
                    take("NETMON_BANX4"),
                    Some(take("NETMON_BANCNT4")),
                    overflow_bits,
                )?,
                FastBans::new(
                    &LAYOUT6,
                    take("NETMON_BANX6"),
                    Some(take("NETMON_BANCNT6")),
                    overflow_bits,
                )?,
            ],
            // Maps as old as the wide arrays all have the overflow bits.
            wide: [
                FastBans::new(&WIDE4, take("NETMON_BANW4"), None, true)?,
                FastBans::new(&WIDE6, take("NETMON_BANW6"), None, true)?,
            ],
            capacity,
            placed: [0; 3],
            pending: None,
        })
    }

    pub fn capacity(&self) -> [usize; 4] {
        self.capacity
    }

    /// Refuses a set of bans that does not fit next to `alongside` (the entries that stay
    /// in the maps while it is written: the current generation during an import).
    pub fn check_capacity(&self, bans: &[BanEntry], alongside: &[BanEntry]) -> Result<()> {
        let need = counts(bans);
        let have = counts(alongside);
        let names = [
            "exact IPv4 (NETMON_BAN4)",
            "exact IPv6 (NETMON_BAN6)",
            "IPv4 prefix (NETMON_BANPFX4)",
            "IPv6 prefix (NETMON_BANPFX6)",
        ];
        for i in 0..4 {
            if need[i] + have[i] > self.capacity[i] {
                bail!(
                    "capacity exceeded: {} entries would need {} slots ({} new + {} in force \
                     while they are written) but the map holds {}; nothing was changed",
                    names[i],
                    need[i] + have[i],
                    need[i],
                    have[i],
                    self.capacity[i]
                );
            }
        }
        Ok(())
    }

    fn value(&self, generation: u8, net: &Net) -> Option<BanValue> {
        let o = net.octets();
        let r = match (net.is_v4(), net.is_host()) {
            (true, true) => self.ban4.get(&key4(generation, &o), 0),
            (false, true) => self.ban6.get(&key6(generation, &o), 0),
            (true, false) => self.pfx4.get(&pkey4(generation, net), 0),
            (false, false) => self.pfx6.get(&pkey6(generation, net), 0),
        };
        // A trie lookup of an absent prefix returns the longest one covering it.
        r.ok()
            .filter(|v| net.is_host() || v.prefix_len == 0 || v.prefix_len == net.prefix())
    }

    /// The kernel's copy of a ban: expiry and hit counters (its entry's and, for an exact
    /// ban, its slot's in NETMON_BANX4/6 or NETMON_BANW4/6). Maps the slots' counters until
    /// `release_counters`.
    pub fn hits(&mut self, generation: u8, net: &Net) -> Result<Option<BanValue>> {
        let Some(mut v) = self.value(generation, net) else {
            return Ok(None);
        };
        if let Some((f, a)) = fast_key(net) {
            for arrays in [&mut self.fast[f], &mut self.wide[f]] {
                if let Some(i) = arrays.lookup(generation, &a)? {
                    let h = arrays.read_hits(i)?;
                    v.packets += h.packets;
                    v.bytes += h.bytes;
                    v.last_hit_ns = v.last_hit_ns.max(h.last_hit_ns);
                }
            }
        }
        Ok(Some(v))
    }

    /// Unmaps the exact ban slots' counters and the wide arrays' slots (mapped by the calls
    /// that read or write them), which count in this process's RSS while mapped.
    pub fn release_counters(&mut self) {
        for f in self.fast.iter_mut().chain(&mut self.wide) {
            f.release();
        }
    }

    /// Runs `f`, then `release_counters` whatever it returned.
    fn counting<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let r = f(self);
        self.release_counters();
        r
    }

    /// Whether the buckets that `net` (an address) belongs to in `generation` have
    /// overflowed: of NETMON_BANX4/6 (some exact ban of it is in the wide array or the hash
    /// map, where the programs look after a miss there) and of NETMON_BANW4/6 (some is in
    /// the hash map alone).
    pub fn exact_buckets_overflowed(&mut self, generation: u8, net: &Net) -> Result<[bool; 2]> {
        let Some((f, a)) = fast_key(net) else {
            return Ok([false; 2]);
        };
        self.counting(|m| {
            Ok([
                m.fast[f].overflowed(generation, &a)?,
                m.wide[f].overflowed(generation, &a)?,
            ])
        })
    }

    /// Where the single-address bans that the last `sync` or `swap` wrote are (with those
    /// `write_ban` wrote since): in NETMON_BANX4/6, in NETMON_BANW4/6, and in the hash maps
    /// alone, whose bans cost a drop a kernel hash lookup more.
    pub fn exact_placement(&self) -> [usize; 3] {
        self.placed
    }

    /// Which exact ban array holds `net` (an address) in `generation`: NETMON_BANX4/6,
    /// NETMON_BANW4/6, or neither (the hash map alone, or no ban).
    pub fn exact_array(&mut self, generation: u8, net: &Net) -> Result<Option<&'static str>> {
        self.counting(|m| m.array_holding(generation, net))
    }

    /// `exact_array` in the generation in force for each of `nets`, under one mapping of the
    /// wide arrays.
    pub fn exact_arrays_in_force(&mut self, nets: &[Net]) -> Result<Vec<Option<&'static str>>> {
        let generation = self
            .cfg
            .get(&dropcfg::GENERATION, 0)
            .context("reading the generation in force")? as u8;
        self.counting(|m| {
            nets.iter()
                .map(|n| m.array_holding(generation, n))
                .collect()
        })
    }

    /// `exact_array`, leaving the wide arrays mapped.
    fn array_holding(&mut self, generation: u8, net: &Net) -> Result<Option<&'static str>> {
        let Some((f, a)) = fast_key(net) else {
            return Ok(None);
        };
        for arrays in [&mut self.fast[f], &mut self.wide[f]] {
            if arrays.lookup(generation, &a)?.is_some() {
                return Ok(Some(arrays.layout.name));
            }
        }
        Ok(None)
    }

    /// Whether exact bans written from now on go into the exact ban arrays (NETMON_BANX4/6,
    /// NETMON_BANW4/6) as well as NETMON_BAN4/6 (on by default; off, the programs find them
    /// in the hash maps alone, as benchmarks measure that path).
    pub fn set_fast(&mut self, on: bool) {
        for f in self.fast.iter_mut().chain(&mut self.wide) {
            f.enabled = on;
        }
    }

    /// Writes one ban into `generation`, keeping the hit counters it already has there or in
    /// `carry_from` (the generation being replaced).
    pub fn write_ban(&mut self, generation: u8, carry_from: u8, b: &BanEntry) -> Result<()> {
        // Before the entry: the filter must never say "no ban here" for it.
        self.cover(generation, &[b])?;
        self.counting(|m| m.write_ban_entry(generation, &[generation, carry_from], b))
    }

    /// `write_ban` without the filter bits: for bulk writes that set them all first. The hit
    /// counters are carried from the first of `carry` (generations) that holds the entry:
    /// bulk writers pass only those they know hold it, which saves a failed lookup per entry.
    fn write_ban_entry(&mut self, generation: u8, carry: &[u8], b: &BanEntry) -> Result<()> {
        // From another generation, the entry's and its slot's counters together (its slot in
        // this generation starts at zero); in this one, the entry's (its slot keeps its own).
        let mut old = None;
        for &g in carry {
            old = if g == generation {
                self.value(g, &b.net)
            } else {
                self.hits(g, &b.net)?
            };
            if old.is_some() {
                break;
            }
        }
        let old = old.unwrap_or_default();
        let v = BanValue {
            expires_ns: kernel_expiry(b.expires_ms, now_ms(), monotonic_ns()),
            kind: b.kind.code(),
            prefix_len: b.net.prefix(),
            ..old
        };
        // The array that will hold an exact ban: the one that does, else NETMON_BANX4/6 where
        // its bucket has room, else the wide one (its bucket in NETMON_BANX4/6 marked
        // overflowed first), else none (the wide bucket marked overflowed too).
        let fast = match fast_key(&b.net) {
            Some((f, a)) => {
                let place = if self.wide[f].lookup(generation, &a)?.is_some() {
                    Placement::Wide
                } else if self.fast[f].reserve(generation, &a)? {
                    Placement::Narrow
                } else if self.wide[f].reserve(generation, &a)? {
                    Placement::Wide
                } else {
                    Placement::HashOnly
                };
                self.placed[place as usize] += 1;
                Some((f, a, place))
            }
            None => None,
        };
        let o = b.net.octets();
        if let Some(p) = &mut self.pending {
            match (b.net.is_v4(), b.net.is_host()) {
                (true, true) => p.ban4.push(key4(generation, &o), v, b.net),
                (false, true) => p.ban6.push(key6(generation, &o), v, b.net),
                (true, false) => p.pfx4.push(pkey4(generation, &b.net), v, b.net),
                (false, false) => p.pfx6.push(pkey6(generation, &b.net), v, b.net),
            }
            if p.len() >= PENDING_MAX {
                self.write_pending()?;
            }
        } else {
            let r = match (b.net.is_v4(), b.net.is_host()) {
                (true, true) => self.ban4.insert(key4(generation, &o), v, 0),
                (false, true) => self.ban6.insert(key6(generation, &o), v, 0),
                (true, false) => self.pfx4.insert(&pkey4(generation, &b.net), v, 0),
                (false, false) => self.pfx6.insert(&pkey6(generation, &b.net), v, 0),
            };
            r.with_context(|| format!("writing the ban on {} into the kernel map", b.net))?;
        }
        if let Some((f, a, place)) = fast {
            let arrays = match place {
                Placement::Narrow => &mut self.fast[f],
                Placement::Wide => &mut self.wide[f],
                Placement::HashOnly => return Ok(()),
            };
            let name = arrays.layout.name;
            arrays
                .put(generation, &a, v.kind, v.expires_ns)
                .with_context(|| format!("writing the ban on {} into {name}", b.net))?;
        }
        Ok(())
    }

    /// Writes the pending hash map and trie entries (`Pending`), if any.
    fn write_pending(&mut self) -> Result<()> {
        let Some(mut p) = self.pending.take() else {
            return Ok(());
        };
        let r = (|| {
            p.ban4.write(&mut self.ban4, |m, k, v| m.insert(k, v, 0))?;
            p.ban6.write(&mut self.ban6, |m, k, v| m.insert(k, v, 0))?;
            p.pfx4.write(&mut self.pfx4, |m, k, v| m.insert(k, v, 0))?;
            p.pfx6.write(&mut self.pfx6, |m, k, v| m.insert(k, v, 0))
        })();
        self.pending = Some(p);
        r
    }

    /// Sets the filter bits of `generation` that the entries of `bans` overlap.
    fn cover(&mut self, generation: u8, bans: &[&BanEntry]) -> Result<()> {
        for f in &mut self.filters {
            f.cover(generation, bans)?;
        }
        Ok(())
    }

    /// Sets NETMON_DROPCFG slot `at` to `value`, where the map has that slot: one pinned by
    /// an older version lacks the later ones, whose programs then take them as 0 (the
    /// filter or index not complete, as that version did).
    fn set_cfg(&mut self, at: u32, value: u64, what: impl FnOnce() -> String) -> Result<()> {
        if at >= self.cfg.len() {
            return Ok(());
        }
        self.cfg.set(at, value, 0).with_context(what)?;
        self.publish(None)
    }

    /// Writes `dropcfg::FLAGS`, the one slot the programs read: the `HAS_*` bits `has` (None:
    /// those it holds), the generation in force and which of its filters and indexes are
    /// complete, as the other slots say now (`dropcfg::control_word`). One array update,
    /// which the programs see whole: every change to a slot is followed by this, so they go
    /// by the slots as they were before it or after it, never a mix.
    fn publish(&mut self, has: Option<u64>) -> Result<()> {
        let read = |cfg: &Array<MapData, u64>, at: u32| {
            cfg.get(&at, 0)
                .with_context(|| format!("reading NETMON_DROPCFG slot {at}"))
        };
        let has = match has {
            Some(h) => h,
            None => read(&self.cfg, dropcfg::FLAGS)?,
        };
        let generation = read(&self.cfg, dropcfg::GENERATION)?;
        // 1 or 2; anything else is no drop list in force.
        let g = u8::try_from(generation).unwrap_or(0);
        let mut complete = 0;
        if g != 0 {
            for at in dropcfg::COMPLETE_SLOTS {
                if at < self.cfg.len() && read(&self.cfg, at)? == generation {
                    complete |= dropcfg::complete_bit(at);
                }
            }
        }
        self.cfg
            .set(dropcfg::FLAGS, dropcfg::control_word(has, g, complete), 0)
            .context("updating the drop-list flags")
    }

    /// Declares `generation`'s filters complete (every ban entry of it has its bits set), so
    /// the programs may skip the lookups where a bit is clear.
    fn filters_complete(&mut self, generation: u8) -> Result<()> {
        for i in 0..self.filters.len() {
            let (at, kind) = (self.filters[i].complete_at, self.filters[i].kind);
            self.set_cfg(at, u64::from(generation), || {
                format!("enabling the {} filter", kind.name())
            })?;
        }
        Ok(())
    }

    /// Declares `generation`'s exact ban arrays complete (every exact entry of it is in its
    /// bucket or behind the bucket's overflow bit: `FastBans::reserve` keeps that true), so
    /// the programs skip the hash lookup after a miss in a bucket that never overflowed.
    fn fast_complete(&mut self, generation: u8) -> Result<()> {
        self.set_cfg(dropcfg::BANX_COMPLETE, u64::from(generation), || {
            "enabling the exact ban arrays' overflow bits".into()
        })?;
        self.set_cfg(dropcfg::BANW_COMPLETE, u64::from(generation), || {
            "enabling the wide exact ban arrays' overflow bits".into()
        })
    }

    /// Makes the programs look every address up, as when the filters are incomplete
    /// (benchmarks measure the lookups this way); the next full write (`sync`, `swap`) turns
    /// them back on.
    pub fn disable_filters(&mut self) -> Result<()> {
        for i in 0..self.filters.len() {
            let (at, kind) = (self.filters[i].complete_at, self.filters[i].kind);
            self.set_cfg(at, 0, || format!("disabling the {} filter", kind.name()))?;
        }
        Ok(())
    }

    /// Makes the programs go by the IPv4 /16 filter alone, as a version without the /24 and
    /// host filters did (benchmarks measure their share this way); the next full write turns
    /// them back on.
    pub fn disable_l24_filter(&mut self) -> Result<()> {
        self.disable_host_filter()?;
        self.set_cfg(dropcfg::BAN4_L24_FILTER, 0, || {
            "disabling the IPv4 /24 filter".into()
        })
    }

    /// Makes the programs go by the IPv4 /16 and /24 filters and the IPv6 /32 filter alone,
    /// as a version without the host filters did; the next full write turns them back on.
    pub fn disable_host_filter(&mut self) -> Result<()> {
        self.set_cfg(dropcfg::BAN4_HOST_FILTER, 0, || {
            "disabling the IPv4 host filter".into()
        })?;
        self.set_cfg(dropcfg::BAN6_HOST_FILTER, 0, || {
            "disabling the IPv6 host filter".into()
        })
    }

    /// Undoes `disable_filters`, `disable_l24_filter` and `disable_host_filter`: the programs
    /// go by every filter of the generation in force again. Its bits are whole: every write
    /// sets an entry's bits before the entry, filters in force or not (benchmarks alternate
    /// the filtered and the looked-up state this way, pass by pass).
    pub fn enable_filters(&mut self) -> Result<()> {
        let generation = self
            .cfg
            .get(&dropcfg::GENERATION, 0)
            .context("reading the drop list's generation")?;
        match u8::try_from(generation) {
            Ok(g @ 1..=2) => self.filters_complete(g),
            _ => anyhow::bail!(
                "no drop list in force (generation {generation}): no filters to enable"
            ),
        }
    }

    /// Clears `generation`'s filters and exact ban arrays (after they stop counting as
    /// complete).
    fn filters_clear(&mut self, generation: u8) -> Result<()> {
        let complete = |cfg: &Array<MapData, u64>, at: u32| {
            cfg.get(&at, 0).unwrap_or(0) == u64::from(generation)
        };
        for (at, what) in [
            (dropcfg::BANX_COMPLETE, "exact ban arrays'"),
            (dropcfg::BANW_COMPLETE, "wide exact ban arrays'"),
        ] {
            if complete(&self.cfg, at) {
                self.set_cfg(at, 0, || format!("disabling the {what} overflow bits"))?;
            }
        }
        for f in self.fast.iter_mut().chain(&mut self.wide) {
            f.clear(generation)?;
        }
        self.release_counters();
        for i in 0..self.filters.len() {
            let (at, kind) = (self.filters[i].complete_at, self.filters[i].kind);
            if complete(&self.cfg, at) {
                self.set_cfg(at, 0, || format!("disabling the {} filter", kind.name()))?;
            }
            self.filters[i].clear(generation)?;
        }
        Ok(())
    }

    pub fn remove_ban(&mut self, generation: u8, net: &Net) -> Result<()> {
        self.remove_bans(generation, [net])
    }

    /// `remove_ban` for each of `nets`.
    pub fn remove_bans<'a>(
        &mut self,
        generation: u8,
        nets: impl IntoIterator<Item = &'a Net>,
    ) -> Result<()> {
        self.counting(|m| m.remove_entries(generation, nets))
    }

    /// The kernel's copy of a rate limit (its drop counters).
    pub fn limit_hits(&self, net: &Net) -> Option<RateValue> {
        let o = net.octets();
        if net.is_v4() {
            self.rate4.get(&o[..4].try_into().expect("4"), 0).ok()
        } else {
            self.rate6.get(&o[..16].try_into().expect("16"), 0).ok()
        }
    }

    /// Writes one rate limit, keeping the drop counters (and the bucket) it already has.
    pub fn write_limit(&mut self, l: &LimitEntry) -> Result<()> {
        let old = self.limit_hits(&l.net).unwrap_or_default();
        let (interval_ns, burst_ns, unit) = rate_words(l.rate);
        let v = RateValue {
            interval_ns,
            burst_ns,
            expires_ns: kernel_expiry(l.expires_ms, now_ms(), monotonic_ns()),
            kind: l.kind.code(),
            unit,
            ..old
        };
        let o = l.net.octets();
        let r = if l.net.is_v4() {
            self.rate4
                .insert(<[u8; 4]>::try_from(&o[..4]).expect("4"), v, 0)
        } else {
            self.rate6
                .insert(<[u8; 16]>::try_from(&o[..16]).expect("16"), v, 0)
        };
        r.with_context(|| format!("writing the rate limit on {} into the kernel map", l.net))
    }

    pub fn remove_limit(&mut self, net: &Net) -> Result<()> {
        let o = net.octets();
        removed(if net.is_v4() {
            self.rate4.remove(&o[..4].try_into().expect("4"))
        } else {
            self.rate6.remove(&o[..16].try_into().expect("16"))
        })
        .with_context(|| format!("removing the rate limit on {net} from the kernel map"))
    }

    fn limit_keys(&self) -> HashSet<Net> {
        let mut out = HashSet::new();
        for k in self.rate4.keys().flatten() {
            if let Ok(n) = Net::new(std::net::Ipv4Addr::from(k).into(), 32) {
                out.insert(n);
            }
        }
        for k in self.rate6.keys().flatten() {
            if let Ok(n) = Net::new(std::net::Ipv6Addr::from(k).into(), 128) {
                out.insert(n);
            }
        }
        out
    }

    pub fn write_allow(&mut self, net: &Net) -> Result<()> {
        let o = net.octets();
        let r = if net.is_v4() {
            self.allow4.insert(
                &Key::new(u32::from(net.prefix()), o[..4].try_into().expect("4")),
                0,
                0,
            )
        } else {
            self.allow6.insert(
                &Key::new(u32::from(net.prefix()), o[..16].try_into().expect("16")),
                0,
                0,
            )
        };
        r.with_context(|| format!("writing the allow entry {net} into the kernel map"))
    }

    pub fn remove_allow(&mut self, net: &Net) -> Result<()> {
        let o = net.octets();
        removed(if net.is_v4() {
            self.allow4.remove(&Key::new(
                u32::from(net.prefix()),
                o[..4].try_into().expect("4"),
            ))
        } else {
            self.allow6.remove(&Key::new(
                u32::from(net.prefix()),
                o[..16].try_into().expect("16"),
            ))
        })
        .with_context(|| format!("removing the allow entry {net} from the kernel map"))
    }

    /// Sets the `HAS_*` bits (`dropcfg::FLAGS`): which maps the programs look in.
    pub fn set_flags(&mut self, flags: u64) -> Result<()> {
        self.publish(Some(flags))
    }

    /// Puts `generation` in force: for the programs, with its filters' completeness, in one
    /// array update (`publish`).
    pub fn set_generation(&mut self, generation: u8) -> Result<()> {
        self.cfg
            .set(dropcfg::GENERATION, u64::from(generation), 0)
            .context("switching the drop-list generation")?;
        self.publish(None)
    }

    /// Removes every ban entry of `generation` (one pass over the ban maps).
    pub fn clear_generation(&mut self, generation: u8) -> Result<()> {
        let nets = self.ban_nets()?.remove(&generation).unwrap_or_default();
        self.counting(|m| m.remove_generation(generation, &nets))
    }

    /// Removes `nets` from `generation`, and the generation's filters with them.
    fn remove_generation(&mut self, generation: u8, nets: &HashSet<Net>) -> Result<()> {
        self.remove_entries(generation, nets)?;
        if generation == 1 || generation == 2 {
            self.filters_clear(generation)?;
        }
        Ok(())
    }

    /// Removes the ban entries `nets` from `generation`: from the exact ban arrays first (a
    /// slot never outlives its entry), then from the hash maps and tries a few thousand per
    /// system call, in address order, so that a trie's consecutive deletions walk nodes
    /// still in the cache (one call per entry in hash-set order was ~16% of a 100,000-entry
    /// import's time, now ~7%). Entries already gone are skipped.
    fn remove_entries<'a>(
        &mut self,
        generation: u8,
        nets: impl IntoIterator<Item = &'a Net>,
    ) -> Result<()> {
        use aya::maps::IterableMap as _;
        let mut nets: Vec<&Net> = nets.into_iter().collect();
        nets.sort_unstable();
        let (mut k4, mut k6, mut p4, mut p6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for net in nets {
            if let Some((f, a)) = fast_key(net) {
                self.fast[f].remove(generation, &a)?;
                self.wide[f].remove(generation, &a)?;
            }
            let o = net.octets();
            match (net.is_v4(), net.is_host()) {
                (true, true) => k4.push(key4(generation, &o)),
                (false, true) => k6.push(key6(generation, &o)),
                (true, false) => p4.push(pkey4(generation, net)),
                (false, false) => p6.push(pkey6(generation, net)),
            }
        }
        delete_batched(self.ban4.map(), "NETMON_BAN4", &k4)?;
        delete_batched(self.ban6.map(), "NETMON_BAN6", &k6)?;
        delete_batched(self.pfx4.map(), "NETMON_BANPFX4", &p4)?;
        delete_batched(self.pfx6.map(), "NETMON_BANPFX6", &p6)?;
        Ok(())
    }

    /// Every ban entry in the kernel maps (hash maps and tries), by generation: one pass over
    /// the four maps, read a few thousand entries per system call. Keys that are no network
    /// (netmon never writes one) are left alone, as before.
    pub fn ban_nets(&self) -> Result<std::collections::HashMap<u8, HashSet<Net>>> {
        use aya::maps::IterableMap as _;
        use std::net::{Ipv4Addr, Ipv6Addr};
        let mut out: std::collections::HashMap<u8, HashSet<Net>> = Default::default();
        let mut put = |generation: u8, n: Result<Net, _>| {
            if let Ok(n) = n {
                out.entry(generation).or_default().insert(n);
            }
        };
        read_keys(self.ban4.map(), "NETMON_BAN4", |k: &BanKey4| {
            put(k.generation, Net::new(Ipv4Addr::from(k.addr).into(), 32));
        })?;
        read_keys(self.ban6.map(), "NETMON_BAN6", |k: &BanKey6| {
            put(k.generation, Net::new(Ipv6Addr::from(k.addr).into(), 128));
        })?;
        // A trie key as the kernel lays it out: the prefix length (host order, counting the
        // generation's 8 bits), then the generation and the address.
        let len_of = |k: &[u8]| {
            let len = u32::from_ne_bytes(k[..4].try_into().expect("4 bytes"));
            len.saturating_sub(8) as u8
        };
        read_keys(self.pfx4.map(), "NETMON_BANPFX4", |k: &[u8; 9]| {
            let a: [u8; 4] = k[5..].try_into().expect("4 bytes");
            put(k[4], Net::new(Ipv4Addr::from(a).into(), len_of(k)));
        })?;
        read_keys(self.pfx6.map(), "NETMON_BANPFX6", |k: &[u8; 21]| {
            let a: [u8; 16] = k[5..].try_into().expect("16 bytes");
            put(k[4], Net::new(Ipv6Addr::from(a).into(), len_of(k)));
        })?;
        Ok(out)
    }

    fn allow_keys(&self) -> HashSet<Net> {
        let mut out = HashSet::new();
        for k in self.allow4.keys().flatten() {
            if let Ok(n) = Net::new(
                std::net::Ipv4Addr::from(k.data()).into(),
                k.prefix_len() as u8,
            ) {
                out.insert(n);
            }
        }
        for k in self.allow6.keys().flatten() {
            if let Ok(n) = Net::new(
                std::net::Ipv6Addr::from(k.data()).into(),
                k.prefix_len() as u8,
            ) {
                out.insert(n);
            }
        }
        out
    }

    /// Makes the kernel maps equal the state, in place: entries are added before anything is
    /// removed, and the generation in force never changes, so there is no moment without the
    /// bans that stay.
    pub fn sync(&mut self, state: &State) -> Result<()> {
        self.counting(|m| m.sync_entries(state))
    }

    fn sync_entries(&mut self, state: &State) -> Result<()> {
        self.placed = [0; 3];
        let generation = state.generation;
        let other = 3 - generation;
        let now = now_ms();
        let live: Vec<&BanEntry> = state.live_bans(now).collect();
        // One pass over the ban maps: what each generation holds now.
        let mut held = self.ban_nets()?;
        let (here, there) = (
            held.remove(&generation).unwrap_or_default(),
            held.remove(&other).unwrap_or_default(),
        );
        self.cover(generation, &live)?;
        for b in &live {
            // Hit counters: from the entry in force, else from one left in the other
            // generation (an interrupted import).
            let carry: &[u8] = match (here.contains(&b.net), there.contains(&b.net)) {
                (true, _) => &[generation],
                (false, true) => &[other],
                (false, false) => &[],
            };
            self.write_ban_entry(generation, carry, b)?;
        }
        // Every wanted entry has its filter bits now; entries about to be removed may lack
        // them, which only lets packets skip them early.
        self.filters_complete(generation)?;
        self.fast_complete(generation)?;
        for a in &state.allows {
            self.write_allow(&a.net)?;
        }
        let limits: Vec<&LimitEntry> = state.live_limits(now).collect();
        for l in &limits {
            self.write_limit(l)?;
        }
        self.set_flags(flags_for(state, now) | self.current_flags())?;
        self.set_generation(generation)?;
        let wanted: HashSet<Net> = live.iter().map(|b| b.net).collect();
        self.remove_entries(generation, here.difference(&wanted))?;
        let allowed: HashSet<Net> = state.allows.iter().map(|a| a.net).collect();
        for n in self.allow_keys().difference(&allowed) {
            self.remove_allow(n)?;
        }
        let limited: HashSet<Net> = limits.iter().map(|l| l.net).collect();
        for n in self.limit_keys().difference(&limited) {
            self.remove_limit(n)?;
        }
        self.remove_generation(other, &there)?;
        self.set_flags(flags_for(state, now))
    }

    fn current_flags(&self) -> u64 {
        self.cfg.get(&dropcfg::FLAGS, 0).unwrap_or(0) & dropcfg::HAS_MASK
    }

    /// Replaces the whole ban set with `new` (an import): writes it into the generation not
    /// in force, switches generations with one update, then removes the old one. At every
    /// moment one complete set is in force.
    pub fn swap(&mut self, old: &State, new: &mut State) -> Result<()> {
        self.counting(|m| m.swap_entries(old, new))
    }

    fn swap_entries(&mut self, old: &State, new: &mut State) -> Result<()> {
        self.placed = [0; 3];
        let from = old.generation;
        let to = 3 - from;
        let now = now_ms();
        // One pass over the ban maps (the import holds the state lock: nothing else writes
        // them until it is done). `to` should be empty; an interrupted import leaves entries.
        let mut held = self.ban_nets()?;
        let in_force = held.remove(&from).unwrap_or_default();
        self.remove_generation(to, &held.remove(&to).unwrap_or_default())?;
        // `to` is not in force and its filter not complete: entries first, bits after.
        let mut live: Vec<&BanEntry> = new.live_bans(now).collect();
        // In address order, so that consecutive trie inserts walk the same nodes (an
        // import's order says nothing of which ban came first).
        live.sort_unstable_by_key(|b| b.net);
        self.pending = Some(Pending::default());
        let written = live.iter().try_for_each(|b| {
            let carry: &[u8] = if in_force.contains(&b.net) {
                &[from]
            } else {
                &[]
            };
            self.write_ban_entry(to, carry, b)
        });
        let written = written.and_then(|()| self.write_pending());
        self.pending = None;
        written?;
        self.cover(to, &live)?;
        self.filters_complete(to)?;
        self.fast_complete(to)?;
        self.set_flags(flags_for(old, now) | flags_for(new, now))?;
        self.set_generation(to)?;
        new.generation = to;
        self.set_flags(flags_for(new, now) | flags_for(old, now))?;
        self.remove_generation(from, &in_force)?;
        self.set_flags(flags_for(new, now))
    }

    /// Removes what the kernel counted for interface `ifindex`, which is gone: its slots
    /// of NETMON_DROP_SLOTS back to zero (for an interface that may get its index later),
    /// its entries of NETMON_DROPS deleted (which would otherwise hold their places in the
    /// map, pinned across restarts, until it is full and the drops of new interfaces go
    /// uncounted: a container host's veths come and go by the thousand). No program runs
    /// for a gone interface, so none writes them meanwhile.
    pub fn forget_drops(&mut self, ifindex: u32) -> Result<()> {
        let mut slots = Vec::new();
        for direction in [DIR_INGRESS, DIR_EGRESS] {
            for kind in 0..ban_kind::NAMES.len() as u8 {
                let key = DropKey {
                    ifindex,
                    direction,
                    kind,
                    _pad: 0,
                };
                match netmon_common::drop_slot(ifindex, direction, kind) {
                    Some(slot) => slots.push(slot),
                    None => removed(self.drops.remove(&key)).with_context(|| {
                        format!("removing interface {ifindex}'s drops from NETMON_DROPS")
                    })?,
                }
            }
        }
        crate::drain::zero_per_cpu_slots(
            &self.drop_slots,
            &slots,
            size_of::<IfaceStats>(),
            crate::mapmem::possible_cpus()?,
        )
        .with_context(|| format!("zeroing interface {ifindex}'s NETMON_DROP_SLOTS"))
    }

    /// Cumulative drops per interface, direction and kind, summed over CPUs.
    pub fn drops(&self) -> Result<Vec<(DropKey, IfaceStats)>> {
        let ncpus = crate::mapmem::possible_cpus()?;
        let mut out: Vec<_> =
            crate::drain::stats_array(self.drop_slots.fd().as_fd(), DROP_SLOTS, ncpus)
                .context("reading NETMON_DROP_SLOTS")?
                .into_iter()
                .map(|(slot, s)| (DropKey::from_slot(slot), s))
                .collect();
        out.extend(
            self.drops
                .iter()
                .flatten()
                .map(|(k, v)| (k, crate::drain::sum_stats(v.iter()))),
        );
        Ok(out)
    }
}

/// Hands `f` every key of a ban map (a hash map or a trie, `BanValue` values), read with
/// BPF_MAP_LOOKUP_BATCH a few thousand at a time. The position between batches is held in
/// a `K`: a trie's is its last key read, a hash map's a bucket number (4 bytes; every ban
/// key is longer).
fn read_keys<K: Copy + Default>(map: &MapData, name: &str, mut f: impl FnMut(&K)) -> Result<()> {
    let (mut keys, mut vals, mut chunk) = (Vec::new(), Vec::<BanValue>::new(), crate::drain::BATCH);
    crate::drain::read_batched_from::<K, BanValue, K>(
        map.fd().as_fd(),
        &mut keys,
        &mut vals,
        &mut chunk,
        |k, _| f(k),
    )
    .with_context(|| format!("reading the keys of {name}"))
}

/// Which of `DropMaps::fast` an exact ban goes to (0: IPv4, 1: IPv6) and its address (an
/// IPv4 address in the first 4 bytes); `None` for a prefix.
fn fast_key(net: &Net) -> Option<(usize, [u8; 16])> {
    net.is_host().then(|| {
        let o = net.octets();
        let mut a = [0u8; 16];
        a[..o.len()].copy_from_slice(&o);
        (usize::from(!net.is_v4()), a)
    })
}

fn key4(generation: u8, o: &[u8]) -> BanKey4 {
    BanKey4 {
        generation,
        addr: o[..4].try_into().expect("4 bytes"),
        ..Default::default()
    }
}

fn key6(generation: u8, o: &[u8]) -> BanKey6 {
    BanKey6 {
        generation,
        addr: o[..16].try_into().expect("16 bytes"),
        ..Default::default()
    }
}

fn pkey4(generation: u8, net: &Net) -> Key<BanPrefix4> {
    let o = net.octets();
    Key::new(
        8 + u32::from(net.prefix()),
        [generation, o[0], o[1], o[2], o[3]],
    )
}

fn pkey6(generation: u8, net: &Net) -> Key<BanPrefix6> {
    let mut d = [0u8; 17];
    d[0] = generation;
    d[1..].copy_from_slice(&net.octets());
    Key::new(8 + u32::from(net.prefix()), d)
}

/// Creates and pins the drop-list maps by loading the object's maps (no program is loaded
/// or attached); every other map is made as small as possible and freed on return.
fn create_pinned(pin_dir: &Path) -> Result<()> {
    let mut loader = aya::EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    size_ban_counters(&mut loader)?;
    for m in [
        "NETMON_FLOWS4",
        "NETMON_FLOWS6",
        "NETMON_SOCK_PROC",
        "NETMON_PORT_OWNER",
        "NETMON_LISTEN_NS",
        "NETMON_UDP_PORTS",
        "NETMON_SK_OWNER",
    ] {
        loader.map_max_entries(m, 1);
    }
    // A ring buffer's size is a power-of-two number of pages.
    loader.map_max_entries("NETMON_DIRTY", 4096);
    loader
        .load(crate::load::EBPF_OBJECT)
        .with_context(|| format!("creating the drop-list maps under {}", pin_dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run given a word at a time sets the bits that setting them one by one does: runs
    /// within a word, up to its end, across word boundaries and of whole words.
    #[test]
    fn a_run_of_bits_is_its_bits_a_word_at_a_time() {
        for start in [0u32, 1, 37, 63, 64, 100, 255] {
            for n in [1u64, 2, 26, 27, 63, 64, 65, 128, 256, 1000] {
                let mut masks = std::collections::BTreeMap::new();
                each_word_of_run((start / 64 + 3, start % 64), n, |w, m| {
                    assert_eq!(masks.insert(w, m), None, "word {w} given twice");
                });
                let mut bits = std::collections::BTreeMap::<u32, u64>::new();
                for i in u64::from(start)..u64::from(start) + n {
                    *bits.entry(3 + (i / 64) as u32).or_default() |= 1 << (i % 64);
                }
                assert_eq!(masks, bits, "run of {n} from bit {start}");
            }
        }
    }
}
