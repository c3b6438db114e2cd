//! Traffic peer for the end-to-end tests: moves an exact number of bytes and says who it is.
//!
//! Prints one line `ready pid=<pid> local=<addr>` as soon as its socket is set up, so the
//! test knows the ground truth (the PID that really owns the socket, and its address).
//! `--comm NAME` sets the process's command name (prctl PR_SET_NAME) before any socket is
//! created, so attribution can be checked by name as well as by PID.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} wants a number"))
        })
        .unwrap_or(default)
}

fn addr(args: &[String], name: &str) -> SocketAddr {
    arg(args, name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} wants IP:PORT"))
}

fn set_comm(args: &[String]) {
    if let Some(c) = arg(args, "--comm") {
        let c = std::ffi::CString::new(c).unwrap();
        // SAFETY: PR_SET_NAME with a NUL-terminated string (the kernel truncates to 15 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    }
}

/// Waits (30 s at most) until the file `f` exists: the test's go-ahead.
fn wait_for_file(f: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(f).exists() {
        assert!(Instant::now() < deadline, "{f} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Bytes in the socket's send queue, sent or not, not yet acknowledged (`SIOCOUTQ`).
fn send_queue(s: &TcpStream) -> i32 {
    use std::os::fd::AsRawFd as _;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n
}

/// The socket's `struct tcp_info`, as its owner reads it.
fn tcp_info(s: &TcpStream) -> libc::tcp_info {
    use std::os::fd::AsRawFd as _;
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket and buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}

/// The Internet checksum (RFC 1071) of `b`.
fn inet_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `count` ICMP echo requests to `to`, each waiting up to 1 s for its reply; returns
/// the replies received.
fn icmp_echo(to: std::net::IpAddr, count: u64, raw: bool) -> u64 {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let (family, proto, request, reply) = match to {
        std::net::IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        std::net::IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    let kind = if raw {
        libc::SOCK_RAW
    } else {
        libc::SOCK_DGRAM
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, kind, proto) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor we own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO with a timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let (sa, sa_len) = socket_addr(SocketAddr::new(to, 0));
    let id = (std::process::id() & 0xffff) as u16;
    let mut received = 0;
    for seq in 0..count {
        let mut msg = vec![request, 0, 0, 0];
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&(seq as u16).to_be_bytes());
        msg.extend_from_slice(&[0x42; 56]);
        if raw && family == libc::AF_INET {
            // The kernel fills the checksum in for ping sockets and ICMPv6, not here.
            let c = inet_checksum(&msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
        }
        send_whole(&fd, &msg, &sa, sa_len);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let mut buf = [0u8; 1500];
            // SAFETY: a valid buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            let got = &buf[..n as usize];
            // A raw IPv4 socket's datagrams start with the IP header.
            let icmp = if raw && family == libc::AF_INET {
                &got[usize::from(got[0] & 0xf) * 4..]
            } else {
                got
            };
            // A ping socket's replies carry its own identifier, not ours.
            if icmp.len() >= 8
                && icmp[0] == reply
                && u16::from_be_bytes([icmp[6], icmp[7]]) == seq as u16
                && (!raw || u16::from_be_bytes([icmp[4], icmp[5]]) == id)
            {
                received += 1;
                break;
            }
        }
    }
    received
}

/// sendto(2) of all of `buf` to the socket address `to` (`len` bytes of it), or a panic that
/// says why not.
fn send_whole<A>(fd: &std::os::fd::OwnedFd, buf: &[u8], to: &A, len: libc::socklen_t) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid buffer, and a socket address of at least `len` bytes.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            core::ptr::from_ref(to).cast(),
            len,
        )
    };
    assert_eq!(
        n,
        buf.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends `count` broadcast frames of `ethertype` (60 bytes, the minimum) out of `iface`.
fn eth_send(iface: &str, ethertype: u16, count: u64) -> u64 {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {iface}");
    // SAFETY: plain socket(2); protocol 0: this socket receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor we own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.resize(60, 0x5a);
    let mut sent = 0;
    for _ in 0..count {
        send_whole(
            &fd,
            &frame,
            &to,
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        sent += 1;
    }
    sent
}

/// `a` as a sockaddr_storage and its length.
fn socket_addr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn ready(local: SocketAddr) {
    println!("ready pid={} local={local}", std::process::id());
    std::io::stdout().flush().unwrap();
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    set_comm(&args);
    let cmd = args.first().map(String::as_str).unwrap_or("");
    match cmd {
        "tcp-send" => {
            let to = addr(&args, "--to");
            let n = num(&args, "--bytes", 0) as usize;
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
            ready(s.local_addr().unwrap());
            // --after-file F: connected, wait for F before sending.
            if let Some(f) = arg(&args, "--after-file") {
                wait_for_file(&f);
            }
            let buf = vec![0x5au8; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(buf.len());
                s.write_all(&buf[..k]).expect("write");
                left -= k;
            }
            // --hold-file F: once every byte is sent and acknowledged (none left in the send
            // queue: with no data in flight TCP may still hold some back, paced), say what TCP
            // measured of the connection (its own tcp_info) and keep it open, idle, until F
            // exists; then say it again.
            if let Some(f) = arg(&args, "--hold-file") {
                let deadline = Instant::now() + Duration::from_secs(30);
                while send_queue(&s) != 0 || tcp_info(&s).tcpi_unacked != 0 {
                    assert!(Instant::now() < deadline, "data never acknowledged");
                    std::thread::sleep(Duration::from_millis(10));
                }
                let say = |info: libc::tcp_info| {
                    println!(
                        "tcp_info rtt_us={} rtt_var_us={} retrans_segments={} sent_segments={}",
                        info.tcpi_rtt,
                        info.tcpi_rttvar,
                        info.tcpi_total_retrans,
                        info.tcpi_segs_out
                    );
                    std::io::stdout().flush().unwrap();
                };
                say(tcp_info(&s));
                wait_for_file(&f);
                say(tcp_info(&s));
            }
            s.shutdown(Shutdown::Write).unwrap();
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).ok();
            println!(
                "sent={n} received={} elapsed_us={}",
                sink.len(),
                started.elapsed().as_micros()
            );
        }
        "tcp-serve" => {
            let l = TcpListener::bind(addr(&args, "--listen")).expect("bind");
            ready(l.local_addr().unwrap());
            let count = num(&args, "--count", 1);
            let reply = num(&args, "--reply", 0) as usize;
            for _ in 0..count {
                let (mut c, _) = l.accept().expect("accept");
                let mut got = Vec::new();
                c.read_to_end(&mut got).expect("read");
                if reply > 0 {
                    c.write_all(&vec![0xa5u8; reply]).expect("reply");
                }
                c.shutdown(Shutdown::Write).ok();
                println!("received={}", got.len());
            }
        }
        "udp-send" => {
            // --count N datagrams, or with --duration-ms as many as fit, one every
            // --interval-us; --bind picks the source address.
            let to = addr(&args, "--to");
            let bind: SocketAddr = match arg(&args, "--bind") {
                Some(b) => b.parse().expect("--bind wants IP:PORT"),
                None if to.is_ipv4() => "0.0.0.0:0".parse().unwrap(),
                None => "[::]:0".parse().unwrap(),
            };
            // --connect: a connected socket (its sends carry no address); --after-file:
            // socket ready, wait for the file before the first send. --unbound: the socket
            // is not bound before it connects or sends (as a resolver's is), so its port
            // comes with the connect, or with the first send, which is then made before
            // the socket is reported ready (one of --count).
            let connected = args.iter().any(|a| a == "--connect");
            let unbound = args.iter().any(|a| a == "--unbound");
            let s = if unbound {
                let family = if to.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                // SAFETY: a new socket, owned by the UdpSocket made of it.
                let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM, 0) };
                assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
                // SAFETY: as above.
                unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) }
            } else {
                UdpSocket::bind(bind).expect("bind")
            };
            if connected {
                s.connect(to).expect("connect");
            }
            let count = num(&args, "--count", u64::MAX);
            let duration = Duration::from_millis(num(&args, "--duration-ms", u64::MAX / 4));
            let interval = Duration::from_micros(num(&args, "--interval-us", 0));
            let buf = vec![0x33u8; num(&args, "--size", 100) as usize];
            let mut sent = 0u64;
            if unbound && !connected && count > 0 {
                s.send_to(&buf, to).expect("send");
                sent += 1;
            }
            ready(s.local_addr().unwrap());
            if let Some(f) = arg(&args, "--after-file") {
                wait_for_file(&f);
            }
            let start = Instant::now();
            while sent < count && start.elapsed() < duration {
                if connected {
                    s.send(&buf).expect("send");
                } else {
                    s.send_to(&buf, to).expect("send");
                }
                sent += 1;
                if !interval.is_zero() {
                    std::thread::sleep(interval);
                }
            }
            println!("sent={sent}");
            std::io::stdout().flush().unwrap();
            // --stay-file F: the socket kept open until F appears.
            if let Some(f) = arg(&args, "--stay-file") {
                wait_for_file(&f);
            }
        }
        "udp-recv" => {
            // Until --count datagrams, --timeout-ms, or the file --stop-file appears; reports
            // when the first one came.
            let s = UdpSocket::bind(addr(&args, "--listen")).expect("bind");
            let stop_file = arg(&args, "--stop-file").map(std::path::PathBuf::from);
            ready(s.local_addr().unwrap());
            let count = num(&args, "--count", u64::MAX);
            let deadline = Instant::now() + Duration::from_millis(num(&args, "--timeout-ms", 5000));
            let mut got = 0;
            let mut first_ms = 0u128;
            let mut buf = vec![0u8; 65536];
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            while got < count
                && Instant::now() < deadline
                && !stop_file.as_ref().is_some_and(|f| f.exists())
            {
                if s.recv_from(&mut buf).is_ok() {
                    if got == 0 {
                        first_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis();
                    }
                    got += 1;
                }
            }
            println!("received={got} first_ms={first_ms}");
        }
        "tcp-probe" => {
            // One connect attempt; says what happened instead of failing.
            let to = addr(&args, "--to");
            let timeout = Duration::from_millis(num(&args, "--timeout-ms", 1000));
            println!("ready pid={} local=-", std::process::id());
            match TcpStream::connect_timeout(&to, timeout) {
                Ok(_) => println!("connected"),
                Err(e) => println!("failed: {e}"),
            }
        }
        "icmp-echo" => {
            // --count echo requests to --to (an address, no port), one at a time, each waiting
            // up to 1 s for its reply; from a raw socket with --raw, else from a ping socket
            // (SOCK_DGRAM, which net.ipv4.ping_group_range must allow).
            let to: std::net::IpAddr = arg(&args, "--to")
                .expect("missing --to")
                .parse()
                .expect("--to wants an IP address");
            let count = num(&args, "--count", 1);
            let raw = args.iter().any(|a| a == "--raw");
            println!("ready pid={} local=-", std::process::id());
            std::io::stdout().flush().unwrap();
            let received = icmp_echo(to, count, raw);
            println!("sent={count} received={received}");
        }
        "eth-send" => {
            // --count broadcast Ethernet frames of --ethertype (hex) out of --iface, through
            // a packet socket: frames no protocol of the receiving host takes.
            let iface = arg(&args, "--iface").expect("missing --iface");
            let ethertype = u16::from_str_radix(
                arg(&args, "--ethertype")
                    .unwrap_or_else(|| "88b5".into())
                    .trim_start_matches("0x"),
                16,
            )
            .expect("--ethertype wants hex");
            let count = num(&args, "--count", 1);
            println!("ready pid={} local=-", std::process::id());
            std::io::stdout().flush().unwrap();
            println!("sent={}", eth_send(&iface, ethertype, count));
        }
        "sleep-listen" => {
            // A listener that carries no traffic, for the connection table's LISTEN rows.
            let l = TcpListener::bind(addr(&args, "--listen")).expect("bind");
            ready(l.local_addr().unwrap());
            std::thread::sleep(Duration::from_millis(num(&args, "--ms", 10_000)));
        }
        _ => {
            eprintln!(
                "usage: netmon-testpeer tcp-send|tcp-serve|udp-send|udp-recv|tcp-probe|icmp-echo|\
                 eth-send|sleep-listen ..."
            );
            std::process::exit(2);
        }
    }
}
