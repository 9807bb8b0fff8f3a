//! `kiln export --format raw|qcow2`: guests built from source, exported as UEFI disk images, and booted by OVMF
//! under QEMU (TCG, `-M q35`), checked for their serial console output and exit status (isa-debug-exit). Skipped,
//! saying why, where `qemu-system-x86_64` or OVMF is missing (scripts/setup.sh installs qemu-system-x86 and ovmf).

// The harness serves every suite; this one uses a part of it.
#[allow(dead_code)]
mod harness;

use harness::{guests, kiln};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
/// Debian's `ovmf` package.
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// OVMF and hello take about 7 s under TCG here; a loaded CI machine gets plenty more.
const QEMU_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";
/// The aim for hello's disk image.
const HELLO_DISK_AIM: u64 = 4 << 20;

fn say(what: &str) {
    let test = std::thread::current().name().unwrap_or("unnamed").to_string();
    let _ = writeln!(std::io::stderr(), "{test}: {what}");
}

fn ovmf_available() -> bool {
    let found = Command::new(QEMU).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        say(&format!("skipped: {QEMU} is not installed (scripts/setup.sh installs it)"));
        return false;
    }
    if !Path::new(OVMF).exists() {
        say(&format!("skipped: {OVMF} is missing (scripts/setup.sh installs Debian's ovmf)"));
        return false;
    }
    true
}

fn out_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("export-uefi").join(test);
    std::fs::create_dir_all(&dir).expect("make the test's directory");
    dir
}

/// `kiln export --format FORMAT -o DIR/disk.FORMAT ARGS...`; the disk's path.
fn export(test: &str, format: &str, args: &[&str]) -> PathBuf {
    let disk = out_dir(test).join(format!("disk.{format}"));
    kiln().args(["export", "--format", format, "-o"]).arg(&disk).args(args).run().assert_code(0);
    disk
}

struct Boot {
    /// QEMU's exit status; `None` when it was stopped because the console said what was awaited.
    status: Option<i32>,
    /// The serial console, CR LF made LF.
    console: String,
    elapsed: Duration,
}

/// Boots `disk` (of `format`, a virtio-blk device) with OVMF under QEMU TCG with `memory`, to its end, or until the
/// console contains `until` (firmware that failed to boot something waits in its shell).
fn boot(disk: &Path, format: &str, memory: &str, until: Option<&str>) -> Boot {
    boot_with(disk, &format!("format={format},if=virtio"), memory, until, &[])
}

/// [`boot`] with the disk attached as `drive` says (QEMU's `-drive` options after `file=`) and `extra` arguments.
fn boot_with(disk: &Path, drive: &str, memory: &str, until: Option<&str>, extra: &[&str]) -> Boot {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "q35", "-cpu", "max", "-m", memory, "-display", "none", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio", "-bios", OVMF, "-device", EXIT_DEVICE, "-drive"])
        .arg(format!("file={},{drive}", disk.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start qemu");
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = {
        let console = console.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                console.lock().expect("console").extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = |console: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&console.lock().expect("console")).replace("\r\n", "\n")
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            break Some(status.code().expect("QEMU exited, not killed"));
        }
        if until.is_some_and(|u| text(&console).contains(u)) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if start.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            panic!("QEMU did not finish within {QEMU_TIMEOUT:?}:\n{}", text(&console));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let _ = reader.join();
    let mut stderr = String::new();
    let _ = child.stderr.take().expect("piped").read_to_string(&mut stderr);
    assert!(!stderr.contains("rror"), "QEMU complained:\n{stderr}");
    Boot { status, console: text(&console), elapsed }
}

fn hello_lines(argv: &[&str], env: &[&str]) -> String {
    let mut lines = vec!["hello from kiln".to_string(), format!("argc={}", argv.len())];
    lines.extend(argv.iter().enumerate().map(|(i, a)| format!("argv[{i}]={a}")));
    lines.extend(env.iter().enumerate().map(|(i, e)| format!("env[{i}]={e}")));
    lines.push(format!("envc={}", env.len()));
    let greeting = env.iter().find_map(|e| e.strip_prefix("KILN_GREETING=")).unwrap_or("(unset)");
    lines.push(format!("KILN_GREETING={greeting}"));
    lines.push("hello: this line goes to stderr".into());
    lines.join("\n") + "\n"
}

#[test]
fn hello_as_a_raw_disk_boots_under_ovmf_with_its_output_and_exit_code() {
    if !ovmf_available() {
        return;
    }
    let hello = guests::c("hello");
    let path = hello.to_str().expect("UTF-8 path");
    let disk = export("raw", "raw", &["-e", "KILN_GREETING=hi there", path, "5", "two words"]);
    let size = std::fs::metadata(&disk).expect("the disk").len();
    assert!(size <= HELLO_DISK_AIM, "hello's disk image is {size} bytes, over the 4 MiB aim");
    let booted = boot(&disk, "raw", "256M", None);
    let expected = hello_lines(&[path, "5", "two words"], &["KILN_GREETING=hi there"]);
    assert!(booted.console.ends_with(&expected), "console:\n{}\nexpected it to end with:\n{expected}", booted.console);
    assert_eq!(booted.status, Some(5 * 2 + 1), "isa-debug-exit's status for code 5\n{}", booted.console);
    say(&format!("hello's raw disk: {size} bytes, booted by OVMF under TCG in {:?}", booted.elapsed));
}

#[test]
fn hello_as_a_qcow2_disk_passes_qemu_img_check_and_boots_with_its_command_line() {
    if !ovmf_available() {
        return;
    }
    let hello = guests::c("hello");
    let path = hello.to_str().expect("UTF-8 path");
    let cmdline = "console=ttyS0 KILN_GREETING=from-the-disk -- 9 x";
    let disk = export("qcow2", "qcow2", &["--cmdline", cmdline, "-e", "LANG=C", path, "1"]);
    match Command::new("qemu-img").arg("check").arg(&disk).output() {
        Ok(out) => assert!(out.status.success(), "qemu-img check:\n{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => say(&format!("qemu-img check skipped: {e} (scripts/setup.sh installs qemu-utils)")),
    }
    let booted = boot(&disk, "qcow2", "256M", None);
    let expected = hello_lines(&[path, "9", "x"], &["LANG=C", "KILN_GREETING=from-the-disk"]);
    assert!(booted.console.ends_with(&expected), "console:\n{}\nexpected it to end with:\n{expected}", booted.console);
    assert_eq!(booted.status, Some(9 * 2 + 1), "{}", booted.console);
}

#[test]
fn the_network_card_gets_a_dhcp_lease_on_virtio_net_pci_with_the_disk_on_ahci() {
    if !ovmf_available() {
        return;
    }
    // The boot disk on q35's AHCI, so that only the card is a virtio device; OVMF drove the card before the image.
    let netlink = guests::c("netlink");
    let disk = export("network", "raw", &[netlink.to_str().expect("UTF-8 path"), "all"]);
    let extra = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"];
    let booted = boot_with(&disk, "format=raw,if=ide", "256M", None, &extra);
    assert!(booted.console.contains("eth0: inet 10.0.2.15/24 up\n"), "{}", booted.console);
    assert_eq!(booted.status, Some(1), "exit code 0 through isa-debug-exit\n{}", booted.console);
}

#[test]
fn a_crash_and_its_exit_code_reach_the_console_from_a_disk_image() {
    if !ovmf_available() {
        return;
    }
    let crash = guests::c("crash");
    let disk = export("crash", "raw", &[crash.to_str().expect("UTF-8 path")]);
    let booted = boot(&disk, "raw", "256M", None);
    assert!(
        booted.console.contains("kiln: program crashed: SIGSEGV (page fault writing 0x10) at rip 0x"),
        "{}",
        booted.console
    );
    assert_eq!(booted.status, Some((139 * 2 + 1) % 256), "{}", booted.console);
}

#[test]
fn too_little_memory_is_said_by_the_loader() {
    if !ovmf_available() {
        return;
    }
    let hello = guests::c("hello");
    let disk = export("small", "raw", &[hello.to_str().expect("UTF-8 path")]);
    // With 48 MiB OVMF puts the loader itself where the image is laid out (from 16 MiB).
    let said = "give the VM more memory";
    let booted = boot(&disk, "raw", "48M", Some(said));
    assert!(booted.console.contains("kiln: the image is laid out at 0x1000000-0x"), "{}", booted.console);
    assert!(!booted.console.contains("hello from kiln"), "{}", booted.console);
}

#[test]
fn a_disk_of_a_given_size_is_sparse_with_its_backup_gpt_at_the_end() {
    let hello = guests::c("hello");
    let disk = export("sized", "raw", &["--disk-size", "1G", hello.to_str().expect("UTF-8 path")]);
    let meta = std::fs::metadata(&disk).expect("the disk");
    assert_eq!(meta.len(), 1 << 30);
    use std::os::unix::fs::MetadataExt as _;
    assert!(meta.blocks() * 512 <= 8 << 20, "{} bytes allocated", meta.blocks() * 512);
    let mut file = std::fs::File::open(&disk).expect("open");
    let mut sector = [0u8; 512];
    use std::io::{Seek as _, SeekFrom};
    for at in [512, (1u64 << 30) - 512] {
        file.seek(SeekFrom::Start(at)).expect("seek");
        file.read_exact(&mut sector).expect("read");
        assert_eq!(&sector[..8], b"EFI PART", "GPT header at byte {at}");
    }
    file.seek(SeekFrom::Start(510)).expect("seek");
    file.read_exact(&mut sector[..2]).expect("read");
    assert_eq!(&sector[..2], &[0x55, 0xaa], "the protective MBR's signature");
}

#[test]
fn bad_disk_exports_are_refused_in_one_line_leaving_nothing() {
    let hello = guests::c("hello");
    let hello = hello.to_str().expect("UTF-8 path");
    let dir = out_dir("refused");
    let cases: [(&[&str], &str); 4] = [
        (&["--format", "vmdk"], "invalid value 'vmdk' for '--format <FORMAT>'"),
        (&["--format", "pvh", "--cmdline", "x"], "--cmdline and --disk-size are for disk images"),
        (&["--format", "raw", "--disk-size", "1M"], "is too small for the image"),
        (&["--format", "raw", "--cmdline", "a\nb"], "the boot command line has a line break"),
    ];
    for (flags, said) in cases {
        let disk = dir.join("disk.img");
        let out = kiln().args(["export", "-o"]).arg(&disk).args(flags).arg(hello).run();
        assert_ne!(out.code, Some(0), "{flags:?}");
        assert!(out.stderr_text().contains(said), "{flags:?}: {}", out.stderr_text());
        assert!(!disk.exists(), "{flags:?}: nothing is written for a refused export");
    }
    let unwritable = dir.join("no-such-directory").join("disk.img");
    let out = kiln().args(["export", "--format", "raw", "-o"]).arg(&unwritable).arg(hello).run();
    assert_eq!(out.code, Some(125), "{}", out.stderr_text());
    assert!(out.stderr_text().contains(&format!("cannot write {}", unwritable.display())), "{}", out.stderr_text());
    assert_eq!(std::fs::read_dir(&dir).expect("the directory").count(), 0, "no temporary file is left behind");
}
