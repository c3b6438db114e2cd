//! The privileged test suites on other kernels, booted in qemu with software emulation
//! (../shared/TOOLCHAIN.md, "Testing on another kernel in qemu"). This host's kernel has
//! TCX and no kprobes; Debian 12's 6.1 has kprobes and no TCX, so the kprobe hooks and the
//! clsact attach path run there for real.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{progress, run_cmd, setup, workspace_root};

/// Kernels to boot, as Debian package names (a metapackage resolves to its current image).
/// Adding a kernel class is one line here. Debian 12's 6.1 has kprobes and no TCX; its
/// 6.12 (what Debian 13 and backports run) has both, and a newer verifier again.
pub const KERNELS: &[&str] = &["linux-image-cloud-amd64", "linux-image-6.12-cloud-amd64"];

/// xz-utils: newer kernel packages ship their modules xz-compressed, and busybox's insmod
/// loads only plain ELF modules.
/// nftables: the guest's `nft` (a container host's masquerading, in the flows suite).
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "nftables",
];
/// Modules the tests need that Debian's cloud kernel builds as modules, in load order (the
/// guest has no modules.dep: tcp_diag and udp_diag need inet_diag first, bridge stp and
/// llc, nf_tables nfnetlink and libcrc32c, nf_conntrack the defrag modules, nft_masq
/// nf_tables and nf_nat, nf_nat nf_conntrack). The diag modules give sock_diag, which lists
/// idle sockets; macvlan, a device stacked on a veth; bridge, a container host's bridge; the
/// netfilter ones, its masquerading.
const MODULES: &[&str] = &[
    "drivers/net/veth.ko",
    "drivers/net/macvlan.ko",
    "net/sched/sch_ingress.ko",
    "net/sched/cls_bpf.ko",
    "net/ipv4/inet_diag.ko",
    "net/ipv4/tcp_diag.ko",
    "net/ipv4/udp_diag.ko",
    "net/llc/llc.ko",
    "net/802/stp.ko",
    "net/bridge/bridge.ko",
    "lib/libcrc32c.ko",
    "net/netfilter/nfnetlink.ko",
    "net/netfilter/nf_tables.ko",
    "net/ipv4/netfilter/nf_defrag_ipv4.ko",
    "net/ipv6/netfilter/nf_defrag_ipv6.ko",
    "net/netfilter/nf_conntrack.ko",
    "net/netfilter/nf_nat.ko",
    "net/netfilter/nft_chain_nat.ko",
    "net/netfilter/nft_masq.ko",
];
/// Per boot: TCG is slow (on a 2-CPU host the three suites take ~2.5 min alone, ~3 while
/// the host's suites run alongside, CI of 2026-12-07); this only catches a hung guest.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The test binaries that run in the guest.
const SUITES: &[&str] = &["packets", "flows", "droplist"];

pub enum Outcome {
    Passed,
    Skipped(String),
}

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// Resolves a metapackage to the concrete kernel image package it depends on; a concrete
/// image package (one that depends on no other linux-image package) is itself. The name
/// alone does not tell them apart: `linux-image-6.12-cloud-amd64` is a metapackage.
fn resolve(pkg: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", pkg])
        .output()
        .context("apt-cache depends")?;
    if !out.status.success() {
        bail!(
            "`apt-cache depends {pkg}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .unwrap_or(pkg)
        .to_string())
}

fn kernel_dir(pkg: &str) -> PathBuf {
    vm_dir().join("kernels").join(pkg)
}

/// Downloads (not installs) a kernel package, unless it is unpacked already or cached.
fn download_kernel(pkg: &str) -> Result<Option<PathBuf>> {
    if kernel_dir(pkg).join("boot").is_dir() {
        progress(&format!("kernel {pkg}: present"));
        return Ok(None);
    }
    let debs = vm_dir().join("debs");
    fs::create_dir_all(&debs)?;
    let have_deb = |debs: &Path| {
        fs::read_dir(debs).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{pkg}_"))
            })
        })
    };
    let deb = match have_deb(&debs) {
        Some(d) => d,
        None => {
            progress(&format!("kernel {pkg}: downloading"));
            let st = Command::new("apt-get")
                .current_dir(&debs)
                .args(["download", pkg])
                .status()
                .context("apt-get download")?;
            if !st.success() {
                // The package lists may be stale on a fresh machine.
                run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
                run_cmd(
                    Command::new("apt-get")
                        .current_dir(&debs)
                        .args(["download", pkg]),
                )?;
            }
            have_deb(&debs).context("apt-get download produced no .deb")?
        }
    };
    Ok(Some(deb))
}

/// Unpacks a downloaded kernel package; returns its unpacked root.
fn unpack_kernel(pkg: &str, deb: Option<PathBuf>) -> Result<PathBuf> {
    let dir = kernel_dir(pkg);
    let Some(deb) = deb else {
        return Ok(dir);
    };
    progress(&format!("kernel {pkg}: unpacking"));
    // Not `with_extension`: the package name has dots in it.
    let tmp = dir.with_file_name(format!("{pkg}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(vm_dir().join("kernels"))?;
    run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
    fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// Paths of the shared libraries an ELF needs, from ldd.
fn libs(bin: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(bin).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

fn copy_into(root: &Path, src: &Path, dst_rel: &Path) -> Result<()> {
    let dst = root.join(dst_rel.strip_prefix("/").unwrap_or(dst_rel));
    fs::create_dir_all(dst.parent().unwrap())?;
    fs::copy(src, &dst).with_context(|| format!("copying {} into the initramfs", src.display()))?;
    Ok(())
}

/// Copies an executable and every library it links.
fn add_elf(root: &Path, src: &Path, dst_rel: &Path, strip: bool) -> Result<()> {
    copy_into(root, src, dst_rel)?;
    if strip {
        let dst = root.join(dst_rel.strip_prefix("/").unwrap_or(dst_rel));
        run_cmd(Command::new("strip").arg("--strip-debug").arg(&dst))?;
    }
    for lib in libs(src) {
        let real = fs::canonicalize(&lib).unwrap_or(lib.clone());
        copy_into(root, &real, &lib)?;
    }
    Ok(())
}

/// The test executables cargo built for the suites: with the same selection as `cargo xtask
/// test`'s build (the whole workspace), whose artifacts this reuses; `-p netmon-tests` alone
/// unifies features differently and rebuilt the tests crate (4-13 s).
fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .env("NETMON_EBPF_OBJ", crate::ebpf_object())
        .args([
            "test",
            "--workspace",
            "--exclude",
            "netmon-ebpf",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or("");
        if let Some(exe) = v["executable"].as_str()
            && SUITES.contains(&name)
        {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    found.sort_by_key(|(n, _)| SUITES.iter().position(|s| s == n));
    if found.len() != SUITES.len() {
        bail!("expected test executables {SUITES:?}, cargo built {found:?}");
    }
    Ok(found)
}

fn which(cmd: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() {
        bail!("`{cmd}` is not installed");
    }
    Ok(fs::canonicalize(&p)?)
}

const INIT: &str = r#"#!/bin/sh
# netmon VM test run: mount what the tests need, load modules, run each suite, power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
for m in /lib/netmon-modules/*.ko; do insmod "$m" || echo "NETMON-VM insmod $m failed"; done
ip link set lo up
export NETMON_BIN=/netmon/bin/netmon NETMON_TESTPEER=/netmon/bin/netmon-testpeer
echo "NETMON-VM-KERNEL $(uname -r)"
for t in /netmon/tests/*; do
  name=$(basename "$t")
  echo "NETMON-VM-SUITE $name"
  # Two at a time, one per vCPU (qemu runs each vCPU on a host thread): the tests are
  # independent (own namespaces, pin directories, programs), as on the host.
  "$t" --include-ignored --test-threads=2 $(cat /netmon/filter)
  echo "NETMON-VM-EXIT $name $?"
done
echo "NETMON-VM-DONE"
poweroff -f
"#;

/// Builds the initramfs for one kernel: busybox, ip/tc/bpftool, netmon, the test suites.
fn build_initramfs(kernel_root: &Path, netmon_bin: &Path, filter: Option<&str>) -> Result<PathBuf> {
    let version = fs::read_dir(kernel_root.join("lib/modules"))?
        .flatten()
        .next()
        .context("the kernel package has no lib/modules")?
        .file_name()
        .to_string_lossy()
        .into_owned();
    let root = vm_dir().join(format!("initramfs-{version}"));
    let _ = fs::remove_dir_all(&root);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc",
        "netmon/bin",
        "netmon/tests",
        "lib/netmon-modules",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    std::os::unix::fs::symlink("/run", root.join("var/run").tap_parent()?)?;
    copy_into(&root, &which("busybox")?, Path::new("/bin/busybox"))?;
    let applets = Command::new("busybox").arg("--list").output()?;
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        let link = root.join("bin").join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    // iproute2's ip (busybox's ignores `peer name` and has no netns), tc, bpftool, nft:
    // these go first in PATH order (usr/sbin) over busybox's applets of the same name.
    for tool in ["ip", "tc", "bpftool", "nft"] {
        let src = which(tool)?;
        let dst = PathBuf::from("/usr/sbin").join(tool);
        let _ = fs::remove_file(root.join("bin").join(tool));
        add_elf(&root, &src, &dst, false)?;
        std::os::unix::fs::symlink(&dst, root.join("bin").join(tool))?;
    }
    add_elf(&root, netmon_bin, Path::new("/netmon/bin/netmon"), true)?;
    add_elf(
        &root,
        &netmon_bin.with_file_name("netmon-testpeer"),
        Path::new("/netmon/bin/netmon-testpeer"),
        true,
    )?;
    for (i, (name, exe)) in test_executables()?.into_iter().enumerate() {
        add_elf(
            &root,
            &exe,
            &PathBuf::from(format!("/netmon/tests/{i}-{name}")),
            true,
        )?;
    }
    for (i, m) in MODULES.iter().enumerate() {
        let src = kernel_root
            .join("lib/modules")
            .join(&version)
            .join("kernel")
            .join(m);
        let name = Path::new(m).file_name().unwrap().to_string_lossy();
        let dst = root.join(format!("lib/netmon-modules/{i:02}-{name}"));
        let xz = PathBuf::from(format!("{}.xz", src.display()));
        if src.exists() {
            fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        } else if xz.exists() {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .context("running xz")?;
            if !out.status.success() {
                bail!("xz -dc {} failed", xz.display());
            }
            fs::write(&dst, out.stdout)?;
        } else {
            bail!("the kernel package has no {} (nor .xz)", src.display());
        }
    }
    fs::write(root.join("init"), INIT)?;
    fs::write(root.join("netmon/filter"), filter.unwrap_or(""))?;
    run_cmd(Command::new("chmod").arg("755").arg(root.join("init")))?;
    let image = vm_dir().join(format!("initramfs-{version}.cpio.gz"));
    run_cmd(Command::new("sh").current_dir(&root).arg("-c").arg(format!(
        "find . | cpio -o -H newc --quiet | gzip -1 > {}",
        image.display()
    )))
    .context("packing the initramfs")?;
    Ok(image)
}

trait TapParent {
    fn tap_parent(self) -> Result<PathBuf>;
}

impl TapParent for PathBuf {
    /// Creates the parent directory and returns the path.
    fn tap_parent(self) -> Result<PathBuf> {
        fs::create_dir_all(self.parent().unwrap())?;
        Ok(self)
    }
}

enum Boot {
    Finished(String),
    Hung(String),
}

/// Which serial console lines a boot copies to stdout (all of them go to its log).
#[derive(Clone, Copy)]
pub enum Echo {
    /// Every line: `cargo xtask vm` on its own.
    All,
    /// The suites' starts, ends and results, and what a failing test printed: while the
    /// host's own suites run alongside (`cargo xtask test`).
    Summary,
}

impl Echo {
    fn shows(self, line: &str, in_failures: bool) -> bool {
        match self {
            Echo::All => true,
            Echo::Summary => {
                in_failures || line.starts_with("NETMON-VM-") || line.starts_with("test result:")
            }
        }
    }
}

/// Boots once; copies the serial console to `log` (and to stdout as `echo` says) and
/// returns it. qemu runs at a lower priority (nice 10): `cargo xtask test` runs the host's
/// suites meanwhile, whose timing must not suffer, and the guest takes the CPU they leave.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, echo: Echo) -> Result<Boot> {
    let mut child = Command::new("nice")
        .args(["-n", "10", "qemu-system-x86_64"])
        // Without ERMS/FSRM the guest's kernel and libc copy and clear memory 8 bytes per
        // step (rep movsq/stosq, vector loops) instead of byte-wise rep movsb/stosb, which
        // TCG emulates one byte per iteration: the packets and flows suites took 16-18%
        // less time so (two interleaved pairs on 6.1, 2026-12-07).
        .args(["-accel", "tcg", "-cpu", "max,-erms,-fsrm"])
        .args(["-m", "2048", "-smp", "2"])
        .args(["-nographic", "-nic", "none", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (under nice)")?;
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let log_path = log.to_path_buf();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut f = fs::File::create(&log_path).ok();
        let mut in_failures = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // A failing suite prints its tests' output between "failures:" and its result.
            if line == "failures:" {
                in_failures = true;
            } else if line.starts_with("test result:") {
                in_failures = false;
            }
            if echo.shows(&line, in_failures) {
                println!("[vm] {line}");
            }
            if let Some(f) = f.as_mut() {
                use std::io::Write as _;
                let _ = writeln!(f, "{line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            // SAFETY: signalling our own child by PID.
            unsafe { libc_kill(pid as i32, 9) };
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            return Ok(Boot::Hung(out));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = reader.join().unwrap_or_default();
    if out.contains("NETMON-VM-DONE") {
        Ok(Boot::Finished(out))
    } else {
        Ok(Boot::Hung(out))
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs the privileged suites in a VM per kernel, echoing every line of the guests'
/// consoles. Skipped (never passed) only where qemu or a kernel package cannot be installed.
pub fn run(netmon_bin: &Path, filter: Option<&str>) -> Result<Outcome> {
    match prepare(netmon_bin, filter)? {
        Ok(guests) => guests.run(Echo::All).map(|()| Outcome::Passed),
        Err(why) => Ok(Outcome::Skipped(why)),
    }
}

/// One kernel's guest, ready to boot.
struct Guest {
    pkg: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

/// Every kernel's guest, ready to boot: what `prepare` makes.
pub struct Guests {
    guests: Vec<Guest>,
    started: Instant,
}

/// Installs qemu, fetches the kernels and builds their initramfs (with the test
/// executables, built here); `Err(why)`, the reason to skip the step, where qemu or a
/// kernel package cannot be installed.
pub fn prepare(
    netmon_bin: &Path,
    filter: Option<&str>,
) -> Result<std::result::Result<Guests, String>> {
    let started = Instant::now();
    if let Err(e) = setup::apt_install(VM_PACKAGES, "the VM tests") {
        return Ok(Err(format!("qemu cannot be installed: {e:#}")));
    }
    let mut guests = Vec::new();
    for spec in KERNELS {
        let pkg = match resolve(spec) {
            Ok(p) => p,
            Err(e) => return Ok(Err(format!("kernel {spec}: {e:#}"))),
        };
        let deb = match download_kernel(&pkg) {
            Ok(d) => d,
            Err(e) => {
                return Ok(Err(format!(
                    "kernel package {pkg} cannot be downloaded: {e:#}"
                )));
            }
        };
        let kroot = unpack_kernel(&pkg, deb)?;
        progress(&format!("initramfs for {pkg}: building"));
        let initrd = build_initramfs(&kroot, netmon_bin, filter)?;
        let vmlinuz = fs::read_dir(kroot.join("boot"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz")
            })
            .context("no vmlinuz in the kernel package")?;
        guests.push(Guest {
            pkg,
            vmlinuz,
            initrd,
        });
    }
    Ok(Ok(Guests { guests, started }))
}

impl Guests {
    /// Boots each guest in turn (a hung or dead guest once more) and checks that every
    /// suite ran and passed in each.
    pub fn run(self, echo: Echo) -> Result<()> {
        for Guest {
            pkg,
            vmlinuz,
            initrd,
        } in &self.guests
        {
            let log = vm_dir().join(format!("{pkg}.serial.log"));
            let mut result = None;
            for attempt in 1..=2 {
                progress(&format!(
                    "booting {pkg} in qemu (TCG), attempt {attempt}; serial log {}",
                    log.display()
                ));
                match boot(vmlinuz, initrd, &log, echo)? {
                    Boot::Finished(out) => {
                        result = Some(out);
                        break;
                    }
                    Boot::Hung(out) if attempt == 2 => bail!(
                        "the {pkg} VM hung or died twice; serial log tail:\n{}",
                        tail(&out, 40)
                    ),
                    Boot::Hung(out) => eprintln!(
                        "the {pkg} VM hung or died; retrying once; serial log tail:\n{}",
                        tail(&out, 15)
                    ),
                }
            }
            let out = result.expect("finished");
            let failed: Vec<&str> = out
                .lines()
                .filter_map(|l| l.strip_prefix("NETMON-VM-EXIT "))
                .filter(|l| !l.ends_with(" 0"))
                .collect();
            let suites = out.matches("NETMON-VM-EXIT ").count();
            if suites != SUITES.len() || !failed.is_empty() {
                bail!(
                    "VM tests on {pkg} failed (suites finished: {suites}, failed: {failed:?}); \
                     see {}",
                    log.display()
                );
            }
            progress(&format!("VM tests passed on {pkg}"));
        }
        progress(&format!(
            "VM tests passed on {} kernel(s) in {:.0} s",
            self.guests.len(),
            self.started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}
