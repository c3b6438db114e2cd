//! The shipped systemd unit (`deploy/systemd/netmon.service`), checked by systemd's own
//! `systemd-analyze verify` (installed by `cargo xtask test`) with its `ExecStart` pointed at
//! the binary under test: every directive known and well formed, every command there and
//! executable. No root needed.

use std::process::Command;

#[test]
fn the_shipped_unit_verifies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("deploy/systemd/netmon.service")).unwrap();
    let installed = "ExecStart=/usr/local/bin/netmon run";
    assert!(unit.contains(installed), "{unit}");
    let bin = netmon_tests::netmon_bin();
    let dir = std::env::temp_dir().join(format!("nmt-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("netmon.service");
    std::fs::write(
        &path,
        unit.replace(installed, &format!("ExecStart={} run", bin.display())),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    let out = out.expect("systemd-analyze (Debian's systemd; `cargo xtask test` installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
