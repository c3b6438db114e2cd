//! Idempotent installation of the eBPF toolchain and the kernel mounts, one progress line per
//! step, following ../shared/TOOLCHAIN.md.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, progress, run_cmd};

/// Debian packages for the eBPF build: rustc with a prebuilt `core` for bpfel-unknown-none,
/// and the LLVM that bpf-linker must link against (same major as that rustc's LLVM).
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
];
/// What the daemon and the tests use at run time.
const RUNTIME_PACKAGES: &[&str] = &["iproute2", "bpftool", "ethtool"];
const LLVM_MAJOR: &str = "22";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

/// How the eBPF crate gets compiled on this machine.
pub enum Toolchain {
    /// Debian's rustc with its prebuilt `core` (no build-std), bootstrapped for aya-ebpf's
    /// `asm_experimental_arch`.
    DebianRustc,
    /// rustup nightly with rust-src: the usual `-Z build-std=core`.
    NightlyBuildStd,
}

impl Toolchain {
    /// `cargo build` of the eBPF crate with this toolchain.
    pub fn ebpf_build(&self) -> Command {
        let mut cmd = Command::new("cargo");
        match self {
            Self::DebianRustc => {
                cmd.env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env_remove("RUSTC_WRAPPER")
                    .args(["build", "--release", "--target", "bpfel-unknown-none"]);
            }
            Self::NightlyBuildStd => {
                cmd.args([
                    "+nightly",
                    "build",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                ])
                .args(["-Z", "build-std=core"]);
            }
        }
        cmd
    }
}

pub fn ensure_all() -> Result<()> {
    ensure_toolchain()?;
    ensure_runtime_packages()?;
    if is_root() {
        ensure_mounts()?;
    }
    progress("setup complete");
    Ok(())
}

fn has_debian_bpf_core() -> bool {
    Path::new(DEBIAN_RUSTC).exists()
        && std::fs::read_dir(BPF_CORE_DIR)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
            })
            .unwrap_or(false)
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["+nightly", "component", "list", "--installed"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false)
}

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .map(|p| p.to_string())
        .collect()
}

pub fn apt_install(pkgs: &[&str], why: &str) -> Result<()> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        progress(&format!("apt packages for {why}: present"));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages for {why}: {}. Install them with \
             `sudo apt-get install -y {}` (or run this as root)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    progress(&format!(
        "apt packages for {why}: installing {}",
        missing.join(" ")
    ));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update (is a Debian mirror reachable?)")?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("apt-get install {}", missing.join(" ")))
}

fn bpf_linker_path() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

/// The LLVM major version bpf-linker was linked against, from its shared-library deps.
fn bpf_linker_llvm_major(path: &Path) -> Option<String> {
    let out = Command::new("ldd").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("libLLVM.so."))
        .or_else(|| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix("libLLVM-"))
                .map(|s| s.trim_end_matches(".so"))
        })
        .map(|v| v.split('.').next().unwrap_or(v).to_string())
}

pub fn ensure_toolchain() -> Result<Toolchain> {
    let toolchain = if has_debian_bpf_core() {
        progress("eBPF compiler: Debian rustc with prebuilt core for bpfel-unknown-none: present");
        Toolchain::DebianRustc
    } else if nightly_has_rust_src() {
        progress("eBPF compiler: rustup nightly with rust-src (build-std)");
        Toolchain::NightlyBuildStd
    } else {
        progress("eBPF compiler: not found, installing Debian rustc with BPF core");
        apt_install(TOOLCHAIN_PACKAGES, "the eBPF compiler")?;
        if !has_debian_bpf_core() {
            bail!(
                "{DEBIAN_RUSTC} or {BPF_CORE_DIR} is still missing after installing {}; \
                 install them by hand",
                TOOLCHAIN_PACKAGES.join(" ")
            );
        }
        Toolchain::DebianRustc
    };

    let linker_ok = bpf_linker_path()
        .and_then(|p| bpf_linker_llvm_major(&p))
        .is_some_and(|m| m == LLVM_MAJOR || matches!(toolchain, Toolchain::NightlyBuildStd));
    if linker_ok {
        progress(&format!("bpf-linker (LLVM {LLVM_MAJOR}): present"));
    } else {
        apt_install(TOOLCHAIN_PACKAGES, "bpf-linker's LLVM")?;
        progress(&format!(
            "bpf-linker: building against LLVM {LLVM_MAJOR} (about a minute)"
        ));
        run_cmd(
            Command::new("cargo")
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"))
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM_MAJOR}"),
                ]),
        )
        .context("cargo install bpf-linker")?;
    }
    Ok(toolchain)
}

pub fn ensure_runtime_packages() -> Result<()> {
    apt_install(RUNTIME_PACKAGES, "the daemon and tests")
}

fn is_mounted(path: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == path && f[2] == fstype
            })
        })
        .unwrap_or(false)
}

/// bpffs (pinned maps) and tracefs (tracepoint ids) are not mounted at boot on these machines.
pub fn ensure_mounts() -> Result<()> {
    for (path, fstype) in [("/sys/fs/bpf", "bpf"), ("/sys/kernel/tracing", "tracefs")] {
        if is_mounted(path, fstype) {
            progress(&format!("{fstype} on {path}: mounted"));
            continue;
        }
        progress(&format!("{fstype} on {path}: mounting"));
        std::fs::create_dir_all(path).ok();
        run_cmd(Command::new("mount").args(["-t", fstype, fstype, path]))
            .with_context(|| format!("mount -t {fstype} {fstype} {path}"))?;
    }
    Ok(())
}
