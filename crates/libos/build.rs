//! Builds the library OS (kernel/, target x86_64-unknown-none) and embeds its ELF in this crate, which the `kiln`
//! binary and the containerd shim both link: users need no second toolchain at run time.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let kernel = root.join("kernel");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("kernel-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    // The library OS at the profile's opt-level (it is the hot path); the platform layer of exported images, which
    // runs at boot and for a few hypercalls, for size ("z": 27 KiB against 35), since an exported hello aims at
    // 1 MiB. Cargo keeps both profiles' artefacts apart in the one target directory.
    for (bin, opt_level) in [("kiln-kernel", None), ("kiln-pvh", Some("z"))] {
        let mut cmd = Command::new(&cargo);
        cmd.args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-none",
            "--bin",
            bin,
            "--manifest-path",
        ])
        .arg(kernel.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
        // The host build's flags (coverage, sanitizers, target-cpu) must not leak into the guest build.
        // Under `cargo clippy` the wrapper variables would lint the library OS as part of the host crate; CI lints
        // it separately.
        for var in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CLIPPY_ARGS",
            "CARGO_PROFILE_RELEASE_OPT_LEVEL",
        ] {
            cmd.env_remove(var);
        }
        if let Some(level) = opt_level {
            cmd.env("CARGO_PROFILE_RELEASE_OPT_LEVEL", level);
        }
        let status = cmd.status().expect("run cargo to build the library OS");
        assert!(status.success(), "building the library OS (kernel/, {bin}) failed");
    }
    let elf = target_dir.join("x86_64-unknown-none/release/kiln-kernel");
    std::fs::copy(&elf, out.join("kiln-kernel.elf")).expect("copy the library OS image");
    let pvh = target_dir.join("x86_64-unknown-none/release/kiln-pvh");
    std::fs::copy(&pvh, out.join("kiln-pvh.elf")).expect("copy the PVH platform layer");

    for path in [
        "kernel/src",
        "kernel/pvh",
        "kernel/Cargo.toml",
        "kernel/Cargo.lock",
        "crates/abi/src",
        "crates/ext2/src",
        "crates/sockets/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}
