//! Builds Kiln's UEFI loader (crates/uefi-loader, target x86_64-unknown-uefi) and embeds it, as crates/libos embeds
//! the library OS: `kiln export --format raw|qcow2` needs no second toolchain at run time.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let loader = root.join("crates/uefi-loader");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = out.join("loader-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", "x86_64-unknown-uefi", "--manifest-path"])
        .arg(loader.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The host build's flags must not leak into the loader's build (see crates/libos/build.rs); CI lints it apart.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the UEFI loader");
    assert!(
        status.success(),
        "building the UEFI loader (crates/uefi-loader) failed; is the x86_64-unknown-uefi target installed \
         (scripts/setup.sh adds it)?"
    );
    let efi = target_dir.join("x86_64-unknown-uefi/release/kiln-uefi-loader.efi");
    std::fs::copy(&efi, out.join("kiln-uefi-loader.efi")).expect("copy the UEFI loader");

    for path in
        ["crates/uefi-loader/src", "crates/uefi-loader/Cargo.toml", "crates/uefi-loader/Cargo.lock", "crates/abi/src"]
    {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
}
