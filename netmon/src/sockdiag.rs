//! Stage 2b: every TCP and UDP socket of this network namespace, as `ss` lists them, through
//! NETLINK_SOCK_DIAG (`inet_diag_req_v2` / `inet_diag_msg`, include/uapi/linux/inet_diag.h).
//! This is what shows sockets that carry no traffic: listeners, TIME_WAIT, CLOSE_WAIT.

use std::{io, mem::size_of};

use anyhow::{Context as _, Result, bail};
use netmon_common::{IPPROTO_TCP, IPPROTO_UDP, v4_mapped};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_NEW_SYN_RECV: u8 = 12;
const TCP_LISTEN: u8 = 10;
const TCP_ESTABLISHED: u8 = 1;
/// The attribute that carries `struct tcp_info`, asked for with bit `INET_DIAG_INFO - 1` of
/// the request's `ext`.
const INET_DIAG_INFO: u16 = 2;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);

/// One socket; addresses IPv4-mapped like the flow keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    pub proto: u8,
    pub local_addr: [u8; 16],
    pub local_port: u16,
    pub remote_addr: [u8; 16],
    pub remote_port: u16,
    /// Kernel TCP state number (`netmon_common::tcp_state`); UDP sockets report 1 when
    /// connected, 7 when not.
    pub state: u8,
    pub uid: u32,
    pub inode: u32,
    /// AF_INET or AF_INET6, the interface it is bound to and the kernel's socket cookie:
    /// what SOCK_DESTROY needs to name exactly this socket.
    pub family: u8,
    pub ifindex: u32,
    pub cookie: [u32; 2],
    /// What TCP measures of the connection (TCP sockets other than listeners).
    pub quality: Option<TcpQuality>,
}

impl DiagSocket {
    /// The socket's key in the kernel hooks' maps (owners, retransmission counts).
    pub fn key(&self) -> netmon_common::SockKey {
        netmon_common::SockKey {
            proto: self.proto,
            local_port: self.local_port,
            remote_port: self.remote_port,
            local_addr: self.local_addr,
            remote_addr: self.remote_addr,
            ..Default::default()
        }
    }
}

/// What TCP itself measures of a connection (`struct tcp_info`, include/uapi/linux/tcp.h,
/// as `ss -ti` shows it): the path's round-trip time and how much it varies, and how many
/// segments went out and how many of them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct TcpQuality {
    /// Smoothed round-trip time, microseconds (`tcpi_rtt`).
    pub rtt_us: u32,
    /// The round-trip time's mean deviation, microseconds (`tcpi_rttvar`): the jitter TCP
    /// sees.
    pub rtt_var_us: u32,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`): its loss.
    pub retrans_segments: u32,
    /// Segments sent (`tcpi_segs_out`, Linux 4.2 and later).
    pub sent_segments: u32,
}

impl TcpQuality {
    /// From a `struct tcp_info` (the layout only grows at its end; older kernels' shorter
    /// structs lack the later fields).
    pub fn parse(info: &[u8]) -> Option<Self> {
        let at = |off: usize| {
            info.get(off..off + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        };
        Some(Self {
            rtt_us: at(68)?,
            rtt_var_us: at(72)?,
            retrans_segments: at(100)?,
            sent_segments: at(136).unwrap_or(0),
        })
    }
}

/// This network namespace's TCP segment counters, `(OutSegs, RetransSegs)` of
/// `/proc/net/snmp`: every segment sent, and those sent again.
pub fn tcp_segment_counters() -> Option<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let values: Vec<&str> = values.split_whitespace().collect();
    let get = |name: &str| {
        let i = names.split_whitespace().position(|n| n == name)?;
        values.get(i)?.parse().ok()
    };
    Some((get("OutSegs")?, get("RetransSegs")?))
}

/// Why a socket could not be destroyed.
#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    #[error(
        "this kernel cannot terminate sockets (sock_diag SOCK_DESTROY needs \
         CONFIG_INET_DIAG_DESTROY)"
    )]
    Unsupported,
    #[error("the socket is gone already")]
    Gone,
    #[error("SOCK_DESTROY: {0}")]
    Io(io::Error),
}

pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// Lists the sockets of this namespace with their owners, when the connection table is
/// asked for (and the TCP ones every tenth drain, for their round-trip times). Not on every
/// drain: each TCP dump walks the kernel's whole established-socket hash (262,144 buckets
/// on a 24 GiB machine) however few sockets there are, ~2 ms per family, a fixed cost a
/// per-second drain would pay for a table nobody may read.
pub struct Lister {
    diag: Option<SockDiag>,
    owners: std::sync::Arc<crate::drain::Owners>,
    /// The last error, logged once rather than on every request.
    error: Option<String>,
}

impl Lister {
    pub fn new(owners: std::sync::Arc<crate::drain::Owners>) -> Self {
        let diag = match SockDiag::new() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("sock_diag unavailable, idle sockets will not be listed: {e:#}");
                None
            }
        };
        Self {
            diag,
            owners,
            error: None,
        }
    }

    /// The established TCP connections with what TCP measures of them (round-trip time,
    /// segments sent again); empty when sock_diag fails (logged by `rows`).
    pub fn established(&mut self) -> Vec<(netmon_common::SockKey, TcpQuality)> {
        let mut sockets = Vec::new();
        if let Some(diag) = self.diag.as_mut()
            && diag.dump_proto(IPPROTO_TCP, &mut sockets).is_err()
        {
            return Vec::new();
        }
        sockets
            .iter()
            .filter(|s| s.state == TCP_ESTABLISHED)
            .filter_map(|s| Some((s.key(), s.quality?)))
            .collect()
    }

    /// Every TCP and UDP socket, with the process the kernel hooks recorded for it. Empty
    /// (and the error logged once) when sock_diag fails.
    pub fn rows(&mut self) -> Vec<crate::aggregate::SocketRow> {
        let Some(diag) = self.diag.as_mut() else {
            return Vec::new();
        };
        let sockets = match diag.dump_all() {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{e:#}");
                if self.error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(
                        "sock_diag failed, listing only sockets with traffic (is the \
                         inet_diag/tcp_diag/udp_diag module available?): {msg}"
                    );
                    self.error = Some(msg);
                }
                return Vec::new();
            }
        };
        if self.error.take().is_some() {
            tracing::info!("sock_diag works again");
        }
        sockets
            .into_iter()
            .map(|s| {
                let key = s.key();
                crate::aggregate::SocketRow {
                    proto: s.proto,
                    local_addr: s.local_addr,
                    local_port: s.local_port,
                    remote_addr: s.remote_addr,
                    remote_port: s.remote_port,
                    state: if s.proto == IPPROTO_TCP {
                        tcp_state_name(s.state).to_string()
                    } else {
                        "NONE".to_string()
                    },
                    inode: s.inode,
                    uid: s.uid,
                    owner: self
                        .owners
                        .sock_owner(&key)
                        .map(crate::aggregate::Owner::from),
                    quality: s.quality,
                }
            })
            .collect()
    }
}

/// A netlink socket for sock_diag dumps, reused across ticks.
pub struct SockDiag {
    fd: i32,
    seq: u32,
    buf: Vec<u8>,
}

impl Drop for SockDiag {
    fn drop(&mut self) {
        // SAFETY: fd is owned.
        unsafe { libc::close(self.fd) };
    }
}

impl SockDiag {
    pub fn new() -> Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a NETLINK_SOCK_DIAG socket");
        }
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// TCP and UDP sockets of both families.
    pub fn dump_all(&mut self) -> Result<Vec<DiagSocket>> {
        let mut out = Vec::new();
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            self.dump_proto(proto, &mut out)?;
        }
        Ok(out)
    }

    /// The sockets of one protocol, both families, appended to `out`.
    fn dump_proto(&mut self, proto: u8, out: &mut Vec<DiagSocket>) -> Result<()> {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.dump(family, proto, out)
                .with_context(|| format!("sock_diag dump (family {family}, proto {proto})"))?;
        }
        Ok(())
    }

    /// Sends one request (a fully initialised `#[repr(C)]` message) to the kernel.
    fn send<T>(&self, req: &T) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl is valid; pid 0 is the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `req` is size_of::<T>() initialised bytes; `sa` is a valid address.
        let r = unsafe {
            libc::sendto(
                self.fd,
                (req as *const T).cast(),
                size_of::<T>(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one netlink datagram into the buffer (retrying on EINTR); returns its length.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // SAFETY: receiving into our own buffer of buf.len() bytes.
            let n = unsafe { libc::recv(self.fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Terminates one socket, as `ss -K` does: the kernel aborts it (a TCP socket sends a
    /// reset to its peer) and its owner's next call fails with ECONNABORTED.
    pub fn destroy(&mut self, s: &DiagSocket) -> Result<(), DestroyError> {
        self.seq = self.seq.wrapping_add(1);
        #[repr(C)]
        struct Req {
            hdr: NlMsgHdr,
            req: InetDiagReqV2,
        }
        let v4 = s.family == libc::AF_INET as u8;
        let addr = |a: [u8; 16]| {
            let mut out = [0u8; 16];
            if v4 {
                out[..4].copy_from_slice(&a[12..]);
            } else {
                out = a;
            }
            out
        };
        let req = Req {
            hdr: NlMsgHdr {
                len: size_of::<Req>() as u32,
                kind: SOCK_DESTROY,
                flags: NLM_F_REQUEST | NLM_F_ACK,
                seq: self.seq,
                pid: 0,
            },
            req: InetDiagReqV2 {
                family: s.family,
                protocol: s.proto,
                states: u32::MAX,
                id: InetDiagSockId {
                    sport: s.local_port.to_be_bytes(),
                    dport: s.remote_port.to_be_bytes(),
                    src: addr(s.local_addr),
                    dst: addr(s.remote_addr),
                    ifindex: s.ifindex,
                    cookie: s.cookie,
                },
                ..Default::default()
            },
        };
        self.send(&req).map_err(DestroyError::Io)?;
        loop {
            let n = self.recv().map_err(DestroyError::Io)?;
            let data = &self.buf[..n];
            if data.len() < 20 {
                return Err(DestroyError::Io(io::Error::other("short netlink reply")));
            }
            // SAFETY: length checked; POD header.
            let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
            if hdr.seq != self.seq || hdr.kind != NLMSG_ERROR {
                continue;
            }
            let errno = i32::from_ne_bytes(data[16..20].try_into().expect("4 bytes"));
            return match -errno {
                0 => Ok(()),
                libc::EOPNOTSUPP => Err(DestroyError::Unsupported),
                libc::ENOENT => Err(DestroyError::Gone),
                e => Err(DestroyError::Io(io::Error::from_raw_os_error(e))),
            };
        }
    }

    /// Terminates every TCP and UDP socket (listeners excepted) whose remote address is
    /// `remote` (and, if given, whose remote port and local endpoint match); returns the
    /// sockets terminated.
    pub fn kill(
        &mut self,
        remote: std::net::IpAddr,
        remote_port: Option<u16>,
        local: Option<std::net::SocketAddr>,
    ) -> Result<Vec<DiagSocket>> {
        let want = crate::aggregate::mapped(remote);
        let targets: Vec<DiagSocket> = self
            .dump_all()?
            .into_iter()
            .filter(|s| {
                s.remote_addr == want
                    && !(s.proto == IPPROTO_TCP && s.state == 10)
                    && s.remote_port != 0
                    && remote_port.is_none_or(|p| p == s.remote_port)
                    && local.is_none_or(|l| {
                        l.port() == s.local_port && crate::aggregate::mapped(l.ip()) == s.local_addr
                    })
            })
            .collect();
        let mut done = Vec::new();
        for s in targets {
            match self.destroy(&s) {
                Ok(()) => done.push(s),
                Err(DestroyError::Gone) => {}
                Err(e) => return Err(anyhow::Error::new(e)),
            }
        }
        Ok(done)
    }

    fn dump(&mut self, family: u8, proto: u8, out: &mut Vec<DiagSocket>) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        #[repr(C)]
        struct Req {
            hdr: NlMsgHdr,
            req: InetDiagReqV2,
        }
        let req = Req {
            hdr: NlMsgHdr {
                len: size_of::<Req>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: NLM_F_REQUEST | NLM_F_DUMP,
                seq: self.seq,
                pid: 0,
            },
            req: InetDiagReqV2 {
                family,
                protocol: proto,
                // TCP sockets come with their tcp_info.
                ext: if proto == IPPROTO_TCP {
                    1 << (INET_DIAG_INFO - 1)
                } else {
                    0
                },
                states: u32::MAX,
                ..Default::default()
            },
        };
        self.send(&req).context("sendto")?;
        loop {
            let n = self.recv().context("recv")?;
            let data = &self.buf[..n];
            let mut off = 0;
            while off + size_of::<NlMsgHdr>() <= data.len() {
                // SAFETY: bounds checked; unaligned read of a POD header.
                let hdr: NlMsgHdr =
                    unsafe { std::ptr::read_unaligned(data[off..].as_ptr().cast()) };
                let len = hdr.len as usize;
                if len < size_of::<NlMsgHdr>() || off + len > data.len() {
                    bail!("malformed netlink message (len {len})");
                }
                match hdr.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = data
                            .get(off + 16..off + 20)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(io::Error::from_raw_os_error(-errno)).context("sock_diag");
                    }
                    SOCK_DIAG_BY_FAMILY if len >= 16 + size_of::<InetDiagMsg>() => {
                        // SAFETY: bounds checked; POD.
                        let m: InetDiagMsg =
                            unsafe { std::ptr::read_unaligned(data[off + 16..].as_ptr().cast()) };
                        if m.state != TCP_NEW_SYN_RECV {
                            let mut s = to_socket(proto, &m);
                            if proto == IPPROTO_TCP && m.state != TCP_LISTEN {
                                let attrs = &data[off + 16 + size_of::<InetDiagMsg>()..off + len];
                                s.quality = attr(attrs, INET_DIAG_INFO).and_then(TcpQuality::parse);
                            }
                            out.push(s);
                        }
                    }
                    _ => {}
                }
                off += len.div_ceil(4) * 4;
            }
        }
    }
}

/// This network namespace's TCP and UDP sockets, as sock_diag lists them.
pub fn own_sockets() -> Result<Vec<DiagSocket>> {
    SockDiag::new()?.dump_all()
}

/// Another network namespace's sockets (`other_namespaces`).
pub struct Namespace {
    /// The port of a loopback listener opened there and closed at once (`probe_listener`):
    /// the listen hook records it under the namespace's identity. None where none could be
    /// opened.
    pub probe_port: Option<u16>,
    /// The namespace's cookie (`load::own_netns_cookie`); None on a kernel without it.
    pub cookie: Option<u64>,
    pub sockets: Vec<DiagSocket>,
}

/// Opens a listener on a loopback port of this thread's network namespace that is none of
/// `taken`, and closes it: the listen hook has then recorded the port under the namespace's
/// identity (so each namespace's probe is told apart by its port alone). Its port; None
/// where there is no loopback address to listen on, or no such port came in 16 tries.
pub fn probe_listener(taken: &std::collections::HashSet<u16>) -> Option<u16> {
    // (Kept open until one fits, so that the next bind gets another port.)
    let mut tried = Vec::new();
    for _ in 0..16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let port = l.local_addr().ok()?.port();
        if !taken.contains(&port) {
            return Some(port);
        }
        tried.push(l);
    }
    None
}

/// The processes' ids, in order.
fn pids() -> Result<Vec<u32>> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// The network namespaces of this host other than this thread's (a container's): those its
/// processes are in, each as `/proc/PID/ns/net` of one of them, and those named by `ip
/// netns` (CNI's among them) under /run/netns or /var/run/netns, which may hold none; each
/// with its identity (the namespace's inode).
fn other_namespace_paths() -> Result<Vec<(String, u64)>> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = |path: &str| std::fs::metadata(path).map(|m| m.ino());
    let own = inode("/proc/thread-self/ns/net").context("reading our namespace")?;
    let mut seen = std::collections::HashSet::from([own]);
    // (`ip netns` keeps them under /var/run/netns, which is /run/netns where /var/run is
    // the usual link to /run: the same namespaces, told apart by inode.)
    let named = ["/run/netns", "/var/run/netns"]
        .into_iter()
        .flat_map(std::fs::read_dir)
        .flatten()
        .flatten()
        .filter_map(|e| e.path().to_str().map(str::to_string));
    // Named ones first: a namespace's path stays valid as long as it is named, where a
    // process may exit before its namespace is entered.
    Ok(named
        .chain(pids()?.into_iter().map(|pid| format!("/proc/{pid}/ns/net")))
        .filter_map(|path| {
            let ns = inode(&path).ok()?;
            seen.insert(ns).then_some((path, ns))
        })
        .collect())
}

/// Runs `f` in the network namespace at `path` (`/proc/PID/ns/net`), on a thread of its own
/// that ends with it.
fn in_namespace<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    use std::os::fd::AsRawFd as _;
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a namespace file, for this thread alone, which ends here.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("entering {path}"));
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in a network namespace panicked"))?
}

/// Every network namespace a process of this host is in other than this thread's (a
/// container's), entered from a thread of its own: its sockets, its cookie and a probe
/// listener's port. A namespace that cannot be entered or listed is left out.
pub fn other_namespaces() -> Result<Vec<Namespace>> {
    let mut probes = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (path, _) in other_namespace_paths()? {
        let taken = probes.clone();
        match in_namespace(path, move || {
            Ok(Namespace {
                probe_port: probe_listener(&taken),
                cookie: crate::load::own_netns_cookie().ok(),
                sockets: own_sockets()?,
            })
        }) {
            Ok(ns) => {
                probes.extend(ns.probe_port);
                out.push(ns);
            }
            Err(e) => tracing::debug!("a network namespace's sockets are not listed: {e:#}"),
        }
    }
    Ok(out)
}

/// Which of the other network namespaces of this host (`other_namespace_paths`) hold an
/// address, by their cookies: where a forwarded flow's far end is a container's, whose
/// sockets the kernel hooks record by namespace and port (`NETMON_UDP_NS`). Read again
/// (every namespace entered from a thread, `setns`: its addresses and cookie) when an
/// address is asked for that no namespace held at the last reading, at most every
/// `RECHECK` (a new container, or an address given to one after its namespace was read),
/// and when anything is asked `REREAD` after the last (an address moved or removed). Also
/// which processes hold a namespace's open UDP sockets (`live_owner`).
#[derive(Default)]
pub struct NamespaceAddrs {
    by_addr: std::collections::HashMap<[u8; 16], Vec<u64>>,
    /// Each namespace entered, by identity (`other_namespace_paths`).
    known: std::collections::HashMap<u64, KnownNamespace>,
    checked: Option<std::time::Instant>,
    /// By cookie: when the namespace's UDP sockets were last listed, and their holders by
    /// local port.
    live: std::collections::HashMap<u64, (std::time::Instant, UdpHolders)>,
    /// The start of the current second and the listings made in it (`LISTINGS`).
    listings: (Option<std::time::Instant>, u32),
}

/// The processes holding a namespace's UDP sockets, by local port.
type UdpHolders = std::collections::HashMap<u16, netmon_common::ProcInfo>;

/// A network namespace `NamespaceAddrs` entered: where to enter it again, its identity,
/// cookie and addresses.
struct KnownNamespace {
    path: String,
    inode: u64,
    cookie: u64,
    addrs: Vec<[u8; 16]>,
}

impl NamespaceAddrs {
    const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);
    const REREAD: std::time::Duration = std::time::Duration::from_secs(60);
    /// How long a namespace's listed UDP sockets answer for it (a couple of drains).
    const LIVE: std::time::Duration = std::time::Duration::from_secs(2);
    const LIVE_MISS: std::time::Duration = std::time::Duration::from_millis(500);
    /// At most this many namespaces' UDP sockets are listed per second, whatever asks.
    const LISTINGS: u32 = 4;

    /// The cookies of the other namespaces that hold `addr` (IPv4 mapped into IPv6).
    pub fn cookies(&mut self, addr: &[u8; 16]) -> &[u64] {
        let stale = |t: Option<std::time::Instant>, d| t.is_none_or(|t| t.elapsed() >= d);
        if stale(self.checked, Self::REREAD)
            || !self.by_addr.contains_key(addr) && stale(self.checked, Self::RECHECK)
        {
            self.read_logged();
        }
        self.by_addr.get(addr).map_or(&[], Vec::as_slice)
    }

    /// Reads every namespace again if the last reading is `RECHECK` old; whether it did.
    /// For an address whose namespaces have no owner of the port asked for: the address
    /// may have gone to another namespace since (a container replaced, or one of several
    /// namespaces that hold the same address, isolated networks, given it after the
    /// reading).
    pub fn reread_if_due(&mut self) -> bool {
        if self.checked.is_some_and(|t| t.elapsed() < Self::RECHECK) {
            return false;
        }
        self.read_logged();
        true
    }

    /// `read`, a failure logged (the addresses are then those of the namespaces read).
    fn read_logged(&mut self) {
        if let Err(e) = self.read() {
            tracing::debug!("other network namespaces' addresses: {e:#}");
        }
    }

    /// The process holding the UDP socket on `port` of the namespace whose cookie is
    /// `cookie`, if one is open there now: a socket whose port no hook has seen yet (one
    /// connected before it had a port, recorded by the hooks only as it closes; one that
    /// only receives, never recorded), or one open before the daemon started. The
    /// namespace's UDP sockets are listed through sock_diag, from a thread that enters it,
    /// and their holders found among its processes' open files in /proc, as at start
    /// (`socket_owners`); at most once per `LIVE_MISS` per namespace, and `LISTINGS` per
    /// second in all.
    pub fn live_owner(&mut self, cookie: u64, port: u16) -> Option<netmon_common::ProcInfo> {
        // A listing answers for `LIVE`, but for a port it lacks only for `LIVE_MISS`: the
        // socket may have been opened since.
        let fresh = self.live.get(&cookie).is_some_and(|(at, holders)| {
            at.elapsed()
                < if holders.contains_key(&port) {
                    Self::LIVE
                } else {
                    Self::LIVE_MISS
                }
        });
        if !fresh {
            let now = std::time::Instant::now();
            match self.listings {
                (Some(t), n) if now.duration_since(t) < std::time::Duration::from_secs(1) => {
                    if n >= Self::LISTINGS {
                        return self.live.get(&cookie)?.1.get(&port).copied();
                    }
                    self.listings.1 += 1;
                }
                _ => self.listings = (Some(now), 1),
            }
            let k = self.known.values().find(|k| k.cookie == cookie)?;
            let holders = udp_holders(k.path.clone(), k.inode).unwrap_or_else(|e| {
                tracing::debug!("a network namespace's UDP sockets: {e:#}");
                Default::default()
            });
            self.live.insert(cookie, (now, holders));
        }
        self.live.get(&cookie)?.1.get(&port).copied()
    }

    fn read(&mut self) -> Result<()> {
        self.checked = Some(std::time::Instant::now());
        self.known.clear();
        for (path, inode) in other_namespace_paths()? {
            match in_namespace(path.clone(), || {
                let cookie = crate::load::own_netns_cookie()?;
                Ok((cookie, crate::load::iface::local_addresses()))
            }) {
                Ok((cookie, addrs)) => {
                    let k = KnownNamespace {
                        path,
                        inode,
                        cookie,
                        addrs,
                    };
                    self.known.insert(inode, k);
                }
                Err(e) => tracing::debug!("a network namespace's addresses are not read: {e:#}"),
            }
        }
        self.by_addr.clear();
        for k in self.known.values() {
            for a in &k.addrs {
                let cookies = self.by_addr.entry(*a).or_default();
                if !cookies.contains(&k.cookie) {
                    cookies.push(k.cookie);
                }
            }
        }
        let cookies: std::collections::HashSet<u64> =
            self.known.values().map(|k| k.cookie).collect();
        self.live.retain(|c, _| cookies.contains(c));
        Ok(())
    }
}

/// The processes holding the UDP sockets of the network namespace at `path` (identity
/// `inode`), by local port: its sockets listed from a thread that enters it, their holders
/// among the processes in it.
fn udp_holders(path: String, inode: u64) -> Result<UdpHolders> {
    use std::os::unix::fs::MetadataExt as _;
    let sockets = in_namespace(path, || {
        let mut out = Vec::new();
        SockDiag::new()?.dump_proto(IPPROTO_UDP, &mut out)?;
        Ok(out)
    })?;
    let pids = pids()?
        .into_iter()
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode)
        })
        .collect();
    Ok(socket_owners_among(vec![sockets], pids)?
        .into_iter()
        .flatten()
        .map(|(s, owner)| (s.local_port, owner))
        .collect())
}

/// Of each group of sockets (of one namespace each), those that a process holds open now,
/// each with that process (where several hold one, as after a fork, the one with the lowest
/// pid: the parent that opened it): what the hooks never saw of sockets opened before the
/// daemon started. Socket inodes, matched against every process's open files in /proc (as
/// `ss -p` does), once at start. The cgroup id is 0 (unknown) where no cgroup v2 hierarchy
/// is mounted to look it up.
pub fn socket_owners(
    groups: Vec<Vec<DiagSocket>>,
) -> Result<Vec<Vec<(DiagSocket, netmon_common::ProcInfo)>>> {
    socket_owners_among(groups, pids()?)
}

/// `socket_owners`, looking only at the processes `pids`.
fn socket_owners_among(
    groups: Vec<Vec<DiagSocket>>,
    pids: Vec<u32>,
) -> Result<Vec<Vec<(DiagSocket, netmon_common::ProcInfo)>>> {
    // (TIME_WAIT and request sockets have no inode: no process holds them.)
    let by_inode: std::collections::HashMap<u64, (usize, usize)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, socks)| {
            socks
                .iter()
                .enumerate()
                .filter(|(_, s)| s.inode != 0)
                .map(move |(i, s)| (u64::from(s.inode), (g, i)))
        })
        .collect();
    let mut owners: Vec<Vec<Option<netmon_common::ProcInfo>>> =
        groups.iter().map(|g| vec![None; g.len()]).collect();
    if !by_inode.is_empty() {
        let now = crate::drain::monotonic_ns();
        let cgroup2 = crate::load::cgroup2_mount();
        for pid in pids {
            let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
            // A process may exit, or deny access, while it is read: skipped.
            let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
                continue;
            };
            let mut proc_info = None;
            for fd in fds.flatten() {
                let Some(&(g, i)) = std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| {
                        l.to_str()?
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .parse::<u64>()
                            .ok()
                    })
                    .and_then(|inode| by_inode.get(&inode))
                else {
                    continue;
                };
                if owners[g][i].is_some() {
                    continue;
                }
                let info = proc_info.get_or_insert_with(|| {
                    let mut comm = [0u8; 16];
                    if let Ok(c) = std::fs::read_to_string(dir.join("comm")) {
                        let c = c.trim_end_matches('\n').as_bytes();
                        let n = c.len().min(15);
                        comm[..n].copy_from_slice(&c[..n]);
                    }
                    netmon_common::ProcInfo {
                        pid,
                        uid: groups[g][i].uid,
                        cgroup_id: cgroup2
                            .as_ref()
                            .and_then(|root| cgroup_id(root, pid))
                            .unwrap_or(0),
                        recorded_ns: now,
                        comm,
                    }
                });
                owners[g][i] = Some(*info);
            }
        }
    }
    Ok(groups
        .into_iter()
        .zip(owners)
        .map(|(socks, owners)| {
            socks
                .into_iter()
                .zip(owners)
                .filter_map(|(s, o)| Some((s, o?)))
                .collect()
        })
        .collect())
}

/// A process's cgroup v2 id, as `bpf_get_current_cgroup_id` gives it: the inode number of
/// its cgroup's directory.
fn cgroup_id(root: &std::path::Path, pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(
        std::fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()?
            .ino(),
    )
}

/// The payload of the first attribute of type `kind` in a run of netlink attributes
/// (`struct rtattr`: length, type, payload, padded to 4 bytes).
fn attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if t == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.div_ceil(4) * 4..)?;
    }
    None
}

fn to_socket(proto: u8, m: &InetDiagMsg) -> DiagSocket {
    let addr = |a: [u8; 16]| {
        if m.family == libc::AF_INET as u8 {
            v4_mapped([a[0], a[1], a[2], a[3]])
        } else {
            a
        }
    };
    DiagSocket {
        proto,
        local_addr: addr(m.id.src),
        local_port: u16::from_be_bytes(m.id.sport),
        remote_addr: addr(m.id.dst),
        remote_port: u16::from_be_bytes(m.id.dport),
        state: m.state,
        uid: m.uid,
        inode: m.inode,
        family: m.family,
        ifindex: m.id.ifindex,
        cookie: m.id.cookie,
        quality: None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream, UdpSocket};

    use super::*;

    /// sock_diag needs no privileges for one's own namespace: a listener we open is listed.
    #[test]
    fn lists_our_own_listener_and_udp_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let u = UdpSocket::bind("[::1]:0").unwrap();
        let uport = u.local_addr().unwrap().port();
        let socks = SockDiag::new().unwrap().dump_all().unwrap();
        let t = socks
            .iter()
            .find(|s| s.proto == IPPROTO_TCP && s.local_port == port)
            .expect("our TCP listener");
        assert_eq!(tcp_state_name(t.state), "LISTEN");
        assert_eq!(t.local_addr, v4_mapped([127, 0, 0, 1]));
        assert!(t.inode != 0);
        let mut v6lo = [0u8; 16];
        v6lo[15] = 1;
        let s = socks
            .iter()
            .find(|s| s.proto == IPPROTO_UDP && s.local_port == uport)
            .expect("our UDP socket");
        assert_eq!(s.local_addr, v6lo);
    }

    /// A TCP connection's quality in the dump is what its owner reads of it
    /// (`getsockopt(TCP_INFO)`), once its data is acknowledged and it is idle.
    #[test]
    fn tcp_quality_is_what_the_socket_owner_reads() {
        use std::{io::Write as _, os::fd::AsRawFd as _};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        c.write_all(&[7u8; 100_000]).unwrap();
        let mut got = vec![0u8; 100_000];
        std::io::Read::read_exact(&mut server, &mut got).unwrap();
        let own = || {
            // SAFETY: an all-zero tcp_info is valid; getsockopt fills at most `len` bytes.
            let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
            // SAFETY: a connected socket and a buffer of `len` bytes.
            let r = unsafe {
                libc::getsockopt(
                    c.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&raw mut info).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0);
            info
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while own().tcpi_unacked != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "data never acknowledged"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let truth = own();
        let port = c.local_addr().unwrap().port();
        let socks = SockDiag::new().unwrap().dump_all().unwrap();
        let s = socks
            .iter()
            .find(|s| s.proto == IPPROTO_TCP && s.local_port == port)
            .expect("our client socket");
        let q = s.quality.expect("a connected TCP socket's tcp_info");
        assert_eq!(
            q,
            TcpQuality {
                rtt_us: truth.tcpi_rtt,
                rtt_var_us: truth.tcpi_rttvar,
                retrans_segments: truth.tcpi_total_retrans,
                sent_segments: truth.tcpi_segs_out,
            }
        );
        assert!(q.rtt_us > 0 && q.sent_segments >= 2, "{q:?}");
        // The namespace's counters hold this connection's segments.
        let (sent, retrans) = tcp_segment_counters().expect("/proc/net/snmp");
        assert!(sent >= u64::from(q.sent_segments) && retrans >= u64::from(q.retrans_segments));
        let listener = socks
            .iter()
            .find(|s| {
                s.proto == IPPROTO_TCP
                    && s.local_port == l.local_addr().unwrap().port()
                    && s.state == TCP_LISTEN
            })
            .expect("our listener");
        assert_eq!(listener.quality, None);
    }

    /// A connected UDP socket, a TCP listener and both ends of a TCP connection this process
    /// holds are found, with this process's PID and command name.
    #[test]
    fn finds_the_owner_of_our_own_sockets() {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.connect("127.0.0.1:9").unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let owners = socket_owners(vec![own_sockets().unwrap()])
            .unwrap()
            .remove(0);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let comm = comm.trim_end().as_bytes();
        let n = comm.len().min(15);
        for (proto, local, remote, state) in [
            (
                IPPROTO_UDP,
                u.local_addr().unwrap(),
                u.peer_addr().unwrap(),
                1,
            ),
            (
                IPPROTO_TCP,
                l.local_addr().unwrap(),
                "0.0.0.0:0".parse().unwrap(),
                TCP_LISTEN,
            ),
            (
                IPPROTO_TCP,
                c.local_addr().unwrap(),
                c.peer_addr().unwrap(),
                1,
            ),
            (
                IPPROTO_TCP,
                a.local_addr().unwrap(),
                a.peer_addr().unwrap(),
                1,
            ),
        ] {
            let (_, owner) = owners
                .iter()
                .find(|(s, _)| {
                    s.proto == proto
                        && s.local_port == local.port()
                        && s.remote_port == remote.port()
                        && s.state == state
                })
                .unwrap_or_else(|| panic!("our socket {proto} {local} {remote}"));
            assert_eq!(owner.pid, std::process::id());
            assert_eq!(&owner.comm[..n], &comm[..n]);
        }
    }
}
