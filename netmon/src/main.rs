//! The `netmon` command: a thin shell over the library.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use netmon::{
    client,
    config::{self, DEFAULT_LISTEN, DEFAULT_RUN_DIR, FileConfig, RunConfig},
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
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the interfaces and serve metrics and the API (needs root).
    Run(RunArgs),
    /// Print the running daemon's connection table.
    Flows {
        /// JSON (the /api/network-stats document) instead of a table.
        #[arg(long)]
        json: bool,
        /// The daemon's API address.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        api: String,
    },
    /// Say which hooks and interfaces the running daemon has active.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_LISTEN)]
        api: String,
    },
}

#[derive(clap::Args)]
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
    /// max_entries of the kernel flow map.
    #[arg(long)]
    flow_map_size: Option<u32>,
    /// TOML file with the same settings (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn resolve(args: RunArgs) -> Result<RunConfig> {
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
    })
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

fn print_flows(v: &serde_json::Value) {
    println!(
        "{:<6} {:<45} {:<45} {:<12} {:>7} {:<15} {:>9} {:>9} {:>10} {:>10}",
        "PROTO", "LOCAL", "REMOTE", "STATE", "PID", "PROCESS", "SENT", "RECV", "TX/s", "RX/s"
    );
    for c in v["connections"].as_array().into_iter().flatten() {
        let s = |k: &str| c[k].as_str().unwrap_or("-").to_string();
        let n = |k: &str| c[k].as_f64().unwrap_or(0.0);
        println!(
            "{:<6} {:<45} {:<45} {:<12} {:>7} {:<15} {:>9} {:>9} {:>10} {:>10}",
            s("type"),
            s("local_address"),
            s("remote_address"),
            s("status"),
            c["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            s("process"),
            human_bytes(n("bytes_sent")),
            human_bytes(n("bytes_recv")),
            human_bytes(n("send_rate")),
            human_bytes(n("recv_rate")),
        );
    }
}

fn print_status(v: &serde_json::Value) {
    println!(
        "netmon {} (pid {}), up {:.0}s, API on {}",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["uptime_seconds"].as_f64().unwrap_or(0.0),
        v["listen"].as_str().unwrap_or("?")
    );
    let ifs: Vec<_> = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    println!("interfaces: {}", ifs.join(", "));
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
        "flows: {} active, {} evicted, {} expired; last drain {:.2} ms",
        v["flows_active"],
        v["flow_evictions"],
        v["flows_expired"],
        v["last_drain_seconds"].as_f64().unwrap_or(0.0) * 1e3
    );
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let cfg = resolve(args)?;
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
                daemon::run(cfg, token).await
            })
        }
        Cmd::Flows { json, api } => {
            let v = client::get_json(&api, "/api/network-stats")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_flows(&v);
            }
            Ok(())
        }
        Cmd::Status { json, api } => {
            let v = client::get_json(&api, "/api/status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
    }
}
