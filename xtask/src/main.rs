//! `cargo xtask`: builds, runs, tests and benchmarks netmon, installing what it needs.
//!
//! The eBPF toolchain recipe is the one in ../shared/TOOLCHAIN.md: Debian's rustc (which ships
//! a prebuilt `core` for bpfel-unknown-none) plus a bpf-linker built against the same LLVM.
//! Where rustup nightly has rust-src (a developer laptop), `-Z build-std=core` is used instead.

mod bench;
mod setup;
mod test;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "netmon build, run, test and bench orchestration")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain and the mounts netmon needs (idempotent).
    Setup,
    /// Build the eBPF programs and the netmon binary.
    Build {
        /// Build the userspace binary in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and start `netmon run` with the given arguments (needs root).
    Run {
        /// Arguments passed to `netmon run`, e.g. `-- --iface eth0`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build and run the whole test suite, privileged tests included when run as root.
    Test {
        /// Only tests whose name contains this string.
        filter: Option<String>,
    },
    /// Run the benchmarks (as root) and write BENCHMARKS.md.
    Bench {
        /// Sections to run: packets, throughput, drain, droplist (default: all).
        sections: Vec<String>,
    },
    /// Only the privileged suites in qemu on the kernels listed in xtask/src/vm.rs.
    Vm {
        /// Run only tests whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> Result<()> {
    started();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup::ensure_all(),
        Cmd::Build { release } => build(release).map(|_| ()),
        Cmd::Run { args } => run(&args),
        Cmd::Test { filter } => test::run(filter.as_deref()),
        Cmd::Bench { sections } => bench::run(&sections),
        Cmd::Vm { filter } => {
            let bin = build(false)?;
            match vm::run(&bin, filter.as_deref())? {
                vm::Outcome::Passed => Ok(()),
                vm::Outcome::Skipped(why) => {
                    eprintln!("SKIPPED: VM tests: {why}");
                    Ok(())
                }
            }
        }
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// When this xtask started (`main` reads it first).
pub fn started() -> std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *STARTED.get_or_init(std::time::Instant::now)
}

/// Prints a step's heading with the seconds since this xtask started, so that a log shows
/// where a run's time went.
pub fn progress(msg: &str) {
    let at = started().elapsed().as_secs();
    eprintln!("\x1b[1m==> [{at:>4} s] {msg}\x1b[0m");
}

/// Runs a command, failing with its command line when it does not succeed.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Path of the eBPF object the build produces.
pub fn ebpf_object() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/netmon-ebpf")
}

/// Builds the eBPF object, then the userspace workspace; returns the netmon binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    let toolchain = setup::ensure_toolchain()?;
    progress("building eBPF programs (netmon-ebpf, bpfel-unknown-none)");
    let root = workspace_root();
    let mut cmd = toolchain.ebpf_build();
    cmd.current_dir(root.join("netmon-ebpf"))
        .env("CARGO_TARGET_DIR", root.join("target/ebpf"));
    run_cmd(&mut cmd).context("building the eBPF programs")?;

    progress(&format!(
        "building netmon ({})",
        if release { "release" } else { "debug" }
    ));
    // The same packages as `cargo test` selects (netmon-ebpf is built above, for its own
    // target): with the same set, cargo resolves the same features, and the test build
    // reuses every dependency instead of building syn, tracing and the rest a second time.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .env("NETMON_EBPF_OBJ", ebpf_object())
        .args(["build", "--workspace", "--exclude", "netmon-ebpf", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd).context("building netmon")?;
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("netmon"))
}

fn run(args: &[String]) -> Result<()> {
    let bin = build(true)?;
    if !is_root() {
        bail!(
            "netmon loads eBPF programs and needs root (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON \
             and CAP_SYS_RESOURCE): run `sudo -E cargo xtask run`"
        );
    }
    setup::ensure_mounts()?;
    progress(&format!(
        "starting {} run {}",
        bin.display(),
        args.join(" ")
    ));
    let err = std::os::unix::process::CommandExt::exec(Command::new(&bin).arg("run").args(args));
    Err(err).with_context(|| format!("could not exec {}", bin.display()))
}
