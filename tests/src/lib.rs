//! Harness for netmon's privileged tests: network namespaces joined by a veth pair, a netmon
//! daemon inside one of them, traffic peers that report the PID that really owns each socket,
//! and HTTP into a namespace's loopback. Every resource is a Drop guard, so a failing test
//! still removes its namespaces, links and processes.
//!
//! Test traffic stays inside namespaces this harness creates; addresses come from the
//! benchmarking range 198.18.0.0/15 (RFC 2544) and a ULA prefix, never anything routed.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod mmdb;
pub mod packet;

/// Ethernet header length.
pub const ETH_HLEN: u64 = 14;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Panics unless running as root: privileged tests are `#[ignore]`d and run by
/// `cargo xtask test` only where it is root, so reaching here without root is a harness bug.
pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test run without root: use `cargo xtask test` as root"
    );
}

pub fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bpffs mounted outside /sys, so that every `ip netns exec` session (which remounts
/// /sys) sees the same pinned maps: the daemon and the CLI run in separate sessions.
pub fn test_bpffs() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join("netmon-tests-bpffs");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir.to_str().unwrap()) && l.contains(" bpf "));
    if !mounted {
        sh(&["mount", "-t", "bpf", "bpf", dir.to_str().unwrap()]);
    }
    dir
}

/// A directory on the test bpffs for one loaded object's pinned maps, removed on drop, so
/// that loading the object in a test never pins anything under /sys/fs/bpf.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        let p = test_bpffs().join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace, deleted on drop (which also deletes the veth ends inside it), with
/// its own drop-list pin directory and state directory, removed on drop too.
pub struct Netns {
    pub name: String,
    pub pin_dir: PathBuf,
    /// A directory of the test's own files (the daemon's log, lists, the state directory),
    /// removed with the namespace: a passing suite leaves nothing in the temporary directory.
    pub scratch: PathBuf,
    pub state_dir: PathBuf,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "nmt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let scratch = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&scratch).unwrap();
        let ns = Self {
            pin_dir: test_bpffs().join(&name),
            state_dir: scratch.join("state"),
            scratch,
            name,
        };
        ns.set_up("lo");
        ns
    }

    /// Brings a link of this namespace up (SIOCSIFFLAGS from a thread inside it).
    pub fn set_up(&self, dev: &str) {
        let name = dev.to_string();
        let r = self.run(move || {
            // SAFETY: a zeroed ifreq with a NUL-terminated name (checked below) is valid for
            // SIOCGIFFLAGS/SIOCSIFFLAGS; the socket is closed before returning.
            unsafe {
                let mut req: libc::ifreq = std::mem::zeroed();
                assert!(name.len() < req.ifr_name.len(), "interface name {name:?}");
                for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
                    *d = s as libc::c_char;
                }
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
                if r == 0 {
                    req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                    r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
                }
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if r == 0 { Ok(()) } else { Err(e) }
            }
        });
        r.unwrap_or_else(|e| panic!("set {dev} up in {}: {e}", self.name));
    }

    /// Runs `ip -n <this namespace> args...`: one process, where `exec(&["ip", ...])` is two
    /// (the VM step's emulated guests spend ~50 ms on each).
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `ip -n <this namespace> -batch -` on `commands`, one per line: one process.
    pub fn ip_batch(&self, commands: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ip -batch");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ip -n {} -batch failed on\n{commands}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One of this namespace's links as `ip -j -s link show` describes it: its operstate,
    /// its XDP program and its counters (`stats64`, the kernel's dev_get_stats(), the
    /// figures /sys/class/net/<dev>/statistics reads too), all in one read.
    pub fn link(&self, dev: &str) -> Value {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", dev]);
        let mut links: Value = serde_json::from_str(&out).expect("ip -j link show");
        links[0].take()
    }

    /// The netmon CLI in this namespace with this namespace's drop-list directories.
    pub fn netmon_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(netmon_bin())
            .args(args)
            .env("NETMON_PIN_DIR", &self.pin_dir)
            .env("NETMON_STATE_DIR", &self.state_dir)
            .env_remove("RUST_BACKTRACE");
        cmd
    }

    /// Runs the netmon CLI in this namespace with this namespace's drop-list directories.
    pub fn netmon(&self, args: &[&str]) -> std::process::Output {
        self.netmon_cmd(args).output().expect("run netmon")
    }

    /// Runs the netmon CLI and returns its stdout, panicking with its stderr on failure.
    pub fn netmon_ok(&self, args: &[&str]) -> String {
        let out = self.netmon(args);
        assert!(
            out.status.success(),
            "netmon {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the netmon CLI expecting failure; returns its stderr.
    pub fn netmon_err(&self, args: &[&str]) -> String {
        let out = self.netmon(args);
        assert!(
            !out.status.success(),
            "netmon {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        sh(&full)
    }

    /// Sets a sysctl of this namespace, written from a thread inside it (/proc/sys/net is
    /// the writing thread's namespace's): no process started.
    pub fn sysctl(&self, key: &str, value: &str) {
        let (path, v) = (
            format!("/proc/sys/{}", key.replace('.', "/")),
            value.to_string(),
        );
        self.run(move || std::fs::write(&path, v))
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name));
    }

    /// Runs `f` on a thread that has entered this namespace (setns), e.g. to reach a
    /// daemon's loopback API.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    /// Runs `f` on a new thread inside this namespace and returns at once.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f_ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid namespace fd, affecting only this thread.
            let r = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Two namespaces, `a` and `b`, joined by a veth pair `a.ifname` <-> `b.ifname`, with IPv4
/// and IPv6 addresses, static neighbours (no ARP/ND on the wire) and IPv6 autoconfiguration
/// noise (router solicitation, DAD) switched off, so the link carries only test traffic.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
    pub a_v4: &'static str,
    pub b_v4: &'static str,
    pub a_v6: &'static str,
    pub b_v6: &'static str,
}

impl Pair {
    /// The interface index of `a`'s end, as the kernel programs record it.
    pub fn a_ifindex(&self) -> u32 {
        self.a
            .exec(&["cat", &format!("/sys/class/net/{}/ifindex", self.a_if)])
            .trim()
            .parse()
            .expect("an interface index")
    }

    pub fn new(tag: &str) -> Self {
        require_root();
        let a = Netns::new(&format!("{tag}a"));
        let b = Netns::new(&format!("{tag}b"));
        let a_if = "nmt0".to_string();
        let b_if = "nmt1".to_string();
        for ns in [&a, &b] {
            for (k, v) in [
                ("net.ipv6.conf.default.router_solicitations", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                ("net.ipv6.conf.default.dad_transmits", "0"),
                ("net.ipv6.conf.default.accept_ra", "0"),
                ("net.ipv6.conf.default.addr_gen_mode", "1"),
                // MLD reports and their retransmissions go out within a millisecond of the
                // link coming up, instead of at random times over the next seconds.
                (
                    "net.ipv6.conf.default.mldv1_unsolicited_report_interval",
                    "1",
                ),
                (
                    "net.ipv6.conf.default.mldv2_unsolicited_report_interval",
                    "1",
                ),
            ] {
                ns.sysctl(k, v);
            }
        }
        // Fixed, locally administered MACs: the static neighbours below need no read-back.
        // Distinct interface indexes: a veth whose index equals its peer's (2 and 2, each
        // the first link of a fresh namespace) has its carrier change queued as a non-urgent
        // link event (linkwatch_urgent_event()), up to a second late; the emulated guests of
        // the VM step waited ~0.9 s for it per pair.
        let (a_mac, b_mac) = ("02:6e:6d:00:00:01", "02:6e:6d:00:00:02");
        sh(&[
            "ip", "link", "add", &a_if, "address", a_mac, "index", "10", "netns", &a.name, "type",
            "veth", "peer", "name", &b_if, "address", b_mac, "index", "11", "netns", &b.name,
        ]);
        let p = Self {
            a,
            b,
            a_if,
            b_if,
            a_v4: "198.18.0.1",
            b_v4: "198.18.0.2",
            a_v6: "fd00:6e6d::1",
            b_v6: "fd00:6e6d::2",
        };
        for (ns, ifname, v4, v6, peer_v4, peer_v6, peer_mac) in [
            (&p.a, &p.a_if, p.a_v4, p.a_v6, p.b_v4, p.b_v6, b_mac),
            (&p.b, &p.b_if, p.b_v4, p.b_v6, p.a_v4, p.a_v6, a_mac),
        ] {
            let mut batch = format!(
                "addr add {v4}/24 dev {ifname}\n\
                 addr add {v6}/64 dev {ifname} nodad\n\
                 link set {ifname} up\n"
            );
            for peer in [peer_v4, peer_v6] {
                batch +=
                    &format!("neigh replace {peer} lladdr {peer_mac} nud permanent dev {ifname}\n");
            }
            ns.ip_batch(&batch);
        }
        // The carrier comes up when linkwatch runs (at once for these ends, see above); that
        // is when the last MLD reports go out. Wait for it, then for a quiet link.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, ifname) in [(&p.a, &p.a_if), (&p.b, &p.b_if)] {
            while ns.link(ifname)["operstate"] != "UP" {
                assert!(Instant::now() < deadline, "{ifname} never came up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // TCP hands a veth (TSO on by default) 64 KiB skbs, which it passes to its peer whole
        // and counts as one packet each; netmon counts the segments a NIC would send
        // (`wire_frames` in netmon-ebpf). With TSO off the stack cuts them in software after
        // the egress hook, so the veth counts, and its peer receives, what went on the "wire".
        p.set_tso(false);
        p.a_quiet_counters();
        p
    }

    /// Turns TSO on or off on both ends.
    pub fn set_tso(&self, on: bool) {
        for (ns, ifname) in [(&self.a, &self.a_if), (&self.b, &self.b_if)] {
            let i = ifname.clone();
            ns.run(move || set_offload(&i, Offload::Tso, on));
        }
    }

    /// `a`'s veth counters from the kernel, in frame bytes (Ethernet header included), the
    /// unit netmon and physical NICs count in. veth's tx_bytes are frame bytes already, and
    /// so are its rx_bytes without XDP (netmon's default on a veth: the TC ingress hook) or
    /// with XDP in generic mode; with native XDP (`--xdp-attach driver`), or with GRO on
    /// (either puts receive on a NAPI ring), veth_xdp_rcv() counts them after
    /// __dev_forward_skb()'s eth_type_trans() pulled the 14-byte Ethernet header, so each
    /// received packet is short by exactly that header, which is added back.
    pub fn a_counters(&self) -> IfCounters {
        let link = self.a.link(&self.a_if);
        let raw = IfCounters::of(&link);
        let name = self.a_if.clone();
        // XDP_ATTACHED_DRV: native XDP, as `ip link` says.
        if link["xdp"]["mode"] != 1 && !self.a.run(move || offload(&name, Offload::Gro)) {
            return raw;
        }
        IfCounters {
            rx_bytes: raw.rx_bytes + ETH_HLEN * raw.rx_packets,
            ..raw
        }
    }

    /// One of `a`'s device counters (`rx_bytes`, `tx_dropped`, ...) as /sys/class/net
    /// reports it.
    pub fn a_stat(&self, name: &str) -> u64 {
        self.a
            .exec(&[
                "cat",
                &format!("/sys/class/net/{}/statistics/{name}", self.a_if),
            ])
            .trim()
            .parse()
            .unwrap()
    }

    /// `a`'s veth counters exactly as the kernel reports them (/sys/class/net's figures).
    pub fn a_raw_counters(&self) -> IfCounters {
        IfCounters::of(&self.a.link(&self.a_if))
    }

    /// Waits until `a`'s counters stop moving (no packet for 300 ms) and returns them.
    pub fn a_quiet_counters(&self) -> IfCounters {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.a_counters();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.a_counters();
            if now == last {
                return now;
            }
            assert!(Instant::now() < deadline, "link never went quiet");
            last = now;
        }
    }
}

/// An offload `set_offload` turns on or off.
#[derive(Debug, Clone, Copy)]
pub enum Offload {
    /// TCP segmentation offload (every TSO feature).
    Tso,
    /// Generic receive offload: on a veth it also moves receive onto a NAPI ring.
    Gro,
}

/// Turns `what` on or off on `name` in this thread's namespace, by the ethtool ioctl (the
/// VM step's guests have no ethtool binary). Panics if the device refuses.
pub fn set_offload(name: &str, what: Offload, on: bool) {
    // ETHTOOL_STSO, ETHTOOL_SGRO.
    let cmd = match what {
        Offload::Tso => 0x1f,
        Offload::Gro => 0x2c,
    };
    ethtool_value(name, cmd, u32::from(on));
}

/// Whether `what` is on on `name` in this thread's namespace.
pub fn offload(name: &str, what: Offload) -> bool {
    // ETHTOOL_GTSO, ETHTOOL_GGRO.
    let cmd = match what {
        Offload::Tso => 0x1e,
        Offload::Gro => 0x2b,
    };
    ethtool_value(name, cmd, 0) != 0
}

/// `netmon::load::iface::ethtool_value`, which panics if the device refuses.
fn ethtool_value(name: &str, cmd: u32, data: u32) -> u32 {
    netmon::load::iface::ethtool_value(name, cmd, data).unwrap_or_else(|| {
        panic!(
            "ethtool command {cmd:#x} on {name}: {}",
            std::io::Error::last_os_error()
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl IfCounters {
    /// The counters of a link as [`Netns::link`] returns it.
    fn of(link: &Value) -> Self {
        let n = |dir: &str, what: &str| {
            link["stats64"][dir][what]
                .as_u64()
                .unwrap_or_else(|| panic!("no stats64.{dir}.{what} in {link}"))
        };
        Self {
            rx_bytes: n("rx", "bytes"),
            rx_packets: n("rx", "packets"),
            tx_bytes: n("tx", "bytes"),
            tx_packets: n("tx", "packets"),
        }
    }
}

impl std::ops::Sub for IfCounters {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            rx_bytes: self.rx_bytes - o.rx_bytes,
            rx_packets: self.rx_packets - o.rx_packets,
            tx_bytes: self.tx_bytes - o.tx_bytes,
            tx_packets: self.tx_packets - o.tx_packets,
        }
    }
}

pub fn netmon_bin() -> PathBuf {
    std::env::var_os("NETMON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netmon"))
}

pub fn testpeer_bin() -> PathBuf {
    std::env::var_os("NETMON_TESTPEER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netmon-testpeer")
        })
}

/// GET `path` from `addr` inside `ns`; returns (status, body).
pub fn ns_get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    try_ns_get(ns, addr, path, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// GET `path` from `addr` inside `ns`, waiting at most `timeout` for the answer.
pub fn try_ns_get(
    ns: &Netns,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    ns.run(move || {
        let mut s = TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let bad = || std::io::Error::other(format!("malformed HTTP response: {resp:?}"));
        let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(bad)?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(bad)?;
        Ok((code, body.to_string()))
    })
}

pub fn ns_json(ns: &Netns, addr: &str, path: &str) -> Value {
    let (code, body) = ns_get(ns, addr, path);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// A `netmon run` inside a namespace; SIGTERM on drop, SIGKILL if it does not exit.
pub struct Daemon {
    pub child: Option<Child>,
    pub api: String,
    pub log: PathBuf,
    /// How the harness asks this daemon: with the token of `--api-token-file` and over TLS
    /// trusting its `--tls-cert` (self-signed), when `extra` gave it those.
    pub client: netmon::client::Api,
    ns_name: String,
}

impl Daemon {
    pub fn start(ns: &Netns, ifaces: &[&str], extra: &[&str]) -> Self {
        let d = Self::spawn(ns, ifaces, extra);
        d.wait_ready(ns);
        d
    }

    /// `extra` may carry `--listen ADDR` (default 127.0.0.1:9743 in the namespace).
    pub fn spawn(ns: &Netns, ifaces: &[&str], extra: &[&str]) -> Self {
        let listen_at = extra.iter().position(|a| *a == "--listen");
        let api = listen_at
            .and_then(|i| extra.get(i + 1))
            .map_or("127.0.0.1:9743", |a| *a)
            .to_string();
        let log = ns.scratch.join("netmon.log");
        let logf = File::create(&log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(netmon_bin())
            .arg("run")
            .env("NETMON_PIN_DIR", &ns.pin_dir)
            .env("NETMON_STATE_DIR", &ns.state_dir)
            .env_remove("RUST_BACKTRACE");
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        // Tests drain every 200 ms unless they say otherwise (benchmarks use the default).
        if !extra.contains(&"--interval") {
            cmd.args(["--interval", "200ms"]);
        }
        // The suite runs once per egress attach mode, the second time with generic XDP as
        // the ingress hook (`cargo xtask test` sets these), unless a test asks for its own.
        if let Ok(mode) = std::env::var("NETMON_TEST_TC_ATTACH") {
            cmd.args(["--tc-attach", &mode]);
        }
        if let Ok(mode) = std::env::var("NETMON_TEST_XDP_ATTACH")
            && !extra.contains(&"--xdp-attach")
        {
            cmd.args(["--xdp-attach", &mode]);
        }
        if listen_at.is_none() {
            cmd.args(["--listen", &api]);
        }
        cmd.args(extra)
            .env("RUST_LOG", "info")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let child = cmd.spawn().expect("spawn netmon");
        let given = |opt: &str| {
            extra
                .iter()
                .position(|a| *a == opt)
                .and_then(|i| extra.get(i + 1))
                .map(std::path::Path::new)
        };
        let client = netmon::client::Api {
            addr: api.clone(),
            token: given("--api-token-file")
                .map(|f| netmon::config::read_token(f).expect("the token file")),
            tls: given("--tls-cert")
                .map(|c| netmon::tls::client_config(c).expect("the certificate")),
        };
        Self {
            child: Some(child),
            api,
            log,
            client,
            ns_name: ns.name.clone(),
        }
    }

    /// GET `path` from this daemon's API, with its token and over TLS if it has them.
    pub fn get(&self, ns: &Netns, path: &str) -> (u16, String) {
        self.try_get(ns, path)
            .unwrap_or_else(|e| panic!("GET {path} from {}: {e:#}", self.api))
    }

    fn try_get(&self, ns: &Netns, path: &str) -> anyhow::Result<(u16, String)> {
        let (client, path) = (self.client.clone(), path.to_string());
        ns.run(move || client.get(&path))
    }

    fn json(&self, ns: &Netns, path: &str) -> Value {
        let (code, body) = self.get(ns, path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the API answers with at least one completed drain. The listener is bound
    /// before the programs are loaded, so a connection may be accepted by the kernel well
    /// before the daemon answers (seconds under qemu's software emulation): each try waits
    /// a little, and the whole wait is long enough for an emulated guest.
    pub fn wait_ready(&self, ns: &Netns) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let drains = self
                .try_get(ns, "/api/status")
                .ok()
                .and_then(|(code, body)| (code == 200).then_some(body))
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .and_then(|v| v["drains"].as_u64())
                .unwrap_or(0);
            if drains >= 1 {
                return;
            }

            assert!(
                Instant::now() < deadline,
                "netmon did not become ready in {}; log:\n{}",
                self.ns_name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn drains(&self, ns: &Netns) -> u64 {
        self.json(ns, "/api/status")["drains"].as_u64().unwrap_or(0)
    }

    /// Waits for two further drains (so everything before the call is in the snapshot)
    /// and returns /api/network-stats.
    pub fn fresh_stats(&self, ns: &Netns) -> Value {
        let start = self.drains(ns);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.drains(ns) < start + 2 {
            assert!(
                Instant::now() < deadline,
                "no drain; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.json(ns, "/api/network-stats")
    }

    /// The daemon's PID (`ip netns exec` execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                panic!("netmon ignored SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failing test shows what the daemon said.
        if std::thread::panicking() {
            eprintln!(
                "--- netmon log ({}):\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// A traffic peer process (netmon-testpeer) in a namespace.
pub struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
    /// The PID that owns the socket, as the process itself reported.
    pub pid: u32,
    pub local: String,
}

impl Peer {
    pub fn spawn(ns: &Netns, args: &[&str]) -> Self {
        Self::start(ns, args, None)
    }

    /// `spawn`, the peer running in cgroup `cg` from its first instruction (it is moved there
    /// between fork and exec).
    pub fn spawn_in_cgroup(ns: &Netns, cg: &TestCgroup, args: &[&str]) -> Self {
        Self::start(ns, args, Some(cg))
    }

    fn start(ns: &Netns, args: &[&str], cg: Option<&TestCgroup>) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(testpeer_bin())
            .args(args)
            .stdout(Stdio::piped());
        // Open until the spawn returns: the child writes to it between fork and exec.
        let procs = cg.map(|cg| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(cg.dir.join("cgroup.procs"))
                .expect("open the test cgroup's cgroup.procs")
        });
        if let Some(procs) = &procs {
            let fd = procs.as_raw_fd();
            // SAFETY: the closure only makes a write system call (async-signal-safe, no
            // allocation) on a descriptor that stays open until the spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    // "0": the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn testpeer");
        drop(procs);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let field = |k: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("testpeer {args:?} said {line:?}"))
                .to_string()
        };
        Self {
            pid: field("pid=").parse().unwrap(),
            local: field("local="),
            child,
            out,
        }
    }

    /// The next line of its output (blocks until it comes).
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line
    }

    /// Waits for exit (30 s at most) and returns the rest of its output.
    pub fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut rest = String::new();
                self.out.read_to_string(&mut rest).unwrap();
                assert!(st.success(), "testpeer failed: {st}: {rest}");
                return rest;
            }
            assert!(Instant::now() < deadline, "testpeer hung");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup v2 directory made for a test below the hierarchy's root, removed on drop (with
/// the hierarchy mounted for it on a directory of its own where none was mounted).
pub struct TestCgroup {
    /// Its directory here.
    pub dir: PathBuf,
    /// Its path in the hierarchy, as netmon names it (`/netmon-test-...`).
    pub path: String,
    /// Where the hierarchy was mounted for this test, if it was.
    mounted: Option<PathBuf>,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let (root, mounted) = match netmon::load::cgroup2_mount() {
            Some(root) => (root, None),
            None => {
                let at = std::env::temp_dir().join(format!("netmon-test-cgroup2-{name}"));
                std::fs::create_dir_all(&at).unwrap();
                sh(&["mount", "-t", "cgroup2", "cgroup2", &at.to_string_lossy()]);
                (at.clone(), Some(at))
            }
        };
        let leaf = format!("netmon-test-{name}-{}", std::process::id());
        let dir = root.join(&leaf);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self {
            dir,
            path: format!("/{leaf}"),
            mounted,
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (peers are waited for); a cgroup empties a moment
        // after its last process exits.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(at) = &self.mounted {
            let _ = Command::new("umount").arg(at).status();
            let _ = std::fs::remove_dir(at);
        }
    }
}

/// The connection whose local and remote addresses are these, from /api/network-stats.
pub fn find_conn<'a>(stats: &'a Value, local: &str, remote: &str) -> &'a Value {
    stats["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["local_address"] == local && c["remote_address"] == remote)
        .unwrap_or_else(|| {
            panic!(
                "no connection {local} -> {remote} in {}",
                serde_json::to_string_pretty(&stats["connections"]).unwrap()
            )
        })
}

/// The monitored interface named `name` in /api/network-stats.
pub fn find_iface<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no interface {name} in {stats}"))
}

pub fn is_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The `query` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// The ids of the cgroup BPF links process `pid` holds open (its fdinfo names each link's
/// type and id).
pub fn cgroup_links_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| {
            info.lines()
                .any(|l| l.split_whitespace().eq(["link_type:", "cgroup"]))
        })
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("link_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// Whether a BPF link with this id exists anywhere on the host.
pub fn link_exists(id: u32) -> bool {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    out.status.success()
}

/// The programs attached to `ifname` in `ns`, as the kernel lists them: (ingress: XDP, TC
/// ingress filters and TCX ingress programs; egress: TC egress filters and TCX egress
/// programs). TCX links are counted through BPF_PROG_QUERY (Linux 6.6+), which Debian's
/// bpftool 7.1 cannot show; cls_bpf filters on a clsact qdisc through `tc`.
pub fn attached_programs(ns: &Netns, ifname: &str) -> (usize, usize) {
    let net: Value =
        serde_json::from_str(&ns.exec(&["bpftool", "-j", "net", "show", "dev", ifname])).unwrap();
    let xdp = net[0]["xdp"].as_array().map(|a| a.len()).unwrap_or(0);
    let tc_filters = |side: &str| {
        ns.exec(&["tc", "filter", "show", "dev", ifname, side])
            .lines()
            // `tc` prints a "pref N bpf chain 0" header and then one line per filter.
            .filter(|l| l.contains("bpf") && l.contains("handle"))
            .count()
    };
    let ifindex: u32 = ns
        .exec(&["cat", &format!("/sys/class/net/{ifname}/ifindex")])
        .trim()
        .parse()
        .unwrap();
    let tcx = |attach_type: u32| {
        ns.run(move || {
            let mut ids = [0u32; 64];
            let mut attr = QueryAttr {
                target_ifindex: ifindex,
                attach_type,
                prog_ids: ids.as_mut_ptr() as u64,
                count: ids.len() as u32,
                ..Default::default()
            };
            // SAFETY: valid attr and buffer of `count` ids.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_PROG_QUERY,
                    &mut attr as *mut QueryAttr,
                    std::mem::size_of::<QueryAttr>() as u32,
                )
            };
            // EINVAL: a kernel without TCX.
            if r < 0 { 0 } else { attr.count as usize }
        })
    };
    (
        xdp + tc_filters("ingress") + tcx(BPF_TCX_INGRESS),
        tc_filters("egress") + tcx(BPF_TCX_EGRESS),
    )
}

/// The running kernel's (major, minor), from uname(2): ground truth for which attach
/// points exist (TCX arrived in 6.6).
pub fn kernel_version() -> (u32, u32) {
    let release = sh(&["uname", "-r"]);
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The newest loaded kernel map named `name` with `max_entries` entries: a daemon's map,
/// found from outside it (a size no other daemon of the run uses tells them apart).
pub fn loaded_map(name: &str, max_entries: u32) -> aya::maps::MapInfo {
    aya::maps::loaded_maps()
        .flatten()
        .filter(|m| m.name_as_str() == Some(name) && m.max_entries() == max_entries)
        .max_by_key(|m| m.id())
        .unwrap_or_else(|| {
            let same_name: Vec<u32> = aya::maps::loaded_maps()
                .flatten()
                .filter(|m| m.name_as_str() == Some(name))
                .map(|m| m.max_entries())
                .collect();
            panic!("no {name} of {max_entries} entries loaded (sizes loaded: {same_name:?})")
        })
}

/// Polls `f` every 100 ms until it returns Some, for at most `secs`; then panics saying it
/// waited for `what`, with `log()` (a daemon's log, say).
pub fn wait_for<T>(
    secs: u64,
    what: &str,
    log: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {secs} s\n{}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
