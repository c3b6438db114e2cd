//! netmon: an eBPF network monitor.
//!
//! The modules follow one packet's counters from the kernel to a Prometheus sample:
//! [`load`] attaches the programs -> [`drain`] reads the kernel maps (and [`sockdiag`] the
//! idle sockets) -> [`aggregate`] turns totals into deltas, rates, connections and process
//! and cgroup totals ([`cgroups`] names the owners' cgroups) -> [`classify`] scores
//! connections and detects attack patterns -> [`act`] (drop list, automatic response, alert
//! sinks) -> [`metrics`] and [`api`] expose them ([`export`] writes flows and events for
//! forensics). [`daemon`] runs that loop ([`reload`] applies a changed configuration to it); [`client`] is the CLI's way to ask a running
//! daemon.

pub mod act;
pub mod aggregate;
pub mod anon;
pub mod api;
pub mod cgroups;
pub mod classify;
pub mod client;
pub mod config;
pub mod daemon;
pub mod drain;
pub mod export;
pub mod files;
pub mod flowtab;
pub mod load;
pub mod mapmem;
pub mod metrics;
pub mod reload;
pub mod sockdiag;
#[cfg(test)]
pub(crate) mod test_support;
pub mod tls;

/// Gives the heap's free memory back to the kernel (glibc keeps it otherwise); a no-op
/// elsewhere.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
