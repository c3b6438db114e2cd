//! `cargo xtask test`: set up, build, then run every test. As root the privileged tests
//! (network namespaces, eBPF programs, real traffic) run too; otherwise they are reported as
//! ignored by the test runner and named here as skipped, never counted as passed.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{build, ebpf_object, is_root, progress, run_cmd, setup, started, workspace_root};

pub fn run(filter: Option<&str>) -> Result<()> {
    setup::ensure_runtime_packages()?;
    let bin = build(false)?;
    let root = workspace_root();
    let privileged = is_root();
    if privileged {
        setup::ensure_mounts()?;
    }

    progress("checking formatting and lints (cargo fmt --check, clippy -D warnings)");
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--", "--check"]),
    )
    .context("code is not formatted: run `cargo fmt --all`")?;
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .env("NETMON_EBPF_OBJ", ebpf_object())
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
    )
    .context("clippy found problems")?;

    // Prometheus and promtool for tests/tests/prometheus.rs, and a real SMTP server
    // (aiosmtpd) for the email sink in tests/tests/response.rs: real parts, not mocks;
    // openssl makes the certificate the Prometheus test's agents serve HTTPS with;
    // systemd-analyze checks the shipped unit; nft masquerades a container's traffic in
    // tests/tests/flows.rs.
    crate::setup::apt_install(
        &[
            "prometheus",
            "python3-aiosmtpd",
            "openssl",
            "systemd",
            "nftables",
        ],
        "the Prometheus, alert-sink, unit and NAT tests (prometheus, promtool, aiosmtpd, \
         openssl, systemd-analyze, nft)",
    )?;

    // Every test executable built first: the guests below must not boot while the
    // compiler takes both CPUs (a guest starved that long saw its clock tick late).
    progress("building the tests");
    let test_cmd = || {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .env("NETMON_EBPF_OBJ", ebpf_object())
            .env("NETMON_BIN", &bin)
            .env("NETMON_TESTPEER", bin.with_file_name("netmon-testpeer"))
            .args(["test", "--workspace", "--exclude", "netmon-ebpf"]);
        cmd
    };
    run_cmd(test_cmd().arg("--no-run")).context("building the tests")?;

    // The privileged suites on the kernels in vm::KERNELS (kprobes; 6.1 without TCX), in
    // qemu: the guests boot in the background while the host's suites run (qemu at nice
    // 10 takes the CPU they leave), and are waited for at the end.
    let guests = if privileged {
        progress("preparing the privileged suites in qemu on other kernels (cargo xtask vm)");
        match crate::vm::prepare(&bin, filter)? {
            Ok(guests) => {
                progress("the qemu guests boot in the background; their lines start with [vm]");
                Some(std::thread::spawn(move || {
                    guests.run(crate::vm::Echo::Summary)
                }))
            }
            Err(why) => {
                eprintln!("SKIPPED: the VM step: {why}");
                None
            }
        }
    } else {
        None
    };

    progress(if privileged {
        "running all tests (privileged included)"
    } else {
        "running unprivileged tests; privileged tests need root and are SKIPPED"
    });
    let mut cmd = test_cmd();
    cmd.args(["--no-fail-fast", "--"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    if privileged {
        cmd.arg("--include-ignored");
    }
    let host = run_cmd(&mut cmd).context("the test suite failed");

    let rerun = if privileged && host.is_ok() {
        // The end-to-end suites again with the egress program on a clsact qdisc, the path
        // kernels before 6.6 take (this kernel has both), and the ingress program as generic
        // XDP (on a veth netmon attaches it at TC ingress; native XDP where a driver has it).
        progress("running the end-to-end tests again with --tc-attach clsact --xdp-attach skb");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .env("NETMON_EBPF_OBJ", ebpf_object())
            .env("NETMON_BIN", &bin)
            .env("NETMON_TESTPEER", bin.with_file_name("netmon-testpeer"))
            .env("NETMON_TEST_TC_ATTACH", "clsact")
            .env("NETMON_TEST_XDP_ATTACH", "skb")
            .args([
                "test",
                "-p",
                "netmon-tests",
                "--test",
                "flows",
                "--test",
                "droplist",
            ])
            .args(["--", "--include-ignored"]);
        if let Some(f) = filter {
            cmd.arg(f);
        }
        run_cmd(&mut cmd)
            .context("the end-to-end tests failed with --tc-attach clsact --xdp-attach skb")
    } else {
        Ok(())
    };
    let vm = guests.map(|g| {
        progress("the host's suites are done; waiting for the qemu guests");
        g.join().expect("the VM thread panicked")
    });
    // The host's failure first: it is the one a developer can reproduce here.
    host?;
    rerun?;
    if let Some(vm) = vm {
        vm?;
    }
    if !privileged {
        eprintln!(
            "SKIPPED: the privileged tests (reported as `ignored` above) need root: \
             run `sudo -E cargo xtask test`"
        );
    }
    progress(&format!(
        "test suite finished in {:.0} s",
        started().elapsed().as_secs_f64()
    ));
    Ok(())
}
