//! Threat detection end to end, as root, in network namespaces: real traffic from a peer
//! namespace, the daemon's alerts and scores read back through its API, CLI and metrics.

use std::{net::TcpStream, time::Duration};

use netmon_tests::*;
use serde_json::Value;

/// A connect() scan of 200 closed ports of `p.a` from `p.b` (each SYN is answered by a RST);
/// returns the port-scan alert `d` raises for it (10 s at most).
fn scan_and_wait_for_alert(p: &Pair, d: &Daemon) -> Value {
    let target = p.a_v4.to_string();
    p.b.run(move || {
        for port in 1..=200u16 {
            let _ = TcpStream::connect_timeout(
                &format!("{target}:{port}").parse().unwrap(),
                Duration::from_millis(200),
            );
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alerts = ns_json(&p.a, &d.api, "/api/alerts");
        if let Some(a) = alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "port_scan")
        {
            return a.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no port-scan alert after the scan: {alerts}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The connection rows of `/api/network-stats` whose remote address is `ip` (any port).
fn rows_with_remote<'a>(stats: &'a Value, ip: &str) -> Vec<&'a Value> {
    stats["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["remote_address"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("{ip}:")))
        })
        .collect()
}

/// Waits (10 s at most) until `p.a`'s daemon's event log holds `needle`.
fn wait_for_event_log(p: &Pair, needle: &str) {
    let log = p.a.state_dir.join("events.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(needle)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never held {needle}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn a_port_scan_raises_an_alert_naming_the_source() {
    let p = Pair::new("scan");
    let mut d = Daemon::start(&p.a, &[&p.a_if], &[]);
    let alert = scan_and_wait_for_alert(&p, &d);
    assert_eq!(alert["remote"], p.b_v4, "{alert}");
    assert_eq!(alert["severity"], "high", "{alert}");
    let detail = alert["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("{}: ", p.b_v4)) && detail.contains("ports tried"),
        "{detail}"
    );
    assert!(
        alert["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "port_scan" && r["points"].as_i64() == Some(50)),
        "{alert}"
    );
    // The scan's counts are the scan's: 200 ports, 200 connections (a SYN and the RST
    // that refused it are two flows of one connection), 200 refused. Waited for, as the
    // alert may come from a drain before the scan's last attempts.
    let want = [
        "200 ports tried on this host",
        "200 new connections",
        "200 refused or unreachable connections",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let remotes = ns_json(&p.a, &d.api, "/api/remotes");
        let details: Vec<String> = remotes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["remote"] == p.b_v4)
            .flat_map(|r| r["reasons"].as_array().unwrap().iter())
            .map(|r| r["detail"].as_str().unwrap().to_string())
            .collect();
        if details.iter().any(|d| d.contains(want[0])) {
            for w in want {
                assert!(details.iter().any(|d| d.contains(w)), "{w}: {details:?}");
            }
            // Each SYN was refused with a reset: nothing was left half open (no SYN flood).
            assert!(
                !details.iter().any(|d| d.contains("half-open")),
                "{details:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scanner's detections never counted 200 ports: {remotes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One alert per kind while the scan is in the window, not one per port or per drain.
    let alerts = ns_json(&p.a, &d.api, "/api/alerts");
    let scans = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "port_scan")
        .count();
    assert_eq!(scans, 1, "{alerts}");

    // The CLI says the same.
    let bin = netmon_bin();
    let out: Value = serde_json::from_str(&p.a.exec(&[
        bin.to_str().unwrap(),
        "alerts",
        "--json",
        "--api",
        &d.api,
    ]))
    .unwrap();
    assert!(
        out.as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "port_scan" && a["remote"] == p.b_v4)
    );
    let text =
        p.a.exec(&[bin.to_str().unwrap(), "alerts", "--api", &d.api]);
    assert!(
        text.contains("port_scan") && text.contains(p.b_v4),
        "{text}"
    );

    // The metric counted it once, with its severity.
    let (_, metrics) = ns_get(&p.a, &d.api, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "netmon_threats_detected_total{kind=\"port_scan\",severity=\"high\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("netmon_threats"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Connections with the scanner are high risk, with the reason and its points.
    let stats = d.fresh_stats(&p.a);
    let from_scanner = rows_with_remote(&stats, p.b_v4);
    assert!(!from_scanner.is_empty(), "{stats}");
    for c in from_scanner {
        assert_eq!(c["risk"]["level"], "high", "{c}");
        assert!(
            c["risk"]["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["kind"] == "port_scan"),
            "{c}"
        );
    }

    // The daemon is killed once the alert is in its event log; started again, it lists the
    // alert as it was, with its id.
    wait_for_event_log(&p, "\"port_scan\"");
    d.kill();
    let d = Daemon::start(&p.a, &[&p.a_if], &[]);
    let alerts = ns_json(&p.a, &d.api, "/api/alerts");
    let again: Vec<&Value> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "port_scan")
        .collect();
    assert_eq!(again, [&alert], "after a restart: {alerts}");
}

/// With `--anonymize prefix` the API shows the scanner only by its /24: in the alert (its
/// remote, detail and reasons), the remotes and the connection table, none of which holds
/// the full address; the detection, the drop list's decisions and the event log, which keeps
/// the full address for incident response, work as without it.
#[test]
#[ignore = "privileged: needs root and network namespaces; run by `cargo xtask test`"]
fn anonymized_api_shows_the_scanner_only_by_its_network() {
    let p = Pair::new("anon");
    let d = Daemon::start(&p.a, &[&p.a_if], &["--anonymize", "prefix"]);
    let alert = scan_and_wait_for_alert(&p, &d);
    let network = "198.18.0.0";
    assert_eq!(p.b_v4, "198.18.0.2");
    assert_eq!(alert["remote"], network, "{alert}");
    assert!(
        alert["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{network}: ")),
        "{alert}"
    );
    let stats = d.fresh_stats(&p.a);
    let scanner_rows = rows_with_remote(&stats, network).len();
    assert!(scanner_rows > 0, "{stats}");
    let remotes = ns_json(&p.a, &d.api, "/api/remotes");
    assert!(
        remotes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["remote"] == network),
        "{remotes}"
    );
    for path in ["/api/alerts", "/api/remotes", "/api/network-stats"] {
        let (_, body) = ns_get(&p.a, &d.api, path);
        assert!(!body.contains(p.b_v4), "{path} holds {}: {body}", p.b_v4);
    }
    // A filter may ask about the networks shown, not about one address (whose rows, or
    // their absence, would tell whether it is connected).
    let by_remote = |q: &str| ns_get(&p.a, &d.api, &format!("/api/network-stats?remote={q}"));
    let (code, body) = by_remote(p.b_v4);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("anonymizes remote addresses to their /24"),
        "{body}"
    );
    let (code, body) = by_remote("198.18.0.0%2F24");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows_with_remote(&v, network).len(), scanner_rows, "{v}");
    // The event log keeps the full address.
    wait_for_event_log(&p, p.b_v4);
}
