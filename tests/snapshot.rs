//! Snapshots: `kiln snapshot INSTANCE FILE` writes a detached instance to a file and ends it; `kiln restore FILE`
//! runs it on from there in another process. An HTTP server answers curl on its published port after the restore, a
//! ticker goes on from the number after its last one, and files that are not whole snapshots are refused with one
//! line. Every wait has a deadline.

#[allow(dead_code)]
mod harness;

use harness::store::{kiln_in, scratch};
use harness::{guests, kvm};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A store of the test's own; its instances are removed (killed first) when dropped.
struct Home(PathBuf);

impl Drop for Home {
    fn drop(&mut self) {
        let ps = kiln_in(&self.0).args(["ps", "-a", "-o", "json"]).run();
        let all: Vec<serde_json::Value> = serde_json::from_slice(&ps.stdout).unwrap_or_default();
        for instance in all {
            let id = instance["id"].as_str().unwrap_or_default();
            if std::thread::panicking() {
                let log = kiln_in(&self.0).args(["logs", id]).run();
                eprintln!(
                    "--- instance {} ({id}), {}: its log:\n{}",
                    instance["name"],
                    instance["state"],
                    log.stdout_text()
                );
            }
            kiln_in(&self.0).args(["rm", "-f", id]).run();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// curl's answer from `port`, retried until it gives one or the deadline passes.
fn curl(port: u16) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", &format!("http://127.0.0.1:{port}/")])
            .output()
            .expect("curl runs (scripts/setup.sh installs it)");
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The instance's log once `done` says it is complete (or at the deadline).
fn log_until(home: &Path, name: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = kiln_in(home).args(["logs", name]).run().stdout_text();
        if done(&log) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ticks(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.strip_prefix("tick ")).map(|n| n.parse().unwrap()).collect()
}

fn state(home: &Path, name: &str) -> serde_json::Value {
    let out = kiln_in(home).args(["inspect", name]).run();
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
}

#[test]
fn an_http_server_restored_in_another_process_answers_curl() {
    if !kvm::available() {
        return;
    }
    let dir = scratch("snapshot", "http");
    let home = Home(dir.join("home"));
    let port = free_port();
    let publish = format!("{port}:8080");
    kiln_in(&home.0)
        .args(["run", "-d", "--name", "web", "-p", &publish])
        .arg(guests::c("epollhttp"))
        .arg("8080")
        .run()
        .assert_code(0);
    assert_eq!(curl(port).as_deref(), Some("hello from kiln\n"));

    let snap = dir.join("web.snap");
    let out = kiln_in(&home.0).args(["snapshot", "web"]).arg(&snap).run();
    out.assert_code(0);
    assert!(out.stdout_text().contains("KiB of memory written"), "{out}");
    // The instance ended with the snapshot, and said so; its port is free again.
    let web = state(&home.0, "web");
    assert_eq!((web["state"].as_str(), web["exit_code"].as_i64()), (Some("exited"), Some(0)), "{web}");
    assert!(web["reason"].as_str().unwrap().starts_with("snapshotted to "), "{web}");
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "the snapshotted instance still holds its port");
    // Sparse: what is on disk is the pages the server touched, not its RAM.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&snap).unwrap();
    assert!(meta.len() >= 64 << 20, "{} bytes: RAM is not all in the file", meta.len());
    assert!(meta.blocks() * 512 < 16 << 20, "{} bytes on disk for an idle server", meta.blocks() * 512);

    let out = kiln_in(&home.0).args(["restore", "-d", "--name", "web2"]).arg(&snap).run();
    out.assert_code(0);
    assert_eq!(curl(port).as_deref(), Some("hello from kiln\n"), "the restored server does not answer");
    assert_eq!(curl(port).as_deref(), Some("hello from kiln\n"));

    // A snapshot that leaves the instance running, of a restored instance (its untouched pages are in the first
    // file); then the restore of that one.
    let snap2 = dir.join("web2.snap");
    kiln_in(&home.0).args(["snapshot", "--leave-running", "web2"]).arg(&snap2).run().assert_code(0);
    assert_eq!(curl(port).as_deref(), Some("hello from kiln\n"), "the instance left running does not answer");
    kiln_in(&home.0).args(["kill", "web2"]).run().assert_code(0);
    std::fs::remove_file(&snap).unwrap();
    kiln_in(&home.0).args(["restore", "-d", "--name", "web3"]).arg(&snap2).run().assert_code(0);
    assert_eq!(curl(port).as_deref(), Some("hello from kiln\n"), "the second restore does not answer");
}

#[test]
fn a_restored_ticker_counts_on() {
    if !kvm::available() {
        return;
    }
    let dir = scratch("snapshot", "ticker");
    let home = Home(dir.join("home"));
    kiln_in(&home.0).args(["run", "-d", "--name", "c1"]).arg(guests::c("ticker")).run().assert_code(0);
    let before = log_until(&home.0, "c1", |log| ticks(log).len() >= 5);
    assert!(ticks(&before).len() >= 5, "the ticker did not count: {before:?}");

    let snap = dir.join("c.snap");
    kiln_in(&home.0).args(["snapshot", "c1"]).arg(&snap).run().assert_code(0);
    let before = ticks(&kiln_in(&home.0).args(["logs", "c1"]).run().stdout_text());
    let last = *before.last().unwrap();
    assert_eq!(before, (1..=last).collect::<Vec<_>>(), "the ticker skipped");

    kiln_in(&home.0).args(["restore", "-d", "--name", "c2"]).arg(&snap).run().assert_code(0);
    let after = log_until(&home.0, "c2", |log| ticks(log).len() >= 5);
    let after = ticks(&after);
    assert!(after.len() >= 5, "the restored ticker did not count: {after:?}");
    assert_eq!(after[..5], [last + 1, last + 2, last + 3, last + 4, last + 5], "it did not go on from {last}");

    // The same file restored again: the same numbers come first.
    let c3 = kiln_in(&home.0).args(["restore", "-d", "--name", "c3"]).arg(&snap).run();
    c3.assert_code(0);
    let again = ticks(&log_until(&home.0, "c3", |log| !ticks(log).is_empty()));
    assert_eq!(again.first(), Some(&(last + 1)));

    // Cut short: refused, with the reason, and nothing runs.
    let bytes = std::fs::read(&snap).unwrap();
    let short = dir.join("short.snap");
    std::fs::write(&short, &bytes[..bytes.len() - 4096]).unwrap();
    let line = kiln_in(&home.0).arg("restore").arg(&short).run().assert_kiln_error();
    assert!(line.contains("is damaged") && line.contains("cut short"), "{line}");
    // A flipped byte in the state.
    let mut flipped = bytes;
    flipped[4096 + 10] ^= 0x20;
    let bad = dir.join("flipped.snap");
    std::fs::write(&bad, &flipped).unwrap();
    let line = kiln_in(&home.0).arg("restore").arg(&bad).run().assert_kiln_error();
    assert!(line.contains("does not match its digest"), "{line}");
}

#[test]
fn files_that_are_not_snapshots_are_refused() {
    let dir = scratch("snapshot", "bad");
    let home = Home(dir.join("home"));
    let missing = kiln_in(&home.0).args(["restore", "/nonexistent/kiln.snap"]).run().assert_kiln_error();
    assert!(missing.contains("/nonexistent/kiln.snap: cannot open the snapshot"), "{missing}");
    let text = dir.join("text");
    std::fs::write(&text, "hello, this is not a snapshot at all: it is a text file, longer than a snapshot's header\n")
        .unwrap();
    let line = kiln_in(&home.0).arg("restore").arg(&text).run().assert_kiln_error();
    assert!(line.contains("is not a Kiln snapshot: it does not start with KILNSNAP"), "{line}");
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    let line = kiln_in(&home.0).arg("restore").arg(&empty).run().assert_kiln_error();
    assert!(line.contains("shorter than a snapshot's header"), "{line}");
    // A header claiming a huge state: refused before anything is allocated for it.
    let mut header = b"KILNSNAP".to_vec();
    header.extend(1u32.to_le_bytes());
    header.extend([0; 4]);
    header.extend((1u64 << 40).to_le_bytes());
    header.extend((2u64 << 20).to_le_bytes());
    header.extend((4u64 << 20).to_le_bytes());
    header.extend([0; 32]);
    let lying = dir.join("lying");
    std::fs::write(&lying, &header).unwrap();
    let line = kiln_in(&home.0).arg("restore").arg(&lying).run().assert_kiln_error();
    assert!(line.contains("is damaged: its state section is said to be"), "{line}");
    // Snapshotting what is not there.
    let line = kiln_in(&home.0).args(["snapshot", "nothing"]).arg(dir.join("x")).run().assert_kiln_error();
    assert!(line.contains("nothing"), "{line}");
    assert!(!dir.join("x").exists());
}

/// `debugfs`'s `cat` of `path` in the ext2 volume `file` (read-only: the file does not change).
fn debugfs_cat(file: &Path, path: &str) -> String {
    let out = Command::new("debugfs").arg("-R").arg(format!("cat {path}")).arg(file).output().expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An instance with a volume: snapshotted after it wrote to a file there, restored in another process, it appends to
/// the same file and reads it back whole, and the host reads the same; the snapshot restored again once the volume
/// moved on is refused with the reason, as is one taken with `--leave-running` of an instance that wrote afterwards.
#[test]
fn an_instance_with_a_volume_is_restored_and_a_changed_volume_is_refused() {
    if !kvm::available() {
        return;
    }
    let dir = scratch("snapshot", "volume");
    let home = Home(dir.join("home"));
    kiln_in(&home.0).args(["volume", "create", "data", "--size", "16M"]).run().assert_code(0);
    let volume = home.0.join("volumes").join("data.ext2");
    kiln_in(&home.0)
        .args(["run", "-d", "--name", "v1", "-v", "data:/data"])
        .arg(guests::c("volsnap"))
        .arg("/data/log")
        .run()
        .assert_code(0);
    let log = log_until(&home.0, "v1", |log| log.contains("volsnap: ready\n"));
    assert!(log.contains("volsnap: ready\n"), "{log}");

    let snap = dir.join("v.snap");
    let out = kiln_in(&home.0).args(["snapshot", "v1"]).arg(&snap).run();
    out.assert_code(0);
    let v1 = state(&home.0, "v1");
    assert!(v1["reason"].as_str().unwrap().starts_with("snapshotted to "), "{v1}");
    // The volume holds what the guest wrote before the snapshot (it fsynced): the host reads it.
    assert_eq!(debugfs_cat(&volume, "/log"), "before\n");

    kiln_in(&home.0).args(["restore", "-d", "--name", "v2"]).arg(&snap).run().assert_code(0);
    kiln_in(&home.0).args(["stop", "v2"]).run().assert_code(0);
    let log = log_until(&home.0, "v2", |log| log.contains("after\n"));
    assert!(log.contains("volsnap: /data/log holds:\nbefore\nafter\n"), "{log}");
    assert!(!log.contains("volsnap: ready"), "the restored instance booted again: {log}");
    let v2 = state(&home.0, "v2");
    assert_eq!((v2["state"].as_str(), v2["exit_code"].as_i64()), (Some("exited"), Some(0)), "{v2}");
    assert_eq!(debugfs_cat(&volume, "/log"), "before\nafter\n");
    let fsck = Command::new("e2fsck").arg("-fn").arg(&volume).output().expect("e2fsck (e2fsprogs)");
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));

    // The volume moved on: the same snapshot again would pair its RAM with blocks of another moment.
    let line = kiln_in(&home.0).arg("restore").arg(&snap).run().assert_kiln_error();
    assert!(
        line.contains("cannot be restored: volume data was written to since the snapshot")
            && line.contains("needs each volume as it was"),
        "{line}"
    );

    // Left running, the instance writes on after the snapshot (the first write moves the file's identity on, within
    // the vCPU's seccomp list): that snapshot is refused too, and the instance ran on unharmed.
    kiln_in(&home.0)
        .args(["run", "-d", "--name", "v3", "-v", "data:/data"])
        .arg(guests::c("volsnap"))
        .arg("/data/log")
        .run()
        .assert_code(0);
    log_until(&home.0, "v3", |log| log.contains("volsnap: ready\n"));
    let snap3 = dir.join("v3.snap");
    kiln_in(&home.0).args(["snapshot", "--leave-running", "v3"]).arg(&snap3).run().assert_code(0);
    let busy = kiln_in(&home.0).arg("restore").arg(&snap3).run().assert_kiln_error();
    assert!(busy.contains("volume data is attached to another running instance"), "{busy}");
    kiln_in(&home.0).args(["stop", "v3"]).run().assert_code(0);
    let log = log_until(&home.0, "v3", |log| log.contains("holds:"));
    assert!(log.contains("holds:\nbefore\nafter\nbefore\nafter\n"), "{log}");
    assert_eq!(state(&home.0, "v3")["exit_code"].as_i64(), Some(0));
    let line = kiln_in(&home.0).arg("restore").arg(&snap3).run().assert_kiln_error();
    assert!(line.contains("volume data was written to since the snapshot"), "{line}");
}
