//! Stage 1: load the eBPF object, size its maps, attach the traffic programs to each
//! interface and the socket-ownership hooks, choosing at run time among the hooks this
//! kernel has, and say which were chosen.

pub mod btf;
pub mod iface;
pub mod tracefs;

use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, KProbe, LinkOrder, RawTracePoint,
        SchedClassifier, TcAttachType, TracePoint, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
};
use netmon_common::config;
use serde::Serialize;
use tracing::{info, warn};

/// The eBPF object built by `cargo xtask build`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netmon.bpf.o"));

/// Priority and handle of netmon's cls_bpf filter on kernels without TCX ("NM").
const TC_PRIO: u16 = 0x4e4d;
const TC_HANDLE: TcHandle = TcHandle::new(0, 0x4e4d);

/// Map sizes; every one is a `max_entries` in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MapSizes {
    /// Entries of each flow map: the IPv4 one and the IPv6 one.
    pub flows: u32,
    pub sockets: u32,
    pub ports: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            flows: 262_144,
            sockets: 65_536,
            ports: 16_384,
        }
    }
}

/// One hook: what it is for, how it is attached, and whether it is active.
#[derive(Debug, Clone, Serialize)]
pub struct Hook {
    /// What the hook does, e.g. `tcp_connect`, `ingress`.
    pub purpose: String,
    /// `xdp-driver`, `xdp-skb`, `tcx`, `tc-clsact` (ingress too), `kprobe`, `tracepoint`.
    pub kind: String,
    /// Function, tracepoint or interface it is attached to.
    pub target: String,
    pub active: bool,
    /// Why a hook is inactive, or which fallback it stands in for.
    pub note: String,
}

/// A monitored interface.
#[derive(Debug, Clone, Serialize)]
pub struct Monitored {
    pub name: String,
    pub ifindex: u32,
}

/// Everything attached. The traffic programs' links are pinned under `<pin_dir>/links`, so
/// that a daemon that dies (SIGKILL, crash) leaves them attached and the drop list keeps
/// dropping; the next daemon takes them over. [`Attached::detach`] is the clean stop: it
/// unpins, then drops every link.
pub struct Attached {
    pub ebpf: Ebpf,
    pub hooks: Vec<Hook>,
    pub interfaces: Vec<Monitored>,
    /// Each monitored interface's links and lock, in the order of `interfaces`.
    links: Vec<Links>,
    /// How the traffic programs are attached, for interfaces that come later.
    how: TrafficAttach,
}

impl Attached {
    /// Unpins and detaches every program.
    pub fn detach(self) {
        for l in &self.links {
            l.unpin();
        }
        drop(self);
    }

    /// Attaches the traffic programs to `name`, an interface that appeared (or came back)
    /// after the start, as to those of the start: its hooks join `hooks`. An interface
    /// that another netmon monitors, or that refuses the programs, is an error and nothing
    /// of it stays attached.
    pub fn attach_interface(&mut self, name: &str) -> Result<&Monitored> {
        let i = Monitored {
            name: name.to_string(),
            ifindex: iface::ifindex(name)?,
        };
        let mut hooks = Vec::new();
        let links = self.how.attach(&mut self.ebpf, &i, &mut hooks)?;
        log_hooks(&hooks);
        self.hooks.extend(hooks);
        self.links.push(links);
        self.interfaces.push(i);
        Ok(self.interfaces.last().expect("pushed"))
    }

    /// Forgets the interface `ifindex`, which is gone (the kernel detached its programs with
    /// it): unpins its links, releases its lock and drops its hooks.
    pub fn forget_interface(&mut self, ifindex: u32) -> Option<Monitored> {
        let at = self.interfaces.iter().position(|i| i.ifindex == ifindex)?;
        let i = self.interfaces.remove(at);
        let links = self.links.remove(at);
        links.unpin();
        drop(links);
        self.hooks.retain(|h| {
            !(h.target == i.name && matches!(h.purpose.as_str(), "ingress" | "egress"))
        });
        Some(i)
    }
}

/// `FromStr` for a setting's enum from its names, refusing any other name with the list of
/// those it takes: `named_settings!(TcMode, "TC attach mode", "auto" => Auto, ...)`.
macro_rules! named_settings {
    ($ty:ident, $what:literal, $($name:literal => $variant:ident),+ $(,)?) => {
        impl std::str::FromStr for $ty {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => bail!("bad {} `{s}`: use {}", $what, one_of(&[$($name),+])),
                }
            }
        }
    };
}

/// `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// How the egress program is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TcMode {
    /// TCX on Linux 6.6+, clsact before.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

named_settings!(TcMode, "TC attach mode", "auto" => Auto, "tcx" => Tcx, "clsact" => Clsact);

/// How the ingress program is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XdpAttach {
    /// XDP in native (driver) mode where the driver has it, except on a veth; elsewhere the
    /// TC ingress hook. Native XDP on a veth end turns TSO off on its peer and moves the end's
    /// receive to a NAPI ring: TCP into that end fell to ~30% of its throughput (an empty
    /// XDP program, this project's veth benchmark pair). Generic XDP, where the driver has
    /// no native mode, copies every frame whose skb lacks XDP's 256 bytes of headroom (or is
    /// cloned or paged) into a new head before the program sees it, and its switch runs on
    /// every frame of every device: 64-byte datagrams into a veth end ran at ~91% of their
    /// rate with it, the copy costing ~4x the program. The TC ingress hook reads the skb as
    /// it is.
    #[default]
    Auto,
    /// Native (driver) mode only: refused where the driver has none.
    Driver,
    /// Generic (skb) mode everywhere.
    Skb,
    /// The TC ingress hook everywhere (TCX or clsact, as `--tc-attach` says).
    Tc,
}

named_settings!(XdpAttach, "XDP attach mode", "auto" => Auto, "driver" => Driver, "skb" => Skb, "tc" => Tc);

/// How UDP senders are attributed to processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UdpHook {
    /// The cgroup hooks on connect() and addressed sends where the kernel takes them (the
    /// egress program then reads the owner they keep on the socket; no program runs per
    /// datagram on a connected socket), else a hook on every sendmsg.
    #[default]
    Auto,
    /// A hook on every sendmsg (kprobe, raw tracepoint or tracepoint): nothing attached to
    /// the cgroup hierarchy.
    PerSend,
}

named_settings!(UdpHook, "UDP hook", "auto" => Auto, "per-send" => PerSend);

/// Where the traffic programs count flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowTable {
    /// The kernel's LRU hash maps `NETMON_FLOWS4`/`NETMON_FLOWS6` (`netmon_xdp`,
    /// `netmon_tc_egress`): shared entries, atomic adds, the kernel evicts.
    Lru,
    /// Per-CPU tables the programs index themselves, `NETMON_TAB4`/`NETMON_TAB6`
    /// (`netmon_xdp_tab`, `netmon_tc_tab`): plain adds to the running CPU's slot, a new flow a
    /// write of one slot, evicted flows' final counters through a ring. The default.
    #[default]
    PerCpu,
}

impl FlowTable {
    /// (XDP program, TC egress program, TC ingress program).
    pub fn programs(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Lru => ("netmon_xdp", "netmon_tc_egress", "netmon_tc_ingress"),
            Self::PerCpu => ("netmon_xdp_tab", "netmon_tc_tab", "netmon_tci_tab"),
        }
    }

    /// The continuation after a pull of the TC egress (or `ingress`) program, and its
    /// NETMON_TC_TAIL slot.
    pub fn tc_pulled(self, ingress: bool) -> (&'static str, u32) {
        let name = match (self, ingress) {
            (Self::Lru, false) => "netmon_tc_pulled",
            (Self::PerCpu, false) => "netmon_tc_tab_pulled",
            (Self::Lru, true) => "netmon_tci_pulled",
            (Self::PerCpu, true) => "netmon_tci_tab_pulled",
        };
        (
            name,
            netmon_common::tc_tail_slot(self == Self::PerCpu, ingress),
        )
    }
}

named_settings!(FlowTable, "flow table", "per-cpu" => PerCpu, "lru" => Lru);

/// Buckets per CPU of the per-CPU flow tables for `flows` (the flow-map size, per family)
/// on `ncpus` possible CPUs: each CPU gets room for twice its share of the flows (a flow
/// may be counted on several CPUs, and load is rarely even), but at least 16,384 slots,
/// and never more than `flows` (rounded up to a power of two, at least 64 buckets).
pub fn tab_buckets(flows: u32, ncpus: u32) -> u32 {
    let ways = netmon_common::TAB_WAYS as u64;
    let per_cpu = (u64::from(flows) * 2 / u64::from(ncpus.max(1)))
        .max(16_384)
        .min(u64::from(flows).max(ways * 64));
    (per_cpu.div_ceil(ways) as u32).next_power_of_two().max(64)
}

/// The programs' `WEAK_STORE_ORDER`: whether this CPU may make a program's stores visible to
/// another CPU out of program order (every architecture netmon may run on but x86), so that
/// the per-CPU tables' writers must order them with atomic instructions for the daemon's
/// reads of the mapped tables.
pub static WEAK_STORE_ORDER: u32 = if cfg!(any(target_arch = "x86_64", target_arch = "x86")) {
    0
} else {
    1
};

/// Sizes the flow store `table` uses for `flows` per family, and shrinks the other one to
/// almost nothing (the object holds both; the kernel creates every map it declares).
pub fn size_flow_maps(loader: &mut EbpfLoader<'_>, table: FlowTable, flows: u32) -> Result<()> {
    let ncpus = crate::mapmem::possible_cpus()? as u32;
    // The other store's rings shrink to a page (the smallest ring buffer).
    let page = crate::mapmem::page_size() as u32;
    let (lru, dirty_ring, buckets, evicted_ring) = match table {
        FlowTable::Lru => (flows, None, 64, Some(page)),
        FlowTable::PerCpu => (1, Some(page), tab_buckets(flows, ncpus), None),
    };
    if let Some(bytes) = dirty_ring {
        loader.map_max_entries("NETMON_DIRTY", bytes);
    }
    if let Some(bytes) = evicted_ring {
        loader.map_max_entries("NETMON_EVICTED", bytes);
    }
    // Leaked so it outlives the loader's borrow: one u32 per load.
    let buckets: &'static u32 = Box::leak(Box::new(buckets));
    loader
        .override_global("WEAK_STORE_ORDER", &WEAK_STORE_ORDER, true)
        .map_max_entries("NETMON_FLOWS4", lru)
        .map_max_entries("NETMON_FLOWS6", lru)
        .override_global("TAB_BUCKETS", buckets, true)
        .map_max_entries("NETMON_TAB4", ncpus * buckets)
        .map_max_entries("NETMON_TAB6", ncpus * buckets)
        .map_max_entries("NETMON_TABFP4", ncpus * buckets)
        .map_max_entries("NETMON_TABFP6", ncpus * buckets)
        .map_max_entries("NETMON_MARK4", ncpus * buckets / 64)
        .map_max_entries("NETMON_MARK6", ncpus * buckets / 64)
        .map_max_entries("NETMON_TABLIVE", ncpus * netmon_common::TAB_LIVE_STRIDE);
    Ok(())
}

pub struct LoadOptions {
    pub xdp_attach: XdpAttach,
    pub tc_mode: TcMode,
    pub udp_hook: UdpHook,
    pub flow_table: FlowTable,
    pub interfaces: Vec<String>,
    pub sizes: MapSizes,
    /// Where the per-interface lock files live.
    pub run_dir: PathBuf,
    /// bpffs directory of the pinned drop-list maps and program links.
    pub pin_dir: PathBuf,
}

/// Holds an exclusive flock on `<run_dir>/<netns>-<ifname>.lock` so that a second netmon on
/// the same interface fails with a clear message instead of attaching beside the first.
struct InterfaceLock {
    _file: File,
}

impl InterfaceLock {
    fn acquire(run_dir: &Path, ifname: &str) -> Result<Self> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let path = run_dir.join(format!("{}-{ifname}.lock", iface::netns_inode()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "interface `{ifname}` is already monitored by another netmon (pid {}; lock {}): \
                 stop that instance first",
                holder.trim(),
                path.display()
            );
        }
        file.set_len(0).ok();
        writeln!(file, "{}", std::process::id()).ok();
        Ok(Self { _file: file })
    }
}

/// Sets the loader's globals from the running kernel: `struct sock` offsets from BTF and
/// tracepoint record offsets from tracefs (defaults where either is unavailable, said in
/// `notes`). Returns whether `sk_protocol`'s offset is known, which the raw tracepoint on
/// UDP sends needs.
pub fn kernel_globals(loader: &mut EbpfLoader<'_>, notes: &mut Vec<String>) -> KernelFacts {
    let btf = btf::Btf::from_sys_fs();
    let facts = KernelFacts {
        sk_protocol_known: sock_offsets_globals(loader, btf.as_ref(), notes),
        total_retrans_known: tcp_sock_globals(loader, btf.as_ref(), notes),
    };
    tracepoint_globals(loader, notes);
    facts
}

/// Which of the kernel offsets without a default BTF gave: the hooks that read them are
/// attached only where it did.
#[derive(Clone, Copy, Debug)]
pub struct KernelFacts {
    /// `struct sock`'s `sk_protocol` (the raw tracepoint on UDP sends).
    pub sk_protocol_known: bool,
    /// `struct tcp_sock`'s `total_retrans` (the retransmit tracepoint).
    pub total_retrans_known: bool,
}

/// `struct tcp_sock`'s `total_retrans`, which the retransmit tracepoint reads; returns
/// whether BTF gave it (the tracepoint is attached only then).
fn tcp_sock_globals(
    loader: &mut EbpfLoader<'_>,
    btf: Result<&btf::Btf, &anyhow::Error>,
    notes: &mut Vec<String>,
) -> bool {
    match btf
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|b| Ok(b.member_offset("tcp_sock", "total_retrans")?))
    {
        Ok(off) => {
            let off: &'static u32 = Box::leak(Box::new(off));
            loader.override_global("TCP_SOCK_OFF_TOTAL_RETRANS", off, true);
            true
        }
        Err(e) => {
            notes.push(format!(
                "struct tcp_sock's total_retrans offset from BTF unavailable ({e:#}); TCP \
                 retransmissions are not counted per process"
            ));
            false
        }
    }
}

fn sock_offsets_globals(
    loader: &mut EbpfLoader<'_>,
    btf: Result<&btf::Btf, &anyhow::Error>,
    hooks_note: &mut Vec<String>,
) -> bool {
    match btf
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|b| Ok(btf::SockOffsets::from_btf(b)?))
    {
        Ok(o) => {
            // Leaked so they outlive the loader's borrow; a handful of u32s, once.
            let vals: &'static [u32; 9] = Box::leak(Box::new([
                o.daddr,
                o.rcv_saddr,
                o.dport,
                o.num,
                o.family,
                o.v6_daddr,
                o.v6_rcv_saddr,
                o.protocol.unwrap_or(netmon_common::sock_offsets::UNKNOWN),
                o.net.unwrap_or(netmon_common::sock_offsets::UNKNOWN),
            ]));
            for (name, v) in [
                "SK_OFF_DADDR",
                "SK_OFF_RCV_SADDR",
                "SK_OFF_DPORT",
                "SK_OFF_NUM",
                "SK_OFF_FAMILY",
                "SK_OFF_V6_DADDR",
                "SK_OFF_V6_RCV_SADDR",
                "SK_OFF_PROTOCOL",
                "SK_OFF_NET",
            ]
            .into_iter()
            .zip(vals.iter())
            {
                loader.override_global(name, v, true);
            }
            o.protocol.is_some()
        }
        Err(e) => {
            hooks_note.push(format!(
                "struct sock offsets from BTF unavailable ({e:#}); using the x86_64 defaults"
            ));
            false
        }
    }
}

fn tracepoint_globals(loader: &mut EbpfLoader<'_>, notes: &mut Vec<String>) {
    let mut set = |pairs: Vec<(&'static str, u32)>| {
        let leaked: &'static [(&'static str, u32)] = Box::leak(pairs.into_boxed_slice());
        for (name, v) in leaked {
            loader.override_global(name, v, true);
        }
    };
    match tracefs::Format::read("sock", "inet_sock_set_state").and_then(|f| {
        Ok(vec![
            ("TP_SS_SKADDR", f.offset("skaddr", 8)?),
            ("TP_SS_OLDSTATE", f.offset("oldstate", 4)?),
            ("TP_SS_NEWSTATE", f.offset("newstate", 4)?),
            ("TP_SS_SPORT", f.offset("sport", 2)?),
            ("TP_SS_DPORT", f.offset("dport", 2)?),
            ("TP_SS_FAMILY", f.offset("family", 2)?),
            ("TP_SS_PROTOCOL", f.offset("protocol", 2)?),
            ("TP_SS_SADDR", f.offset("saddr", 4)?),
            ("TP_SS_DADDR", f.offset("daddr", 4)?),
            ("TP_SS_SADDR_V6", f.offset("saddr_v6", 16)?),
            ("TP_SS_DADDR_V6", f.offset("daddr_v6", 16)?),
        ])
    }) {
        Ok(pairs) => set(pairs),
        Err(e) => notes.push(format!("{e:#}")),
    }
    match tracefs::Format::read("tcp", "tcp_retransmit_skb").and_then(|f| {
        Ok(vec![
            ("TP_RT_SKADDR", f.offset("skaddr", 8)?),
            ("TP_RT_SPORT", f.offset("sport", 2)?),
            ("TP_RT_DPORT", f.offset("dport", 2)?),
            ("TP_RT_FAMILY", f.offset("family", 2)?),
            ("TP_RT_SADDR", f.offset("saddr", 4)?),
            ("TP_RT_DADDR", f.offset("daddr", 4)?),
            ("TP_RT_SADDR_V6", f.offset("saddr_v6", 16)?),
            ("TP_RT_DADDR_V6", f.offset("daddr_v6", 16)?),
        ])
    }) {
        Ok(pairs) => set(pairs),
        Err(e) => notes.push(format!("{e:#}")),
    }
    if let Ok(pairs) = tracefs::Format::read("sock", "sock_send_length").and_then(|f| {
        Ok(vec![
            ("TP_SL_SK", f.offset("sk", 8)?),
            ("TP_SL_PROTOCOL", f.offset("protocol", 2)?),
        ])
    }) {
        set(pairs);
    }
}

/// Loads and attaches everything. `before_attach` runs once the maps exist and before any
/// program sees a packet (the drop list is applied there). Fails only when traffic accounting
/// itself cannot run; a missing attribution hook is reported in `hooks` and logged.
pub fn load_and_attach(
    opts: &LoadOptions,
    before_attach: impl FnOnce(&mut Ebpf) -> Result<()>,
) -> Result<Attached> {
    let interfaces = opts
        .interfaces
        .iter()
        .map(|n| {
            Ok(Monitored {
                name: n.clone(),
                ifindex: iface::ifindex(n)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut locks = opts
        .interfaces
        .iter()
        .map(|i| InterfaceLock::acquire(&opts.run_dir, i).map(Some))
        .collect::<Result<Vec<_>>>()?;

    let mut notes = Vec::new();
    if let Err(e) = tracefs::ensure_mounted() {
        notes.push(format!("{e:#}; tracepoint hooks will be unavailable"));
    }
    crate::act::droplist::ensure_bpffs(&opts.pin_dir)?;
    let link_dir = opts.pin_dir.join("links");
    std::fs::create_dir_all(&link_dir)
        .with_context(|| format!("creating {}", link_dir.display()))?;
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(&opts.pin_dir)
        .map_max_entries("NETMON_SOCK_PROC", opts.sizes.sockets)
        .map_max_entries("NETMON_PORT_OWNER", opts.sizes.ports)
        .map_max_entries("NETMON_LISTEN_NS", opts.sizes.ports)
        .map_max_entries("NETMON_SK_OWNER", opts.sizes.ports);
    size_flow_maps(&mut loader, opts.flow_table, opts.sizes.flows)?;
    crate::act::droplist::size_ban_counters(&mut loader)?;
    let facts = kernel_globals(&mut loader, &mut notes);
    for n in &notes {
        warn!("{n}");
    }
    raise_memlock_limit();
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object into the kernel (are you root / CAP_BPF?)")?;
    before_attach(&mut ebpf)?;

    let mut hooks = Vec::new();
    let how = TrafficAttach::new(opts, link_dir);
    load_tc(&mut ebpf, opts.flow_table, false)?;
    let mut links = Vec::with_capacity(interfaces.len());
    let attached = (|| {
        for (i, lock) in interfaces.iter().zip(&mut locks) {
            links.push(how.attach_locked(&mut ebpf, i, &mut hooks, lock.take())?);
        }
        let watch_loopback = interfaces.iter().any(|i| iface::is_loopback(&i.name));
        attach_attribution(&mut ebpf, &mut hooks, facts, opts.udp_hook, watch_loopback)
    })();
    if let Err(e) = attached {
        // A start that fails leaves nothing attached: the links made are unpinned (and
        // detached as they are dropped).
        for l in &links {
            l.unpin();
        }
        return Err(e);
    }
    log_hooks(&hooks);
    Ok(Attached {
        ebpf,
        hooks,
        interfaces,
        links,
        how,
    })
}

/// Logs each hook, active (info) or not (a warning, with why).
fn log_hooks(hooks: &[Hook]) {
    for h in hooks {
        if h.active {
            info!(purpose = %h.purpose, kind = %h.kind, target = %h.target, note = %h.note, "hook active");
        } else {
            warn!(purpose = %h.purpose, kind = %h.kind, target = %h.target, note = %h.note, "hook inactive");
        }
    }
}

/// One interface's links (pinned, or clsact filters, which cannot be) and its lock.
#[derive(Default)]
struct Links {
    pin_paths: Vec<PathBuf>,
    pinned: Vec<PinnedLink>,
    /// clsact links (kernels before TCX) cannot be pinned; kept alive here.
    tc: Vec<SchedClassifierLink>,
    _lock: Option<InterfaceLock>,
}

impl Links {
    /// Removes the pins, so that dropping the links detaches them.
    fn unpin(&self) {
        for p in &self.pin_paths {
            if let Err(e) = std::fs::remove_file(p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("could not unpin {}: {e}", p.display());
            }
        }
    }
}

/// `xdp` attached to `name` in generic (skb) mode.
fn attach_skb(xdp: &mut Xdp, name: &str) -> Result<aya::programs::xdp::XdpLinkId> {
    xdp.attach(name, XdpMode::Skb).with_context(|| {
        format!("attaching XDP to `{name}` in generic (skb) mode; is another XDP program attached?")
    })
}

/// Pins a fresh link, so that it outlives this process until a clean stop.
fn pin_link(fd: FdLink, path: PathBuf, links: &mut Links) {
    match fd.pin(&path) {
        Ok(p) => {
            links.pinned.push(p);
            links.pin_paths.push(path);
        }
        Err(e) => warn!(
            "could not pin {}: {e}; it detaches when netmon exits",
            path.display()
        ),
    }
}

/// A link a previous daemon left pinned at `path`, if it is of the kind `T`; a stale or
/// foreign pin is removed.
fn pinned_link<T: TryFrom<FdLink>>(path: &Path) -> Option<T> {
    let fd = FdLink::from(PinnedLink::from_pin(path).ok()?);
    match T::try_from(fd) {
        Ok(l) => Some(l),
        Err(_) => {
            warn!(
                "removing {}: not a link netmon can take over",
                path.display()
            );
            std::fs::remove_file(path).ok();
            None
        }
    }
}

/// Removes the pin of a link that cannot be taken over: one that a previous netmon left on
/// an interface that has gone since (the kernel detached it with the device), whose name a
/// new interface now has.
fn remove_defunct_pin(path: &Path, e: &dyn std::fmt::Display) {
    warn!(
        "removing {}: a link of a previous netmon that cannot be taken over ({e}); its \
         interface has gone since",
        path.display()
    );
    std::fs::remove_file(path).ok();
}

/// Kernels before 5.11 charge maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK; map creation may fail on kernels before 5.11"
        );
    }
}

/// How the traffic programs (ingress and egress) are attached to an interface: the same for
/// those of the start and those that come later.
struct TrafficAttach {
    link_dir: PathBuf,
    run_dir: PathBuf,
    netns: u64,
    xdp_attach: XdpAttach,
    table: FlowTable,
    tcx: bool,
}

impl TrafficAttach {
    fn new(opts: &LoadOptions, link_dir: PathBuf) -> Self {
        let tcx = match opts.tc_mode {
            TcMode::Tcx => true,
            TcMode::Clsact => false,
            TcMode::Auto => aya::util::KernelVersion::current()
                .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                .unwrap_or(false),
        };
        Self {
            link_dir,
            run_dir: opts.run_dir.clone(),
            netns: iface::netns_inode(),
            xdp_attach: opts.xdp_attach,
            table: opts.flow_table,
            tcx,
        }
    }

    /// `attach_locked` with `i`'s lock taken first.
    fn attach(&self, ebpf: &mut Ebpf, i: &Monitored, hooks: &mut Vec<Hook>) -> Result<Links> {
        let lock = InterfaceLock::acquire(&self.run_dir, &i.name)?;
        self.attach_locked(ebpf, i, hooks, Some(lock))
    }

    /// Attaches the ingress and the egress program to `i` (the egress program loaded
    /// already), adding their hooks to `hooks`; on an error, what was attached to `i` is
    /// detached again.
    fn attach_locked(
        &self,
        ebpf: &mut Ebpf,
        i: &Monitored,
        hooks: &mut Vec<Hook>,
        lock: Option<InterfaceLock>,
    ) -> Result<Links> {
        let mut links = Links {
            _lock: lock,
            ..Links::default()
        };
        let (ingress, egress) = match self.attach_both(ebpf, i, &mut links) {
            Ok(kinds) => kinds,
            Err(e) => {
                links.unpin();
                return Err(e);
            }
        };
        for (purpose, (kind, note)) in [("ingress", ingress), ("egress", egress)] {
            hooks.push(Hook {
                purpose: purpose.into(),
                kind: kind.into(),
                target: i.name.clone(),
                active: true,
                note,
            });
        }
        Ok(links)
    }

    #[expect(
        clippy::type_complexity,
        reason = "the two hooks' (kind, note), named by their places"
    )]
    fn attach_both(
        &self,
        ebpf: &mut Ebpf,
        i: &Monitored,
        links: &mut Links,
    ) -> Result<((&'static str, String), (&'static str, String))> {
        let ingress = self.attach_ingress(ebpf, i, links)?;
        let (_, tc_name, _) = self.table.programs();
        let pin = self.link_dir.join(format!("{}-{}-tc", self.netns, i.name));
        let (kind, note) = attach_tc(ebpf, tc_name, i, TcAttachType::Egress, self.tcx, pin, links)?;
        Ok((ingress, (kind, note.into())))
    }
}

impl TrafficAttach {
    /// Attaches the ingress program to `i`: XDP in native mode where its driver has it (not on
    /// a veth, whose peer native XDP would leave without TSO), else the TC ingress program, as
    /// `xdp_attach` asks; a link a previous netmon left pinned is taken over as it is. Returns
    /// the hook's kind and note.
    fn attach_ingress(
        &self,
        ebpf: &mut Ebpf,
        i: &Monitored,
        links: &mut Links,
    ) -> Result<(&'static str, String)> {
        let (link_dir, netns, mode, table, tcx) = (
            &self.link_dir,
            self.netns,
            self.xdp_attach,
            self.table,
            self.tcx,
        );
        let (xdp_name, _, tc_in_name) = table.programs();
        let xdp_pin = link_dir.join(format!("{netns}-{}-xdp", i.name));
        let tc_pin = link_dir.join(format!("{netns}-{}-tcin", i.name));
        if let Some(link) = pinned_link::<XdpLink>(&xdp_pin) {
            // A previous netmon died with its link pinned: swap our program in, atomically.
            let xdp = loaded_xdp(ebpf, xdp_name)?;
            match xdp.attach_to_link(link) {
                Ok(_) => {
                    links.pin_paths.push(xdp_pin);
                    return Ok((
                        "xdp-link",
                        "took over the pinned link of a previous netmon".into(),
                    ));
                }
                Err(e) => remove_defunct_pin(&xdp_pin, &e),
            }
        }
        let tc_ingress = |ebpf: &mut Ebpf, links: &mut Links, why: String| {
            load_tc(ebpf, table, true)?;
            let (kind, took_over) = attach_tc(
                ebpf,
                tc_in_name,
                i,
                TcAttachType::Ingress,
                tcx,
                tc_pin.clone(),
                links,
            )?;
            let note = if took_over.is_empty() {
                why
            } else {
                took_over.to_string()
            };
            Ok::<_, anyhow::Error>((kind, note))
        };
        if pinned_link::<SchedClassifierLink>(&tc_pin).is_some() {
            // A previous netmon's TC ingress link: taken over where it is (`attach_tc`).
            return tc_ingress(ebpf, links, String::new());
        }
        // Only `auto` asks what the device is.
        let veth = mode == XdpAttach::Auto && iface::driver(&i.name).is_some_and(|d| d == "veth");
        if !tcx && mode != XdpAttach::Tc && !veth {
            // Before TCX, a killed netmon's TC ingress filter stays attached (it is not an fd):
            // it is taken over where it is, as a pinned link is, rather than left counting and
            // dropping beside XDP.
            load_tc(ebpf, table, true)?;
            let prog: &mut SchedClassifier = typed(ebpf, tc_in_name)?;
            if let Some(id) = take_over_clsact(prog, &i.name, TcAttachType::Ingress) {
                links.tc.push(prog.take_link(id)?);
                return Ok((
                    "tc-clsact",
                    "took over the clsact filter of a previous netmon".into(),
                ));
            }
        }
        let (id, kind, note) = match mode {
            XdpAttach::Tc => return tc_ingress(ebpf, links, String::new()),
            XdpAttach::Auto if veth => {
                return tc_ingress(
                    ebpf,
                    links,
                    "a veth: native XDP would turn TSO off on its peer, generic XDP copies frames"
                        .into(),
                );
            }
            XdpAttach::Auto | XdpAttach::Driver => {
                let xdp = loaded_xdp(ebpf, xdp_name)?;
                match xdp.attach(&i.name, XdpMode::Driver) {
                    Ok(id) => (id, "xdp-driver", ""),
                    Err(e) if mode == XdpAttach::Driver => {
                        return Err(anyhow!(e)).with_context(|| {
                            format!(
                                "attaching XDP to `{}` in native (driver) mode, as --xdp-attach \
                                 driver asks (auto would use the TC ingress hook where the driver \
                                 has none, skb generic XDP)",
                                i.name
                            )
                        });
                    }
                    Err(native) => {
                        return tc_ingress(
                            ebpf,
                            links,
                            format!("the driver has no native XDP ({native})"),
                        );
                    }
                }
            }
            XdpAttach::Skb => {
                let xdp = loaded_xdp(ebpf, xdp_name)?;
                (attach_skb(xdp, &i.name)?, "xdp-skb", "")
            }
        };
        let xdp = loaded_xdp(ebpf, xdp_name)?;
        match FdLink::try_from(xdp.take_link(id)?) {
            Ok(fd) => pin_link(fd, xdp_pin, links),
            // Only a netlink attachment (kernels before 5.9, which netmon does not support: it
            // needs 5.8's bpf_ktime_get_boot_ns and bpf_link) is not an fd.
            Err(_) => warn!("XDP on `{}` is not a bpf_link and cannot be pinned", i.name),
        }
        Ok((kind, note.into()))
    }
}

/// A cls_bpf filter outlives a killed daemon (it is not an fd). netmon's sits at a fixed
/// priority and handle, so the next daemon replaces its program in place (netlink change
/// without NLM_F_CREATE) instead of adding a second filter: the link, if `iface` has that
/// filter at `at`.
fn take_over_clsact(
    prog: &mut SchedClassifier,
    iface: &str,
    at: TcAttachType,
) -> Option<aya::programs::tc::SchedClassifierLinkId> {
    SchedClassifierLink::attached(iface, at, TC_PRIO, TC_HANDLE, None)
        .ok()
        .and_then(|l| prog.attach_to_link(l).ok())
}

/// The XDP program `name`, loaded (the verifier runs on the first call only).
fn loaded_xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let xdp: &mut Xdp = typed(ebpf, name)?;
    if xdp.fd().is_err() {
        xdp.load().context("loading the XDP program (verifier)")?;
    }
    Ok(xdp)
}

/// Attaches the loaded TC program `prog` to `i` at `at` (egress, or ingress), through TCX
/// (`tcx`; its link pinned at `pin`) or the clsact qdisc; a link a previous netmon left
/// pinned, or its clsact filter, is taken over. Returns the hook's kind, and a note when it
/// took one over.
fn attach_tc(
    ebpf: &mut Ebpf,
    prog: &str,
    i: &Monitored,
    at: TcAttachType,
    tcx: bool,
    pin: PathBuf,
    links: &mut Links,
) -> Result<(&'static str, &'static str)> {
    let side = match at {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    let tc_prog: &mut SchedClassifier = typed(ebpf, prog)?;
    if let Some(link) = pinned_link::<SchedClassifierLink>(&pin) {
        match tc_prog.attach_to_link(link) {
            Ok(_) => {
                links.pin_paths.push(pin);
                return Ok(("tcx", "took over the pinned link of a previous netmon"));
            }
            Err(e) => remove_defunct_pin(&pin, &e),
        }
    }
    if !tcx {
        // Pre-TCX kernels attach through the clsact qdisc; it may already exist.
        if let Err(e) = tc::qdisc_add_clsact(&i.name)
            && !matches!(&e, tc::TcError::AlreadyAttached)
            && !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
        {
            return Err(anyhow!(e))
                .with_context(|| format!("adding the clsact qdisc to `{}`", i.name));
        }
        let (id, note) = match take_over_clsact(tc_prog, &i.name, at) {
            Some(id) => (id, "took over the clsact filter of a previous netmon"),
            None => (
                tc_prog
                    .attach_with_options(
                        &i.name,
                        at,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: TC_PRIO,
                            handle: TC_HANDLE,
                            ..Default::default()
                        }),
                    )
                    .with_context(|| format!("attaching the TC {side} program to `{}`", i.name))?,
                "",
            ),
        };
        links.tc.push(tc_prog.take_link(id)?);
        return Ok(("tc-clsact", note));
    }
    let id = tc_prog
        .attach_with_options(&i.name, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching the TC {side} program to `{}` (TCX)", i.name))?;
    // A TCX attachment is always a bpf_link.
    pin_link(FdLink::try_from(tc_prog.take_link(id)?)?, pin, links);
    Ok(("tcx", ""))
}

/// The program `prog` of the object as its type, e.g. `&mut TracePoint`.
fn typed<'a, T>(ebpf: &'a mut Ebpf, prog: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(prog)
        .with_context(|| format!("eBPF object has no {prog}"))?
        .try_into()?)
}

/// Loads `prog` and attaches it as a kprobe to every one of `functions`, or to none: when
/// one attachment fails, those made before it are detached again, so that the hook the
/// caller falls back to does not record alongside a half-attached kprobe.
pub fn try_kprobe(ebpf: &mut Ebpf, prog: &str, functions: &[&str]) -> Result<()> {
    try_kprobe_then(ebpf, prog, functions, |_| Ok(()))
}

/// `try_kprobe`, then `then` (e.g. a switch that tells other programs the kprobe is in
/// place): if `then` fails too, the kprobe is detached from every function.
fn try_kprobe_then(
    ebpf: &mut Ebpf,
    prog: &str,
    functions: &[&str],
    then: impl FnOnce(&mut Ebpf) -> Result<()>,
) -> Result<()> {
    let p: &mut KProbe = typed(ebpf, prog)?;
    if p.fd().is_err() {
        p.load()
            .with_context(|| format!("loading {prog} (verifier)"))?;
    }
    let mut links = Vec::new();
    let mut attached = Ok(());
    for f in functions {
        match p.attach(f, 0) {
            Ok(id) => links.push(id),
            Err(e) => {
                attached = Err(anyhow::Error::new(e).context(format!("attaching kprobe to {f}")));
                break;
            }
        }
    }
    let r = attached.and_then(|()| then(ebpf));
    if r.is_err() {
        let p: &mut KProbe = typed(ebpf, prog)?;
        for id in links {
            if let Err(e) = p.detach(id) {
                warn!("detaching {prog} after a failed attach: {e}");
            }
        }
    }
    r
}

/// Loads `prog` and attaches it to the raw tracepoint `name` (arguments are the tracepoint's
/// TP_PROTO, no record is built).
pub fn try_raw_tracepoint(ebpf: &mut Ebpf, prog: &str, name: &str) -> Result<()> {
    let p: &mut RawTracePoint = typed(ebpf, prog)?;
    p.load()
        .with_context(|| format!("loading {prog} (verifier)"))?;
    p.attach(name)
        .with_context(|| format!("attaching raw tracepoint {name}"))?;
    Ok(())
}

/// The cgroup hooks on UDP connect() and addressed sends (`netmon_udp_connect4` ...), on the
/// root of the cgroup v2 hierarchy (so every process's sockets), beside any other program
/// attached there; then the switch that has the egress program use what they record. On an
/// error, those already attached come off again. `watch_loopback`: a loopback interface is
/// watched, so connects and sends to loopback addresses are recorded too
/// (`config::LOOPBACK_WATCHED`; set before the hooks run).
pub fn try_cgroup_udp(ebpf: &mut Ebpf, watch_loopback: bool) -> Result<()> {
    const PROGS: [&str; 4] = [
        "netmon_udp_connect4",
        "netmon_udp_connect6",
        "netmon_udp_sendmsg4",
        "netmon_udp_sendmsg6",
    ];
    let root = cgroup2_root()?;
    let attached = (|| -> Result<()> {
        set_config(ebpf, config::LOOPBACK_WATCHED, u64::from(watch_loopback))
            .context("telling the UDP hooks whether loopback is watched")?;
        // Without the cookie (a kernel before 5.14) the hooks record every namespace's
        // sockets by namespace and port, the daemon's own too, which it never asks for.
        match own_netns_cookie() {
            Ok(c) => set_config(ebpf, config::OWN_NETNS_COOKIE, c)
                .context("telling the UDP hooks the daemon's network namespace")?,
            Err(e) => tracing::debug!("this network namespace's cookie: {e}"),
        }
        for prog in PROGS {
            let p: &mut CgroupSockAddr = typed(ebpf, prog)?;
            p.load()
                .with_context(|| format!("loading {prog} (verifier)"))?;
            // A BPF link (Linux 5.7+, which these programs' helpers need anyway): it takes
            // no flags and runs beside the other programs attached there.
            p.attach(&root, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {prog} to the cgroup v2 root"))?;
        }
        set_config(ebpf, config::UDP_SOCK_HOOKS_ACTIVE, 1)
            .context("enabling the UDP socket-storage path")
    })();
    if attached.is_err() {
        for prog in PROGS {
            if let Ok(p) = typed::<CgroupSockAddr>(ebpf, prog) {
                let _ = p.unload();
            }
        }
        return attached;
    }
    // Other namespaces' short-lived sockets: their owners on release. Without it (a kernel
    // before 5.9) only those that sent twice or were bound before connecting are recorded.
    if let Err(e) = attach_cgroup_sock(ebpf, "netmon_udp_release") {
        tracing::warn!(
            "other network namespaces' UDP sockets closed before a drain are not attributed: {e:#}"
        );
    }
    Ok(())
}

/// This thread's network namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14+), as
/// `bpf_get_netns_cookie` gives it.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // An unbound socket: no port taken, however briefly, in a container's namespace.
    let socket = |family| {
        // SAFETY: socket(2); the descriptor is owned by the OwnedFd made of it.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    };
    let s = socket(libc::AF_INET).or_else(|_| socket(libc::AF_INET6))?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a socket we own; the option's value is a u64 written into `cookie`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Writes slot `index` of `NETMON_CONFIG` (`netmon_common::config`).
pub fn set_config(ebpf: &mut Ebpf, index: u32, value: u64) -> Result<()> {
    let mut cfg: Array<&mut MapData, u64> = Array::try_from(
        ebpf.map_mut("NETMON_CONFIG")
            .context("eBPF object has no NETMON_CONFIG")?,
    )?;
    cfg.set(index, value, 0)
        .with_context(|| format!("writing NETMON_CONFIG[{index}]"))
}

/// Where the cgroup v2 hierarchy's root is mounted, if it is.
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mount-point options... - fstype source options.
    mountinfo.lines().find_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        let f: Vec<&str> = head.split(' ').collect();
        (tail.split(' ').next() == Some("cgroup2") && f.get(3) == Some(&"/"))
            .then(|| f.get(4).map(std::path::PathBuf::from))
            .flatten()
    })
}

/// The root of the cgroup v2 hierarchy, opened once per process (the cgroup hooks and the
/// cgroup-path resolver each get a duplicate of the descriptor).
pub(crate) fn cgroup2_root() -> Result<File> {
    static ROOT: std::sync::OnceLock<Result<File, String>> = std::sync::OnceLock::new();
    match ROOT.get_or_init(|| open_cgroup2_root().map_err(|e| format!("{e:#}"))) {
        Ok(root) => root
            .try_clone()
            .context("duplicating the cgroup v2 root's descriptor"),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// The root of the cgroup v2 hierarchy, opened: where it is mounted, or else (a host that
/// mounts only v1 hierarchies, or a mount namespace without /sys/fs/cgroup, as `ip netns
/// exec` makes) mounted for a moment on a private directory and detached again at once (the
/// open directory keeps its cgroup).
fn open_cgroup2_root() -> Result<File> {
    let mounted = cgroup2_mount();
    if let Some(dir) = mounted {
        return File::open(&dir)
            .with_context(|| format!("opening the cgroup v2 root {}", dir.display()));
    }
    let dir = std::env::temp_dir().join(format!("netmon-cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let target = c(&dir.to_string_lossy());
    // SAFETY: NUL-terminated strings that outlive the calls.
    let opened = unsafe {
        if libc::mount(
            c("cgroup2").as_ptr(),
            target.as_ptr(),
            c("cgroup2").as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            Err(anyhow!(
                "no cgroup v2 hierarchy mounted, and mounting one failed: {}",
                std::io::Error::last_os_error()
            ))
        } else {
            let f = File::open(&dir).context("opening the cgroup v2 root just mounted");
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            f
        }
    };
    let _ = std::fs::remove_dir(&dir);
    opened
}

pub fn try_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<()> {
    let p: &mut TracePoint = typed(ebpf, prog)?;
    p.load()
        .with_context(|| format!("loading {prog} (verifier)"))?;
    p.attach(category, name)
        .with_context(|| format!("attaching tracepoint {category}:{name}"))?;
    Ok(())
}

/// The fallback chain for socket ownership:
/// - outbound TCP: kprobe `tcp_connect`, else tracepoint `sock:inet_sock_set_state`
///   (SYN_SENT in the caller's context, completed at ESTABLISHED);
/// - listeners and accepted TCP: tracepoint `sock:inet_sock_set_state` (LISTEN, SYN_RECV ->
///   ESTABLISHED) on every kernel;
/// - UDP senders: cgroup `connect4`/`connect6`/`sendmsg4`/`sendmsg6` on the cgroup v2 root
///   with the egress program reading the socket's storage (no program per datagram sent on a
///   connected socket), else kprobe `udp_sendmsg`/`udpv6_sendmsg`, else raw tracepoint
///   `sock_send_length` (needs `sk_protocol`'s offset from BTF), else tracepoint
///   `sock:sock_send_length` (these three run on every sendmsg).
fn attach_attribution(
    ebpf: &mut Ebpf,
    hooks: &mut Vec<Hook>,
    facts: KernelFacts,
    udp_hook: UdpHook,
    watch_loopback: bool,
) -> Result<()> {
    let state_tp = try_tracepoint(ebpf, "netmon_sock_state", "sock", "inet_sock_set_state")
        .map_err(|e| format!("{e:#}"));
    let mut listen = Chain::new(hooks, "tcp_listen_accept");
    listen.try_hook("tracepoint", "sock:inet_sock_set_state", || {
        state_tp.clone().map_err(anyhow::Error::msg)
    });

    let mut connect = Chain::new(hooks, "tcp_connect");
    // The switch tells the state tracepoint to leave SYN_SENT to the kprobe: if it cannot be
    // set, the kprobe comes off again and the tracepoint below does the whole job.
    connect.try_hook("kprobe", "tcp_connect", || {
        try_kprobe_then(ebpf, "netmon_tcp_connect", &["tcp_connect"], |ebpf| {
            set_config(ebpf, config::KPROBE_CONNECT_ACTIVE, 1)
                .context("enabling the tcp_connect kprobe path")
        })
    });
    // The state tracepoint, attached above, completes what SYN_SENT recorded.
    connect.try_hook("tracepoint", "sock:inet_sock_set_state", || {
        state_tp.map_err(anyhow::Error::msg)
    });

    let mut udp = Chain::new(hooks, "udp_send");
    udp.try_hook(
        "cgroup_sock_addr",
        "connect4,connect6,sendmsg4,sendmsg6",
        || match udp_hook {
            UdpHook::Auto => try_cgroup_udp(ebpf, watch_loopback),
            UdpHook::PerSend => bail!("not chosen (--udp-hook per-send)"),
        },
    );
    udp.try_hook("kprobe", "udp_sendmsg,udpv6_sendmsg", || {
        try_kprobe(
            ebpf,
            "netmon_udp_sendmsg",
            &["udp_sendmsg", "udpv6_sendmsg"],
        )
    });
    udp.try_hook("raw_tracepoint", "sock_send_length", || {
        if !facts.sk_protocol_known {
            anyhow::bail!("BTF does not give struct sock's sk_protocol offset");
        }
        try_raw_tracepoint(ebpf, "netmon_sock_send_raw", "sock_send_length")
    });
    udp.try_hook("tracepoint", "sock:sock_send_length", || {
        try_tracepoint(ebpf, "netmon_sock_send", "sock", "sock_send_length")
    });

    Chain::new(hooks, "tcp_retransmit").try_hook("tracepoint", "tcp:tcp_retransmit_skb", || {
        if !facts.total_retrans_known {
            bail!("BTF does not give struct tcp_sock's total_retrans offset");
        }
        try_tracepoint(ebpf, "netmon_tcp_retransmit", "tcp", "tcp_retransmit_skb")
    });

    Chain::new(hooks, "icmp_owner")
        .try_hook("cgroup_sock", "sock_create", || try_cgroup_icmp(ebpf));
    Ok(())
}

/// The cgroup `sock_create` hook that records who creates each ICMP socket
/// (`netmon_icmp_sock`), on the root of the cgroup v2 hierarchy beside any other program
/// attached there; the egress program hands that owner to the ICMP flows the socket starts.
pub fn try_cgroup_icmp(ebpf: &mut Ebpf) -> Result<()> {
    attach_cgroup_sock(ebpf, "netmon_icmp_sock")
}

/// Loads the cgroup socket program `prog` and attaches it to the root of the cgroup v2
/// hierarchy, beside any other program attached there.
fn attach_cgroup_sock(ebpf: &mut Ebpf, prog: &str) -> Result<()> {
    let root = cgroup2_root()?;
    let p: &mut CgroupSock = typed(ebpf, prog)?;
    p.load()
        .with_context(|| format!("loading {prog} (verifier)"))?;
    p.attach(&root, CgroupAttachMode::Single)
        .with_context(|| format!("attaching {prog} to the cgroup v2 root"))?;
    Ok(())
}

/// One purpose's hooks in order of preference: each is tried until one attaches, and every
/// one tried is listed, those that failed inactive with their error and the one that attached
/// with the ones it stands in for.
struct Chain<'h> {
    hooks: &'h mut Vec<Hook>,
    purpose: &'static str,
    /// "kprobe unavailable (why)" per hook that failed.
    failed: Vec<String>,
    attached: bool,
}

impl<'h> Chain<'h> {
    fn new(hooks: &'h mut Vec<Hook>, purpose: &'static str) -> Self {
        Self {
            hooks,
            purpose,
            failed: Vec::new(),
            attached: false,
        }
    }

    fn try_hook(&mut self, kind: &str, target: &str, attach: impl FnOnce() -> Result<()>) {
        if self.attached {
            return;
        }
        let note = match attach() {
            Ok(()) => {
                self.attached = true;
                if self.failed.is_empty() {
                    String::new()
                } else {
                    format!("fallback: {}", self.failed.join(", "))
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                self.failed
                    .push(format!("{} unavailable ({why})", kind.replace('_', " ")));
                why
            }
        };
        self.hooks.push(Hook {
            purpose: self.purpose.into(),
            kind: kind.into(),
            target: target.into(),
            active: self.attached,
            note,
        });
    }
}

/// Loads the egress programs of `table`'s flow store: `netmon_tc_egress` (or `netmon_tc_tab`),
/// and its continuation `netmon_tc_pulled` (`netmon_tc_tab_pulled`) in its slot of
/// NETMON_TC_TAIL (egress frames whose headers had to be pulled into the linear data
/// continue there); with `ingress`, the TC ingress programs likewise (`netmon_tc_ingress` or
/// `netmon_tci_tab`, and `netmon_tci_pulled` or `netmon_tci_tab_pulled`). Programs loaded
/// already are kept. Not attached: the caller attaches the first.
pub fn load_tc(ebpf: &mut aya::Ebpf, table: FlowTable, ingress: bool) -> Result<()> {
    let (_, egress_name, ingress_name) = table.programs();
    let tc_name = if ingress { ingress_name } else { egress_name };
    let (pulled_name, slot) = table.tc_pulled(ingress);
    let loaded = |ebpf: &Ebpf, name: &str| ebpf.program(name).is_some_and(|p| p.fd().is_ok());
    if loaded(ebpf, pulled_name) && loaded(ebpf, tc_name) {
        // Loaded, and the tail call's slot set, for an earlier interface.
        return Ok(());
    }
    for name in [pulled_name, tc_name] {
        let prog: &mut SchedClassifier = typed(ebpf, name)?;
        if prog.fd().is_ok() {
            continue;
        }
        prog.load()
            .with_context(|| format!("loading the TC program {name} (verifier)"))?;
    }
    let pulled = ebpf
        .program(pulled_name)
        .with_context(|| format!("eBPF object has no {pulled_name}"))?
        .fd()
        .with_context(|| format!("{pulled_name} has no fd"))?
        .try_clone()
        .with_context(|| format!("duplicating {pulled_name}'s fd"))?;
    let mut tail = aya::maps::ProgramArray::try_from(
        ebpf.map_mut("NETMON_TC_TAIL")
            .context("eBPF object has no NETMON_TC_TAIL")?,
    )?;
    tail.set(slot, &pulled, 0)
        .with_context(|| format!("putting {pulled_name} in NETMON_TC_TAIL"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_their_names_and_name_the_others() {
        assert_eq!("skb".parse::<XdpAttach>().unwrap(), XdpAttach::Skb);
        assert_eq!("clsact".parse::<TcMode>().unwrap(), TcMode::Clsact);
        assert_eq!("per-send".parse::<UdpHook>().unwrap(), UdpHook::PerSend);
        assert_eq!("lru".parse::<FlowTable>().unwrap(), FlowTable::Lru);
        let e = |r: Result<XdpAttach>| r.unwrap_err().to_string();
        assert_eq!(
            e("native".parse()),
            "bad XDP attach mode `native`: use auto, driver, skb or tc"
        );
        assert_eq!(
            "x".parse::<UdpHook>().unwrap_err().to_string(),
            "bad UDP hook `x`: use auto or per-send"
        );
        assert_eq!(
            "x".parse::<FlowTable>().unwrap_err().to_string(),
            "bad flow table `x`: use per-cpu or lru"
        );
    }
}
