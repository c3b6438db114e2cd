//! `cargo xtask bench`: installs the peers netmon is compared with, builds everything in
//! release mode, runs `netmon-bench` as root and writes its report to BENCHMARKS.md.

use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, ebpf_object, is_root, progress, run_cmd, setup, workspace_root};

/// Debian packages for the throughput comparison: the load generator and two peers.
const BENCH_PACKAGES: &[&str] = &["iperf3", "nethogs", "iftop"];

pub fn run(sections: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the benchmarks load eBPF programs and create namespaces: run `sudo -E cargo xtask bench`"
        );
    }
    setup::ensure_runtime_packages()?;
    setup::apt_install(BENCH_PACKAGES, "the throughput benchmark")?;
    ensure_bandwhich()?;
    setup::ensure_mounts()?;
    let bin = build(true)?;
    let root = workspace_root();
    progress("building netmon-bench (release)");
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .env("NETMON_EBPF_OBJ", ebpf_object())
            .args(["build", "--release", "-p", "netmon-tests", "--bins"]),
    )?;
    progress("running the benchmarks (several minutes)");
    let out = Command::new(root.join("target/release/netmon-bench"))
        .args(sections)
        .env("NETMON_BIN", &bin)
        .env("NETMON_TESTPEER", bin.with_file_name("netmon-testpeer"))
        // A developer's filter for quick comparisons: BENCHMARKS.md is written from them all.
        .env_remove("NETMON_BENCH_PACKETS")
        .env_remove("NETMON_BENCH_OBJECT")
        .env_remove("NETMON_BENCH_DRAIN_MAX")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting netmon-bench")?;
    if !out.status.success() {
        bail!("netmon-bench failed with {}", out.status);
    }
    let mut report = String::from_utf8(out.stdout).context("netmon-bench output")?;
    if !sections.is_empty() {
        report.push_str(&format!(
            "_Sections run: {} (`cargo xtask bench {}`)._\n",
            sections.join(", "),
            sections.join(" ")
        ));
    }
    let path = root.join("BENCHMARKS.md");
    fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    progress(&format!("wrote {}", path.display()));
    Ok(())
}

/// bandwhich comes from crates.io (Debian 12 does not package it).
fn ensure_bandwhich() -> Result<()> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    if std::path::Path::new(&home)
        .join(".cargo/bin/bandwhich")
        .exists()
    {
        progress("bandwhich: present");
        return Ok(());
    }
    progress("bandwhich: cargo install --locked bandwhich (a few minutes, once)");
    run_cmd(Command::new("cargo").args(["install", "--locked", "bandwhich"]))
        .context("installing bandwhich from crates.io")
}
