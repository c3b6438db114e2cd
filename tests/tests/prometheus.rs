//! netmon through a real Prometheus (Debian's `prometheus` package, installed by
//! `cargo xtask test`): two netmon instances in two namespaces joined by a veth, scraped every
//! second by one Prometheus, under steady UDP traffic. Checked through Prometheus's HTTP API
//! against the kernel's own interface counters; the shipped rules and dashboard are the files
//! under deploy/, not copies.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netmon_tests::*;
use serde_json::Value;

const PROM_ADDR: &str = "127.0.0.1:9090";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// The `prometheus` and `promtool` binaries, or a panic naming how to get them (`cargo xtask
/// test` installs Debian's package before it runs the suite).
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's prometheus package (cargo xtask test does)");
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(text) = stdin {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn shipped_rules_pass_promtool_check_and_their_unit_tests() {
    // The rules, their unit tests, and the example configuration that loads them.
    for (verb, what, file) in [
        ("check", "rules", "prometheus/netmon-rules.yml"),
        ("test", "rules", "prometheus/netmon-rules.test.yml"),
        ("check", "config", "prometheus/prometheus.yml"),
    ] {
        let (ok, out) = promtool(&[verb, what, deploy(file).to_str().unwrap()], None);
        assert!(ok, "promtool {verb} {what} {file}:\n{out}");
    }
}

/// Percent-encodes a query parameter.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A Prometheus server inside a namespace, with its own data directory; killed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    ns: String,
}

impl Prometheus {
    /// Scrapes `targets` as job `netmon`; with `secured` (a token file and a certificate),
    /// over HTTPS trusting the certificate, bringing the token.
    fn start(
        ns: &Netns,
        targets: &[&str],
        secured: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Self {
        let dir = ns.scratch.join("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("netmon-rules.yml");
        std::fs::copy(deploy("prometheus/netmon-rules.yml"), &rules).unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let auth = secured
            .map(|(token, ca)| {
                format!(
                    "    scheme: https\n    tls_config:\n      ca_file: {}\n    \
                     authorization:\n      credentials_file: {}\n",
                    ca.display(),
                    token.display()
                )
            })
            .unwrap_or_default();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: netmon\n{auth}    static_configs:\n      - targets: [{targets}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROM_ADDR}"))
            .arg("--log.level=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Self {
            child,
            dir,
            ns: ns.name.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = ns.run(|| std::net::TcpStream::connect(PROM_ADDR).is_ok());
            if ready && ns_get(ns, PROM_ADDR, "/-/ready").0 == 200 {
                return p;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("prometheus did not become ready:\n{}", p.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; returns the result vector (`data.result`).
    fn query(&self, ns: &Netns, q: &str, at: Option<f64>) -> Vec<Value> {
        let mut path = format!("/api/v1/query?query={}", enc(q));
        if let Some(t) = at {
            path += &format!("&time={t}");
        }
        let (code, body) = ns_get(ns, PROM_ADDR, &path);
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {q}: {e}: {body}"));
        assert_eq!(code, 200, "query {q}: {body}");
        assert_eq!(v["status"], "success", "query {q}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (up to `secs`) until `q` returns at least one series.
    fn wait_for(&self, ns: &Netns, q: &str, secs: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.query(ns, q, None);
            if !r.is_empty() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no data for {q} after {secs} s; prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `ip netns exec` forks prometheus as its child's image; make sure nothing is left.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() == "prometheus" {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                }
            });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn num(v: &Value) -> f64 {
    v["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no value in {v}"))
}

fn label<'a>(v: &'a Value, name: &str) -> &'a str {
    v["metric"][name].as_str().unwrap_or("")
}

/// Every PromQL expression in the shipped dashboard, with Grafana's variables filled in as a
/// dashboard on this Prometheus would fill them.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/netmon-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            out.push((
                p["title"].as_str().unwrap().to_string(),
                expr.replace("$__rate_interval", "10s")
                    .replace("$job", "netmon")
                    .replace("$instance", ".*"),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    assert!(out.len() >= 10, "dashboard has too few queries: {out:?}");
    out
}

/// `label_values(METRIC{sel}, label)` (a Grafana variable query) as plain PromQL.
fn variable_as_promql(q: &str) -> String {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected variable query {q}"));
    let (metric, label) = inner.rsplit_once(',').unwrap();
    let metric = metric.replace("$job", "netmon");
    format!("count by ({}) ({metric})", label.trim())
}

#[test]
#[ignore = "privileged: needs root, network namespaces and Debian's prometheus; run by `cargo xtask test`"]
fn prometheus_scrapes_two_agents_and_rates_rules_and_dashboard_hold() {
    let p = Pair::new("prom");
    let listen_a = format!("{}:9743", p.a_v4);
    // Both agents serve HTTPS with a certificate for their addresses and ask for a token
    // (one agent listens beyond loopback, as a fleet's do); Prometheus trusts the
    // certificate and brings the token from a credentials file.
    let (cert, key) = (p.b.scratch.join("cert.pem"), p.b.scratch.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=netmon-test"])
        .args(["-addext", "subjectAltName=IP:198.18.0.1,IP:127.0.0.1"])
        // Not a CA: rustls refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token_file = p.b.scratch.join("api-token");
    std::fs::write(&token_file, "5f1c0a9e3b7d42c6a8e1f0b2d4c6e8a0\n").unwrap();
    let (token_arg, cert_arg, key_arg) = (
        token_file.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let secured = [
        "--api-token-file",
        token_arg,
        "--tls-cert",
        cert_arg,
        "--tls-key",
        key_arg,
    ];
    let da = Daemon::start(
        &p.a,
        &[&p.a_if],
        &[&["--listen", listen_a.as_str()][..], &secured].concat(),
    );
    let db = Daemon::start(&p.b, &[&p.b_if], &secured);
    // Without the token (or with another) nothing but /healthz answers; plain HTTP gets no
    // answer at all.
    let ask = |token: Option<&str>, path: &str| {
        let client = netmon::client::Api {
            token: token.map(str::to_string),
            ..da.client.clone()
        };
        let path = path.to_string();
        p.b.run(move || client.get(&path).unwrap())
    };
    for path in ["/metrics", "/api/network-stats"] {
        let (code, body) = ask(None, path);
        assert_eq!(code, 401, "{path} without the token: {body}");
        let (code, _) = ask(Some("5f1c0a9e3b7d42c6a8e1f0b2d4c6e8a1"), path);
        assert_eq!(code, 401, "{path} with another token");
        assert_eq!(da.get(&p.b, path).0, 200, "{path} with the token");
        assert!(
            !matches!(
                try_ns_get(&p.b, &listen_a, path, Duration::from_secs(3)),
                Ok((200, _))
            ),
            "{path} answered plain HTTP"
        );
    }
    assert_eq!(ask(None, "/healthz").0, 200);
    // The CLI asks with the same files, and without them says what is missing.
    let err =
        p.b.netmon_err(&["status", "--api", &listen_a, "--api-ca", cert_arg]);
    assert!(err.contains("--api-token-file"), "{err}");
    let err =
        p.b.netmon_err(&["status", "--api", &listen_a, "--api-token-file", token_arg]);
    assert!(err.contains("--api-ca"), "{err}");
    let status: Value = serde_json::from_str(&p.b.netmon_ok(&[
        "status",
        "--json",
        "--api",
        &listen_a,
        "--api-token-file",
        token_arg,
        "--api-ca",
        cert_arg,
    ]))
    .unwrap();
    assert!(status["drains"].as_u64().unwrap() >= 1, "{status}");
    // The URL the daemon's log prints works too; its scheme must agree with --api-ca.
    let log = da.log_text();
    assert!(
        log.contains(&format!("(API on https://{listen_a})")),
        "{log}"
    );
    let url = format!("https://{listen_a}/");
    let status: Value = serde_json::from_str(&p.b.netmon_ok(&[
        "status",
        "--json",
        "--api",
        &url,
        "--api-token-file",
        token_arg,
        "--api-ca",
        cert_arg,
    ]))
    .unwrap();
    assert_eq!(status["listen"], listen_a.as_str(), "{status}");
    let err =
        p.b.netmon_err(&["status", "--api", &url, "--api-token-file", token_arg]);
    assert!(err.contains("serves HTTPS: give --api-ca"), "{err}");
    let plain = format!("http://{listen_a}");
    let err =
        p.b.netmon_err(&["status", "--api", &plain, "--api-ca", cert_arg]);
    assert!(err.contains("says plain HTTP"), "{err}");
    let prom = Prometheus::start(
        &p.b,
        &[&listen_a, "127.0.0.1:9743"],
        Some((&token_file, &cert)),
    );

    // Steady traffic: 1,000-byte datagrams every 500 us from a to b for 25 s, sent by a
    // process whose command name the process series must carry.
    let sink = Peer::spawn(
        &p.b,
        &[
            "udp-recv",
            "--listen",
            "198.18.0.2:7001",
            "--timeout-ms",
            "40000",
        ],
    );
    let before = p.a_raw_counters();
    let t0 = Instant::now();
    let sender = Peer::spawn(
        &p.a,
        &[
            "udp-send",
            "--to",
            "198.18.0.2:7001",
            "--size",
            "1000",
            "--interval-us",
            "500",
            "--duration-ms",
            "25000",
            "--comm",
            "nm-promtest",
        ],
    );

    // Both targets up.
    let up = prom.wait_for(&p.b, "up{job=\"netmon\"} == 1", 30);
    let _ = up;
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.query(&p.b, "up{job=\"netmon\"} == 1", None).len() < 2 {
        assert!(Instant::now() < deadline, "both targets must be up");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Let 15 s of traffic accumulate, then compare Prometheus's rate over the last 10 s with
    // the rate the veth's own counters show over the whole run so far.
    std::thread::sleep(Duration::from_secs(15).saturating_sub(t0.elapsed()));
    let truth = {
        let now = p.a_raw_counters();
        let d = now - before;
        d.tx_bytes as f64 / t0.elapsed().as_secs_f64()
    };
    let q = format!(
        "rate(netmon_interface_bytes_total{{instance=\"{listen_a}\",interface=\"{}\",direction=\"tx\"}}[10s])",
        p.a_if
    );
    let r = prom.query(&p.b, &q, None);
    assert_eq!(r.len(), 1, "{q}: {r:?}");
    let rate = num(&r[0]);
    assert!(
        (rate - truth).abs() / truth < 0.15,
        "Prometheus rate {rate:.0} B/s vs veth counters {truth:.0} B/s (tolerance 15%)"
    );
    // The receiving agent sees the same stream on its side.
    let q = format!(
        "rate(netmon_interface_bytes_total{{instance=\"127.0.0.1:9743\",interface=\"{}\",direction=\"rx\"}}[10s])",
        p.b_if
    );
    let rx = num(&prom.query(&p.b, &q, None)[0]);
    assert!(
        (rx - truth).abs() / truth < 0.15,
        "agent b rx {rx:.0} B/s vs {truth:.0}"
    );

    // A series of one process or cgroup that must carry most of the interface's tx bytes.
    let carries_most = |metric: &str, label: &str, value: &str| {
        let q = format!(
            "rate({metric}{{instance=\"{listen_a}\",{label}=\"{value}\",direction=\"tx\"}}[10s])"
        );
        let r = prom.query(&p.b, &q, None);
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        let v = num(&r[0]);
        assert!(
            v / rate > 0.85 && v <= rate * 1.05,
            "{label} {value}: {v:.0} B/s of interface {rate:.0} B/s"
        );
    };
    // The process series carries the sender's command name and most of the interface's bytes
    // (the rest: the agent's own /metrics replies, attributed to "netmon").
    carries_most("netmon_process_bytes_total", "process", "nm-promtest");
    // The cgroup series carries the sender's cgroup, this test's own (the peer inherits it),
    // with as much of the interface's bytes (the agent, spawned from here too, is in it).
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 path in /proc/self/cgroup");
    carries_most("netmon_cgroup_bytes_total", "cgroup", own);
    let procs = prom.query(
        &p.b,
        &format!("count by (process) (netmon_process_bytes_total{{instance=\"{listen_a}\"}})"),
        None,
    );
    assert!(
        procs.iter().all(|v| !label(v, "process").is_empty()),
        "{procs:?}"
    );
    // UDP dominates the protocol split.
    let udp = prom.query(
        &p.b,
        &format!("rate(netmon_protocol_bytes_total{{instance=\"{listen_a}\",protocol=\"UDP\",direction=\"tx\"}}[10s])"),
        None,
    );
    assert!(
        !udp.is_empty() && num(&udp[0]) / rate > 0.85,
        "UDP protocol series: {udp:?}"
    );

    // Every dashboard query parses and returns data.
    for (panel, expr) in dashboard_exprs() {
        let expr = if panel.starts_with("variable") {
            variable_as_promql(&expr)
        } else {
            expr
        };
        let r = prom.query(&p.b, &expr, None);
        assert!(
            !r.is_empty(),
            "dashboard panel {panel:?}: no data for {expr}"
        );
    }

    // The fleet recording rule sums both agents: at the time of its latest sample, the job
    // series equals the sum of the two instance series evaluated at the same time. Waited
    // for until both instance series exist: an agent's rate needs two scrapes in its window,
    // and the job series is there as soon as one agent's is.
    let job = prom.wait_for(
        &p.b,
        "job:netmon_interface_bytes:rate1m{direction=\"rx\"} > 0 and on (job, direction) \
         count by (job, direction) (instance:netmon_interface_bytes:rate1m{direction=\"rx\"}) \
         == 2",
        20,
    );
    let t = job[0]["value"][0].as_f64().unwrap();
    let job_rx = num(&job[0]);
    let inst = prom.query(
        &p.b,
        "instance:netmon_interface_bytes:rate1m{direction=\"rx\"}",
        Some(t),
    );
    assert_eq!(inst.len(), 2, "one instance series per agent: {inst:?}");
    let sum: f64 = inst.iter().map(num).sum();
    assert!(
        (sum - job_rx).abs() <= job_rx * 1e-9 + 1e-6,
        "job {job_rx} vs sum of instances {sum}"
    );
    assert!(
        inst.iter().all(|v| num(v) > 0.0),
        "both agents contribute: {inst:?}"
    );
    // And the raw expression evaluated at that time agrees with the recorded value, within
    // 15%: a scrape stamped just before the rule ran can be ingested just after it, and in a
    // 1-minute window that is only partly filled one sample moves the rate by several %.
    let raw = prom.query(
        &p.b,
        "sum by (job, direction) (rate(netmon_interface_bytes_total{direction=\"rx\"}[1m]))",
        Some(t),
    );
    assert!(
        (num(&raw[0]) - job_rx).abs() <= job_rx * 0.15,
        "raw {} vs recorded {job_rx}",
        num(&raw[0])
    );

    // `promtool check metrics` is clean on a live scrape.
    let (code, text) = da.get(&p.a, "/metrics");
    assert_eq!(code, 200);
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );

    sender.finish();
    drop(sink);
    drop(prom);
    drop(da);
    drop(db);
}
