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
            let s = UdpSocket::bind(bind).expect("bind");
            // --connect: a connected socket (its sends carry no address); --after-file:
            // socket ready, wait for the file before the first send.
            let connected = args.iter().any(|a| a == "--connect");
            if connected {
                s.connect(to).expect("connect");
            }
            ready(s.local_addr().unwrap());
            if let Some(f) = arg(&args, "--after-file") {
                wait_for_file(&f);
            }
            let count = num(&args, "--count", u64::MAX);
            let duration = Duration::from_millis(num(&args, "--duration-ms", u64::MAX / 4));
            let interval = Duration::from_micros(num(&args, "--interval-us", 0));
            let buf = vec![0x33u8; num(&args, "--size", 100) as usize];
            let start = Instant::now();
            let mut sent = 0u64;
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
        "sleep-listen" => {
            // A listener that carries no traffic, for the connection table's LISTEN rows.
            let l = TcpListener::bind(addr(&args, "--listen")).expect("bind");
            ready(l.local_addr().unwrap());
            std::thread::sleep(Duration::from_millis(num(&args, "--ms", 10_000)));
        }
        _ => {
            eprintln!(
                "usage: netmon-testpeer tcp-send|tcp-serve|udp-send|udp-recv|sleep-listen ..."
            );
            std::process::exit(2);
        }
    }
}
