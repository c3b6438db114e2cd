//! Threat response and alerting end to end, as root, in network namespaces: real scans and
//! floods from a peer namespace; bans checked against packets that do or do not arrive;
//! alerts received by real listeners (an HTTP server, a syslog socket, the aiosmtpd SMTP
//! server) on the daemon namespace's loopback.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use netmon_tests::*;
use serde_json::Value;

/// Writes a threat configuration into `ns`'s state directory (removed with the namespace).
fn threat_config(ns: &Netns, text: &str) -> PathBuf {
    std::fs::create_dir_all(&ns.state_dir).unwrap();
    let p = ns.state_dir.join("threat.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A connect() scan of `ports` closed ports of `a` from `b`: each SYN is answered by a RST.
fn scan(p: &Pair, ports: std::ops::RangeInclusive<u16>) {
    let target = p.a_v4.to_string();
    p.b.run(move || {
        for port in ports {
            let _ = TcpStream::connect_timeout(
                &format!("{target}:{port}").parse().unwrap(),
                Duration::from_millis(200),
            );
        }
    });
}

fn alert_of(p: &Pair, d: &Daemon, kind: &str) -> Value {
    wait_for(
        15,
        &format!("a {kind} alert"),
        || d.log_text(),
        || {
            ns_json(&p.a, &d.api, "/api/alerts")
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["kind"] == kind)
                .cloned()
        },
    )
}

/// The events of the daemon's forensic log (`events.jsonl` in the state directory).
fn events(ns: &Netns) -> Vec<Value> {
    std::fs::read_to_string(ns.state_dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn action_events(ns: &Netns, action: &str) -> Vec<Value> {
    events(ns)
        .into_iter()
        .filter(|e| e["event"] == "action" && e["action"]["action"] == action)
        .collect()
}

/// Datagrams `b` sends to a fresh UDP socket of `a`, and how many of them arrive.
fn udp_arrivals(p: &Pair, n: usize) -> usize {
    udp_arrivals_of(p, n, b"are you there")
}

/// `udp_arrivals` with datagrams of `payload`.
fn udp_arrivals_of(p: &Pair, n: usize, payload: &'static [u8]) -> usize {
    let a_addr: SocketAddr = format!("{}:0", p.a_v4).parse().unwrap();
    let sock = p.a.run(move || UdpSocket::bind(a_addr).unwrap());
    let to = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let b_addr: SocketAddr = format!("{}:0", p.b_v4).parse().unwrap();
    p.b.run(move || {
        let s = UdpSocket::bind(b_addr).unwrap();
        for _ in 0..n {
            s.send_to(payload, to).unwrap();
        }
    });
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while sock.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

fn metric(p: &Pair, d: &Daemon, series: &str) -> Option<f64> {
    let (_, text) = ns_get(&p.a, &d.api, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A TCP connection from `b` to a listener in `a`, held open: (a's accepted end, b's end).
fn held_connection(p: &Pair) -> (TcpStream, TcpStream) {
    let a_addr: SocketAddr = format!("{}:0", p.a_v4).parse().unwrap();
    let l = p.a.run(move || TcpListener::bind(a_addr).unwrap());
    let to = l.local_addr().unwrap();
    let client = p.b.run(move || TcpStream::connect(to).unwrap());
    let (server, _) = l.accept().unwrap();
    (server, client)
}

/// Whether a blocking read on `s` ends with an error within `secs` (the connection was
/// terminated) rather than timing out.
fn read_fails(s: &mut TcpStream, secs: u64) -> Option<std::io::ErrorKind> {
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            None
        }
        Err(e) => Some(e.kind()),
        Ok(0) => Some(std::io::ErrorKind::UnexpectedEof),
        Ok(_) => None,
    }
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn a_scan_is_banned_automatically_with_ttl_and_reason_and_its_connections_killed() {
    let p = Pair::new("aban");
    let cfg = threat_config(
        &p.a,
        r#"
[[response.policy]]
kinds = ["port_scan"]
actions = ["ban", "kill"]
ban_ttl = "10m"
"#,
    );
    let d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &["--threat-config", cfg.to_str().unwrap()],
    );
    // Before: the peer's datagrams arrive, and it holds a connection.
    assert_eq!(udp_arrivals(&p, 20), 20);
    let (mut server_end, _client_end) = held_connection(&p);
    let t0 = netmon::act::state::now_ms();

    scan(&p, 1..=200);
    let alert = alert_of(&p, &d, "port_scan");
    assert_eq!(alert["remote"], p.b_v4, "{alert}");

    // The ban: in the drop list as `auto`, with a TTL of 10 minutes and the alert as reason.
    let ban = wait_for(
        10,
        "the automatic ban",
        || d.log_text(),
        || {
            let list: Value = serde_json::from_str(&p.a.netmon_ok(&["list", "--json"])).unwrap();
            list.as_array()
                .unwrap()
                .iter()
                .find(|e| e["entry"] == p.b_v4)
                .cloned()
        },
    );
    assert_eq!(ban["kind"], "auto", "{ban}");
    let reason = ban["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("auto: port_scan alert #") && reason.contains(p.b_v4),
        "{reason}"
    );
    let expires = netmon::export::parse_since(ban["expires"].as_str().unwrap(), 0).unwrap();
    let ttl_ms = expires - t0;
    assert!(
        (590_000..=610_000).contains(&ttl_ms),
        "a 10 min TTL, got {ttl_ms} ms ({ban})"
    );
    // The held connection was terminated on this host's side.
    assert_eq!(
        read_fails(&mut server_end, 5),
        Some(std::io::ErrorKind::ConnectionAborted),
        "the scanner's connection was not terminated\n{}",
        d.log_text()
    );
    // The peer's later packets are dropped in the kernel and counted on the entry.
    assert_eq!(
        udp_arrivals(&p, 20),
        0,
        "datagrams from a banned peer arrived"
    );
    let list: Value = serde_json::from_str(&p.a.netmon_ok(&["list", "--json"])).unwrap();
    let hits = list[0]["dropped_packets"].as_u64().unwrap();
    assert!(hits >= 20, "{list}");

    // Recorded: the audit log, the forensic event log, the metrics.
    let audit = std::fs::read_to_string(p.a.state_dir.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"auto-ban\"") && l.contains(p.b_v4)),
        "{audit}"
    );
    let bans = action_events(&p.a, "ban");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["action"]["result"], "done");
    assert_eq!(bans[0]["action"]["ttl_seconds"], 600);
    // The files that hold the addresses, as the daemon made them: its owner's alone.
    for f in ["audit.log", "events.jsonl", "droplist.json"] {
        let mode = std::fs::metadata(p.a.state_dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}: {mode:o}");
    }
    let kills = action_events(&p.a, "kill");
    assert_eq!(kills[0]["action"]["result"], "done", "{kills:?}");
    assert!(
        kills[0]["action"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("terminated 1 connections"),
        "{kills:?}"
    );
    assert_eq!(metric(&p, &d, "netmon_automatic_bans_total"), Some(1.0));
    assert_eq!(
        metric(
            &p,
            &d,
            "netmon_response_actions_total{action=\"kill\",result=\"done\"}"
        ),
        Some(1.0)
    );

    // Forensics: the export has the alert, the actions and the flows.
    let json: Value = serde_json::from_str(&p.a.netmon_ok(&[
        "export", "--format", "json", "--since", "10m", "--api", &d.api,
    ]))
    .unwrap();
    let evs = json["events"].as_array().unwrap();
    assert!(
        evs.iter().any(|e| e["alert"]["kind"] == "port_scan"),
        "{json}"
    );
    assert!(evs.iter().any(|e| e["action"]["action"] == "ban"), "{json}");
    assert!(
        json["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["remote_address"].as_str().unwrap().starts_with(p.b_v4)),
        "{json}"
    );
    let csv =
        p.a.netmon_ok(&["export", "--format", "csv", "--api", &d.api]);
    assert!(
        csv.starts_with("record,time,kind,severity,subject,"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("alert,") && l.contains(",port_scan,high,"))
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("action,") && l.contains(",ban:done,"))
    );
    assert!(csv.lines().any(|l| l.starts_with("flow,")));
    // Nothing from the future.
    let later =
        p.a.netmon_ok(&["export", "--since", "2099-01-01T00:00:00Z", "--api", &d.api]);
    let later: Value = serde_json::from_str(&later).unwrap();
    assert!(later["events"].as_array().unwrap().is_empty());
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn dry_run_and_allow_lists_are_alerted_on_but_never_acted_on() {
    let p = Pair::new("adry");
    let policy = r#"
[[response.policy]]
level = "high"
actions = ["ban", "kill"]
ban_ttl = "1h"
"#;
    for (case, extra, expect) in [
        ("dry run", "[response]\ndry_run = true\n", "dry_run"),
        (
            "response allow list",
            "[response]\nallow = [\"198.18.0.0/24\"]\n",
            "allowed",
        ),
        ("drop-list allow entry", "", "allowed"),
    ] {
        if case == "drop-list allow entry" {
            p.a.netmon_ok(&["allow", "198.18.0.2/32", "--reason", "lab scanner"]);
        }
        let cfg = threat_config(&p.a, &format!("{extra}{policy}"));
        let _ = std::fs::remove_file(p.a.state_dir.join("events.jsonl"));
        let mut d = Daemon::start(
            &p.a,
            &[&p.a_if],
            &["--threat-config", cfg.to_str().unwrap()],
        );
        let (mut server_end, _c) = held_connection(&p);
        scan(&p, 1..=200);
        let alert = alert_of(&p, &d, "port_scan");
        assert_eq!(alert["severity"], "high", "{case}: {alert}");
        let bans = wait_for(
            10,
            &format!("{case}: the ban record"),
            || d.log_text(),
            || {
                let v = action_events(&p.a, "ban");
                (!v.is_empty()).then_some(v)
            },
        );
        assert_eq!(bans[0]["action"]["result"], expect, "{case}: {bans:?}");
        let kills = action_events(&p.a, "kill");
        assert_eq!(kills[0]["action"]["result"], expect, "{case}: {kills:?}");
        if expect == "dry_run" {
            assert!(
                bans[0]["action"]["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with("would ban 198.18.0.2"),
                "{bans:?}"
            );
        }
        // Nothing done: no ban, traffic flows, the connection lives.
        let list: Value = serde_json::from_str(&p.a.netmon_ok(&["list", "--json"])).unwrap();
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .all(|e| e["list"] == "allow"),
            "{case}: {list}"
        );
        assert_eq!(udp_arrivals(&p, 10), 10, "{case}");
        assert_eq!(
            read_fails(&mut server_end, 1),
            None,
            "{case}: connection killed"
        );
        assert_eq!(
            metric(&p, &d, "netmon_automatic_bans_total"),
            Some(0.0),
            "{case}"
        );
        d.stop();
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A one-request-per-connection HTTP server on `ns`'s loopback that keeps every POST body.
struct HttpSink {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    /// Each request's header lines, names in lower case, in the order of `bodies`.
    heads: Arc<Mutex<Vec<Vec<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpSink {
    fn start(ns: &Netns) -> Self {
        let l = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, h, st) = (bodies.clone(), heads.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let line = match line.split_once(':') {
                        Some((n, v)) => format!("{}:{}", n.to_ascii_lowercase(), v.trim_end()),
                        None => line.trim_end().to_string(),
                    };
                    if let Some(v) = line.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push(line);
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                h.lock().unwrap().push(head);
                b.lock().unwrap().push(String::from_utf8(body).unwrap());
                let mut s = s;
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
            // The listener closes here: the port refuses connections from now on.
        });
        Self {
            port,
            bodies,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn alerts_reach_webhook_syslog_email_and_sms_and_a_dead_sink_stalls_nothing() {
    let p = Pair::new("asink");
    let mut hook = HttpSink::start(&p.a);
    // An SMS gateway with Twilio's Messages API, on the namespace's loopback.
    let gateway = HttpSink::start(&p.a);
    let syslog = p.a.run(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let syslog_port = syslog.local_addr().unwrap().port();
    // aiosmtpd, Debian's SMTP server in Python, storing what it accepts in a Maildir.
    let maildir = p.a.state_dir.join("mail");
    std::fs::create_dir_all(&p.a.state_dir).unwrap();
    let smtp_port = p.a.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let _smtp = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &p.a.name,
                "/usr/bin/python3",
                "-m",
                "aiosmtpd",
                "-n",
            ])
            .args(["-l", &format!("127.0.0.1:{smtp_port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox", maildir.to_str().unwrap()])
            .spawn()
            .expect("python3 -m aiosmtpd (Debian package python3-aiosmtpd)"),
    );
    wait_for(10, "aiosmtpd listening", String::new, || {
        p.a.run(move || TcpStream::connect(("127.0.0.1", smtp_port)).ok())
    });
    let token_file = p.a.state_dir.join("sms-token");
    std::fs::write(&token_file, "s3cret tok\n").unwrap();
    let cfg = threat_config(
        &p.a,
        &format!(
            r#"
[alerts]
dedup = "10m"
[alerts.webhook]
url = "http://127.0.0.1:{}/hook"
timeout = "1s"
retries = 1
[alerts.syslog]
address = "udp://127.0.0.1:{syslog_port}"
[alerts.email]
server = "127.0.0.1:{smtp_port}"
from = "netmon@test.invalid"
to = ["ops@test.invalid"]
min_severity = "medium"
[alerts.sms]
url = "http://127.0.0.1:{gw}/2010-04-01/Accounts/AC1/Messages.json"
account = "AC1"
token_file = "{token}"
from = "+15550100000"
to = ["+15550100001"]
min_severity = "medium"
[[alerts.threshold]]
name = "rx-flood"
metric = "netmon_interface_bytes_total"
labels = {{ interface = "nmt0", direction = "rx" }}
rate = true
above = 100000
for = "1s"
severity = "medium"
"#,
            hook.port,
            gw = gateway.port,
            token = token_file.display(),
        ),
    );
    let d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &["--threat-config", cfg.to_str().unwrap()],
    );
    let status = ns_json(&p.a, &d.api, "/api/status");
    assert_eq!(
        status["threat"]["sinks"],
        serde_json::json!(["webhook", "syslog", "email", "sms"]),
        "{status}"
    );

    scan(&p, 1..=200);
    let alert = alert_of(&p, &d, "port_scan");
    let id = alert["id"].clone();
    // Webhook: the event as JSON. (A scan also shows as other patterns, e.g. many failed
    // connections: each is its own alert.)
    let body = wait_for(
        10,
        "the webhook POST",
        || d.log_text(),
        || {
            hook.bodies
                .lock()
                .unwrap()
                .iter()
                .find(|b| b.contains("\"port_scan\""))
                .cloned()
        },
    );
    let ev: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ev["event"], "alert", "{ev}");
    assert_eq!(ev["alert"]["kind"], "port_scan");
    assert_eq!(ev["alert"]["remote"], p.b_v4);
    assert_eq!(ev["alert"]["id"], id);
    // Syslog: an RFC 5424 line with the alert in its structured data.
    // The next syslog message about an alert of `kind`.
    let syslog_line = |kind: &str| {
        let mut buf = [0u8; 4096];
        let want = format!("kind=\"{kind}\"");
        wait_for(
            10,
            &format!("the {kind} syslog message"),
            || d.log_text(),
            || {
                let n = syslog.recv(&mut buf).ok()?;
                let l = String::from_utf8_lossy(&buf[..n]).into_owned();
                l.contains(&want).then_some(l)
            },
        )
    };
    let line = syslog_line("port_scan");
    assert!(line.starts_with("<34>1 "), "{line}");
    assert!(line.contains(&format!("subject=\"{}\"", p.b_v4)), "{line}");
    // Email: accepted by the SMTP server, subject naming the alert.
    let mail_with = |text: &'static str| {
        let dir = maildir.join("new");
        move || -> Option<String> {
            std::fs::read_dir(&dir)
                .ok()?
                .flatten()
                .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                .find(|m| {
                    m.lines()
                        .any(|l| l.starts_with("Subject: [netmon") && l.contains(text))
                })
        }
    };
    let mail = wait_for(15, "the email", || d.log_text(), mail_with("port_scan"));
    assert!(mail.contains("To: ops@test.invalid"), "{mail}");
    // SMS: a form POST to the account's Messages resource, basic authentication with the
    // account and the token file's first line ("AC1:s3cret tok" in base64).
    let sms = |kind: &'static str| {
        let gateway = &gateway;
        move || {
            let bodies = gateway.bodies.lock().unwrap();
            let i = bodies
                .iter()
                .position(|b| b.contains(&format!("+{kind}+alert")))?;
            Some((bodies[i].clone(), gateway.heads.lock().unwrap()[i].clone()))
        }
    };
    let (form, head) = wait_for(15, "the SMS", || d.log_text(), sms("port_scan"));
    assert_eq!(
        head[0],
        "POST /2010-04-01/Accounts/AC1/Messages.json HTTP/1.1"
    );
    for h in [
        "authorization: Basic QUMxOnMzY3JldCB0b2s=",
        "content-type: application/x-www-form-urlencoded",
    ] {
        assert!(head.iter().any(|l| l == h), "{h}: {head:?}");
    }
    assert!(
        form.starts_with("To=%2B15550100001&From=%2B15550100000&Body=netmon+")
            && form.contains(p.b_v4),
        "{form}"
    );
    // Every alert so far went out once by webhook.
    let alerts_so_far = ns_json(&p.a, &d.api, "/api/alerts")
        .as_array()
        .unwrap()
        .len();
    wait_for(
        10,
        "a webhook POST per alert",
        || d.log_text(),
        || (hook.bodies.lock().unwrap().len() >= alerts_so_far).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let posted = hook.bodies.lock().unwrap().len();

    // The webhook goes down. A flood then crosses the threshold: syslog and email still get
    // it, and the drain loop never waits.
    hook.shut_down();
    let drains_before = d.drains(&p.a);
    let t0 = Instant::now();
    let to: SocketAddr = format!("{}:9", p.a_v4).parse().unwrap();
    let b_addr: SocketAddr = format!("{}:0", p.b_v4).parse().unwrap();
    p.b.run(move || {
        let s = UdpSocket::bind(b_addr).unwrap();
        let payload = [0u8; 1000];
        // ~500 kB/s for 3 s.
        for _ in 0..30 {
            for _ in 0..50 {
                let _ = s.send_to(&payload, to);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let th = alert_of(&p, &d, "threshold");
    assert!(
        th["detail"]
            .as_str()
            .unwrap()
            .contains("threshold rx-flood"),
        "{th}"
    );
    assert!(th["remote"].is_null(), "{th}");
    let line = syslog_line("threshold");
    assert!(line.starts_with("<36>1 "), "medium is warning (4): {line}");
    wait_for(
        15,
        "the threshold email",
        || d.log_text(),
        mail_with("threshold"),
    );
    wait_for(15, "the threshold SMS", || d.log_text(), sms("threshold"));
    wait_for(
        15,
        "the webhook failure counted",
        || d.log_text(),
        || {
            (metric(
                &p,
                &d,
                "netmon_notifications_total{result=\"failed\",sink=\"webhook\"}",
            )? >= 1.0)
                .then_some(())
        },
    );
    // Drains every 200 ms went on throughout.
    let drains = d.drains(&p.a) - drains_before;
    let expected = (t0.elapsed().as_millis() / 200) as u64;
    assert!(
        drains + 3 >= expected,
        "{drains} drains in {:?} with the webhook down",
        t0.elapsed()
    );
    assert_eq!(posted, alerts_so_far, "one POST per alert");
    assert_eq!(
        metric(
            &p,
            &d,
            "netmon_notifications_total{result=\"sent\",sink=\"webhook\"}"
        ),
        Some(posted as f64)
    );
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn feeds_and_geoip_make_a_connection_high_risk_with_the_reasons() {
    let p = Pair::new("afeed");
    std::fs::create_dir_all(&p.a.state_dir).unwrap();
    let feed = p.a.state_dir.join("drop.netset");
    std::fs::write(
        &feed,
        format!(
            "# FireHOL-style list\n203.0.113.0/24\n{}\n192.0.2.0/25\n",
            p.b_v4
        ),
    )
    .unwrap();
    let mut w = netmon_tests::mmdb::Writer::new("GeoLite2-Country");
    w.insert("198.18.0.0/24", netmon_tests::mmdb::country("XA"));
    let geo = p.a.state_dir.join("country.mmdb");
    std::fs::write(&geo, w.build()).unwrap();
    let mut w = netmon_tests::mmdb::Writer::new("GeoLite2-ASN");
    w.insert("198.18.0.0/16", netmon_tests::mmdb::asn(64500, "Test Net"));
    let asn = p.a.state_dir.join("asn.mmdb");
    std::fs::write(&asn, w.build()).unwrap();
    let cfg = threat_config(
        &p.a,
        &format!(
            r#"
unusual_countries = ["XA"]
geoip = ["{}"]
[[feeds]]
name = "test-drop"
path = "{}"
refresh = "1s"
[[rules]]
name = "test-asn"
asn = 64500
add = 5
"#,
            geo.display(),
            feed.display()
        ),
    );
    let d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &[
            "--threat-config",
            cfg.to_str().unwrap(),
            "--geoip",
            asn.to_str().unwrap(),
        ],
    );
    let check = |what: &str| {
        // An outbound connection from a to a listener in b, on an expected port (443).
        let b_addr: SocketAddr = format!("{}:443", p.b_v4).parse().unwrap();
        let l = p.b.run(move || TcpListener::bind(b_addr).unwrap());
        let mut c = p.a.run(move || TcpStream::connect(b_addr).unwrap());
        let (_srv, _) = l.accept().unwrap();
        c.write_all(b"hello").unwrap();
        let local = c.local_addr().unwrap().to_string();
        let stats = d.fresh_stats(&p.a);
        let conn = find_conn(&stats, &local, &b_addr.to_string()).clone();
        let risk = &conn["risk"];
        assert_eq!(risk["level"], "high", "{what}: {conn}");
        let reasons = risk["reasons"].as_array().unwrap();
        let has = |kind: &str, pts: i64, text: &str| {
            reasons.iter().any(|r| {
                r["kind"] == kind
                    && r["points"].as_i64() == Some(pts)
                    && r["detail"].as_str().unwrap().contains(text)
            })
        };
        assert!(has("known_malicious", 50, "test-drop"), "{what}: {conn}");
        assert!(has("unusual_country", 15, "XA"), "{what}: {conn}");
        assert!(has("rule:test-asn", 5, "test-asn"), "{what}: {conn}");
        assert_eq!(risk["score"], 70, "{what}: {conn}");
        assert_eq!(conn["geo"]["country"], "XA", "{what}: {conn}");
        assert_eq!(conn["geo"]["asn"], 64500, "{what}: {conn}");
        assert_eq!(conn["geo"]["as_org"], "Test Net", "{what}: {conn}");
        // The CLI's table shows the level and score, and the reasons under the row.
        let text = p.a.netmon_ok(&["flows", "--api", &d.api]);
        let row = text
            .lines()
            .position(|l| l.contains(&local))
            .unwrap_or_else(|| panic!("{what}: no row for {local}: {text}"));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[row].ends_with("high 70"), "{what}: {}", lines[row]);
        assert!(
            lines[row + 1..]
                .iter()
                .take(3)
                .any(|l| l.contains("+50") && l.contains("test-drop")),
            "{what}: {text}"
        );
        drop(c);
    };
    check("with the feed loaded");
    let alert = alert_of(&p, &d, "known_malicious");
    assert_eq!(alert["remote"], p.b_v4, "{alert}");
    assert!(
        alert["detail"].as_str().unwrap().contains("test-drop"),
        "{alert}"
    );
    // The remote itself, scored: feed, country, ASN.
    let remotes = ns_json(&p.a, &d.api, "/api/remotes");
    let r = remotes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["remote"] == p.b_v4)
        .unwrap_or_else(|| panic!("{remotes}"));
    assert_eq!(
        (&r["level"], &r["feeds"], &r["country"], &r["asn"]),
        (
            &"high".into(),
            &serde_json::json!(["test-drop"]),
            &"XA".into(),
            &64500.into()
        ),
        "{r}"
    );
    let text = p.a.netmon_ok(&["remotes", "--api", &d.api]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(p.b_v4) && l.contains("high") && l.ends_with("test-drop")),
        "{text}"
    );
    let status = ns_json(&p.a, &d.api, "/api/status");
    assert_eq!(status["threat"]["feeds"][0]["entries"], 3, "{status}");
    wait_for(
        5,
        "a high-risk connection counted",
        || d.log_text(),
        || (metric(&p, &d, "netmon_connections_by_risk{level=\"high\"}")? >= 1.0).then_some(()),
    );
    // Connections by country: the peer's address is in XA by the test's database, and
    // every row of the connection table with it (the checked TCP connection among them)
    // is counted there; the table has no other country.
    wait_for(
        5,
        "the peer's connections counted under its country",
        || d.log_text(),
        || {
            let stats = ns_json(&p.a, &d.api, "/api/network-stats");
            let rows = stats["connections"].as_array().unwrap();
            let peer = rows
                .iter()
                .filter(|c| {
                    c["remote_address"]
                        .as_str()
                        .is_some_and(|r| r.starts_with(&format!("{}:", p.b_v4)))
                })
                .count();
            assert!(peer >= 1, "{stats}");
            assert!(
                rows.iter()
                    .all(|c| c["geo"]["country"].is_null() || c["geo"]["country"] == "XA"),
                "{stats}"
            );
            let xa = metric(&p, &d, "netmon_connections_by_country{country=\"XA\"}")?;
            (xa == peer as f64).then_some(())
        },
    );
    assert_eq!(
        metric(&p, &d, "netmon_feed_entries{feed=\"test-drop\"}"),
        Some(3.0)
    );

    // The feed breaks (a half-written download): the refresh fails, the last good copy stays.
    std::fs::write(&feed, "203.0.113.0/24\n<html>502 Bad Gateway</html>\n").unwrap();
    let err = wait_for(
        10,
        "the failed refresh in /api/status",
        || d.log_text(),
        || {
            let s = ns_json(&p.a, &d.api, "/api/status");
            s["threat"]["feeds"][0]["error"]
                .as_str()
                .map(str::to_string)
        },
    );
    assert!(err.contains("line 2"), "{err}");
    wait_for(
        5,
        "the failure counted",
        || d.log_text(),
        || {
            (metric(
                &p,
                &d,
                "netmon_feed_refresh_failures_total{feed=\"test-drop\"}",
            )? >= 1.0)
                .then_some(())
        },
    );
    check("after a broken refresh");
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn netmon_kill_terminates_one_connection() {
    let p = Pair::new("akill");
    let (mut keep_srv, _keep_cli) = held_connection(&p);
    let (mut srv, mut cli) = held_connection(&p);
    let remote = cli.local_addr().unwrap().to_string();
    let out = p.a.netmon_ok(&["kill", &remote, "--reason", "test"]);
    assert_eq!(
        out.trim(),
        format!("terminated tcp {} -> {remote}", srv.local_addr().unwrap()),
        "{out}"
    );
    // Both ends see it: this host's socket is aborted, the peer gets a reset.
    assert_eq!(
        read_fails(&mut srv, 5),
        Some(std::io::ErrorKind::ConnectionAborted)
    );
    assert_eq!(
        read_fails(&mut cli, 5),
        Some(std::io::ErrorKind::ConnectionReset)
    );
    // The other connection with the same peer lives.
    assert_eq!(read_fails(&mut keep_srv, 1), None);
    let audit = std::fs::read_to_string(p.a.state_dir.join("audit.log")).unwrap();
    assert!(
        audit.contains("\"kill\"") && audit.contains(&remote),
        "{audit}"
    );
    // Nothing to kill: an error that says so.
    let e = p.a.netmon_err(&["kill", "198.18.0.77"]);
    assert!(e.contains("no open connection with 198.18.0.77"), "{e}");
    let e = p.a.netmon_err(&["kill", "not-an-address"]);
    assert!(e.contains("is not an address"), "{e}");
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn bad_threat_configs_are_refused_with_file_and_line() {
    let p = Pair::new("acfg");
    for (text, want) in [
        ("[response]\ndry_runn = true\n", ":2:"),
        ("[response]\nallow = [\"10.0.0.1/8\"]\n", ":2:"),
        (
            "\n[[feeds]]\nname = \"gone\"\npath = \"/nonexistent/feed.txt\"\n",
            ":3",
        ),
        (
            "[[response.policy]]\nlevel = \"high\"\nactions = [\"nuke\"]\n",
            ":3:",
        ),
    ] {
        let cfg = threat_config(&p.a, text);
        let out = Command::new("ip")
            .args(["netns", "exec", &p.a.name])
            .arg(netmon_bin())
            .args(["run", "--iface", &p.a_if, "--listen", "127.0.0.1:0"])
            .args(["--threat-config", cfg.to_str().unwrap()])
            .env("NETMON_PIN_DIR", &p.a.pin_dir)
            .env("NETMON_STATE_DIR", &p.a.state_dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}{want}", cfg.display())),
            "{text}: expected {}{want} in: {err}",
            cfg.display()
        );
        // Refused before anything was attached.
        assert_eq!(attached_programs(&p.a, &p.a_if), (0, 0), "{text}");
    }
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn netmon_limit_and_a_ratelimit_policy_throttle_one_source_in_the_kernel() {
    let p = Pair::new("arate");
    let cfg = threat_config(
        &p.a,
        r#"
[[response.policy]]
kinds = ["port_scan"]
actions = ["ratelimit"]
ban_ttl = "10m"
rate_pps = 1
rate_burst = 3
"#,
    );
    let d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &["--threat-config", cfg.to_str().unwrap()],
    );
    assert_eq!(udp_arrivals(&p, 30), 30);

    // By hand: 1 packet/s, bursts of 5. Thirty datagrams in a few milliseconds: five arrive.
    let out =
        p.a.netmon_ok(&["limit", p.b_v4, "--pps", "1", "--burst", "5"]);
    assert_eq!(out.trim(), format!("limited {} to 1/s (burst 5)", p.b_v4));
    assert_eq!(udp_arrivals(&p, 30), 5, "a burst of 5 at 1/s");
    let list: Value = serde_json::from_str(&p.a.netmon_ok(&["list", "--json"])).unwrap();
    let e = &list[0];
    assert_eq!(
        (&e["list"], &e["entry"], &e["pps"], &e["burst"]),
        (&"limit".into(), &p.b_v4.into(), &1.into(), &5.into()),
        "{list}"
    );
    assert_eq!(e["dropped_packets"], 25, "{list}");
    wait_for(
        5,
        "the rate-limit drops in the metrics",
        || d.log_text(),
        || {
            (metric(
            &p,
            &d,
            "netmon_dropped_packets_total{direction=\"rx\",interface=\"nmt0\",reason=\"ratelimit\"}",
        )? == 25.0)
            .then_some(())
        },
    );
    assert_eq!(
        metric(
            &p,
            &d,
            "netmon_banlist_entries{family=\"ipv4\",kind=\"limit\"}"
        ),
        Some(1.0)
    );
    // Refused: a prefix, a zero rate.
    let e = p.a.netmon_err(&["limit", "198.18.0.0/24", "--pps", "5"]);
    assert!(e.contains("per source address"), "{e}");
    let e = p.a.netmon_err(&["limit", p.b_v4, "--pps", "0"]);
    assert!(e.contains("at least 1"), "{e}");
    p.a.netmon_ok(&["unlimit", p.b_v4]);
    assert_eq!(udp_arrivals(&p, 30), 30, "after unlimit");

    // A bandwidth: 8 kbit/s (1,000 bytes a second) with bursts of three and a half 1,042-byte
    // frames (1,000 bytes of UDP payload): three of ten arrive. The half frame is half a
    // second of the rate, far more than the ten sends take.
    const PAYLOAD: &[u8] = &[7u8; 1000];
    let frame = 14 + 20 + 8 + PAYLOAD.len();
    let burst = 3 * frame + frame / 2;
    let out = p.a.netmon_ok(&[
        "limit",
        p.b_v4,
        "--bandwidth",
        "8kbit",
        "--burst-bytes",
        &burst.to_string(),
    ]);
    assert_eq!(
        out.trim(),
        format!("limited {} to 8 kbit/s (burst {burst} bytes)", p.b_v4)
    );
    assert_eq!(
        udp_arrivals_of(&p, 10, PAYLOAD),
        3,
        "three frames' burst at 8 kbit/s"
    );
    let list: Value = serde_json::from_str(&p.a.netmon_ok(&["list", "--json"])).unwrap();
    let e = &list[0];
    assert_eq!(
        (
            &e["list"],
            &e["bytes_per_sec"],
            &e["burst_bytes"],
            &e["dropped_packets"]
        ),
        (&"limit".into(), &1000.into(), &burst.into(), &7.into()),
        "{list}"
    );
    assert_eq!(e["dropped_bytes"], 7 * frame, "{list}");
    assert!(e.get("pps").is_none(), "{list}");
    // Refused: no unit, a burst smaller than a frame, both kinds of rate.
    let e = p.a.netmon_err(&["limit", p.b_v4, "--bandwidth", "8000"]);
    assert!(e.contains("give the bandwidth's unit"), "{e}");
    let e = p.a.netmon_err(&[
        "limit",
        p.b_v4,
        "--bandwidth",
        "1mbit",
        "--burst-bytes",
        "100",
    ]);
    assert!(e.contains("at least 1514 bytes"), "{e}");
    let e =
        p.a.netmon_err(&["limit", p.b_v4, "--pps", "5", "--bandwidth", "1mbit"]);
    assert!(e.contains("cannot be used with"), "{e}");
    p.a.netmon_ok(&["unlimit", p.b_v4]);
    assert_eq!(udp_arrivals_of(&p, 10, PAYLOAD), 10, "after unlimit");

    // By policy: a scan gets the source limited to 1/s with bursts of 3, for 10 minutes.
    scan(&p, 1..=200);
    alert_of(&p, &d, "port_scan");
    let e = wait_for(
        10,
        "the automatic rate limit",
        || d.log_text(),
        || {
            let list: Value = serde_json::from_str(&p.a.netmon_ok(&["list", "--json"])).unwrap();
            list.as_array()
                .unwrap()
                .iter()
                .find(|e| e["list"] == "limit")
                .cloned()
        },
    );
    assert_eq!(
        (&e["kind"], &e["pps"], &e["burst"]),
        (&"auto".into(), &1.into(), &3.into()),
        "{e}"
    );
    assert!(e["expires"].is_string(), "{e}");
    // The limit may land while the scan is still probing (on a slow host the scan outlasts
    // the drain that detects it): its last probes spend the burst. Three seconds without
    // traffic from the source refill it (1/s, burst 3), so what follows is a fresh burst.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(udp_arrivals(&p, 30), 3, "a burst of 3 at 1/s");
    let acts = action_events(&p.a, "ratelimit");
    assert_eq!(acts[0]["action"]["result"], "done", "{acts:?}");
}

/// An HTTP server on `ns`'s loopback answering every GET with `body`, until dropped.
struct FeedServer {
    port: u16,
    requests: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FeedServer {
    fn start(ns: &Netns, body: String) -> Self {
        Self::start_slow(ns, body, Duration::ZERO)
    }

    /// Answers each request `delay` after it came (counted in `requests` on arrival).
    fn start_slow(ns: &Netns, body: String, delay: Duration) -> Self {
        let l = ns.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, st) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && !line.ends_with("\r\n\r\n") {}
                *n.lock().unwrap() += 1;
                std::thread::sleep(delay);
                let mut s = s;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn events_past_the_retention_leave_the_event_log_and_the_alert_list() {
    // An event log from earlier runs: an alert 40 days old and one a day old.
    let p = Pair::new("aretn");
    std::fs::create_dir_all(&p.a.state_dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let day = 86_400_000;
    let event = |id: u64, t: u64, remote: &str| {
        serde_json::json!({
            "time_ms": t, "time": "-", "host": "h", "event": "alert", "severity": "high",
            "alert": {
                "id": id, "time_ms": t, "kind": "host_sweep", "severity": "high",
                "remote": remote, "score": 60, "reasons": [], "detail": "earlier sweep"
            }
        })
        .to_string()
    };
    let log = p.a.state_dir.join("events.jsonl");
    std::fs::write(
        &log,
        format!(
            "{}\n{}\n",
            event(7, now - 40 * day, "198.51.100.7"),
            event(8, now - day, "198.51.100.8")
        ),
    )
    .unwrap();
    let cfg = threat_config(&p.a, "[alerts]\nlog_max_age = \"30d\"\n");
    let d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &["--threat-config", cfg.to_str().unwrap()],
    );
    // The old one leaves the file at the response thread's start, and was never listed.
    wait_for(
        10,
        "the old event removed",
        || d.log_text(),
        || {
            d.log_text()
                .contains("event log: 1 events older than")
                .then_some(())
        },
    );
    let ids = |v: Vec<Value>| -> Vec<u64> {
        v.iter()
            .map(|e| e["alert"]["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(events(&p.a)), [8]);
    let listed = ns_json(&p.a, &d.api, "/api/alerts");
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["id"].as_u64().unwrap(), a["remote"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [(8, "198.51.100.8")],
        "{listed}"
    );
    // A new alert takes the next id after the removed ones too, and is logged after 8.
    scan(&p, 1..=200);
    let a = alert_of(&p, &d, "port_scan");
    assert!(a["id"].as_u64().unwrap() >= 9, "{a}");
    wait_for(
        10,
        "the new alert in the event log",
        || d.log_text(),
        || (events(&p.a).len() >= 2).then_some(()),
    );
    assert_eq!(ids(events(&p.a))[0], 8);
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn a_reload_waiting_for_a_slow_feed_leaves_the_drains_running() {
    // A reload that adds a URL feed fetches it before anything changes (a feed that does
    // not load refuses the reload); while the fetch waits on a slow server the daemon keeps
    // draining and answering, and a second SIGHUP meanwhile is taken after it.
    let p = Pair::new("aslow");
    let delay = Duration::from_secs(6);
    let server = FeedServer::start_slow(&p.a, format!("# slow feed\n{}\n", p.b_v4), delay);
    let cfg = threat_config(&p.a, "");
    let d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &["--threat-config", cfg.to_str().unwrap()],
    );
    let status = || ns_json(&p.a, &d.api, "/api/status");
    let reloaded = || {
        d.log_text()
            .matches("SIGHUP: configuration reloaded")
            .count()
    };
    std::fs::write(
        &cfg,
        format!(
            "[[feeds]]\nname = \"slow-feed\"\nurl = \"http://127.0.0.1:{}/feed.txt\"\nrefresh = \"1h\"\n",
            server.port
        ),
    )
    .unwrap();
    sh(&["kill", "-HUP", &d.pid().to_string()]);
    wait_for(
        5,
        "the reload's request for the feed",
        || d.log_text(),
        || (*server.requests.lock().unwrap() >= 1).then_some(()),
    );
    let asked = Instant::now();
    sh(&["kill", "-HUP", &d.pid().to_string()]);
    let before = status()["drains"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let after = status()["drains"].as_u64().unwrap();
    // Still within the server's delay: the reload is waiting, the drains (every 200 ms)
    // are not.
    assert!(asked.elapsed() < delay - Duration::from_secs(1));
    assert_eq!(reloaded(), 0, "{}", d.log_text());
    assert!(
        after >= before + 5,
        "{} drains in 2 s while the reload waited",
        after - before
    );
    assert_eq!(status()["threat"]["feeds"], serde_json::json!([]));
    // The feed arrives: the reload is put in force, then the second SIGHUP's (the
    // configuration as now in force: nothing fetched again).
    wait_for(
        15,
        "both reloads",
        || d.log_text(),
        || (reloaded() == 2).then_some(()),
    );
    assert!(asked.elapsed() >= delay - Duration::from_millis(500));
    let f = status()["threat"]["feeds"][0].clone();
    assert_eq!(
        (&f["name"], &f["entries"], &f["error"]),
        (&"slow-feed".into(), &1.into(), &Value::Null),
        "{f}"
    );
    assert_eq!(*server.requests.lock().unwrap(), 1);
    assert_eq!(status()["last_reload"]["applied"], true);
    // Traffic from the listed peer is scored by the new feed.
    udp_arrivals(&p, 1);
    let a = alert_of(&p, &d, "known_malicious");
    assert!(a["detail"].as_str().unwrap().contains("slow-feed"), "{a}");
    drop(server);
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn a_url_feed_is_fetched_cached_and_kept_when_its_server_goes_away() {
    let p = Pair::new("aurl");
    let server = FeedServer::start(&p.a, format!("# a feed over HTTP\n{}\n", p.b_v4));
    let cfg = threat_config(
        &p.a,
        &format!(
            "[[feeds]]\nname = \"url-feed\"\nurl = \"http://127.0.0.1:{}/feed.txt\"\nrefresh = \"1s\"\n",
            server.port
        ),
    );
    let mut d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &["--threat-config", cfg.to_str().unwrap()],
    );
    let feed = |d: &Daemon| ns_json(&p.a, &d.api, "/api/status")["threat"]["feeds"][0].clone();
    let f = feed(&d);
    assert_eq!(
        (&f["entries"], &f["error"]),
        (&1.into(), &Value::Null),
        "{f}"
    );
    // The good download is kept for a start without the server.
    let cached = std::fs::read_to_string(p.a.state_dir.join("feeds/url-feed.txt")).unwrap();
    assert!(cached.contains(p.b_v4), "{cached}");
    // Traffic from the listed peer raises the alert naming the feed.
    udp_arrivals(&p, 1);
    let a = alert_of(&p, &d, "known_malicious");
    assert!(a["detail"].as_str().unwrap().contains("url-feed"), "{a}");
    wait_for(
        5,
        "a refresh",
        || d.log_text(),
        || (*server.requests.lock().unwrap() >= 2).then_some(()),
    );

    // The server goes away: refreshes fail, the last good copy stays in force.
    drop(server);
    let err = wait_for(
        10,
        "the failed refresh",
        || d.log_text(),
        || feed(&d)["error"].as_str().map(str::to_string),
    );
    assert!(err.contains("fetching the feed http://127.0.0.1:"), "{err}");
    assert_eq!(feed(&d)["entries"], 1);
    let remotes = ns_json(&p.a, &d.api, "/api/remotes");
    assert_eq!(
        remotes[0]["feeds"],
        serde_json::json!(["url-feed"]),
        "{remotes}"
    );

    // A restart while the server is still down starts from the cached copy.
    d.stop();
    let d = Daemon::start(
        &p.a,
        &[&p.a_if],
        &["--threat-config", cfg.to_str().unwrap()],
    );
    let f = feed(&d);
    assert_eq!(f["entries"], 1, "{f}");
    assert!(f["error"].is_string(), "{f}");
    assert!(
        d.log_text().contains("using the cached copy"),
        "{}",
        d.log_text()
    );
}

/// SIGHUP re-reads the configuration (`--config`, the threat configuration and the token
/// file it names, the GeoIP database): a rule's name and points, the response's dry run,
/// the API token and the remote's country (the database rewritten in place, with and
/// without a changed configuration) change without a restart, on a connection held open
/// across the reloads; a setting only a restart applies is named in a warning. A threat
/// configuration that no longer loads is refused with its file and line, the metrics say
/// so, and the daemon keeps scoring by the one before.
#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn sighup_reloads_the_configuration_and_a_bad_one_leaves_the_running_one() {
    let p = Pair::new("hup");
    std::fs::create_dir_all(&p.a.state_dir).unwrap();
    // A country database that places b's network, rewritten in place between reloads.
    let geo = p.a.state_dir.join("country.mmdb");
    let place = |country: &str| {
        let mut w = netmon_tests::mmdb::Writer::new("GeoLite2-Country");
        w.insert("198.18.0.0/24", netmon_tests::mmdb::country(country));
        std::fs::write(&geo, w.build()).unwrap();
    };
    place("XA");
    let threat = |rule: &str, add: i32, dry_run: bool| {
        format!(
            "geoip = [\"{}\"]\n[response]\ndry_run = {dry_run}\n[[rules]]\nname = \"{rule}\"\ncidr = \"{}/32\"\nadd = {add}\n",
            geo.display(),
            p.b_v4
        )
    };
    let threat_file = threat_config(&p.a, &threat("before", 5, false));
    let token_file = p.a.state_dir.join("api-token");
    let (token_before, token_after) = ("0123456789abcdef-before", "0123456789abcdef-after");
    std::fs::write(&token_file, format!("{token_before}\n")).unwrap();
    let main_file = p.a.state_dir.join("netmon.toml");
    let main = |flow_map_size: u32| {
        format!(
            "threat_config = \"{}\"\napi_token_file = \"{}\"\nflow_map_size = {flow_map_size}\n",
            threat_file.display(),
            token_file.display()
        )
    };
    std::fs::write(&main_file, main(65536)).unwrap();
    // The token comes from the config file, which the harness does not read.
    let mut d = Daemon::spawn(&p.a, &[&p.a_if], &["--config", main_file.to_str().unwrap()]);
    d.client.token = Some(token_before.into());
    d.wait_ready(&p.a);
    let (srv, client) = held_connection(&p);
    let (local, remote) = (
        srv.local_addr().unwrap().to_string(),
        client.local_addr().unwrap().to_string(),
    );
    // The rules' reasons on the held connection, as (kind, points), and its remote's country.
    let scored = |d: &Daemon| -> (Vec<(String, i64)>, Value) {
        let stats = d.fresh_stats(&p.a);
        let c = find_conn(&stats, &local, &remote);
        let rules = c["risk"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"].as_str().unwrap().starts_with("rule:"))
            .map(|r| {
                (
                    r["kind"].as_str().unwrap().into(),
                    r["points"].as_i64().unwrap(),
                )
            })
            .collect();
        (rules, c["geo"]["country"].clone())
    };
    let rule = |name: &str, points: i64| vec![(format!("rule:{name}"), points)];
    let status = |d: &Daemon| -> Value {
        let (code, body) = d.get(&p.a, "/api/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // The reload metrics: applied, failed, whether the last one succeeded.
    let reloads = |d: &Daemon| {
        let (_, m) = d.get(&p.a, "/metrics");
        [
            "netmon_config_reloads_total{result=\"applied\"}",
            "netmon_config_reloads_total{result=\"failed\"}",
            "netmon_config_last_reload_successful",
        ]
        .map(|series| {
            m.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
        })
    };
    let hup = |d: &Daemon, n: usize, what: &str| {
        sh(&["kill", "-HUP", &d.pid().to_string()]);
        wait_for(
            10,
            what,
            || d.log_text(),
            || (d.log_text().matches("SIGHUP: ").count() >= n).then_some(()),
        );
    };
    assert_eq!(scored(&d), (rule("before", 5), "XA".into()));
    assert_eq!(status(&d)["threat"]["dry_run"], false);
    assert_eq!(status(&d)["last_reload"], Value::Null);
    assert_eq!(reloads(&d), [Some(0.0), Some(0.0), Some(1.0)]);
    // `netmon status`'s line on the last reload, asked with the token in force.
    let token_path = token_file.to_str().unwrap();
    let cli_reload_line = || {
        p.a.netmon_ok(&["status", "--api", &d.api, "--api-token-file", token_path])
            .lines()
            .find(|l| l.starts_with("last reload"))
            .map(str::to_string)
    };
    assert_eq!(cli_reload_line(), None);

    // A new rule, dry run, token, flow map size and database; SIGHUP.
    place("XB");
    std::fs::write(&threat_file, threat("after", 7, true)).unwrap();
    std::fs::write(&token_file, format!("{token_after}\n")).unwrap();
    std::fs::write(&main_file, main(131072)).unwrap();
    hup(&d, 2, "the reload and the restart-only warning");
    let log = d.log_text();
    assert!(log.contains("SIGHUP: configuration reloaded"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("SIGHUP: flow_map_size") && l.contains("takes a restart")),
        "{log}"
    );
    // The old token is refused now, the new one admitted.
    assert_eq!(d.get(&p.a, "/api/status").0, 401);
    d.client.token = Some(token_after.into());
    let st = status(&d);
    assert_eq!(st["threat"]["dry_run"], true);
    let r = &st["last_reload"];
    assert_eq!(
        (&r["applied"], &r["error"], &r["restart_needed"]),
        (
            &true.into(),
            &Value::Null,
            &serde_json::json!(["flow_map_size/socket_map_size/port_map_size"])
        ),
        "{st}"
    );
    let line = cli_reload_line().unwrap();
    assert!(
        line.contains(
            "applied; flow_map_size/socket_map_size/port_map_size changed and take a restart"
        ),
        "{line}"
    );
    assert_eq!(scored(&d), (rule("after", 7), "XB".into()));

    // The database file alone updated in place (the configuration as it was): read again.
    place("XC");
    hup(&d, 4, "the second reload");
    assert_eq!(scored(&d), (rule("after", 7), "XC".into()));
    assert_eq!(reloads(&d), [Some(2.0), Some(0.0), Some(1.0)]);

    // A threat configuration that does not load: refused with its file and line.
    std::fs::write(
        &threat_file,
        "[[rules]]\nname = \"bad\"\ncidr = \"10.0.0.0/33\"\nadd = 1\n",
    )
    .unwrap();
    hup(&d, 5, "the refused reload");
    let log = d.log_text();
    let refused = log
        .lines()
        .find(|l| l.contains("SIGHUP: the configuration was not reloaded"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        refused.contains(&format!("{}:3:", threat_file.display())),
        "{refused}"
    );
    assert!(is_alive(d.pid()));
    assert_eq!(scored(&d), (rule("after", 7), "XC".into()));
    let st = status(&d);
    assert_eq!(st["threat"]["dry_run"], true);
    let r = &st["last_reload"];
    assert_eq!(r["applied"], false, "{st}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("{}:3:", threat_file.display()))),
        "{st}"
    );
    let line = cli_reload_line().unwrap();
    assert!(
        line.contains("NOT APPLIED") && line.contains("10.0.0.0/33"),
        "{line}"
    );
    assert_eq!(reloads(&d), [Some(2.0), Some(1.0), Some(0.0)]);
    // And SIGTERM still ends it cleanly.
    assert!(d.stop().success(), "{}", d.log_text());
    drop((srv, client));
}
