//! Builds the guest programs in `tests/guests/` from source, once per test process, into the target directory.
//!
//! C programs are built with `musl-gcc` (static, and one static-pie), some also with the host `cc -static` (glibc), plus
//! one dynamically linked with the host `cc`;
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
    /// Static-pie: an `ET_DYN` static binary that relocates itself. musl-gcc's specs file ignores `-static-pie` (it
    /// links Scrt1.o, libc.so and an interpreter), so the harness names musl's rcrt1.o and the static libc itself.
    StaticPie,
    /// The host `cc` without `-static`: a PIE dynamically linked against glibc, which `kiln run` starts through its
    /// loader, with the libraries it needs rewritten into the guest's root filesystem.
    Dynamic,
    /// musl-gcc without `-static`: a PIE started by musl's loader (`/lib/ld-musl-x86_64.so.1`, musl's libc.so).
    MuslDynamic,
    /// The host `cc -static`: an `ET_EXEC` static binary with glibc, whose wrappers pass `int` arguments with the
    /// register's upper half zero (musl sign-extends them), among other differences.
    Glibc,
}

/// (output name, source file in tests/guests/c, link mode)
const C_GUESTS: &[(&str, &str, Link)] = &[
    ("hello", "hello.c", Link::Static),
    ("hello-pie", "hello.c", Link::StaticPie),
    ("hello-dynamic", "hello.c", Link::Dynamic),
    ("hello-musl-dynamic", "hello.c", Link::MuslDynamic),
    ("bigout", "bigout.c", Link::Static),
    ("crash", "crash.c", Link::Static),
    ("limits", "limits.c", Link::Static),
    ("stdin", "stdin.c", Link::Static),
    ("backtrace", "backtrace.c", Link::Static),
    ("debuggee", "debuggee.c", Link::Static),
    ("counter", "counter.c", Link::Static),
    ("backtrace-symbols", "backtrace.c", Link::Static),
    ("backtrace-stripped", "backtrace.c", Link::Static),
    ("qsortcrash", "qsortcrash.c", Link::Dynamic),
    ("corethreads", "corethreads.c", Link::Static),
    ("nullread", "nullread.c", Link::Static),
    ("cancel", "cancel.c", Link::Static),
    ("asynccancel", "asynccancel.c", Link::Static),
    ("asynccancel-dynamic", "asynccancel.c", Link::Dynamic),
    ("spawn", "spawn.c", Link::Static),
    ("spawn-glibc", "spawn.c", Link::Glibc),
    ("procfs", "procfs.c", Link::Static),
    ("procfs-glibc", "procfs.c", Link::Glibc),
    ("enosys", "enosys.c", Link::Static),
    ("redzone", "redzone.c", Link::Static),
    ("syscalls", "syscalls.c", Link::Static),
    ("jit", "jit.c", Link::Static),
    ("abort", "abort.c", Link::Static),
    ("hostile", "hostile.c", Link::Static),
    ("hypercalls", "hypercalls.c", Link::Static),
    ("virtqueue", "virtqueue.c", Link::Static),
    ("scribble", "scribble.c", Link::Static),
    ("bigbss", "bigbss.c", Link::Static),
    ("overflow", "overflow.c", Link::Static),
    ("bignr", "bignr.c", Link::Static),
    ("threads", "threads.c", Link::Static),
    ("deadlock", "deadlock.c", Link::Static),
    ("fds", "fds.c", Link::Static),
    ("epoll", "epoll.c", Link::Static),
    ("files", "files.c", Link::Static),
    ("signals", "signals.c", Link::Static),
    ("waiter", "waiter.c", Link::Static),
    ("ticker", "ticker.c", Link::Static),
    // The server bench/http.sh and bench/snapshot.sh measure, so that tests/snapshot.rs snapshots the same program.
    ("epollhttp", "../../../bench/epollhttp.c", Link::Static),
    ("flaky", "flaky.c", Link::Static),
    ("hitcount", "hitcount.c", Link::Static),
    ("spinsignal", "spinsignal.c", Link::Static),
    ("parallel", "parallel.c", Link::Static),
    ("avxstate", "avxstate.c", Link::Static),
    ("ymmload", "ymmload.c", Link::Static),
    ("churn", "churn.c", Link::Static),
    ("mprotect", "mprotect.c", Link::Static),
    ("ownedmem", "ownedmem.c", Link::Static),
    ("anonmaps", "anonmaps.c", Link::Static),
    ("anonmaps-glibc", "anonmaps.c", Link::Glibc),
    ("firsttouch", "firsttouch.c", Link::Static),
    ("hugeanon", "hugeanon.c", Link::Static),
    ("bigimage", "bigimage.c", Link::Static),
    ("mapfixed", "mapfixed.c", Link::Static),
    ("mapfixed-pie", "mapfixed.c", Link::StaticPie),
    ("faults", "faults.c", Link::Static),
    ("vdso", "vdso.c", Link::Static),
    ("sockets", "sockets.c", Link::Static),
    ("timers", "timers.c", Link::Static),
    ("netpeer", "netpeer.c", Link::Static),
    ("volume", "volume.c", Link::Static),
    ("volsnap", "volsnap.c", Link::Static),
    ("sockopts", "sockopts.c", Link::Static),
    ("sockstate", "sockstate.c", Link::Static),
    ("listenq", "listenq.c", Link::Static),
    ("wakeups", "wakeups.c", Link::Static),
    ("fsyncer", "fsyncer.c", Link::Static),
    ("atcalls", "atcalls.c", Link::Static),
    ("atcalls-glibc", "atcalls.c", Link::Glibc),
    ("posix", "posix.c", Link::Static),
    ("posix-glibc", "posix.c", Link::Glibc),
    ("fslinks", "fslinks.c", Link::Static),
    ("fslinks-glibc", "fslinks.c", Link::Glibc),
    ("syscalls-glibc", "syscalls.c", Link::Glibc),
    ("files-glibc", "files.c", Link::Glibc),
    ("fds-glibc", "fds.c", Link::Glibc),
    ("epoll-glibc", "epoll.c", Link::Glibc),
    ("signals-glibc", "signals.c", Link::Glibc),
    ("syscalls-dynamic", "syscalls.c", Link::Dynamic),
    ("files-dynamic", "files.c", Link::Dynamic),
    ("tree", "tree.c", Link::Static),
    ("tree-dynamic", "tree.c", Link::Dynamic),
    ("fds-dynamic", "fds.c", Link::Dynamic),
    ("epoll-dynamic", "epoll.c", Link::Dynamic),
    ("signals-dynamic", "signals.c", Link::Dynamic),
    ("timers-glibc", "timers.c", Link::Glibc),
    ("reserve", "reserve.c", Link::Static),
    ("mutexes", "mutexes.c", Link::Static),
    ("sysv", "sysv.c", Link::Static),
    ("shm", "shm.c", Link::Static),
    ("unix", "unix.c", Link::Static),
    ("netlink", "netlink.c", Link::Static),
    ("netlink-glibc", "netlink.c", Link::Glibc),
];

/// The binaries of tests/guests/rust (each `src/bin/NAME.rs`).
const RUST_GUESTS: &[&str] = &[
    "hello",
    "alloc",
    "bigout",
    "threads",
    "spin",
    "tokio",
    "fs",
    "overflow",
    "net",
    "http_tiny",
    "http_axum",
    "halfclose",
];

/// Path of the Go guest (tests/guests/go), built with the host's `go` (Debian's golang-go) and CGO_ENABLED=0.
#[track_caller]
pub fn go() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_go) {
        Ok(path) => path.clone(),
        Err(e) => panic!("building the Go guest failed (run scripts/setup.sh to install golang-go):\n{e}"),
    }
}

fn build_go() -> Result<PathBuf, String> {
    let out = out_root().join("go");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let binary = out.join("hello");
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(repo_root().join("tests/guests/go"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", out.join("cache"))
        .env("GOPATH", out.join("path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off");
    run_build(&mut cmd)?;
    Ok(binary)
}

/// Path of the C++ guest `cxxthrow` (tests/guests/cxx), built with the host's `c++` (g++, dynamically linked against
/// libstdc++ and glibc) next to its library `libthrower.so`, which it finds through its RUNPATH (`$ORIGIN`).
#[track_caller]
pub fn cxx() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_cxx) {
        Ok(path) => path.clone(),
        Err(e) => panic!("building the C++ guest failed (run scripts/setup.sh to install build-essential):\n{e}"),
    }
}

fn build_cxx() -> Result<PathBuf, String> {
    let src = repo_root().join("tests/guests/cxx");
    let out = out_root().join("cxx");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut lib = Command::new(&cxx);
    lib.args(["-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o"])
        .arg(out.join("libthrower.so"))
        .arg(src.join("thrower.cpp"));
    run_build(&mut lib)?;
    let binary = out.join("cxxthrow");
    let mut main = Command::new(&cxx);
    main.args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(src.join("cxxthrow.cpp"))
        .arg("-L")
        .arg(&out)
        .args(["-lthrower", "-Wl,-rpath,$ORIGIN"]);
    run_build(&mut main)?;
    Ok(binary)
}

/// Path of the Rust guest `name` built for the host's default target (`x86_64-unknown-linux-gnu`: a PIE dynamically
/// linked against glibc, as `cargo build` makes): only the guests that need nothing but std, compiled by `rustc`
/// alone, so the dependencies of the others are not built twice.
#[track_caller]
pub fn rust_glibc(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    assert!(RUST_GLIBC_GUESTS.contains(&name), "no glibc Rust guest named {name}");
    match BUILT.get_or_init(build_rust_glibc) {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("building the glibc Rust guests failed:\n{e}"),
    }
}

/// The std-only binaries of tests/guests/rust that [`rust_glibc`] builds.
const RUST_GLIBC_GUESTS: &[&str] = &["hello", "threads"];

fn build_rust_glibc() -> Result<PathBuf, String> {
    let out = out_root().join("rust-glibc");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let rustc = rustc();
    for name in RUST_GLIBC_GUESTS {
        let mut cmd = Command::new(&rustc);
        cmd.args(["-O", "--edition", "2021", "--target", "x86_64-unknown-linux-gnu", "-o"])
            .arg(out.join(name))
            .arg(repo_root().join(format!("tests/guests/rust/src/bin/{name}.rs")));
        for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
            cmd.env_remove(var);
        }
        run_build(&mut cmd)?;
        if !elf_kind(&out.join(name))?.1 {
            return Err(format!("{name}: expected a dynamically linked binary (with an interpreter)"));
        }
    }
    Ok(out)
}

/// Path of the Rust guest `tests/guests/rust/alone/panic_abort.rs`, built by `rustc` alone for
/// x86_64-unknown-linux-musl with `-C panic=abort` and line tables (`-g`): a panic aborts, raising SIGABRT.
#[track_caller]
pub fn rust_panic_abort() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_rust_panic_abort) {
        Ok(path) => path.clone(),
        Err(e) => panic!("building panic_abort failed:\n{e}"),
    }
}

fn build_rust_panic_abort() -> Result<PathBuf, String> {
    let out = out_root().join("rust-alone");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let binary = out.join("panic_abort");
    let mut cmd = Command::new(rustc());
    cmd.args(["-O", "-g", "-C", "panic=abort", "--edition", "2021", "--target", "x86_64-unknown-linux-musl", "-o"])
        .arg(&binary)
        .arg(repo_root().join("tests/guests/rust/alone/panic_abort.rs"));
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    run_build(&mut cmd)?;
    Ok(binary)
}

/// The rustc of the toolchain whose cargo runs the tests (`cargo test` sets CARGO), else the one on PATH.
fn rustc() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|cargo| Some(cargo.parent()?.join("rustc")))
        .filter(|r| r.is_file())
        .unwrap_or_else(|| "rustc".into())
}

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

/// Compiler flags a C guest needs beyond the link mode's: the crash backtrace's variants, the debugger's guest.
fn extra_flags(name: &str) -> &'static [&'static str] {
    match name {
        "backtrace" => &["-g", "-fno-omit-frame-pointer"],
        // For gdb (tests/gdb.rs): every variable where the source has it.
        "debuggee" | "counter" => &["-g", "-O0"],
        "backtrace-symbols" => &["-fomit-frame-pointer"],
        "backtrace-stripped" => &["-s"],
        "qsortcrash" | "corethreads" => &["-g"],
        _ => &[],
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
        let mut cmd = Command::new(if matches!(link, Link::Dynamic | Link::Glibc) { &host_cc } else { &musl_gcc });
        cmd.args(["-O2", "-Wall", "-Wextra", "-Werror"]).args(extra_flags(name)).arg("-o").arg(&tmp);
        match link {
            Link::Static | Link::Glibc => {
                cmd.arg("-static").arg(src.join(source));
            }
            Link::StaticPie => {
                let lib = musl_lib_dir(&musl_gcc)?;
                let gcc_file = |f: &str| gcc_file_name(&host_cc, f);
                cmd.args(["-static-pie", "-fPIE", "-nostartfiles"])
                    .args([lib.join("rcrt1.o"), lib.join("crti.o"), gcc_file("crtbeginS.o")?])
                    .arg(src.join(source))
                    .args([gcc_file("crtendS.o")?, lib.join("crtn.o")])
                    .args(["-Wl,--no-dynamic-linker", "-Wl,-Bstatic"]);
            }
            Link::Dynamic | Link::MuslDynamic => {
                cmd.arg(src.join(source));
            }
        }
        run_build(&mut cmd)?;
        let (want_type, want_interp) = match link {
            Link::Static | Link::Glibc => (ET_EXEC, false),
            Link::StaticPie => (ET_DYN, false),
            Link::Dynamic | Link::MuslDynamic => (ET_DYN, true),
        };
        let (got_type, got_interp) = elf_kind(&tmp)?;
        if (got_type, got_interp) != (want_type, want_interp) {
            return Err(format!(
                "{name}: expected ELF type {want_type} {} an interpreter; the compiler produced type {got_type} {}",
                if want_interp { "with" } else { "without" },
                if got_interp { "with" } else { "without" }
            ));
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
    cmd.args(["build", "--release", "--locked", "--target", TARGET, "--manifest-path"])
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
        if elf_kind(&dir.join(name))?.1 {
            return Err(format!("{name} has an interpreter: not a static binary"));
        }
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

/// musl's library directory (rcrt1.o, libc.a), from the `-specs` path in the `musl-gcc` wrapper script.
fn musl_lib_dir(musl_gcc: &str) -> Result<PathBuf, String> {
    let script = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(musl_gcc))
        .chain([PathBuf::from(musl_gcc)])
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{musl_gcc} is not on PATH"))?;
    let text = std::fs::read_to_string(&script).map_err(|e| format!("cannot read {}: {e}", script.display()))?;
    let specs = text
        .split("-specs")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .ok_or_else(|| format!("cannot find the -specs path in {}", script.display()))?;
    let dir = Path::new(specs).parent().unwrap_or(Path::new("/")).to_path_buf();
    if dir.join("rcrt1.o").is_file() {
        Ok(dir)
    } else {
        Err(format!("no rcrt1.o beside {specs}: this musl cannot link static-pie programs"))
    }
}

/// Where the host compiler keeps one of its own files (crtbeginS.o).
fn gcc_file_name(cc: &str, file: &str) -> Result<PathBuf, String> {
    let output = Command::new(cc)
        .arg(format!("-print-file-name={file}"))
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{cc} does not know where {file} is"))
    }
}

/// `e_type` of an x86-64 ELF file and whether it names an interpreter (`PT_INTERP`), after checking that it is one.
fn elf_kind(path: &Path) -> Result<(u16, bool), String> {
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || u16_at(18) != Some(62) {
        return Err(format!("{} is not an x86-64 ELF file", path.display()));
    }
    let (phoff, phentsize, phnum) =
        (u64_at(32).unwrap_or(0) as usize, u16_at(54).unwrap_or(0), u16_at(56).unwrap_or(0));
    let interp = (0..phnum as usize).any(|i| u32_at(phoff + i * phentsize as usize) == Some(PT_INTERP));
    Ok((u16_at(16).unwrap_or(0), interp))
}
