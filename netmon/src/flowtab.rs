//! Stage 2 for `--flow-table per-cpu`: read the per-CPU flow tables in place.
//!
//! The programs keep each flow in a slot of the running CPU's part of `NETMON_TAB4` or
//! `NETMON_TAB6` (`netmon_common::TabSlot`), with counters that only grow while the slot
//! holds the flow. A slot's first packet in each drain epoch sets its bucket's bit in the
//! table's dirty bitmap; a slot given to another flow first sends its last contents through
//! `NETMON_EVICTED`. The daemon maps the tables and bitmaps into its memory (they are
//! `BPF_F_MMAPABLE` arrays), so a drain reads the marked buckets without a system call per
//! flow. The tracker keeps what it last read of each slot and takes what grew since, adding
//! up a flow's slots on several CPUs. What it read of a flow's first slot is in the flow's
//! entry (`FlowEntry::slot`), and the slot's cookie holds the entry's index, so a drain
//! reaches a moving flow without hashing its key; other slots are in a `SlotBook`.

use std::{
    collections::HashMap,
    os::fd::AsFd as _,
    sync::atomic::{AtomicU64, Ordering, fence},
};

use anyhow::{Context as _, Result};
use aya::maps::MapData;

use crate::mapmem::{MapMemory, page_size};
use netmon_common::{
    FlowKey, FlowKey4, TAB_LIVE_STRIDE, TAB_WAYS, TabBucket, TabEvicted, TabSlot, tab_live_buckets,
};

use crate::aggregate::{FlowSample, NO_SLOT, Owner, Seen, TickState, Tracker};

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

/// Drains after which an old flow's counters still waiting for its eviction record are
/// dropped (the record was lost: `evict_lost`).
const PENDING_DRAINS: u64 = 8;

/// Where a table's buckets are.
enum Memory {
    /// In this process (tests).
    Raw(*mut u8),
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

/// What the daemon last read of the slots of one family's table that are not in their
/// flow's entry (`FlowEntry::slot` holds the first slot a flow was read in): a flow's slots
/// on other CPUs, and slots of flows the tracker forgot (idle) while the slot still holds
/// them.
#[derive(Debug, Default)]
pub struct SlotBook {
    by_index: HashMap<u32, Seen, foldhash::fast::RandomState>,
    /// Slots read holding another flow (or another tenancy of the flow) than the one last
    /// read there, by (slot, that tenancy's seq): the old tenancy's counters as last read,
    /// until its eviction record comes, with the drain they were parked in.
    pending: HashMap<(u32, u32), (Seen, u64), foldhash::fast::RandomState>,
}

impl SlotBook {
    /// Parks `old`, a tenancy of its slot that is not the one read there now.
    fn park(&mut self, old: Seen, drain: u64) {
        self.pending.insert((old.index, old.seq), (old, drain));
    }

    /// What was last read of tenancy `seq` of slot `index`, taken out of the book (a flow
    /// now keeps it in its entry); another tenancy found under `index` is parked.
    fn take(&mut self, index: u32, seq: u32, drain: u64) -> Option<Seen> {
        if self.by_index.is_empty() && self.pending.is_empty() {
            return None;
        }
        match self.by_index.remove(&index) {
            Some(old) if old.seq == seq => return Some(old),
            Some(old) => self.park(old, drain),
            None => {}
        }
        self.pending.remove(&(index, seq)).map(|(s, _)| s)
    }

    /// Records `now`, as read in its slot (another of its flow's slots is in the flow's
    /// entry), and returns what was last read of the same tenancy.
    fn replace(&mut self, now: Seen, drain: u64) -> Option<Seen> {
        match self.by_index.insert(now.index, now) {
            Some(old) if old.seq == now.seq => Some(old),
            Some(old) => {
                self.park(old, drain);
                None
            }
            None => self.pending.remove(&(now.index, now.seq)).map(|(s, _)| s),
        }
    }

    /// Keeps `seen`, the slot of a flow the tracker removes (the slot may still hold it).
    pub(crate) fn orphan(&mut self, seen: Seen, drain: u64) {
        match self.by_index.get(&seen.index) {
            Some(other) if other.seq != seen.seq => self.park(seen, drain),
            _ => {
                self.by_index.insert(seen.index, seen);
            }
        }
    }

    /// Drops parked tenancies whose eviction record has not come in `PENDING_DRAINS` drains
    /// (it was lost: `evict_lost`).
    pub(crate) fn forget_pending(&mut self, drain: u64) {
        if !self.pending.is_empty() {
            self.pending
                .retain(|_, (_, at)| drain.saturating_sub(*at) < PENDING_DRAINS);
        }
    }
}

/// One family's table as the daemon reads it: the slots' memory and the dirty bitmap (what
/// was last read of each slot is the tracker's: `FlowEntry::slot`, `SlotBook`).
pub struct Table<K> {
    memory: Memory,
    /// Buckets in all CPUs' parts.
    buckets: usize,
    dirty: *const AtomicU64,
    /// Keeps the dirty bitmap mapped (a bit per bucket: small).
    _bitmap: Option<MapMemory>,
    _key: std::marker::PhantomData<K>,
    /// Buckets taken from the bitmap, read by the next `read_marked`.
    marked: Vec<u32>,
}

// SAFETY: the raw pointers point into the mappings the table owns (or, in tests, memory the
// test keeps alive and does not touch meanwhile).
unsafe impl<K: Send> Send for Table<K> {}
unsafe impl<K: Sync> Sync for Table<K> {}

impl<K: Copy> Table<K> {
    /// A table over `buckets` buckets at `slots` and its bitmap at `dirty` (a bit per bucket).
    ///
    /// # Safety
    /// Both must stay valid and writable (a drain writes slots' cookies) for the table's life.
    pub unsafe fn from_raw(
        slots: *mut TabBucket<K>,
        buckets: usize,
        dirty: *const AtomicU64,
    ) -> Self {
        Self {
            memory: Memory::Raw(slots.cast()),
            buckets,
            dirty,
            _bitmap: None,
            _key: std::marker::PhantomData,
            marked: Vec::new(),
        }
    }

    /// The table `map` (`buckets` buckets) with its bitmap `dirty` mapped.
    fn map(map: MapData, dirty: &MapData, name: &'static str, buckets: usize) -> Result<Self> {
        let bits = map_memory(dirty, name, 0, buckets.div_ceil(64) * 8, true)?;
        // SAFETY: the bitmap is as large as said and lives as long as the table; the raw
        // memory is replaced before use.
        let mut t = unsafe { Self::from_raw(std::ptr::null_mut(), buckets, bits.ptr().cast()) };
        t.memory = Memory::Map { map, name };
        t._bitmap = Some(bits);
        Ok(t)
    }
}

impl Memory {
    /// Calls `f` with a pointer to byte `start` of the table, valid up to byte `end`.
    fn with_window(&self, start: usize, end: usize, f: impl FnOnce(*mut u8)) -> Result<()> {
        // Writable: the drain writes slots' cookies (`TabSlot::cookie`).
        match self {
            // SAFETY: the caller of `from_raw` keeps the whole table valid.
            Self::Raw(p) => f(unsafe { p.add(start) }),
            Self::Map { map, name } => {
                let w = map_memory(map, name, start, end - start, true)?;
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

    /// Reads the buckets `take_marked` took: hands every occupied slot to `sink`, and writes
    /// back the cookie it returns.
    pub fn read_marked(&mut self, sink: &mut impl SlotSink<K>) -> Result<()> {
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
            let dirty = self.dirty;
            result = self.memory.with_window(start, end, |base| {
                let bucket = |b: u32| base.wrapping_add(b as usize * size - start);
                for (j, &b) in group.iter().enumerate() {
                    if let Some(&ahead) = group.get(j + PREFETCH_BUCKETS) {
                        // SAFETY: bucket `ahead` lies in the window.
                        unsafe { prefetch_bucket(bucket(ahead).cast(), sink) };
                    }
                    // SAFETY: bucket `b` lies in the window.
                    unsafe { read_bucket(b, bucket(b).cast(), dirty, sink) };
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
        result
    }

    /// Slots in all CPUs' parts.
    pub fn capacity(&self) -> usize {
        self.buckets * TAB_WAYS
    }
}

/// Buckets read ahead of the one being read, for the flows their slots hold: as many as it
/// takes for the daemon's entries to arrive from memory meanwhile.
const PREFETCH_BUCKETS: usize = 4;

/// Where a drain hands the slots it reads (`Tracker`, through `Tables::drain`).
pub trait SlotSink<K> {
    /// Slot `index` as read (occupied); returns a new cookie for it, if it needs one.
    fn slot(&mut self, index: u32, slot: &TabSlot<K>) -> Option<u32>;
    /// A slot that will be read soon carries `cookie`: fetch what it points at.
    fn prefetch(&self, cookie: u32);
}

/// A slot's cookie as a number (`TabSlot::cookie`: 24 bits, little-endian).
pub fn cookie_of<K>(s: &TabSlot<K>) -> u32 {
    cookie_value(s.cookie)
}

fn cookie_value(c: [u8; 3]) -> u32 {
    u32::from_le_bytes([c[0], c[1], c[2], 0])
}

/// Largest cookie (0: none).
pub const COOKIE_MAX: u32 = (1 << 24) - 1;

/// Asks `sink` to prefetch the flows of the slots at `p` (a bucket).
///
/// # Safety
/// `p` points at a bucket of the mapped table.
unsafe fn prefetch_bucket<K>(p: *const TabSlot<K>, sink: &impl SlotSink<K>) {
    for way in 0..TAB_WAYS {
        // SAFETY: the caller's promise; a hint, so a torn read does no harm.
        let c = cookie_value(unsafe { std::ptr::read_volatile(&raw const (*p.add(way)).cookie) });
        if c != 0 {
            sink.prefetch(c);
        }
    }
}

/// Reads bucket `b`, at `p`, into `sink`; a slot being rewritten marks the bucket in
/// `dirty` again, for the next drain.
///
/// # Safety
/// `p` points at bucket `b` of the mapped table (writable), `dirty` at its bitmap.
unsafe fn read_bucket<K: Copy>(
    b: u32,
    p: *mut TabSlot<K>,
    dirty: *const AtomicU64,
    sink: &mut impl SlotSink<K>,
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
        if let Some(c) = sink.slot((b as usize * TAB_WAYS + way) as u32, &s) {
            let c = c.to_le_bytes();
            // SAFETY: the caller's promise. The programs never read or write the cookie,
            // and a store to these bytes does not touch the fields they write.
            unsafe {
                std::ptr::write_volatile(&raw mut (*p.add(way)).cookie, [c[0], c[1], c[2]]);
            }
        }
    }
}

/// Both families' tables and the eviction ring.
pub struct Tables {
    v4: Table<FlowKey4>,
    v6: Table<FlowKey>,
    evicted: aya::maps::RingBuf<MapData>,
    /// Eviction records read since `take_evictions`.
    evictions: u64,
    /// `NETMON_TABLIVE` mapped read-only: each CPU's buckets in use, per family.
    live: MapMemory,
    /// CPUs with a part (and a line of `live`).
    cpus: usize,
    /// `NETMON_MARK4`, `NETMON_MARK6` and `NETMON_TABLIVE`, only mapped here, kept open: a
    /// program loaded after the start (XDP, or the TC ingress program, for an interface
    /// that appears later) was relocated against their descriptors when the object was, and
    /// found them closed, or another file's ("fd 43 is not pointing to valid bpf_map").
    _mapped: [MapData; 3],
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
        let live_map = data("NETMON_TABLIVE")?;
        let cpus = buckets(&live_map, "NETMON_TABLIVE")? / TAB_LIVE_STRIDE as usize;
        anyhow::ensure!(
            cpus > 0 && b4 % cpus == 0 && b6 % cpus == 0,
            "NETMON_TABLIVE has a line for {cpus} CPUs, which do not share the tables' \
             {b4} and {b6} buckets"
        );
        let live = map_memory(
            &live_map,
            "NETMON_TABLIVE",
            0,
            cpus * TAB_LIVE_STRIDE as usize * 8,
            false,
        )?;
        Ok(Self {
            v4: Table::map(t4, &d4, "NETMON_TAB4", b4)?,
            v6: Table::map(t6, &d6, "NETMON_TAB6", b6)?,
            _mapped: [d4, d6, live_map],
            evicted: aya::maps::RingBuf::try_from(
                ebpf.take_map("NETMON_EVICTED")
                    .context("eBPF object has no map NETMON_EVICTED")?,
            )?,
            evictions: 0,
            live,
            cpus,
        })
    }

    /// Takes the marked buckets of both tables (before the daemon advances the epoch).
    pub fn take_marked(&mut self) {
        self.v4.take_marked();
        self.v6.take_marked();
    }

    /// Reads what the tables counted since the last drain into `tracker` (drain `st`): the
    /// eviction ring, then the buckets `take_marked` took. `lookup` finds new flows' owners.
    pub fn drain(
        &mut self,
        tracker: &mut Tracker,
        st: &mut TickState,
        lookup: impl FnMut(&FlowKey) -> Option<Owner>,
    ) -> Result<()> {
        let Self {
            v4,
            v6,
            evicted,
            evictions,
            ..
        } = self;
        let mut sink = Sink {
            tracker,
            st,
            lookup,
        };
        while let Some(item) = evicted.next() {
            *evictions += 1;
            // A record is a TabEvicted of either family, told apart by length.
            match item.len() {
                n if n == size_of::<TabEvicted<FlowKey4>>() => {
                    // SAFETY: the programs write whole records; unaligned read of plain data.
                    let e = unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<TabEvicted<FlowKey4>>())
                    };
                    sink.evicted(&e);
                }
                n if n == size_of::<TabEvicted<FlowKey>>() => {
                    // SAFETY: as above.
                    let e = unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<TabEvicted<FlowKey>>())
                    };
                    sink.evicted(&e);
                }
                _ => {}
            }
        }
        v4.read_marked(&mut sink)?;
        v6.read_marked(&mut sink)
    }

    /// Eviction records read since the last call.
    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evictions)
    }

    /// Slots of each family's table in all CPUs' parts: [IPv4, IPv6].
    pub fn capacity(&self) -> [usize; 2] {
        [self.v4.capacity(), self.v6.capacity()]
    }

    /// Buckets of CPU `cpu`'s part of each family's table the programs use now (the first
    /// ones, as many as its flows needed so far: `NETMON_TABLIVE`): [IPv4, IPv6].
    pub fn buckets_in_use(&self, cpu: usize) -> [usize; 2] {
        assert!(cpu < self.cpus, "CPU {cpu} has no part");
        let words = self.live.ptr().cast::<u64>();
        let in_use = |family: usize, buckets: usize| {
            // SAFETY: the mapping holds `TAB_LIVE_STRIDE` words per CPU (`cpu` is one); the
            // programs write them, so the read is volatile.
            let word = unsafe {
                std::ptr::read_volatile(words.add(cpu * TAB_LIVE_STRIDE as usize + family))
            };
            tab_live_buckets(word, (buckets / self.cpus) as u32) as usize
        };
        [in_use(0, self.v4.buckets), in_use(1, self.v6.buckets)]
    }

    /// Slots of each family's table the programs use now, summed over the CPUs' parts:
    /// [IPv4, IPv6].
    pub fn slots_in_use(&self) -> [usize; 2] {
        (0..self.cpus).fold([0, 0], |[v4, v6], cpu| {
            let [b4, b6] = self.buckets_in_use(cpu);
            [v4 + b4 * TAB_WAYS, v6 + b6 * TAB_WAYS]
        })
    }
}

/// A table's key type: which `SlotBook` of the tracker its slots go to, and the flow key.
pub trait SlotKey: Copy {
    /// `Tracker::books` index: 0 for IPv4, 1 for IPv6 (the key's family decides, as in
    /// `Tracker::remove_flow`).
    const BOOK: usize;
    fn flow_key(&self) -> FlowKey;
}

impl SlotKey for FlowKey4 {
    const BOOK: usize = 0;
    fn flow_key(&self) -> FlowKey {
        (*self).into()
    }
}

impl SlotKey for FlowKey {
    const BOOK: usize = 1;
    fn flow_key(&self) -> FlowKey {
        *self
    }
}

/// A drain's slots going into the tracker.
pub struct Sink<'a, L> {
    pub tracker: &'a mut Tracker,
    pub st: &'a mut TickState,
    pub lookup: L,
}

impl<L: FnMut(&FlowKey) -> Option<Owner>> Sink<'_, L> {
    /// An evicted slot's last contents: adds what it grew since last read to its flow.
    pub fn evicted<K: SlotKey>(&mut self, e: &TabEvicted<K>) {
        let t = &mut *self.tracker;
        let key = e.slot.key.flow_key();
        let found = t.find(&key, cookie_of(&e.slot));
        let before = match found.map(|i| &mut t.flows[i].slot) {
            Some(own) if own.index == e.index && own.seq == e.slot.seq => {
                Some(std::mem::replace(own, Seen::NONE))
            }
            _ => t.books[K::BOOK].take(e.index, e.slot.seq, t.tick()),
        };
        if let Some(s) = growth(&key, &e.slot, before) {
            let (i, new) = match found {
                Some(i) => (i, false),
                None => t.entry_index(&key, s.first_ns, s.last_ns),
            };
            t.apply_at(self.st, i, new, &s, true, &mut self.lookup);
        }
    }
}

impl<K: SlotKey, L: FnMut(&FlowKey) -> Option<Owner>> SlotSink<K> for Sink<'_, L> {
    fn slot(&mut self, index: u32, slot: &TabSlot<K>) -> Option<u32> {
        let t = &mut *self.tracker;
        let key = slot.key.flow_key();
        let cookie = cookie_of(slot);
        let drain = t.tick();
        let now = Seen {
            index,
            seq: slot.seq,
            bytes: slot.bytes,
            packets: slot.packets,
        };
        let Some(i) = t.find(&key, cookie) else {
            // A flow the tracker does not hold: new, or forgotten (idle) while its slot kept
            // it, in which case only what it added since counts.
            let before = t.books[K::BOOK].take(index, slot.seq, drain);
            let Some(s) = growth(&key, slot, before) else {
                t.books[K::BOOK].orphan(now, drain);
                return None;
            };
            let (i, new) = t.entry_index(&key, slot.first_seen_ns, slot.last_seen_ns);
            t.flows[i].slot = now;
            t.apply_at(self.st, i, new, &s, true, &mut self.lookup);
            return new_cookie(i, cookie);
        };
        let own = &mut t.flows[i].slot;
        let before = if own.index == index {
            let old = std::mem::replace(own, now);
            if old.seq == slot.seq {
                Some(old)
            } else {
                // The flow came back to the same slot: its old tenancy's rest comes with the
                // eviction record.
                t.books[K::BOOK].park(old, drain);
                None
            }
        } else if own.index == NO_SLOT {
            *own = now;
            t.books[K::BOOK].take(index, slot.seq, drain)
        } else {
            t.books[K::BOOK].replace(now, drain)
        };
        if let Some(s) = growth(&key, slot, before) {
            t.apply_at(self.st, i, false, &s, true, &mut self.lookup);
        }
        new_cookie(i, cookie)
    }

    fn prefetch(&self, cookie: u32) {
        self.tracker.prefetch(cookie as usize - 1);
    }
}

/// The cookie for a slot of the flow at index `i` whose cookie is `old`, if it needs
/// writing.
fn new_cookie(i: usize, old: u32) -> Option<u32> {
    u32::try_from(i + 1)
        .ok()
        .filter(|&c| c <= COOKIE_MAX && c != old)
}

/// What a slot (or its eviction record) adds to its flow since `before` was read of it: none
/// when nothing.
fn growth<K>(key: &FlowKey, s: &TabSlot<K>, before: Option<Seen>) -> Option<FlowSample> {
    let (b, p) = before.map_or((0, 0), |b| (b.bytes, b.packets));
    let (bytes, packets) = (s.bytes.saturating_sub(b), s.packets.saturating_sub(p));
    (bytes != 0 || packets != 0).then_some(FlowSample {
        key: *key,
        bytes,
        packets,
        first_ns: s.first_seen_ns,
        last_ns: s.last_seen_ns,
        tcp_flags: s.tcp_flags,
    })
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

        /// The slot as it is, without marking its bucket.
        fn peek(&self, b: usize, way: usize) -> TabSlot<FlowKey4> {
            assert!(b < self.len);
            // SAFETY: within the buckets.
            unsafe { (*self.base.add(b)).slots[way] }
        }

        fn add(&mut self, b: usize, way: usize, bytes: u64) {
            let s = self.slot(b, way);
            s.bytes += bytes;
            s.packets += 1;
            s.last_seen_ns += 1;
        }
    }

    const NOTHING: [(u16, u64, u64); 0] = [];

    /// A tracker fed from a test table: each call is one drain, and returns what it added
    /// to each flow (by local port).
    #[derive(Default)]
    struct Drains {
        tracker: Tracker,
        /// Drains are full ones: the tracker forgets every flow they do not read.
        full: bool,
    }

    impl Drains {
        fn totals(&self) -> std::collections::BTreeMap<u16, (u64, u64)> {
            self.tracker
                .flows
                .iter()
                .map(|(k, e)| (k.local_port, (e.bytes, e.packets)))
                .collect()
        }

        fn drain(
            &mut self,
            f: impl FnOnce(&mut Sink<'_, fn(&FlowKey) -> Option<Owner>>),
        ) -> Vec<(u16, u64, u64)> {
            let before = self.totals();
            let mut st = self.tracker.begin_tick(1.0);
            f(&mut Sink {
                tracker: &mut self.tracker,
                st: &mut st,
                lookup: |_| None,
            });
            self.tracker
                .finish_tick(st, 0, u64::MAX, self.full, |_| None);
            self.totals()
                .into_iter()
                .filter_map(|(port, (b, p))| {
                    let (b0, p0) = before.get(&port).copied().unwrap_or_default();
                    (b != b0 || p != p0).then_some((port, b - b0, p - p0))
                })
                .collect()
        }

        fn read(&mut self, t: &mut Table<FlowKey4>) -> Vec<(u16, u64, u64)> {
            t.take_marked();
            self.drain(|sink| t.read_marked(sink).unwrap())
        }

        fn evicted(&mut self, e: &TabEvicted<FlowKey4>) -> Vec<(u16, u64, u64)> {
            self.drain(|sink| sink.evicted(e))
        }
    }

    #[test]
    fn hands_on_growth_per_slot_and_only_for_marked_buckets() {
        let mut fake = Fake::new(128);
        let mut t = fake.table();
        let mut d = Drains::default();
        fake.give(3, 0, key(1), 100);
        fake.give(100, 2, key(2), 60);
        assert_eq!(d.read(&mut t), [(1, 100, 1), (2, 60, 1)]);
        // Nothing marked: nothing read, even though nothing was cleared.
        assert_eq!(d.read(&mut t), NOTHING);
        fake.add(3, 0, 40);
        fake.add(3, 0, 10);
        assert_eq!(d.read(&mut t), [(1, 50, 2)]);
        assert_eq!(d.tracker.flows.len(), 2);
    }

    #[test]
    fn an_evicted_flow_is_counted_once_whatever_the_order() {
        // Eviction record read before the slot's new flow.
        let mut fake = Fake::new(64);
        let mut t = fake.table();
        let mut d = Drains::default();
        fake.give(7, 1, key(1), 100);
        assert_eq!(d.read(&mut t), [(1, 100, 1)]);
        fake.add(7, 1, 30);
        let gone = fake.give(7, 1, key(2), 9);
        assert_eq!(d.evicted(&gone), [(1, 30, 1)]);
        assert_eq!(d.read(&mut t), [(2, 9, 1)]);

        // The slot read holding the new flow first, the record in a later drain.
        fake.add(7, 1, 1);
        let gone = fake.give(7, 1, key(3), 4);
        assert_eq!(d.read(&mut t), [(3, 4, 1)]);
        assert_eq!(d.evicted(&gone), [(2, 1, 1)]);

        // A flow born and evicted between two drains: all of it comes with the record.
        let gone = fake.give(7, 1, key(4), 8);
        let born = fake.give(7, 1, key(5), 2);
        // The first record is of key 3, already read in full: nothing more to hand on.
        assert_eq!(d.evicted(&gone), NOTHING);
        assert_eq!(d.evicted(&born), [(4, 8, 1)]);
        assert_eq!(d.read(&mut t), [(5, 2, 1)]);
    }

    #[test]
    fn buckets_in_every_window_are_read() {
        // 8,192 buckets of 256 bytes: two windows.
        let mut fake = Fake::new(8192);
        let mut t = fake.table();
        let mut d = Drains::default();
        for (port, b) in [(1, 0), (2, 4095), (3, 4096), (4, 8191)] {
            fake.give(b, 3, key(port), 10);
        }
        assert_eq!(
            d.read(&mut t),
            [(1, 10, 1), (2, 10, 1), (3, 10, 1), (4, 10, 1)]
        );
    }

    #[test]
    fn a_slot_being_rewritten_is_read_next_drain() {
        let mut fake = Fake::new(64);
        let mut t = fake.table();
        let mut d = Drains::default();
        fake.give(9, 0, key(1), 100);
        // An odd sequence number: the program is giving the slot to another flow.
        fake.slot(9, 0).seq += 1;
        assert_eq!(d.read(&mut t), NOTHING);
        fake.slot(9, 0).seq += 1;
        assert_eq!(d.read(&mut t), [(1, 100, 1)]);
    }

    /// The local port of the flow slot (`b`, `way`)'s cookie points at.
    fn cookie_port(fake: &Fake, d: &Drains, b: usize, way: usize) -> Option<u16> {
        let c = cookie_of(&fake.peek(b, way)) as usize;
        d.tracker
            .flows
            .get_index(c.checked_sub(1)?)
            .map(|(k, _)| k.local_port)
    }

    #[test]
    fn cookies_find_flows_and_stale_ones_are_not_trusted() {
        let mut fake = Fake::new(64);
        let mut t = fake.table();
        let mut d = Drains::default();
        for port in 1..=3 {
            fake.give(port.into(), 0, key(port), 10 * u64::from(port));
        }
        assert_eq!(d.read(&mut t), [(1, 10, 1), (2, 20, 1), (3, 30, 1)]);
        for port in 1..=3 {
            assert_eq!(cookie_port(&fake, &d, port.into(), 0), Some(port));
        }
        // A full drain that reads flows 2 and 3 only: the tracker forgets flow 1, and flow 3
        // takes its index, so slot 1's cookie points at flow 3 and slot 3's past the end.
        fake.add(2, 0, 1);
        fake.add(3, 0, 2);
        d.full = true;
        assert_eq!(d.read(&mut t), [(2, 1, 1), (3, 2, 1)]);
        d.full = false;
        assert_eq!(d.tracker.flows.len(), 2);
        assert_eq!(cookie_port(&fake, &d, 1, 0), Some(3));
        // Slot 1 still holds flow 1: its next packet counts only what it adds, and slot 3's
        // flow is found by its key.
        fake.add(1, 0, 5);
        fake.add(3, 0, 7);
        assert_eq!(d.read(&mut t), [(1, 5, 1), (3, 7, 1)]);
        for port in 1..=3 {
            assert_eq!(cookie_port(&fake, &d, port.into(), 0), Some(port));
        }
    }

    #[test]
    fn a_flow_in_slots_of_two_cpus_is_their_sum() {
        let mut fake = Fake::new(64);
        let mut t = fake.table();
        let mut d = Drains::default();
        fake.give(1, 0, key(1), 10);
        fake.give(40, 2, key(1), 5);
        assert_eq!(d.read(&mut t), [(1, 15, 2)]);
        fake.add(1, 0, 4);
        fake.add(40, 2, 6);
        assert_eq!(d.read(&mut t), [(1, 10, 2)]);
        // The second slot goes to another flow: its last growth comes with the record.
        fake.add(40, 2, 3);
        let gone = fake.give(40, 2, key(2), 1);
        assert_eq!(d.evicted(&gone), [(1, 3, 1)]);
        fake.add(1, 0, 2);
        assert_eq!(d.read(&mut t), [(1, 2, 1), (2, 1, 1)]);
    }

    #[test]
    fn a_flow_given_its_slot_again_counts_both_tenancies_once() {
        let mut fake = Fake::new(64);
        let mut t = fake.table();
        let mut d = Drains::default();
        fake.give(5, 0, key(1), 10);
        assert_eq!(d.read(&mut t), [(1, 10, 1)]);
        fake.add(5, 0, 2);
        let gone = fake.give(5, 0, key(1), 4);
        // The slot is read before the record of its old tenancy.
        assert_eq!(d.read(&mut t), [(1, 4, 1)]);
        assert_eq!(d.evicted(&gone), [(1, 2, 1)]);
        fake.add(5, 0, 1);
        assert_eq!(d.read(&mut t), [(1, 1, 1)]);
    }
}
