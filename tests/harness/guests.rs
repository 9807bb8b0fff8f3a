//! Builds the guest programs in `tests/guests/` from source, once per test process, into the target directory.
//!
//! C programs are built with `musl-gcc` (static, and one static-pie) plus one dynamically linked with the host `cc`;
//! Rust programs with `cargo build --release --target x86_64-unknown-linux-musl` in their own workspace. Each family is
//! built behind a `OnceLock`, so concurrent test threads wait for one build instead of racing; C outputs are written
//! under a temporary name and renamed, so concurrent test processes never see a half-written binary. A failed build
//! fails every test that needs that family, with the compiler's output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (this file is compiled as part of `crates/cli`'s tests).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn out_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests")
}

/// How a C guest is linked.
#[derive(Clone, Copy, PartialEq)]
enum Link {
    /// `musl-gcc -static`: an `ET_EXEC` static binary.
    Static,
    /// `musl-gcc -static-pie`: an `ET_DYN` static binary, relocated at load.
    StaticPie,
    /// The host `cc` without `-static`: dynamically linked against glibc, which `kiln` must refuse.
    Dynamic,
}

/// (output name, source file in tests/guests/c, link mode)
const C_GUESTS: &[(&str, &str, Link)] = &[
    ("hello", "hello.c", Link::Static),
    ("hello-pie", "hello.c", Link::StaticPie),
    ("hello-dynamic", "hello.c", Link::Dynamic),
    ("bigout", "bigout.c", Link::Static),
    ("crash", "crash.c", Link::Static),
    ("enosys", "enosys.c", Link::Static),
    ("redzone", "redzone.c", Link::Static),
];

/// The binaries of tests/guests/rust (each `src/bin/NAME.rs`).
const RUST_GUESTS: &[&str] = &["hello", "alloc", "bigout"];

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// Path of the built C guest `name` (see [`C_GUESTS`]).
#[track_caller]
pub fn c(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    assert!(C_GUESTS.iter().any(|g| g.0 == name), "no C guest named {name}");
    match BUILT.get_or_init(build_c) {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("building the C guests failed (run scripts/setup.sh to install musl-tools):\n{e}"),
    }
}

/// Path of the built Rust guest `name` (see [`RUST_GUESTS`]).
#[track_caller]
pub fn rust(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    assert!(RUST_GUESTS.contains(&name), "no Rust guest named {name}");
    match BUILT.get_or_init(build_rust) {
        Ok(dir) => dir.join(name),
        Err(e) => panic!(
            "building the Rust guests failed (run scripts/setup.sh to add the x86_64-unknown-linux-musl target):\n{e}"
        ),
    }
}

fn build_c() -> Result<PathBuf, String> {
    let src = repo_root().join("tests/guests/c");
    let out = out_root().join("c");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let musl_gcc = std::env::var("KILN_MUSL_GCC").unwrap_or_else(|_| "musl-gcc".into());
    let host_cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for &(name, source, link) in C_GUESTS {
        let tmp = out.join(format!(".{name}.{}.tmp", std::process::id()));
        let (compiler, flags): (&str, &[&str]) = match link {
            Link::Static => (&musl_gcc, &["-static"]),
            Link::StaticPie => (&musl_gcc, &["-static-pie", "-fPIE"]),
            Link::Dynamic => (&host_cc, &[]),
        };
        let mut cmd = Command::new(compiler);
        cmd.args(flags).args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"]).arg(&tmp).arg(src.join(source));
        run_build(&mut cmd)?;
        let want = if link == Link::Static { ET_EXEC } else { ET_DYN };
        let got = elf_type(&tmp)?;
        if got != want {
            return Err(format!("{name}: expected ELF type {want}, the compiler produced {got}"));
        }
        let dest = out.join(name);
        std::fs::rename(&tmp, &dest)
            .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), dest.display()))?;
    }
    Ok(out)
}

fn build_rust() -> Result<PathBuf, String> {
    const TARGET: &str = "x86_64-unknown-linux-musl";
    let target_dir = out_root().join("rust-target");
    // `cargo test` sets CARGO to the cargo that runs it; the rustup toolchain it came from has the musl target.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--offline", "--target", TARGET, "--manifest-path"])
        .arg(repo_root().join("tests/guests/rust/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Flags meant for the host build must not leak into the guest build.
    for var in
        ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR"]
    {
        cmd.env_remove(var);
    }
    run_build(&mut cmd)?;
    let dir = target_dir.join(TARGET).join("release");
    for name in RUST_GUESTS {
        elf_type(&dir.join(name))?;
    }
    Ok(dir)
}

fn run_build(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let output = cmd.output().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{shown} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// `e_type` of an x86-64 ELF file, after checking that it is one.
fn elf_type(path: &Path) -> Result<u16, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || u16::from_le_bytes([bytes[18], bytes[19]]) != 62 {
        return Err(format!("{} is not an x86-64 ELF file", path.display()));
    }
    Ok(u16::from_le_bytes([bytes[16], bytes[17]]))
}
