//! A developer's aid, not part of the product: the daemon's drain of the per-CPU flow tables
//! (`flowtab::Table::read_marked` into the `Tracker`) on an IPv4 table in this process's
//! memory, with every one of N flows moving each second. No kernel and no root, so a drain
//! can be profiled in seconds (`perf record -e cpu-clock -g --
//! target/release/examples/drain_model`). BENCHMARKS.md's figures come from the running
//! daemon (`cargo xtask bench`), not from this.
//!
//! `drain_model [FLOWS] [DRAINS]` (default 1,000,000 and 12); prints each drain's CPU time.
//! The table is sized as the daemon sizes it for `--flow-map-size 1048576` on 2 CPUs.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use netmon::{
    aggregate::Tracker,
    flowtab::{Sink, Table},
};
use netmon_common::{FlowKey, FlowKey4, TAB_WAYS, TabBucket, TabSlot};

/// This process's CPU time (user + system), in seconds.
fn cpu_s() -> f64 {
    // SAFETY: a zeroed rusage is valid; getrusage writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid rusage pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: drain_model [FLOWS] [DRAINS]"))
        .collect();
    let flows = args.first().copied().unwrap_or(1_000_000);
    let drains = args.get(1).copied().unwrap_or(12);
    let cpus = 2u32;
    let per_cpu = netmon::load::tab_buckets(1 << 20, cpus);
    let total = (per_cpu * cpus) as usize;
    let mut mem = vec![TabBucket::<FlowKey4>::default(); total];
    let dirty: Vec<AtomicU64> = (0..total.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    // Flow i in CPU i % cpus's part, where the program would put it; a full bucket keeps it out.
    let mut written = Vec::new();
    for i in 0..flows {
        let key = FlowKey4 {
            ifindex: 2,
            direction: 1,
            proto: 17,
            family: 4,
            flags: 0,
            local_port: 53,
            remote_port: 40000 + (i % 20000) as u16,
            local_addr: [192, 0, 2, 1],
            remote_addr: (0x0a00_0000u32 + i).to_be_bytes(),
        };
        let (b, _) = netmon_common::tab_place(&key.words(), i % cpus, per_cpu);
        let bucket = &mut mem[b as usize];
        let Some(way) = bucket.slots.iter().position(|s| s.packets == 0) else {
            continue;
        };
        bucket.slots[way] = TabSlot {
            bytes: 1000,
            packets: 10,
            first_seen_ns: 1,
            last_seen_ns: 1,
            key,
            seq: 2,
            ..TabSlot::default()
        };
        written.push((b as usize, way));
    }
    eprintln!(
        "{} of {flows} flows placed in {} slots",
        written.len(),
        total * TAB_WAYS
    );
    let base = mem.as_mut_ptr();
    // SAFETY: `mem` and `dirty` outlive the table; this thread writes them only between
    // drains, through `base`.
    let mut table = unsafe { Table::from_raw(base, total, dirty.as_ptr()) };
    let mut tracker = Tracker::default();
    let mut lookups = 0u64;
    for drain in 0..drains {
        let now = 1_000_000_000 * u64::from(drain + 2);
        for &(b, way) in &written {
            // SAFETY: within `mem`.
            let s = unsafe { &mut (*base.add(b)).slots[way] };
            s.bytes += 100;
            s.packets += 1;
            s.last_seen_ns = now;
            dirty[b / 64].fetch_or(1 << (b % 64), Ordering::Relaxed);
        }
        let (t0, c0) = (Instant::now(), cpu_s());
        table.take_marked();
        let mut st = tracker.begin_tick(1.0);
        table
            .read_marked(&mut Sink {
                tracker: &mut tracker,
                st: &mut st,
                lookup: |_: &FlowKey| {
                    lookups += 1;
                    None
                },
            })
            .expect("in-memory table");
        let out = tracker.finish_tick(st, now, u64::MAX, false, |_| {
            lookups += 1;
            None
        });
        eprintln!(
            "drain {drain}: {:.1} ms wall, {:.1} ms CPU, {} flows seen, {lookups} owner lookups so far",
            t0.elapsed().as_secs_f64() * 1e3,
            (cpu_s() - c0) * 1e3,
            out.seen,
        );
    }
}
