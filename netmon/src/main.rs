//! The `netmon` command: a thin shell over the library.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use netmon::{
    act::{
        commands::{BanOptions, DropList, Listed},
        net::Net,
        state::{Rate, parse_bandwidth},
    },
    client,
    config::{
        self, DEFAULT_LISTEN, DEFAULT_PIN_DIR, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR, FileConfig,
        RunConfig,
    },
    daemon,
    load::MapSizes,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "eBPF network monitor: traffic per interface, flow and process"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// bpffs directory of the pinned drop list and program links.
    #[arg(long, global = true, env = "NETMON_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Directory of the drop-list state file and audit log.
    #[arg(long, global = true, env = "NETMON_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// `netmon flows`'s criteria: the daemon sends only the connections they all admit.
#[derive(clap::Args, Debug, Default)]
struct FlowFilter {
    /// Only connections with a remote address in this prefix (or this address).
    #[arg(long, value_name = "ADDR|CIDR")]
    remote: Option<String>,
    /// Only connections with this port at either end.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Only this protocol: tcp, udp or icmp (ICMPv6 too).
    #[arg(long, value_name = "PROTO")]
    proto: Option<String>,
    /// Only connections owned by a process of this command name.
    #[arg(long, value_name = "NAME")]
    process: Option<String>,
    /// Only connections at this risk level or above: low, medium or high.
    #[arg(long, value_name = "LEVEL")]
    level: Option<String>,
}

impl FlowFilter {
    /// The criteria as `/api/network-stats` query parameters.
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("remote", self.remote.clone()),
            ("port", self.port.map(|p| p.to_string())),
            ("proto", self.proto.clone()),
            ("process", self.process.clone()),
            ("level", self.level.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the interfaces and serve metrics and the API (needs root).
    Run(Box<RunArgs>),
    /// Print the running daemon's connection table.
    Flows {
        /// JSON (the /api/network-stats document) instead of a table.
        #[arg(long)]
        json: bool,
        /// Only the N busiest connections (by the last interval's rate, then bytes): the
        /// daemon builds, scores and sends just those, which a host with many flows needs.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Ask again every SECONDS (1 when not given) until interrupted: on a terminal the
        /// screen is redrawn, otherwise the tables (or JSON documents, one a line) follow
        /// each other.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// With --watch: stop after this many tables.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
        #[command(flatten)]
        filter: FlowFilter,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Say which hooks and interfaces the running daemon has active.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the remote addresses with detections or feed listings, riskiest first, with
    /// their scores and reasons.
    Remotes {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the running daemon's alerts (patterns detected in traffic), oldest first.
    Alerts {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Drop packets from and to an address or prefix, in the kernel; or, with --file, replace
    /// the imported set with a list (plain, FireHOL netset, Spamhaus DROP/EDROP).
    Ban {
        /// IPv4/IPv6 address or CIDR.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        target: Option<String>,
        /// Bulk import; replaces the previously imported set atomically.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Lift the ban after this long (e.g. 30s, 10m, 24h); enforced by the kernel.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        /// Allow a ban covering everything, loopback or an address of this host.
        #[arg(long)]
        force: bool,
    },
    /// Lift a ban.
    Unban { target: String },
    /// Limit what one source address may send to this host, in the kernel (XDP): `--pps`
    /// packets per second with bursts of `--burst`, or `--bandwidth` (e.g. 2mbit) with bursts
    /// of `--burst-bytes`; the excess is dropped and counted.
    #[command(group(clap::ArgGroup::new("rate").required(true).args(["pps", "bandwidth"])))]
    Limit {
        /// A single source address.
        target: String,
        /// Packets per second.
        #[arg(long)]
        pps: Option<u32>,
        /// Packets. Default: the same as --pps.
        #[arg(long, requires = "pps")]
        burst: Option<u32>,
        /// Bits per second: bit, kbit, mbit, gbit or tbit (SI), e.g. 500kbit, 10mbit.
        #[arg(long, conflicts_with = "pps")]
        bandwidth: Option<String>,
        /// Bytes, at least a full frame (1514). Default: 100 ms of --bandwidth, at least
        /// 16384.
        #[arg(long, requires = "bandwidth")]
        burst_bytes: Option<u64>,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        force: bool,
    },
    /// Lift a rate limit.
    Unlimit { target: String },
    /// Never drop this prefix, whatever bans cover it.
    Allow {
        target: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove an allow entry.
    Disallow { target: String },
    /// Every drop-list entry with its hit counters; with ADDR or CIDR, only the entries
    /// that share an address with it (those that cover an address, or lie inside or around
    /// a prefix): which of a long imported list drops a given address.
    List {
        /// An address or prefix: list only the entries that overlap it.
        matching: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Terminate connections (sock_diag SOCK_DESTROY, as `ss -K`): those with REMOTE
    /// (`ADDR`, `ADDR:PORT` or `[V6]:PORT`), optionally only the one from LOCAL.
    Kill {
        remote: String,
        /// The local endpoint `ADDR:PORT` of the one connection to terminate.
        #[arg(long)]
        local: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Write flows (from the running daemon) and events (from the forensic event log) for
    /// forensics.
    Export {
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
        /// Events since: a duration ago (30m, 2h), a UTC time (2026-12-01T07:00:00Z) or unix
        /// seconds. Default: everything in the log.
        #[arg(long)]
        since: Option<String>,
        /// The event log (default: events.jsonl in the state directory).
        #[arg(long)]
        log: Option<PathBuf>,
        /// Write here instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the commands that ask a running daemon find its API.
#[derive(clap::Args)]
struct ApiArgs {
    /// The daemon's API address: ADDR:PORT (its --listen), or http(s)://ADDR:PORT as its log
    /// prints it.
    #[arg(long, env = "NETMON_API", default_value = DEFAULT_LISTEN)]
    api: String,
    /// The token file the daemon was given (`netmon run --api-token-file`), when it has one.
    #[arg(long, env = "NETMON_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// For a daemon that serves HTTPS (`--tls-cert`): the certificate to trust (its own, or
    /// the authority that signed it), PEM.
    #[arg(long, env = "NETMON_API_CA")]
    api_ca: Option<PathBuf>,
}

impl ApiArgs {
    fn client(&self) -> Result<client::Api> {
        let (addr, https) = client::parse_api(&self.api)?;
        match (https, &self.api_ca) {
            (Some(true), None) => anyhow::bail!(
                "`{}` serves HTTPS: give --api-ca FILE (or NETMON_API_CA), the daemon's \
                 certificate or the authority that signed it",
                self.api
            ),
            (Some(false), Some(_)) => anyhow::bail!(
                "`{}` says plain HTTP, but --api-ca is for a daemon that serves HTTPS: give \
                 https://{addr}, or leave --api-ca out",
                self.api
            ),
            _ => {}
        }
        Ok(client::Api {
            addr,
            token: self
                .api_token_file
                .as_deref()
                .map(config::read_token)
                .transpose()?,
            tls: self
                .api_ca
                .as_deref()
                .map(netmon::tls::client_config)
                .transpose()?,
        })
    }
}

/// `ADDR`, `ADDR:PORT` or `[V6]:PORT`.
fn parse_endpoint(s: &str) -> Result<(std::net::IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok((ip, None));
    }
    match s.parse::<std::net::SocketAddr>() {
        Ok(sa) => Ok((sa.ip(), Some(sa.port()))),
        Err(_) => anyhow::bail!(
            "`{s}` is not an address or address:port (e.g. 198.51.100.7, 198.51.100.7:443, \
             [2001:db8::1]:443)"
        ),
    }
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Interface to monitor; repeat for several. Default: every up, non-loopback interface.
    #[arg(long = "iface", short = 'i')]
    ifaces: Vec<String>,
    /// Address of the metrics/API server.
    #[arg(long)]
    listen: Option<String>,
    /// How often the kernel maps are drained, e.g. 1s, 500ms.
    #[arg(long)]
    interval: Option<String>,
    /// Flows idle this long are removed, e.g. 60s, 5m.
    #[arg(long)]
    idle_timeout: Option<String>,
    /// Flows per family: the size of each LRU flow map; each CPU's part of the per-CPU
    /// tables holds twice its share (at least 16,384, at most this).
    #[arg(long)]
    flow_map_size: Option<u32>,
    /// TOML file with the same settings (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How the HTTP API (connection table, remotes, alerts) shows remote addresses: off, or
    /// prefix (IPv4 cut to its /24, IPv6 to its /48). Detection, the drop list and the
    /// event log keep full addresses.
    #[arg(long)]
    anonymize: Option<String>,
    /// How to attach the ingress program: auto (native XDP where the driver has it, except
    /// on a veth, whose peer native XDP would leave without TSO; elsewhere the TC ingress
    /// hook, where generic XDP would copy frames), driver (native XDP only), skb (generic
    /// XDP), tc (the TC ingress hook, TCX or clsact as --tc-attach says).
    #[arg(long)]
    xdp_attach: Option<String>,
    /// How to attach the egress program: auto (TCX on 6.6+, else clsact), tcx, clsact.
    #[arg(long)]
    tc_attach: Option<String>,
    /// How UDP senders are attributed: auto (cgroup hooks on connect() and addressed sends
    /// where the kernel takes them, so no program runs per datagram on a connected socket;
    /// else a hook on every sendmsg) or per-send (only the latter; nothing attached to the
    /// cgroup hierarchy).
    #[arg(long)]
    udp_hook: Option<String>,
    /// Where the programs count flows: per-cpu (tables the programs index themselves, one
    /// part per CPU, merged by the daemon) or lru (the kernel's LRU hash maps).
    #[arg(long)]
    flow_table: Option<String>,
    /// Command names that get their own Prometheus series (the first K to move traffic);
    /// the others are summed into process="other". Bounds the cgroup series likewise (K
    /// paths, the rest cgroup="other"). Default 20.
    #[arg(long)]
    process_top_k: Option<usize>,
    /// Remove a command name's (or cgroup's) series after it moved no traffic for this long,
    /// and a gone interface's this long after it went. Default 10m.
    #[arg(long)]
    process_series_ttl: Option<String>,
    /// TOML file of risk-scoring weights, thresholds, detection windows, custom rules,
    /// reputation feeds, the response policy and the alert sinks.
    #[arg(long)]
    threat_config: Option<PathBuf>,
    /// MaxMind-format database (.mmdb) for countries and ASNs; repeat for several (added to
    /// the threat configuration's `geoip`).
    #[arg(long)]
    geoip: Vec<PathBuf>,
    /// A file holding a token (one line, 16+ characters): every request but /healthz must
    /// then bring `Authorization: Bearer <token>` (Prometheus: `authorization:
    /// credentials_file`; the CLI: the same option or variable).
    #[arg(long, env = "NETMON_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Serve the API and /metrics over HTTPS with this certificate (PEM; its chain after
    /// it), with --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

fn resolve(
    args: RunArgs,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
) -> Result<RunConfig> {
    let file = match &args.config {
        Some(p) => FileConfig::read(p)?,
        None => FileConfig::default(),
    };
    let d = MapSizes::default();
    Ok(RunConfig {
        interfaces: if args.ifaces.is_empty() {
            file.interfaces.unwrap_or_default()
        } else {
            args.ifaces
        },
        listen: config::parse_listen(
            args.listen
                .as_deref()
                .or(file.listen.as_deref())
                .unwrap_or(DEFAULT_LISTEN),
        )?,
        interval: config::parse_duration(
            args.interval
                .as_deref()
                .or(file.interval.as_deref())
                .unwrap_or("1s"),
        )
        .context("--interval")?,
        idle_timeout: config::parse_duration(
            args.idle_timeout
                .as_deref()
                .or(file.idle_timeout.as_deref())
                .unwrap_or("60s"),
        )
        .context("--idle-timeout")?,
        sizes: MapSizes {
            flows: args.flow_map_size.or(file.flow_map_size).unwrap_or(d.flows),
            sockets: file.socket_map_size.unwrap_or(d.sockets),
            ports: file.port_map_size.unwrap_or(d.ports),
        },
        run_dir: file
            .run_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
        pin_dir: pin_dir
            .or(file.pin_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
        state_dir: state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        xdp_attach: args
            .xdp_attach
            .or(file.xdp_attach)
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .context("--xdp-attach")?,
        tc_mode: args
            .tc_attach
            .or(file.tc_attach)
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .context("--tc-attach")?,
        udp_hook: args
            .udp_hook
            .or(file.udp_hook)
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .context("--udp-hook")?,
        flow_table: args
            .flow_table
            .or(file.flow_table)
            .map(|s| s.parse())
            .transpose()
            .context("--flow-table")?
            .unwrap_or_default(),
        threat: {
            let mut t = match args.threat_config.or(file.threat_config) {
                Some(p) => netmon::classify::config::ThreatConfig::read(&p)?,
                None => netmon::classify::config::ThreatConfig::default(),
            };
            t.geoip.extend(args.geoip);
            t
        },
        anonymize: args
            .anonymize
            .or(file.anonymize)
            .as_deref()
            .unwrap_or("off")
            .parse()
            .context("--anonymize")?,
        api_token: args
            .api_token_file
            .or(file.api_token_file)
            .map(|p| config::read_token(&p))
            .transpose()?,
        tls: config::tls_files(
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        )?,
        process_series: netmon::metrics::SeriesConfig {
            top_k: args
                .process_top_k
                .or(file.process_top_k)
                .unwrap_or(netmon::metrics::DEFAULT_PROCESS_TOP_K),
            ttl: config::parse_duration(
                args.process_series_ttl
                    .as_deref()
                    .or(file.process_series_ttl.as_deref())
                    .unwrap_or("10m"),
            )
            .context("--process-series-ttl")?,
        },
    })
}

/// Asks the running daemon for `path` and prints it as JSON or with `print`.
fn show(api: &ApiArgs, path: &str, json: bool, print: fn(&serde_json::Value)) -> Result<()> {
    let v = api.client()?.get_json(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print(&v);
    }
    Ok(())
}

/// `netmon flows --watch`: the table every `secs` seconds, `count` times or until interrupted.
fn watch_flows(api: &ApiArgs, path: &str, json: bool, secs: f64, count: Option<u64>) -> Result<()> {
    if !(secs.is_finite() && secs >= 0.1) {
        anyhow::bail!("--watch {secs}: give an interval of at least 0.1 seconds");
    }
    let client = api.client()?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // On a terminal each screen replaces the last: cursor home, clear the screen.
    let clear = || {
        if tty {
            print!("\x1b[H\x1b[2J");
        }
    };
    let mut shown = 0;
    loop {
        let v = match client.get_json(path) {
            Ok(v) => v,
            // Once it has answered, a daemon that stops answering is restarting (or gone for
            // a while): said, and asked again, rather than ending the watch.
            Err(e) if shown > 0 && unreachable(&e) => {
                let line = format!(
                    "netmon flows at {}: {e:#}; asking again every {secs} s",
                    netmon::act::state::rfc3339(netmon::act::state::now_ms())
                );
                if json {
                    eprintln!("{line}");
                } else {
                    clear();
                    println!("{line}");
                    std::io::Write::flush(&mut std::io::stdout())?;
                }
                std::thread::sleep(std::time::Duration::from_secs_f64(secs));
                continue;
            }
            Err(e) => return Err(e),
        };
        if json {
            println!("{}", serde_json::to_string(&v)?);
        } else {
            clear();
            println!(
                "netmon flows at {} (every {secs} s; Ctrl-C to stop)",
                netmon::act::state::rfc3339(netmon::act::state::now_ms())
            );
            print_flows(&v);
            if !tty {
                println!();
            }
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    }
}

/// Whether `e` is the daemon not answering at all (refused, reset, timed out: an I/O error),
/// not an answer it gave (a status, a body).
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some())
}

fn print_alerts(v: &serde_json::Value) {
    let alerts = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if alerts.is_empty() {
        println!("no alerts");
        return;
    }
    for a in alerts {
        let ms = a["time_ms"].as_u64().unwrap_or(0);
        println!(
            "{}  {:<6} {:<18} {:<39} score {:>3}  {}",
            netmon::act::state::rfc3339(ms),
            a["severity"].as_str().unwrap_or(""),
            a["kind"].as_str().unwrap_or(""),
            a["remote"].as_str().unwrap_or(""),
            a["score"].as_i64().unwrap_or(0),
            a["detail"].as_str().unwrap_or(""),
        );
        print_reasons(&a["reasons"]);
    }
}

/// Each reason with its points, indented under a row.
fn print_reasons(reasons: &serde_json::Value) {
    for r in reasons.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        println!(
            "    {:+4}  {}",
            r["points"].as_i64().unwrap_or(0),
            r["detail"].as_str().unwrap_or("")
        );
    }
}

fn print_remotes(v: &serde_json::Value) {
    let rows = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if rows.is_empty() {
        println!("no remote with detections or feed listings");
        return;
    }
    println!(
        "{:<39} {:<6} {:>5} {:<7} {:<10} FEEDS",
        "REMOTE", "LEVEL", "SCORE", "COUNTRY", "ASN"
    );
    for r in rows {
        println!(
            "{:<39} {:<6} {:>5} {:<7} {:<10} {}",
            r["remote"].as_str().unwrap_or(""),
            r["level"].as_str().unwrap_or(""),
            r["score"].as_i64().unwrap_or(0),
            r["country"].as_str().unwrap_or("-"),
            r["asn"]
                .as_u64()
                .map(|a| format!("AS{a}"))
                .unwrap_or_else(|| "-".into()),
            json_strs(&r["feeds"]).join(","),
        );
        print_reasons(&r["reasons"]);
    }
}

fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", units[i])
    } else {
        format!("{v:.1}{}", units[i])
    }
}

/// A TCP connection's smoothed round-trip time and the segments it sent again, as the
/// `flows` table shows them ("-" where TCP measured nothing: UDP, ICMP, a closed socket).
fn quality_columns(q: &serde_json::Value) -> (String, String) {
    match (q["rtt_us"].as_u64(), q["retrans_segments"].as_u64()) {
        (Some(rtt), Some(retrans)) => (format!("{:.2}ms", rtt as f64 / 1e3), retrans.to_string()),
        _ => ("-".into(), "-".into()),
    }
}

fn print_flows(v: &serde_json::Value) {
    println!(
        "{:<6} {:<45} {:<45} {:<12} {:>7} {:<15} {:>9} {:>9} {:>10} {:>10} {:>9} {:>5} RISK",
        "PROTO",
        "LOCAL",
        "REMOTE",
        "STATE",
        "PID",
        "PROCESS",
        "SENT",
        "RECV",
        "TX/s",
        "RX/s",
        "RTT",
        "RETR"
    );
    for c in v["connections"].as_array().into_iter().flatten() {
        let s = |k: &str| c[k].as_str().unwrap_or("-").to_string();
        let n = |k: &str| c[k].as_f64().unwrap_or(0.0);
        let risk = &c["risk"];
        let (rtt, retrans) = quality_columns(&c["tcp_quality"]);
        println!(
            "{:<6} {:<45} {:<45} {:<12} {:>7} {:<15} {:>9} {:>9} {:>10} {:>10} {rtt:>9} {retrans:>5} {} {}",
            s("type"),
            s("local_address"),
            s("remote_address"),
            s("status"),
            c["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            match c["process"].as_str() {
                Some(p) => p,
                // Frames the host forwards, of no process of its.
                None if c["forwarded"] == true => "(forwarded)",
                None => "-",
            },
            human_bytes(n("bytes_sent")),
            human_bytes(n("bytes_recv")),
            human_bytes(n("send_rate")),
            human_bytes(n("recv_rate")),
            risk["level"].as_str().unwrap_or("-"),
            risk["score"].as_i64().unwrap_or(0),
        );
        // Why a connection is more than low risk, point by point.
        if risk["level"].as_str().is_some_and(|l| l != "low") {
            print_reasons(&risk["reasons"]);
        }
    }
    let shown = v["connections"].as_array().map_or(0, Vec::len);
    let total = v["connections_total"].as_u64().unwrap_or(0);
    if total > shown as u64 {
        println!("({shown} busiest of {total} connections)");
    }
}

/// The strings of JSON array `v` (none where it is not one).
fn json_strs(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect()
}

fn print_status(v: &serde_json::Value) {
    println!(
        "netmon {} (pid {}), up {:.0}s, API on {}",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["uptime_seconds"].as_f64().unwrap_or(0.0),
        v["listen"].as_str().unwrap_or("?")
    );
    let r = &v["last_reload"];
    if let Some(at) = r["at_ms"].as_u64() {
        let when = netmon::act::state::rfc3339(at);
        match r["error"].as_str() {
            Some(e) => {
                println!("last reload ({when}): NOT APPLIED, the configuration before runs: {e}")
            }
            None => {
                let later = json_strs(&r["restart_needed"]);
                if later.is_empty() {
                    println!("last reload ({when}): applied");
                } else {
                    println!(
                        "last reload ({when}): applied; {} changed and take a restart",
                        later.join(", ")
                    );
                }
            }
        }
    }
    let ifs: Vec<_> = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    println!("interfaces: {}", ifs.join(", "));
    for st in v["stacked"].as_array().into_iter().flatten() {
        println!(
            "  not {}: stacked on {}, where its frames are counted",
            st["name"].as_str().unwrap_or("?"),
            json_strs(&st["below"]).join(", ")
        );
    }
    println!("hooks:");
    for h in v["hooks"].as_array().into_iter().flatten() {
        println!(
            "  {:<8} {:<18} {:<11} {:<28} {}",
            if h["active"].as_bool() == Some(true) {
                "active"
            } else {
                "inactive"
            },
            h["purpose"].as_str().unwrap_or(""),
            h["kind"].as_str().unwrap_or(""),
            h["target"].as_str().unwrap_or(""),
            h["note"].as_str().unwrap_or("")
        );
    }
    println!(
        "flows ({}): {} active, {} evicted, {} expired; last drain {:.2} ms",
        match v["flow_table"].as_str() {
            Some("per-cpu") => "per-CPU tables",
            Some("lru") => "LRU maps",
            _ => "?",
        },
        v["flows_active"],
        v["flow_evictions"],
        v["flows_expired"],
        v["last_drain_seconds"].as_f64().unwrap_or(0.0) * 1e3
    );
}

/// Drop-list options of an entry made by hand.
fn manual_options(ttl: Option<&str>, reason: String, force: bool) -> Result<BanOptions> {
    Ok(BanOptions {
        ttl: ttl
            .map(config::parse_duration)
            .transpose()
            .context("--ttl")?,
        reason,
        force,
        kind: Default::default(),
    })
}

fn parse_net(s: &str) -> Result<Net> {
    Ok(s.parse::<Net>()?)
}

fn print_list(rows: &[Listed]) {
    println!(
        "{:<6} {:<42} {:<7} {:<24} {:>10} {:>12} {:<21} {:<21} REASON",
        "LIST", "ENTRY", "KIND", "EXPIRES", "PACKETS", "BYTES", "LAST HIT", "ADDED"
    );
    for r in rows {
        println!(
            "{:<6} {:<42} {:<7} {:<24} {:>10} {:>12} {:<21} {:<21} {} (uid {})",
            r.list,
            r.entry,
            r.kind
                .map(|k| format!("{k:?}").to_lowercase())
                .unwrap_or_else(|| "-".into()),
            r.expires.as_deref().unwrap_or("never"),
            r.dropped_packets,
            r.dropped_bytes,
            r.last_hit.as_deref().unwrap_or("-"),
            r.added,
            match r.rate {
                Some(rate) => format!("{rate}: {}", r.reason),
                None => r.reason.clone(),
            },
            r.uid
        );
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run(_)) {
        // A command's output read by `head` and the like: end when the reader goes away, as
        // Unix tools do, where Rust's ignored SIGPIPE made the next print panic. The daemon
        // keeps it ignored: its sockets report EPIPE instead.
        // SAFETY: sets the default disposition, before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line, without a backtrace: this is for people.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Keeps the daemon's heap near what it uses, before any thread allocates. glibc raises its
/// mmap threshold to the size of every large block freed, so after the first full drain of a
/// large table (whose hash-table growth frees tens of MiB) the next such blocks come from
/// the heap and stay resident until a trim. A fixed threshold keeps blocks of 256 KiB and
/// more in their own mappings, returned to the kernel when freed; two arenas instead of
/// eight per CPU keep the threads' freed memory in fewer places.
fn bound_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// After a drop-list command: says so on stderr when no loaded program uses the drop list
/// the command wrote or read (no daemon runs with that pin directory), which then drops
/// nothing.
fn note_unenforced(list: &DropList, pin_dir: &std::path::Path) {
    if list.enforced() == Some(false) {
        eprintln!(
            "note: no loaded program uses the drop list at {}: it drops nothing until `netmon \
             run` starts with that pin directory (a daemon that runs pinned its drop list \
             elsewhere: give the CLI its --pin-dir, or NETMON_PIN_DIR)",
            pin_dir.display()
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    let pin_dir = cli
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    let droplist = || {
        DropList::new(
            pin_dir.clone(),
            cli.state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        )
    };
    let note = || note_unenforced(&droplist(), &pin_dir);
    match cli.cmd {
        Cmd::Run(args) => {
            bound_heap();
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                // Plain text into log files and journald; colour only on a terminal.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let cfg = resolve((*args).clone(), cli.pin_dir.clone(), cli.state_dir.clone())?;
            // SIGHUP: the same command line, its files read again.
            let (pin_dir, state_dir) = (cli.pin_dir.clone(), cli.state_dir.clone());
            let reread: daemon::Reread = std::sync::Arc::new(move || {
                resolve((*args).clone(), pin_dir.clone(), state_dir.clone())
            });
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(async {
                let token = CancellationToken::new();
                let t = token.clone();
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("installing the SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    tracing::info!("signal received, detaching");
                    t.cancel();
                });
                daemon::run(cfg, token, reread).await
            })
        }
        Cmd::Flows {
            json,
            top,
            watch,
            count,
            filter,
            api,
        } => {
            let mut query: Vec<(&str, String)> =
                top.map(|n| ("limit", n.to_string())).into_iter().collect();
            query.extend(filter.query());
            let path = if query.is_empty() {
                "/api/network-stats".to_string()
            } else {
                let q: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", netmon::client::query_escape(v)))
                    .collect();
                format!("/api/network-stats?{}", q.join("&"))
            };
            match watch {
                None => show(&api, &path, json, print_flows),
                Some(secs) => watch_flows(&api, &path, json, secs, count),
            }
        }
        Cmd::Ban {
            target,
            file,
            ttl,
            reason,
            force,
        } => {
            let opts = manual_options(ttl.as_deref(), reason, force)?;
            match (target, file) {
                (_, Some(path)) => {
                    let (n, [narrow, wide, hashed]) = droplist().import(&path, &opts)?;
                    println!("imported {n} entries from {}", path.display());
                    if narrow + wide + hashed > 0 {
                        println!(
                            "single-address bans in force: {narrow} in the programs' arrays, \
                             {wide} in the wide arrays, {hashed} in the kernel hash map alone \
                             (dropped more slowly; README, known limits)"
                        );
                    }
                }
                (Some(t), None) => {
                    let e = droplist().ban(parse_net(&t)?, &opts)?;
                    match e.expires_ms {
                        Some(ms) => {
                            println!("banned {} until {}", e.net, netmon::act::state::rfc3339(ms))
                        }
                        None => println!("banned {}", e.net),
                    }
                }
                (None, None) => unreachable!("clap requires one"),
            }
            note();
            Ok(())
        }
        Cmd::Limit {
            target,
            pps,
            burst,
            bandwidth,
            burst_bytes,
            ttl,
            reason,
            force,
        } => {
            let rate = match (pps, bandwidth) {
                (Some(pps), _) => Rate::packets(pps, burst.unwrap_or(pps))?,
                (None, Some(b)) => {
                    Rate::bandwidth(parse_bandwidth(&b).context("--bandwidth")?, burst_bytes)?
                }
                (None, None) => unreachable!("clap requires one"),
            };
            let opts = manual_options(ttl.as_deref(), reason, force)?;
            let e = droplist().limit(parse_net(&target)?, rate, &opts)?;
            println!(
                "limited {} to {}{}",
                e.net,
                e.rate,
                e.expires_ms
                    .map(|ms| format!(" until {}", netmon::act::state::rfc3339(ms)))
                    .unwrap_or_default()
            );
            note();
            Ok(())
        }
        Cmd::Unlimit { target } => {
            let n = parse_net(&target)?;
            droplist().unlimit(n)?;
            println!("removed the rate limit on {n}");
            Ok(())
        }
        Cmd::Unban { target } => {
            let n = parse_net(&target)?;
            droplist().unban(n)?;
            println!("unbanned {n}");
            Ok(())
        }
        Cmd::Allow { target, reason } => {
            let n = parse_net(&target)?;
            droplist().allow(n, &reason)?;
            println!("allowed {n}");
            note();
            Ok(())
        }
        Cmd::Disallow { target } => {
            let n = parse_net(&target)?;
            droplist().disallow(n)?;
            println!("removed {n} from the allow list");
            Ok(())
        }
        Cmd::List { matching, json } => {
            let only = matching.as_deref().map(parse_net).transpose()?;
            let rows = droplist().list(only.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_list(&rows);
            }
            note();
            Ok(())
        }
        Cmd::Alerts { json, api } => show(&api, "/api/alerts", json, print_alerts),
        Cmd::Remotes { json, api } => show(&api, "/api/remotes", json, print_remotes),
        Cmd::Kill {
            remote,
            local,
            reason,
        } => {
            let (ip, port) = parse_endpoint(&remote)?;
            let local = local
                .as_deref()
                .map(|l| {
                    l.parse::<std::net::SocketAddr>()
                        .with_context(|| format!("--local `{l}`: expected ADDR:PORT"))
                })
                .transpose()?;
            let mut diag = netmon::sockdiag::SockDiag::new()?;
            let killed = diag.kill(ip, port, local)?;
            if killed.is_empty() {
                anyhow::bail!("no open connection with {remote} (see `netmon flows`)");
            }
            for k in &killed {
                println!(
                    "terminated {} {} -> {}",
                    if k.proto == netmon_common::IPPROTO_TCP {
                        "tcp"
                    } else {
                        "udp"
                    },
                    std::net::SocketAddr::new(netmon::aggregate::to_ip(k.local_addr), k.local_port),
                    std::net::SocketAddr::new(
                        netmon::aggregate::to_ip(k.remote_addr),
                        k.remote_port
                    ),
                );
            }
            let mut rec = netmon::act::state::AuditRecord::new("kill", &remote, &reason);
            rec.count = Some(killed.len());
            if let Err(e) = droplist().audit(&rec) {
                eprintln!("warning: not recorded in the audit log: {e:#}");
            }
            Ok(())
        }
        Cmd::Export {
            format,
            since,
            log,
            output,
            api,
        } => {
            let format: netmon::export::Format = format.parse()?;
            let now = netmon::act::state::now_ms();
            let since_ms = since
                .as_deref()
                .map(|s| netmon::export::parse_since(s, now))
                .transpose()?
                .unwrap_or(0);
            let log = log.unwrap_or_else(|| {
                cli.state_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
                    .join("events.jsonl")
            });
            let (events, bad) = netmon::export::read_events(&log, since_ms)?;
            if bad > 0 {
                eprintln!(
                    "warning: {bad} lines of {} are not JSON and were skipped",
                    log.display()
                );
            }
            let flows = match api.client().and_then(|a| a.get_json("/api/network-stats")) {
                Ok(v) => v["connections"].as_array().cloned().unwrap_or_default(),
                Err(e) => {
                    eprintln!("warning: no flows exported: {e:#}");
                    Vec::new()
                }
            };
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    netmon::files::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            netmon::export::write(&mut *out, format, &flows, &events, since_ms, now)?;
            out.flush()?;
            if let Some(p) = &output {
                eprintln!(
                    "exported {} flows and {} events to {}",
                    flows.len(),
                    events.len(),
                    p.display()
                );
            }
            Ok(())
        }
        Cmd::Status { json, api } => show(&api, "/api/status", json, print_status),
    }
}
