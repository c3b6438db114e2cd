//! Stage 2 for `--flow-table per-cpu`: read the per-CPU flow tables in place.
//!
//! The programs keep each flow in a slot of the running CPU's part of `NETMON_TAB4` or
//! `NETMON_TAB6` (`netmon_common::TabSlot`), with counters that only grow while the slot
//! holds the flow. A slot's first packet in each drain epoch sets its bucket's bit in the
//! table's dirty bitmap; a slot given to another flow first sends its last contents through
//! `NETMON_EVICTED`. The daemon maps the tables and bitmaps into its memory (they are
//! `BPF_F_MMAPABLE` arrays), so a drain reads the marked buckets without a system call per
//! flow. It keeps what it last read of each slot and hands on what grew since: per slot
//! deltas, which the tracker adds up per flow (one flow may have a slot on several CPUs).

use std::{
    collections::HashMap,
    os::fd::AsFd as _,
    sync::atomic::{AtomicU64, Ordering, fence},
};

use anyhow::{Context as _, Result};
use aya::maps::MapData;

use crate::mapmem::{MapMemory, page_size};
use netmon_common::{FlowKey, FlowKey4, TAB_WAYS, TabBucket, TabEvicted, TabSlot};

use crate::aggregate::FlowSample;

/// Maps `len` bytes of `map` (named `name`, for the message) from byte `offset`.
fn map_memory(
    map: &MapData,
    name: &str,
    offset: usize,
    len: usize,
    writable: bool,
) -> Result<MapMemory> {
    MapMemory::new(map.fd().as_fd(), offset, len, writable).with_context(|| {
        format!(
            "mapping {name} (bytes {offset}..{}) into memory",
            offset + len
        )
    })
}

/// What the daemon last read of one slot: the flow it held (`seq`) and its counters then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    seq: u32,
    bytes: u64,
    packets: u64,
}

impl<K> From<&TabSlot<K>> for Seen {
    fn from(s: &TabSlot<K>) -> Self {
        Self {
            seq: s.seq,
            bytes: s.bytes,
            packets: s.packets,
        }
    }
}

/// Drains after which an old flow's counters still waiting for its eviction record are
/// dropped (the record was lost: `evict_lost`).
const PENDING_DRAINS: u64 = 8;

/// Where a table's buckets are.
enum Memory {
    /// In this process (tests).
    Raw(*const u8),
    /// In the kernel map, mapped `WINDOW` bytes at a time while a drain reads them: a
    /// mapping of kernel pages counts in the daemon's RSS for as long as it exists.
    Map { map: MapData, name: &'static str },
}

/// Bytes of a table mapped at once.
const WINDOW: usize = 1 << 20;

/// A consistent copy of the slot at `p`: `None` while the program is giving it to
/// another flow.
///
/// # Safety
/// `p` points at a slot of the mapped table.
unsafe fn read_slot<K: Copy>(p: *const TabSlot<K>) -> Option<TabSlot<K>> {
    // SAFETY: the program writes the slot concurrently, so every read is volatile and the
    // copy is used only when the sequence number did not move.
    unsafe {
        for _ in 0..8 {
            let before = std::ptr::read_volatile(&raw const (*p).seq);
            if before & 1 == 0 {
                fence(Ordering::Acquire);
                let copy = std::ptr::read_volatile(p);
                fence(Ordering::Acquire);
                if std::ptr::read_volatile(&raw const (*p).seq) == before && copy.seq == before {
                    return Some(copy);
                }
            }
            std::hint::spin_loop();
        }
    }
    None
}

/// Marks bucket `b` in the bitmap at `dirty`, for the next drain.
///
/// # Safety
/// `dirty` points at a bitmap with a bit for bucket `b`.
unsafe fn mark(dirty: *const AtomicU64, b: u32) {
    // SAFETY: the caller's promise.
    unsafe { (*dirty.add(b as usize / 64)).fetch_or(1 << (b % 64), Ordering::AcqRel) };
}

/// What the daemon last read of each occupied slot.
#[derive(Default)]
struct Slots {
    by_index: HashMap<u32, Seen, foldhash::fast::RandomState>,
    /// Slots read holding another flow than the one last read there, by (slot, that flow's
    /// seq): the old flow's counters as last read, until its eviction record comes.
    pending: HashMap<(u32, u32), (Seen, u64), foldhash::fast::RandomState>,
}

impl Slots {
    /// Reads bucket `b`, at `p`, for `Table::read_marked` (drain number `drain`); a slot
    /// being rewritten marks the bucket in `dirty` again, for the next drain.
    ///
    /// # Safety
    /// `p` points at bucket `b` of the mapped table, `dirty` at its bitmap.
    unsafe fn read_bucket<K: Copy>(
        &mut self,
        b: u32,
        p: *const TabSlot<K>,
        dirty: *const AtomicU64,
        drain: u64,
        f: &mut impl FnMut(&SlotDelta<K>),
    ) {
        for way in 0..TAB_WAYS {
            // SAFETY: the caller's promise.
            let Some(s) = (unsafe { read_slot(p.add(way)) }) else {
                // SAFETY: the caller's promise.
                unsafe { mark(dirty, b) };
                continue;
            };
            if s.packets == 0 {
                continue;
            }
            let i = (b as usize * TAB_WAYS + way) as u32;
            let before = match self.by_index.insert(i, Seen::from(&s)) {
                Some(old) if old.seq == s.seq => Some(old),
                Some(old) => {
                    // The slot holds another flow now: the old one's rest comes with its
                    // eviction record.
                    self.pending.insert((i, old.seq), (old, drain));
                    None
                }
                None => None,
            };
            let d = delta(&s, before);
            if d.packets != 0 || d.bytes != 0 {
                f(&d);
            }
        }
    }
}

/// One family's table as the daemon tracks it: the slots' memory, the dirty bitmap and what
/// was last read of each occupied slot.
pub struct Table<K> {
    memory: Memory,
    /// Buckets in all CPUs' parts.
    buckets: usize,
    dirty: *const AtomicU64,
    /// Keeps the dirty bitmap mapped (a bit per bucket: small).
    _bitmap: Option<MapMemory>,
    _key: std::marker::PhantomData<K>,
    seen: Slots,
    drains: u64,
    /// Buckets taken from the bitmap, read by the next `read_marked`.
    marked: Vec<u32>,
}

// SAFETY: the raw pointers point into the mappings the table owns (or, in tests, memory the
// test keeps alive and does not touch meanwhile).
unsafe impl<K: Send> Send for Table<K> {}
unsafe impl<K: Sync> Sync for Table<K> {}

/// A per-slot increase, with the slot's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotDelta<K> {
    pub key: K,
    pub bytes: u64,
    pub packets: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub tcp_flags: u8,
}

fn delta<K: Copy>(s: &TabSlot<K>, before: Option<Seen>) -> SlotDelta<K> {
    let (b, p) = before.map_or((0, 0), |b| (b.bytes, b.packets));
    SlotDelta {
        key: s.key,
        bytes: s.bytes.saturating_sub(b),
        packets: s.packets.saturating_sub(p),
        first_ns: s.first_seen_ns,
        last_ns: s.last_seen_ns,
        tcp_flags: s.tcp_flags,
    }
}

impl<K: Copy> Table<K> {
    /// A table over `buckets` buckets at `slots` and its bitmap at `dirty` (a bit per bucket).
    ///
    /// # Safety
    /// Both must stay valid (and the bitmap writable) for the table's life.
    pub unsafe fn from_raw(
        slots: *const TabBucket<K>,
        buckets: usize,
        dirty: *const AtomicU64,
    ) -> Self {
        Self {
            memory: Memory::Raw(slots.cast()),
            buckets,
            dirty,
            _bitmap: None,
            _key: std::marker::PhantomData,
            seen: Slots::default(),
            drains: 0,
            marked: Vec::new(),
        }
    }

    /// The table `map` (`buckets` buckets) with its bitmap `dirty` mapped.
    fn map(map: MapData, dirty: &MapData, name: &'static str, buckets: usize) -> Result<Self> {
        let bits = map_memory(dirty, name, 0, buckets.div_ceil(64) * 8, true)?;
        // SAFETY: the bitmap is as large as said and lives as long as the table; the raw
        // memory is replaced before use.
        let mut t = unsafe { Self::from_raw(std::ptr::null(), buckets, bits.ptr().cast()) };
        t.memory = Memory::Map { map, name };
        t._bitmap = Some(bits);
        Ok(t)
    }
}

impl Memory {
    /// Calls `f` with a pointer to byte `start` of the table, valid up to byte `end`.
    fn with_window(&self, start: usize, end: usize, f: impl FnOnce(*const u8)) -> Result<()> {
        match self {
            // SAFETY: the caller of `from_raw` keeps the whole table valid.
            Self::Raw(p) => f(unsafe { p.add(start) }),
            Self::Map { map, name } => {
                let w = map_memory(map, name, start, end - start, false)?;
                f(w.ptr());
            }
        }
        Ok(())
    }
}

impl<K: Copy> Table<K> {
    /// Takes the marked buckets out of the bitmap (to be read by `read_marked` after the
    /// epoch advanced: everything a slot counted before the advance is then in the read, and
    /// a slot's first packet after it marks the bucket again).
    pub fn take_marked(&mut self) {
        self.marked.clear();
        for w in 0..self.buckets.div_ceil(64) {
            // SAFETY: `w` is within the bitmap.
            let mut bits = unsafe { (*self.dirty.add(w)).swap(0, Ordering::AcqRel) };
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                self.marked.push(w as u32 * 64 + b);
            }
        }
    }

    /// Reads the buckets `take_marked` took and hands on every slot's growth since it was last
    /// read (a slot now holding another flow: all of the new flow's counters).
    pub fn read_marked(&mut self, mut f: impl FnMut(&SlotDelta<K>)) -> Result<()> {
        self.drains += 1;
        let marked = std::mem::take(&mut self.marked);
        let size = size_of::<TabBucket<K>>();
        let total = (self.buckets * size).next_multiple_of(page_size());
        // The marked buckets come in order: one window for those that start in it.
        let mut i = 0;
        let mut result = Ok(());
        while i < marked.len() && result.is_ok() {
            let start = marked[i] as usize * size / WINDOW * WINDOW;
            let n = marked[i..]
                .iter()
                .take_while(|&&b| {
                    (b as usize) < self.buckets && (b as usize * size) < start + WINDOW
                })
                .count()
                .max(1);
            let group = &marked[i..i + n];
            i += n;
            let last = group[n - 1] as usize;
            if last >= self.buckets {
                continue;
            }
            let end = ((last + 1) * size).next_multiple_of(page_size()).min(total);
            let (memory, seen) = (&self.memory, &mut self.seen);
            result = memory.with_window(start, end, |base| {
                for &b in group {
                    let p = base.wrapping_add(b as usize * size - start).cast();
                    // SAFETY: bucket `b` lies in the window.
                    unsafe { seen.read_bucket(b, p, self.dirty, self.drains, &mut f) };
                }
            });
        }
        if result.is_err() {
            // Read again next drain: a bucket's growth is only seen when it is read.
            for &b in marked.iter().filter(|&&b| (b as usize) < self.buckets) {
                // SAFETY: `b` is a bucket of this table.
                unsafe { mark(self.dirty, b) };
            }
        }
        self.marked = marked;
        let drains = self.drains;
        self.seen
            .pending
            .retain(|_, (_, at)| drains.saturating_sub(*at) < PENDING_DRAINS);
        result
    }

    /// An evicted slot's last contents: hands on what it grew since last read.
    pub fn evicted(&mut self, e: &TabEvicted<K>, mut f: impl FnMut(&SlotDelta<K>)) {
        let seen = &mut self.seen;
        let before = match seen.by_index.get(&e.index) {
            Some(old) if old.seq == e.slot.seq => seen.by_index.remove(&e.index),
            _ => seen.pending.remove(&(e.index, e.slot.seq)).map(|(s, _)| s),
        };
        let d = delta(&e.slot, before);
        if d.packets != 0 || d.bytes != 0 {
            f(&d);
        }
    }

    /// Slots the daemon has read a flow in (occupied slots, as of the last read).
    pub fn occupied(&self) -> usize {
        self.seen.by_index.len()
    }

    /// Slots in all CPUs' parts.
    pub fn capacity(&self) -> usize {
        self.buckets * TAB_WAYS
    }
}

/// Both families' tables and the eviction ring.
pub struct Tables {
    v4: Table<FlowKey4>,
    v6: Table<FlowKey>,
    evicted: aya::maps::RingBuf<MapData>,
    /// Eviction records read since `take_evictions`.
    evictions: u64,
}

/// A slot's growth as the tracker takes it (`Tracker::apply_delta`).
fn sample<K>(key: FlowKey, d: &SlotDelta<K>) -> FlowSample {
    FlowSample {
        key,
        bytes: d.bytes,
        packets: d.packets,
        first_ns: d.first_ns,
        last_ns: d.last_ns,
        tcp_flags: d.tcp_flags,
    }
}

impl Tables {
    /// Opens and maps the tables of a loaded object (as many buckets as the loader sized them
    /// to, all CPUs' parts).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self> {
        let mut data = |name: &str| -> Result<MapData> {
            match ebpf
                .take_map(name)
                .with_context(|| format!("eBPF object has no map {name}"))?
            {
                aya::maps::Map::Array(m) => Ok(m),
                _ => anyhow::bail!("{name} is not an array map"),
            }
        };
        let (t4, d4, t6, d6) = (
            data("NETMON_TAB4")?,
            data("NETMON_MARK4")?,
            data("NETMON_TAB6")?,
            data("NETMON_MARK6")?,
        );
        let buckets = |m: &MapData, name: &str| -> Result<usize> {
            Ok(m.info()
                .with_context(|| format!("reading {name}'s size"))?
                .max_entries() as usize)
        };
        let (b4, b6) = (buckets(&t4, "NETMON_TAB4")?, buckets(&t6, "NETMON_TAB6")?);
        Ok(Self {
            v4: Table::map(t4, &d4, "NETMON_TAB4", b4)?,
            v6: Table::map(t6, &d6, "NETMON_TAB6", b6)?,
            evicted: aya::maps::RingBuf::try_from(
                ebpf.take_map("NETMON_EVICTED")
                    .context("eBPF object has no map NETMON_EVICTED")?,
            )?,
            evictions: 0,
        })
    }

    /// Takes the marked buckets of both tables (before the daemon advances the epoch).
    pub fn take_marked(&mut self) {
        self.v4.take_marked();
        self.v6.take_marked();
    }

    /// Reads what the tables counted since the last drain: the eviction ring, then the
    /// buckets `take_marked` took. Hands on one sample per slot that grew, its counters the
    /// growth (a flow counted on several CPUs, or evicted and counted again, comes more than
    /// once: `Tracker::apply_delta` adds them up).
    pub fn drain(&mut self, mut f: impl FnMut(&FlowSample)) -> Result<()> {
        let Self {
            v4,
            v6,
            evicted,
            evictions,
        } = self;
        while let Some(item) = evicted.next() {
            *evictions += 1;
            // A record is a TabEvicted of either family, told apart by length.
            match item.len() {
                n if n == size_of::<TabEvicted<FlowKey4>>() => {
                    // SAFETY: the programs write whole records; unaligned read of plain data.
                    let e = unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<TabEvicted<FlowKey4>>())
                    };
                    v4.evicted(&e, |d| f(&sample(d.key.into(), d)));
                }
                n if n == size_of::<TabEvicted<FlowKey>>() => {
                    // SAFETY: as above.
                    let e = unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<TabEvicted<FlowKey>>())
                    };
                    v6.evicted(&e, |d| f(&sample(d.key, d)));
                }
                _ => {}
            }
        }
        v4.read_marked(|d| f(&sample(d.key.into(), d)))?;
        v6.read_marked(|d| f(&sample(d.key, d)))
    }

    /// Eviction records read since the last call.
    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evictions)
    }

    /// Slots of each family's table in all CPUs' parts: [IPv4, IPv6].
    pub fn capacity(&self) -> [usize; 2] {
        [self.v4.capacity(), self.v6.capacity()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey4 {
        FlowKey4 {
            ifindex: 2,
            direction: 1,
            proto: 17,
            family: 4,
            local_port: port,
            remote_port: 53,
            local_addr: [10, 0, 0, 1],
            remote_addr: [10, 0, 0, 2],
            ..Default::default()
        }
    }

    /// A table of `buckets` buckets in test memory, written the way the programs write it.
    struct Fake {
        _buckets: Vec<TabBucket<FlowKey4>>,
        /// The buckets' memory, written only through this pointer (as the table reads it).
        base: *mut TabBucket<FlowKey4>,
        len: usize,
        dirty: Vec<AtomicU64>,
    }

    impl Fake {
        fn new(buckets: usize) -> Self {
            let mut v = vec![TabBucket::default(); buckets];
            Self {
                base: v.as_mut_ptr(),
                len: buckets,
                _buckets: v,
                dirty: (0..buckets.div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            }
        }

        fn table(&self) -> Table<FlowKey4> {
            // SAFETY: the test keeps `self` alive while the table is used.
            unsafe { Table::from_raw(self.base, self.len, self.dirty.as_ptr()) }
        }

        fn slot(&mut self, b: usize, way: usize) -> &mut TabSlot<FlowKey4> {
            assert!(b < self.len);
            self.dirty[b / 64].fetch_or(1 << (b % 64), Ordering::Relaxed);
            // SAFETY: within the buckets; the table only reads between the test's writes.
            unsafe { &mut (*self.base.add(b)).slots[way] }
        }

        /// Gives the slot to `k` (as the program does: sequence number up by two) and
        /// returns the old contents as an eviction record.
        fn give(&mut self, b: usize, way: usize, k: FlowKey4, bytes: u64) -> TabEvicted<FlowKey4> {
            let s = self.slot(b, way);
            let old = TabEvicted {
                slot: *s,
                index: (b * TAB_WAYS + way) as u32,
                _pad: 0,
            };
            *s = TabSlot {
                key: k,
                bytes,
                packets: 1,
                first_seen_ns: 5,
                last_seen_ns: 5,
                seq: s.seq + 2,
                ..Default::default()
            };
            old
        }

        fn add(&mut self, b: usize, way: usize, bytes: u64) {
            let s = self.slot(b, way);
            s.bytes += bytes;
            s.packets += 1;
            s.last_seen_ns += 1;
        }
    }

    const NOTHING: [(u16, u64, u64); 0] = [];

    fn read(t: &mut Table<FlowKey4>) -> Vec<(u16, u64, u64)> {
        t.take_marked();
        let mut out = Vec::new();
        t.read_marked(|d| out.push((d.key.local_port, d.bytes, d.packets)))
            .unwrap();
        out.sort_unstable();
        out
    }

    #[test]
    fn hands_on_growth_per_slot_and_only_for_marked_buckets() {
        let mut fake = Fake::new(128);
        let mut t = fake.table();
        fake.give(3, 0, key(1), 100);
        fake.give(100, 2, key(2), 60);
        assert_eq!(read(&mut t), [(1, 100, 1), (2, 60, 1)]);
        // Nothing marked: nothing read, even though nothing was cleared.
        assert_eq!(read(&mut t), NOTHING);
        fake.add(3, 0, 40);
        fake.add(3, 0, 10);
        assert_eq!(read(&mut t), [(1, 50, 2)]);
        assert_eq!(t.occupied(), 2);
    }

    #[test]
    fn an_evicted_flow_is_counted_once_whatever_the_order() {
        // Eviction record read before the slot's new flow.
        let mut fake = Fake::new(64);
        let mut t = fake.table();
        fake.give(7, 1, key(1), 100);
        assert_eq!(read(&mut t), [(1, 100, 1)]);
        fake.add(7, 1, 30);
        let gone = fake.give(7, 1, key(2), 9);
        let mut out = Vec::new();
        t.evicted(&gone, |d| out.push((d.key.local_port, d.bytes, d.packets)));
        assert_eq!(out, [(1, 30, 1)]);
        assert_eq!(read(&mut t), [(2, 9, 1)]);

        // The slot read holding the new flow first, the record in a later drain.
        fake.add(7, 1, 1);
        let gone = fake.give(7, 1, key(3), 4);
        assert_eq!(read(&mut t), [(3, 4, 1)]);
        let mut out = Vec::new();
        t.evicted(&gone, |d| out.push((d.key.local_port, d.bytes, d.packets)));
        assert_eq!(out, [(2, 1, 1)]);

        // A flow born and evicted between two drains: all of it comes with the record.
        let gone = fake.give(7, 1, key(4), 8);
        let born = fake.give(7, 1, key(5), 2);
        let mut out = Vec::new();
        t.evicted(&gone, |d| out.push((d.key.local_port, d.bytes, d.packets)));
        t.evicted(&born, |d| out.push((d.key.local_port, d.bytes, d.packets)));
        // The first record is of key 3, already read in full: nothing more to hand on.
        assert_eq!(out, [(4, 8, 1)]);
        assert_eq!(read(&mut t), [(5, 2, 1)]);
    }

    #[test]
    fn buckets_in_every_window_are_read() {
        // 8,192 buckets of 256 bytes: two windows.
        let mut fake = Fake::new(8192);
        let mut t = fake.table();
        for (port, b) in [(1, 0), (2, 4095), (3, 4096), (4, 8191)] {
            fake.give(b, 3, key(port), 10);
        }
        assert_eq!(
            read(&mut t),
            [(1, 10, 1), (2, 10, 1), (3, 10, 1), (4, 10, 1)]
        );
    }

    #[test]
    fn a_slot_being_rewritten_is_read_next_drain() {
        let mut fake = Fake::new(64);
        let mut t = fake.table();
        fake.give(9, 0, key(1), 100);
        // An odd sequence number: the program is giving the slot to another flow.
        fake.slot(9, 0).seq += 1;
        assert_eq!(read(&mut t), NOTHING);
        fake.slot(9, 0).seq += 1;
        assert_eq!(read(&mut t), [(1, 100, 1)]);
    }
}
