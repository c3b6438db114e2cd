//! Embeds the eBPF object that `cargo xtask build` produced (NETMON_EBPF_OBJ, or its default
//! path under target/ebpf).
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=NETMON_EBPF_OBJ");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let obj = env::var_os("NETMON_EBPF_OBJ")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/bpfel-unknown-none/release/netmon-ebpf"));
    println!("cargo:rerun-if-changed={}", obj.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("netmon.bpf.o");
    if let Err(e) = std::fs::copy(&obj, &out) {
        panic!(
            "the eBPF object {} is missing ({e}): build through `cargo xtask build` \
             (or `cargo xtask test`/`run`), which compiles netmon-ebpf first",
            obj.display()
        );
    }
}
