//! Volume tests: `kiln volume` manages ext2 volumes in `$KILN_HOME/volumes`, `kiln run -v NAME:/path` mounts one,
//! and what one instance writes the next reads; the host's e2fsck calls the volume clean afterwards and debugfs
//! reads the files. Each test has a `$KILN_HOME` of its own.

#[allow(dead_code)]
mod harness;

use harness::store::kiln_in;
use harness::{guests, kvm};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A fresh `$KILN_HOME` for one test.
fn home(test: &str) -> PathBuf {
    harness::store::scratch("volume-homes", test)
}

fn volume_file(home: &Path, name: &str) -> PathBuf {
    home.join("volumes").join(format!("{name}.ext2"))
}

fn e2fsck_clean(file: &Path) {
    let out = Command::new("e2fsck").arg("-fn").arg(file).output().expect("e2fsck (e2fsprogs)");
    assert!(
        out.status.success(),
        "e2fsck -fn {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs_cat(file: &Path, path: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(file).output().expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn volume_commands_create_list_inspect_and_remove() {
    let home = home("commands");
    kiln_in(&home).args(["volume", "create", "data", "--size", "16M"]).run().assert_code(0).assert_stdout("data\n");
    let file = volume_file(&home, "data");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);
    e2fsck_clean(&file);
    let ls = kiln_in(&home).args(["volume", "ls"]).run();
    ls.assert_code(0);
    let lines: Vec<String> = ls.stdout_text().lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{ls}");
    assert!(lines[1].starts_with("data ") && lines[1].ends_with(" no") && lines[1].contains("16.0 MiB"), "{ls}");
    let inspect = kiln_in(&home).args(["volume", "inspect", "data"]).run();
    inspect.assert_code(0);
    let text = inspect.stdout_text();
    assert!(text.contains("filesystem: ext2") && text.contains("attached:   no"), "{inspect}");
    assert!(text.contains(&format!("file:       {}", file.display())), "{inspect}");

    let err = kiln_in(&home).args(["volume", "create", "data"]).run().assert_kiln_error();
    assert_eq!(err, "kiln: volume data already exists");
    let err = kiln_in(&home).args(["volume", "create", "../x"]).run().assert_kiln_error();
    assert!(err.contains("is not a volume name"), "{err}");
    let err = kiln_in(&home).args(["volume", "create", "tiny", "--size", "1M"]).run().assert_kiln_error();
    assert!(err.contains("out of range"), "{err}");
    assert!(!volume_file(&home, "tiny").exists());
    let err = kiln_in(&home).env("PATH", "/nonexistent").args(["volume", "create", "nomkfs"]).run().assert_kiln_error();
    assert!(err.starts_with("kiln: mkfs.ext2 is not installed"), "{err}");
    assert!(!volume_file(&home, "nomkfs").exists());
    let err = kiln_in(&home).args(["volume", "inspect", "nope"]).run().assert_kiln_error();
    assert_eq!(err, "kiln: no such volume nope; create it with `kiln volume create nope`");

    kiln_in(&home).args(["volume", "rm", "data"]).run().assert_code(0).assert_stdout("data\n");
    assert!(!file.exists());
    kiln_in(&home).args(["volume", "rm", "data"]).run().assert_kiln_error();
    let leftovers: Vec<_> = std::fs::read_dir(home.join("volumes")).unwrap().collect();
    assert!(leftovers.is_empty(), "nothing half-made is left: {leftovers:?}");
}

#[test]
fn bad_volume_arguments_to_run_get_one_line() {
    let home = home("bad-run-args");
    let hello = guests::c("hello");
    let err = kiln_in(&home).args(["run", "-v", "missing:/data"]).arg(&hello).run().assert_kiln_error();
    assert_eq!(err, "kiln: no such volume missing; create it with `kiln volume create missing`");
    for (arg, says) in [("data", "is not NAME:/path"), ("data:/", "not a mount path"), ("data:rel", "not a mount path")]
    {
        let out = kiln_in(&home).args(["run", "-v", arg]).arg(&hello).run();
        assert_ne!(out.code, Some(0));
        assert!(out.stderr_text().contains(says), "{arg}: {out}");
    }
    // A file that is not ext2 where a volume should be.
    std::fs::create_dir_all(home.join("volumes")).unwrap();
    std::fs::write(volume_file(&home, "junk"), vec![0u8; 4 << 20]).unwrap();
    let err = kiln_in(&home).args(["run", "-v", "junk:/data"]).arg(&hello).run().assert_kiln_error();
    assert!(err.starts_with("kiln: volume junk: ") && err.contains("e2fsck -f"), "{err}");
}

#[test]
fn a_volume_written_by_one_instance_is_read_by_the_next() {
    if !kvm::available() {
        return;
    }
    let home = home("round-trip");
    kiln_in(&home).args(["volume", "create", "data", "--size", "64M"]).run().assert_code(0);
    let guest = guests::c("volume");
    let write = kiln_in(&home).args(["run", "--stats", "-v", "data:/data"]).arg(&guest).args(["write", "/data"]).run();
    write.assert_code(0);
    assert!(write.stdout_text().ends_with("0 failures\n"), "{write}");
    assert!(write.stderr_text().contains("[kiln] volume data: "), "{write}");
    let file = volume_file(&home, "data");
    e2fsck_clean(&file);
    assert_eq!(debugfs_cat(&file, "/dir/sub/hello.txt"), "hello, volume\n");
    assert_eq!(debugfs_cat(&file, "/unsynced"), "written at exit\n");

    // The next instance, at another mount path.
    let read = kiln_in(&home).args(["run", "-v", "data:/mnt/vol"]).arg(&guest).args(["read", "/mnt/vol"]).run();
    read.assert_code(0);
    assert!(read.stdout_text().ends_with("0 failures\n"), "{read}");
    e2fsck_clean(&file);

    // An image whose Kiln.toml names the volume mounts it without -v.
    let project = home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::copy(&guest, project.join("app")).unwrap();
    let toml = "name = \"reader\"\nbinary = \"app\"\nargs = [\"read\", \"/srv\"]\nvolumes = { data = \"/srv\" }\n";
    std::fs::write(project.join("Kiln.toml"), toml).unwrap();
    kiln_in(&home).args(["build", "-q", "-f"]).arg(project.join("Kiln.toml")).run().assert_code(0);
    let image = kiln_in(&home).args(["run", "reader"]).run();
    image.assert_code(0);
    assert!(image.stdout_text().ends_with("0 failures\n"), "{image}");
}

/// Two volumes side by side, one at a nested path: each keeps its own files.
#[test]
fn volumes_mount_side_by_side() {
    if !kvm::available() {
        return;
    }
    let home = home("side-by-side");
    for name in ["one", "two"] {
        kiln_in(&home).args(["volume", "create", name, "--size", "64M"]).run().assert_code(0);
    }
    let guest = guests::c("volume");
    let write = kiln_in(&home)
        .args(["run", "-v", "one:/one", "-v", "two:/srv/two"])
        .arg(&guest)
        .args(["write", "/srv/two"])
        .run();
    write.assert_code(0);
    let read = kiln_in(&home).args(["run", "-v", "two:/two"]).arg(&guest).args(["read", "/two"]).run();
    read.assert_code(0);
    assert!(read.stdout_text().ends_with("0 failures\n"), "{read}");
    for name in ["one", "two"] {
        e2fsck_clean(&volume_file(&home, name));
    }
    assert_eq!(debugfs_cat(&volume_file(&home, "one"), "/dir/sub/hello.txt"), "", "volume one was not written");
}

/// Rust's std::fs (tests/guests/rust fs, written for /tmp) passes with a volume mounted over /tmp, on two vCPUs.
#[test]
fn rust_std_fs_passes_on_a_volume() {
    if !kvm::available() {
        return;
    }
    let home = home("rust-fs");
    kiln_in(&home).args(["volume", "create", "tmp", "--size", "16M"]).run().assert_code(0);
    let run = kiln_in(&home).args(["run", "--cpus", "2", "-v", "tmp:/tmp"]).arg(guests::rust("fs")).run();
    run.assert_code(0);
    assert!(run.stdout_text().starts_with("fs: size=790 "), "{run}");
    e2fsck_clean(&volume_file(&home, "tmp"));
}

/// Symbolic links (fast and slow), hard links and FIFOs on a volume: the checks tests/boot.rs makes in memory, then
/// e2fsck calls the volume clean and debugfs reads the links.
#[test]
fn links_and_fifos_on_a_volume_pass_e2fsck() {
    if !kvm::available() {
        return;
    }
    let home = home("links");
    kiln_in(&home).args(["volume", "create", "data", "--size", "16M"]).run().assert_code(0);
    let run = kiln_in(&home).args(["run", "-v", "data:/data"]).arg(guests::c("fslinks")).arg("/data/work").run();
    run.assert_code(0);
    assert!(run.stdout_text().ends_with("fslinks: ok\n"), "{run}");
    let file = volume_file(&home, "data");
    e2fsck_clean(&file);
    assert_eq!(debugfs_cat(&file, "/work/d/sub/inner"), "in");
    assert_eq!(debugfs_cat(&file, "/work/h2"), "abcd");
    let stat = |path: &str| {
        let out = Command::new("debugfs").arg("-R").arg(format!("stat {path}")).arg(&file).output().expect("debugfs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(stat("/work/ls").contains("Fast link dest: \"d/sub\""), "{}", stat("/work/ls"));
    assert!(stat("/work/long").contains("Type: symlink"), "{}", stat("/work/long"));

    // A working directory on the volume is made there after it is mounted, through a link too.
    let run = kiln_in(&home)
        .args(["run", "-v", "data:/data", "-w", "/data/work/ls/wd"])
        .arg(guests::c("fslinks"))
        .args(["--pwd", "../inner"])
        .run();
    run.assert_code(0);
    assert_eq!(run.stdout_text(), "cwd: /data/work/d/sub/wd\nread: in\n", "{run}");
    e2fsck_clean(&file);
    assert!(stat("/work/d/sub/wd").contains("Type: directory"), "{}", stat("/work/d/sub/wd"));
}

#[test]
fn a_volume_attached_to_a_running_instance_cannot_be_attached_again() {
    if !kvm::available() {
        return;
    }
    let home = home("exclusive");
    kiln_in(&home).args(["volume", "create", "shared", "--size", "8M"]).run().assert_code(0);
    let mut first = kiln_in(&home)
        .args(["run", "-v", "shared:/data"])
        .arg(guests::c("waiter"))
        .into_command()
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "waiter: ready\n");

    let err = kiln_in(&home).args(["run", "-v", "shared:/data"]).arg(guests::c("hello")).run().assert_kiln_error();
    assert_eq!(
        err,
        "kiln: volume shared is attached to another running instance; a volume can be attached to one at a time"
    );
    let inspect = kiln_in(&home).args(["volume", "inspect", "shared"]).run();
    assert!(inspect.stdout_text().contains("attached:   yes"), "{inspect}");
    let err = kiln_in(&home).args(["volume", "rm", "shared"]).run().assert_kiln_error();
    assert!(err.contains("is attached to a running instance"), "{err}");

    // SAFETY: kill(2) on the child this test started and has not yet waited for.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    first.wait().unwrap();
    kiln_in(&home).args(["run", "-v", "shared:/data"]).arg(guests::c("hello")).run().assert_code(0);
    kiln_in(&home).args(["volume", "rm", "shared"]).run().assert_code(0);
}

/// O_DSYNC, O_SYNC and pwritev2's RWF_DSYNC: a write that returned is in the host file without any fsync, so a VMM
/// killed right after loses none of it.
#[test]
fn synchronous_writes_survive_a_kill_without_fsync() {
    if !kvm::available() {
        return;
    }
    let home = home("dsync");
    kiln_in(&home).args(["volume", "create", "sync", "--size", "8M"]).run().assert_code(0);
    let mut child = kiln_in(&home)
        .args(["run", "-v", "sync:/data"])
        .arg(guests::c("volume"))
        .args(["dsync", "/data"])
        .into_command()
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    while !out.ends_with("failures\n") && stdout.read_line(&mut out).is_ok_and(|n| n > 0) {}
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(out.ends_with("\n0 failures\n"), "{out}");
    let file = volume_file(&home, "sync");
    let fsck = Command::new("e2fsck").arg("-fy").arg(&file).output().expect("e2fsck");
    assert!(matches!(fsck.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&fsck.stdout));
    assert_eq!(debugfs_cat(&file, "/dsync"), "o_dsync\n");
    assert_eq!(debugfs_cat(&file, "/osync"), "o_sync\n");
    assert_eq!(debugfs_cat(&file, "/rwf"), "rwf_dsync\n");
}

/// Removes a detached instance however its test ends, so that no instance process outlives a failed test.
struct Detached<'a>(&'a Path, &'static str);

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        kiln_in(self.0).args(["rm", "-f", self.1]).run();
    }
}

/// `kiln run -d` returns at once, but its instance process holds the volume's lock for as long as the VM runs.
#[test]
fn a_detached_instance_holds_its_volume_until_it_stops() {
    if !kvm::available() {
        return;
    }
    let home = home("detached");
    kiln_in(&home).args(["volume", "create", "held", "--size", "8M"]).run().assert_code(0);
    let _cleanup = Detached(&home, "holder");
    kiln_in(&home)
        .args(["run", "-d", "--name", "holder", "-v", "held:/data"])
        .arg(guests::c("waiter"))
        .arg("graceful")
        .run()
        .assert_code(0);
    let busy = "kiln: volume held is attached to another running instance; a volume can be attached to one at a time";
    let hello = guests::c("hello");
    for detach in [false, true] {
        let mut second = kiln_in(&home).args(["run", "-v", "held:/data"]);
        if detach {
            second = second.arg("-d");
        }
        assert_eq!(second.arg(&hello).run().assert_kiln_error(), busy, "detached: {detach}");
    }
    let err = kiln_in(&home).args(["volume", "rm", "held"]).run().assert_kiln_error();
    assert!(err.contains("is attached to a running instance"), "{err}");
    let inspect = kiln_in(&home).args(["volume", "inspect", "held"]).run();
    assert!(inspect.stdout_text().contains("attached:   yes"), "{inspect}");

    kiln_in(&home).args(["stop", "holder"]).run().assert_code(0);
    e2fsck_clean(&volume_file(&home, "held"));
    kiln_in(&home).args(["volume", "rm", "held"]).run().assert_code(0);
}

/// Record `n` of the fsyncer guest's log, as it writes it.
fn record(n: u32) -> String {
    let fill = 20 + (n.wrapping_mul(37) % 300) as usize;
    let filler: String = (0..fill).map(|i| (b'a' + ((n as usize + i) % 26) as u8) as char).collect();
    format!("rec {n:08} {filler}\n")
}

/// What the writer acknowledged so far: the highest record, the files, the highest state.
#[derive(Default)]
struct Acked {
    record: u32,
    files: Vec<u32>,
    state: u32,
}

/// Repairs the volume with the host's checker, then requires every acknowledged record, file and state in it: the
/// log holds records 1..=K, each complete, K at least the highest acknowledged.
fn check_after_crash(file: &Path, acked: &Acked, new_files: &[u32]) {
    let out = Command::new("e2fsck").arg("-fy").arg(file).output().expect("e2fsck");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "e2fsck -fy could not repair the volume (exit {code}):\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = debugfs_cat(file, "/log");
    let mut n = 0;
    for line in log.split_inclusive('\n') {
        n += 1;
        assert_eq!(line, record(n), "record {n} of the log is damaged");
    }
    assert!(n >= acked.record, "acknowledged record {} is missing: the log ends at {n}", acked.record);
    for &f in new_files {
        assert_eq!(debugfs_cat(file, &format!("/files/r-{f}")), record(f), "acknowledged file r-{f}");
    }
    if acked.state > 0 {
        let state = debugfs_cat(file, "/state");
        let at: u32 = state.strip_prefix("state ").and_then(|s| s.trim_end().parse().ok()).unwrap_or(0);
        assert!(at >= acked.state, "acknowledged state {} but /state holds {state:?}", acked.state);
    }
}

/// Issue 5's durability bar: SIGKILL the VMM 200 times while a guest appends fsync'd records (and creates files
/// and renames over one, fsync'd); after each kill the host's e2fsck repairs the volume (or, every other round,
/// the next `kiln run` has it checked) and every acknowledged record is there, complete.
#[test]
fn sigkill_during_fsyncs_loses_nothing_acknowledged() {
    if !kvm::available() {
        return;
    }
    const ROUNDS: u32 = 200;
    let home = home("crash");
    kiln_in(&home).args(["volume", "create", "crash", "--size", "32M"]).run().assert_code(0);
    let file = volume_file(&home, "crash");
    let writer = guests::c("fsyncer");
    let stderr_path = home.join("stderr");
    let mut acked = Acked::default();
    let mut unchecked_files = Vec::new();
    // A fixed pseudo-random sequence (xorshift): how many acknowledgements to wait for, and how long after.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..ROUNDS {
        let mut child = kiln_in(&home)
            .args(["run", "-v", "crash:/data"])
            .arg(&writer)
            .arg("/data")
            .into_command()
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wanted = 1 + next() % 8;
        let mut lines = Vec::new();
        let mut acks = 0;
        while acks < wanted {
            match rx.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(line) => {
                    acks += u64::from(line.starts_with("ack "));
                    lines.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "round {round}: the writer stopped after {acks} acknowledgements ({e:?}); its stderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(next() % 4000));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in &lines {
            let (what, n) = line.split_once(' ').expect("the writer prints `what n`");
            let n: u32 = n.parse().unwrap();
            match what {
                "ack" => acked.record = acked.record.max(n),
                "file" => {
                    acked.files.push(n);
                    unchecked_files.push(n);
                }
                "state" => acked.state = acked.state.max(n),
                other => panic!("round {round}: the writer printed {other:?}"),
            }
        }
        // Every other round is left for the next `kiln run` to find not cleanly detached and repair.
        if round % 2 == 0 || round == ROUNDS - 1 {
            check_after_crash(&file, &acked, &unchecked_files);
            unchecked_files.clear();
        }
    }
    e2fsck_clean(&file);
    assert!(acked.record > ROUNDS, "the writer got far enough: {} records", acked.record);
    eprintln!(
        "{ROUNDS} SIGKILLs: {} records, {} files and state {} acknowledged, all present",
        acked.record,
        acked.files.len(),
        acked.state
    );
}
