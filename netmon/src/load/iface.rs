//! Network interfaces: discovery, and the facts `/sys/class/net` and the ethtool ioctl keep
//! about them.

use std::path::Path;

use anyhow::{Result, bail};

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn flags(name: &str) -> Option<u32> {
    let s = read_trimmed(format!("/sys/class/net/{name}/flags"))?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

pub fn all_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The devices directly below interface `name` (a bridge's or bond's ports, a VLAN's,
/// macvlan's or ipvlan's parent, a VRF's members): its `lower_*` entries in sysfs.
pub fn lower_devices(name: &str) -> Vec<String> {
    let mut lower: Vec<String> = std::fs::read_dir(format!("/sys/class/net/{name}"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let f = e.file_name();
                    f.to_str()?.strip_prefix("lower_").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    lower.sort();
    lower
}

/// The default set to monitor: every interface that is up and not a loopback, except one
/// stacked on another of them (a bridge with a port that is up, a bond, a VLAN or macvlan
/// on an interface that is up). Every frame of such a device passes the one below it,
/// where netmon counts it (and enforces the drop list): monitoring both counted each frame
/// twice in the connections, processes and protocols (a container's traffic on its veth
/// and again on the bridge). Those left out come second, each with the devices below it.
pub fn default_set() -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let up: Vec<String> = all_names()
        .into_iter()
        .filter(|n| flags(n).is_some_and(|f| f & IFF_UP != 0 && f & IFF_LOOPBACK == 0))
        .collect();
    let mut monitored = Vec::new();
    let mut stacked = Vec::new();
    for name in &up {
        // (sysfs links only devices of one namespace; `l != name` guards the set against
        // a device of another that bears this one's name all the same.)
        let below: Vec<String> = lower_devices(name)
            .into_iter()
            .filter(|l| l != name && up.contains(l))
            .collect();
        if below.is_empty() {
            monitored.push(name.clone());
        } else {
            stacked.push((name.clone(), below));
        }
    }
    (monitored, stacked)
}

/// `default_set`'s interfaces to monitor.
pub fn default_interfaces() -> Vec<String> {
    default_set().0
}

/// Whether interface `name` is a loopback (`IFF_LOOPBACK`).
pub fn is_loopback(name: &str) -> bool {
    flags(name).is_some_and(|f| f & IFF_LOOPBACK != 0)
}

pub fn ifindex(name: &str) -> Result<u32> {
    match read_trimmed(format!("/sys/class/net/{name}/ifindex")).and_then(|s| s.parse().ok()) {
        Some(i) => Ok(i),
        None => bail!(
            "interface `{name}` does not exist in this network namespace (have: {})",
            all_names().join(", ")
        ),
    }
}

/// Whether interface index `ifindex` names no interface in this network namespace (false
/// where that cannot be told: the question's socket was refused).
pub fn index_gone(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname writes at most.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    name.is_null() && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO)
}

/// This network namespace's addresses and IPv4 broadcast addresses, IPv4 ones mapped into
/// IPv6 (getifaddrs(3)); empty where they cannot be read.
pub fn local_addresses() -> Vec<[u8; 16]> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list this function frees below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, live until freeifaddrs.
        let ifa = unsafe { &*p };
        // ifa_ifu is the broadcast address where IFF_BROADCAST is set, else a
        // point-to-point peer's (not this host's).
        let broadcast = ifa.ifa_flags & libc::IFF_BROADCAST as u32 != 0;
        for sa in [
            ifa.ifa_addr,
            if broadcast {
                ifa.ifa_ifu
            } else {
                std::ptr::null_mut()
            },
        ] {
            if sa.is_null() {
                continue;
            }
            // SAFETY: a socket address of the family it names; the casts read only that
            // family's struct.
            unsafe {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let a = (*sa.cast::<libc::sockaddr_in>())
                            .sin_addr
                            .s_addr
                            .to_ne_bytes();
                        out.push(std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets());
                    }
                    // (A broadcast address is IPv4's alone.)
                    libc::AF_INET6 if sa == ifa.ifa_addr => {
                        out.push((*sa.cast::<libc::sockaddr_in6>()).sin6_addr.s6_addr);
                    }
                    _ => {}
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// What the kernel reports about an interface, for the API's `interfaces` list.
#[derive(Debug, Clone, Default)]
pub struct LinkFacts {
    pub is_up: bool,
    /// Mb/s; 0 where the driver reports none (loopback, some virtual devices; veth says
    /// 10,000).
    pub speed: u64,
    pub mtu: u32,
    /// The device's own counters; None when they cannot be read (the interface has gone).
    pub counters: Option<DevCounters>,
}

/// The kernel's counters of a device since it was created (`ip -s link`): what it received
/// and sent, in frame bytes as the driver counts them, and the frames the driver or the
/// stack could not receive or send (errors, drops: not netmon's drop list).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

pub fn link_facts(name: &str) -> LinkFacts {
    let base = format!("/sys/class/net/{name}");
    let read = |f: &str| -> Option<u64> {
        read_trimmed(format!("{base}/{f}"))
            .and_then(|s| s.parse::<i64>().ok())
            .map(|v| v.max(0) as u64)
    };
    let counters = (|| {
        Some(DevCounters {
            rx_bytes: read("statistics/rx_bytes")?,
            rx_packets: read("statistics/rx_packets")?,
            tx_bytes: read("statistics/tx_bytes")?,
            tx_packets: read("statistics/tx_packets")?,
            rx_errors: read("statistics/rx_errors")?,
            tx_errors: read("statistics/tx_errors")?,
            rx_dropped: read("statistics/rx_dropped")?,
            tx_dropped: read("statistics/tx_dropped")?,
        })
    })();
    LinkFacts {
        is_up: flags(name).is_some_and(|f| f & IFF_UP != 0),
        speed: read("speed").unwrap_or(0),
        mtu: read("mtu").unwrap_or(0) as u32,
        counters,
    }
}

/// Inode of this process's network namespace: interface names are only unique within one.
pub fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// `SIOCETHTOOL`'s command of `data` (a struct beginning with the u32 command) on `name`, in
/// this process's network namespace; false where the device does not answer.
fn ethtool<T>(name: &str, data: &mut T) -> bool {
    if name.len() >= libc::IFNAMSIZ {
        return false;
    }
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: ifreq is plain data; all zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = std::ptr::from_mut(data).cast();
    // SAFETY: SIOCETHTOOL reads the command from `data` and writes at most a `T` there (the
    // callers' types are the kernel's structs for their commands).
    let r = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut req) };
    // SAFETY: the fd opened above.
    unsafe { libc::close(fd) };
    r == 0
}

/// The interface's driver as ethtool names it (`veth`, `virtio_net`, `mlx5_core`...), where
/// the device answers `ETHTOOL_GDRVINFO`.
pub fn driver(name: &str) -> Option<String> {
    /// `struct ethtool_drvinfo`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    if !ethtool(name, &mut info) {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether the interface segments TCP itself (TSO, `ETHTOOL_GTSO`), as `ethtool -k` shows it.
pub fn tso_enabled(name: &str) -> Option<bool> {
    const ETHTOOL_GTSO: u32 = 0x1e;
    ethtool_value(name, ETHTOOL_GTSO, 0).map(|v| v != 0)
}

/// An ethtool command that takes a `struct ethtool_value` (the legacy get and set of one
/// offload: `ETHTOOL_GTSO`, `ETHTOOL_SGRO`...) on `name` with `data`; the value the device
/// left there, or None where it refused.
pub fn ethtool_value(name: &str, cmd: u32, data: u32) -> Option<u32> {
    /// `struct ethtool_value`.
    #[repr(C)]
    struct Value {
        cmd: u32,
        data: u32,
    }
    let mut v = Value { cmd, data };
    ethtool(name, &mut v).then_some(v.data)
}

/// Notice of interfaces added, removed or changed (their flags: up, down), and of addresses
/// added or removed, in this network namespace: a netlink socket subscribed to the kernel's
/// link and address notifications, read without blocking. Nothing is parsed: any
/// notification means "look again" (`changed`).
pub struct LinkEvents {
    fd: Option<std::os::fd::OwnedFd>,
}

impl LinkEvents {
    /// Subscribes; where that fails (said in the log by the caller), `changed` is always true,
    /// so the caller looks every time.
    pub fn open() -> Result<Self, std::io::Error> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned to this process.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid; its family and groups set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // Links, and addresses (what a flow's local address is checked against).
        sa.nl_groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: bind with a valid sockaddr_nl of its size.
        let r = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd: Some(fd) })
    }

    /// A watcher that cannot tell: `changed` is always true.
    pub fn always() -> Self {
        Self { fd: None }
    }

    /// Whether any link notification came since the last call (or the socket's buffer
    /// overflowed, which loses some: then something did change). Reads them all.
    pub fn changed(&self) -> bool {
        let Some(fd) = &self.fd else {
            return true;
        };
        let mut buf = [0u8; 8192];
        let mut changed = false;
        loop {
            // SAFETY: recv into a buffer of its length on an owned descriptor.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                changed = true;
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // ENOBUFS: notifications were lost.
                Some(libc::ENOBUFS) => changed = true,
                _ => {}
            }
            return changed;
        }
    }
}
