//! `kiln export --format pvh`: guests built from source, exported, and booted by QEMU (TCG, so no KVM is needed) under
//! `-M microvm` and `-M q35`, checked for their serial console output and QEMU's exit status. Skipped, saying why,
//! where `qemu-system-x86_64` is missing (scripts/setup.sh installs Debian's qemu-system-x86).

// The harness serves every suite; this one uses a part of it.
#[allow(dead_code)]
mod harness;

use harness::{guests, kiln};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
/// TCG boots hello in about a second here; a loaded CI machine gets plenty more.
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);
/// The exit device as docs/deploy.md gives it: QEMU exits with status `code * 2 + 1`.
const EXIT_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

fn qemu_available() -> bool {
    let found = Command::new(QEMU).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("unnamed").to_string();
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {QEMU} is not installed (scripts/setup.sh installs it)");
    false
}

fn out_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("export").join(test);
    std::fs::create_dir_all(&dir).expect("make the test's directory");
    dir
}

/// `kiln export -o DIR/NAME.elf ARGS...`; the image's path.
fn export(test: &str, args: &[&str]) -> PathBuf {
    let image = out_dir(test).join("app.elf");
    kiln().args(["export", "--format", "pvh", "-o"]).arg(&image).args(args).run().assert_code(0);
    image
}

struct Boot {
    /// QEMU's exit status.
    status: i32,
    /// The serial console, CR LF made LF.
    console: String,
    elapsed: Duration,
}

/// Boots `image` under QEMU TCG on `machine` with `extra` arguments, to its end.
fn boot(image: &Path, machine: &str, extra: &[&str]) -> Boot {
    boot_in(image, machine, "128M", extra)
}

/// [`boot`] with `memory` of RAM.
fn boot_in(image: &Path, machine: &str, memory: &str, extra: &[&str]) -> Boot {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", machine, "-cpu", "max", "-m", memory, "-display", "none", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(image)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start qemu");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for qemu") {
            break status;
        }
        if start.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("qemu's output");
            panic!("QEMU did not finish within {QEMU_TIMEOUT:?}:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let out = child.wait_with_output().expect("qemu's output");
    let console = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty() || !stderr.contains("rror"), "QEMU complained:\n{stderr}");
    Boot { status: status.code().expect("QEMU exited, not killed"), console, elapsed }
}

fn hello_lines(argv: &[&str], env: &[&str]) -> Vec<String> {
    let mut lines = vec!["hello from kiln".to_string(), format!("argc={}", argv.len())];
    lines.extend(argv.iter().enumerate().map(|(i, a)| format!("argv[{i}]={a}")));
    lines.extend(env.iter().enumerate().map(|(i, e)| format!("env[{i}]={e}")));
    lines.push(format!("envc={}", env.len()));
    let greeting = env.iter().find_map(|e| e.strip_prefix("KILN_GREETING=")).unwrap_or("(unset)");
    lines.push(format!("KILN_GREETING={greeting}"));
    lines.push("hello: this line goes to stderr".into());
    lines
}

/// The console holds exactly `lines`, in order, after whatever the firmware printed first.
#[track_caller]
fn assert_console_ends_with(boot: &Boot, lines: &[String]) {
    let expected = lines.join("\n") + "\n";
    assert!(boot.console.ends_with(&expected), "console:\n{}\nexpected it to end with:\n{expected}", boot.console);
}

#[test]
fn hello_exports_within_a_mebibyte_and_boots_under_microvm_with_its_exit_code() {
    if !qemu_available() {
        return;
    }
    let hello = guests::c("hello");
    let path = hello.to_str().expect("UTF-8 path");
    let image = export("microvm", &["-e", "KILN_GREETING=hi there", path, "5", "two words"]);
    let size = std::fs::metadata(&image).expect("the image").len();
    assert!(size <= 1 << 20, "exported hello is {size} bytes, over the 1 MiB aim");
    let boot = boot(&image, "microvm", &["-device", EXIT_DEVICE]);
    assert_console_ends_with(&boot, &hello_lines(&[path, "5", "two words"], &["KILN_GREETING=hi there"]));
    assert_eq!(boot.status, 5 * 2 + 1, "isa-debug-exit's status for code 5\n{}", boot.console);
    let _ = writeln!(std::io::stderr(), "exported hello: {size} bytes, booted under microvm TCG in {:?}", boot.elapsed);
}

#[test]
fn command_line_replaces_arguments_and_sets_environment_under_q35_without_an_exit_device() {
    if !qemu_available() {
        return;
    }
    let hello = guests::c("hello");
    let path = hello.to_str().expect("UTF-8 path");
    let image = export("q35", &["-e", "LANG=C", "-e", "KILN_GREETING=baked", path, "1"]);
    // Firecracker's default words are Linux's own and are not the program's environment.
    let boot = boot(&image, "q35", &["-append", "console=ttyS0 KILN_GREETING=booted -- 9 x"]);
    let mut lines = hello_lines(&[path, "9", "x"], &["LANG=C", "KILN_GREETING=booted"]);
    // No exit device: the code on the console's last line, then a power-off or reset, which `-no-reboot` ends.
    lines.push("kiln: exit 9".into());
    assert_console_ends_with(&boot, &lines);
    assert_eq!(boot.status, 0, "{}", boot.console);
}

#[test]
fn crash_is_reported_on_the_serial_console() {
    if !qemu_available() {
        return;
    }
    let crash = guests::c("crash");
    let image = export("crash", &[crash.to_str().expect("UTF-8 path")]);
    let boot = boot(&image, "microvm", &["-device", EXIT_DEVICE]);
    assert!(boot.console.contains("about to crash\n"), "{}", boot.console);
    assert!(
        boot.console.contains("kiln: program crashed: SIGSEGV (page fault writing 0x10) at rip 0x"),
        "{}",
        boot.console
    );
    assert!(!boot.console.contains("still alive"), "{}", boot.console);
    // 139 (128 + SIGSEGV) through isa-debug-exit: (139 * 2 + 1) mod 256.
    assert_eq!(boot.status, (139 * 2 + 1) % 256, "{}", boot.console);
}

#[test]
fn timers_sleeps_and_signals_keep_time_under_microvm() {
    if !qemu_available() {
        return;
    }
    // Sleeps, alarms, periodic and POSIX timers, sigtimedwait's timeout: the APIC timer ends each wait (`hlt`), and
    // its interrupt brings timer signals to a thread blocked in the library OS.
    let image = export("timers", &[guests::c("timers").to_str().expect("UTF-8 path")]);
    let boot = boot(&image, "microvm", &["-device", EXIT_DEVICE]);
    assert!(boot.console.contains("ok: the alarm ends pause() after 50 ms\n"), "{}", boot.console);
    assert!(boot.console.ends_with("timers: 0 failed\n"), "{}", boot.console);
    assert_eq!(boot.status, 1, "exit code 0 through isa-debug-exit\n{}", boot.console);
}

#[test]
fn threads_that_compute_without_syscalls_are_interrupted_under_q35() {
    if !qemu_available() {
        return;
    }
    // Signals and time slices reach threads spinning in the program's code (the APIC timer's interrupt resumes the
    // library OS at its fault entry), with every register intact; and a timer's unhandled signal ends the program.
    let image = export("spinsignal", &[guests::c("spinsignal").to_str().expect("UTF-8 path")]);
    let spun = boot(&image, "q35", &["-device", EXIT_DEVICE]);
    for line in [
        "ok: every register and the carry flag survive the interruptions",
        "ok: a periodic timer's signals reach the main thread spinning",
        "ok: the main thread spinning on a flag lets the thread that sets it run",
        "ok: three threads spinning until all three have arrived all run",
    ] {
        assert!(spun.console.contains(&format!("{line}\n")), "{line}:\n{}", spun.console);
    }
    assert!(!spun.console.contains("FAILED"), "{}", spun.console);
    assert_eq!(spun.status, 1, "exit code 0 through isa-debug-exit\n{}", spun.console);

    let image = export("unhandled", &[guests::c("timers").to_str().expect("UTF-8 path"), "unhandled"]);
    let killed = boot(&image, "q35", &["-device", EXIT_DEVICE]);
    assert!(killed.console.ends_with("kiln: program killed by SIGALRM\n"), "{}", killed.console);
    // 142 (128 + SIGALRM) through isa-debug-exit: (142 * 2 + 1) mod 256.
    assert_eq!(killed.status, (142 * 2 + 1) % 256, "{}", killed.console);
}

/// What the parallel guest prints when its two threads ran on two vCPUs at once.
fn parallel_lines() -> Vec<String> {
    [
        "vCPUs: 2",
        "ok: two spinning threads hand a counter back and forth 2000 times within 10 s",
        "ok: the two ran on different vCPUs at once",
        "parallel: 0 failed",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn threads_run_on_two_vcpus_at_once_under_q35_and_microvm() {
    if !qemu_available() {
        return;
    }
    // Two threads hand a counter back and forth, each spinning until its turn: two vCPUs running at once do it within
    // the guest's 10 s (one vCPU would need a time slice per hand-over, 20 s), and the threads see different vCPUs.
    // The platform layer found the second vCPU in the MADT, started it with INIT/SIPI and told the library OS.
    let guest = guests::c("parallel");
    let image = export("parallel", &["--cpus", "2", guest.to_str().expect("UTF-8 path")]);
    let expected = parallel_lines();
    if harness::kvm::available() {
        // The same output as Kiln's own VMM gives it.
        let native = kiln().args(["run", "--cpus", "2"]).arg(&guest).run();
        native.assert_code(0);
        assert_eq!(native.stdout_text(), expected.join("\n") + "\n");
    }
    for machine in ["q35", "microvm"] {
        let boot = boot(&image, machine, &["-smp", "2", "-device", EXIT_DEVICE]);
        assert_console_ends_with(&boot, &expected);
        assert!(!boot.console.contains("kiln:"), "{machine}:\n{}", boot.console);
        assert_eq!(boot.status, 1, "{machine}: exit code 0 through isa-debug-exit\n{}", boot.console);
    }
}

#[test]
fn an_image_for_two_vcpus_runs_on_what_the_machine_and_command_line_give() {
    if !qemu_available() {
        return;
    }
    let guest = guests::c("parallel");
    let image = export("parallel-count", &["--cpus", "2", guest.to_str().expect("UTF-8 path"), "count"]);
    // The console's last two lines (the platform layer's, if any, and the program's count).
    let vcpus = |machine: &str, extra: &[&str]| {
        let boot = boot(&image, machine, &[&["-device", EXIT_DEVICE][..], extra].concat());
        assert_eq!(boot.status, 1, "{machine} {extra:?}: exit code 0\n{}", boot.console);
        let lines: Vec<&str> = boot.console.lines().collect();
        lines[lines.len().saturating_sub(2)..].join("\n")
    };
    // One vCPU: the library OS is told one.
    assert_eq!(vcpus("q35", &["-smp", "1"]).lines().last(), Some("vCPUs: 1"));
    // More than the image was exported for: the two it has room for.
    assert_eq!(vcpus("microvm", &["-smp", "4"]).lines().last(), Some("vCPUs: 2"));
    // Linux's nr_cpus= lowers it.
    assert_eq!(vcpus("q35", &["-smp", "2", "-append", "nr_cpus=1"]).lines().last(), Some("vCPUs: 1"));
    // No ACPI tables to find the processors in: one vCPU, saying why.
    let end = vcpus("microvm,acpi=off", &["-smp", "2"]);
    assert!(end.ends_with("running on one vCPU\nvCPUs: 1"), "{end}");
}

/// QEMU's virtio-mmio devices as Kiln drives them (version 2), and microvm without ACPI, which then names each device
/// on the command line (`virtio_mmio.device=`) as docs/deploy.md says.
fn microvm_with_disk(disk: &Path) -> Vec<String> {
    let drive = format!("file={},format=raw,if=none,id=v0", disk.display());
    ["-global", "virtio-mmio.force-legacy=false", "-drive", &drive, "-device", "virtio-blk-device,drive=v0"]
        .into_iter()
        .chain(["-device", EXIT_DEVICE])
        .map(String::from)
        .collect()
}

/// The same disk under q35, on a virtio-pci device.
fn q35_with_disk(disk: &Path) -> Vec<String> {
    let drive = format!("file={},format=raw,if=none,id=v0", disk.display());
    ["-drive", &drive, "-device", "virtio-blk-pci,drive=v0", "-device", EXIT_DEVICE]
        .into_iter()
        .map(String::from)
        .collect()
}

/// A volume is written by one boot of an exported image and read by the next, on `machine` with the disk as
/// `devices` gives it; then a boot without the disk says what is missing.
fn volume_round_trip(test: &str, machine: &str, devices: fn(&Path) -> Vec<String>) {
    let home = harness::store::scratch("export-volumes", test);
    harness::store::kiln_in(&home).args(["volume", "create", "data", "--size", "64M"]).run().assert_code(0);
    let disk = home.join("volumes").join("data.ext2");
    let guest = guests::c("volume");
    let guest = guest.to_str().expect("UTF-8 path");
    let devices = devices(&disk);
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();

    let image = export(&format!("{test}-write"), &["-v", "data:/data", guest, "write", "/data"]);
    let write = boot(&image, machine, &devices);
    assert!(write.console.ends_with("0 failures\n"), "{}", write.console);
    assert_eq!(write.status, 1, "exit code 0 through isa-debug-exit\n{}", write.console);
    let fsck = Command::new("e2fsck").arg("-fn").arg(&disk).output().expect("e2fsck (e2fsprogs)");
    assert!(fsck.status.success(), "e2fsck -fn:\n{}", String::from_utf8_lossy(&fsck.stdout));

    // The next boot, of another image, at another mount path; its command line's arguments after `--` come before
    // the device words microvm appends, which are not the program's.
    let image = export(&format!("{test}-read"), &["-v", "data:/mnt/vol", guest, "write", "/nothing"]);
    let read = boot(&image, machine, &[&devices[..], &["-append", "-- read /mnt/vol"]].concat());
    assert!(read.console.ends_with("0 failures\n"), "{}", read.console);
    assert_eq!(read.status, 1, "{}", read.console);

    // Without the disk, the console says what is missing.
    let missing = boot(&image, machine, &["-device", EXIT_DEVICE]);
    assert!(missing.console.contains("kiln: the image mounts a volume at /mnt/vol but the host gave no virtio-blk"));
    assert_eq!(missing.status, 3, "{}", missing.console);
}

#[test]
fn a_volume_on_virtio_blk_written_by_one_boot_is_read_by_the_next() {
    if !qemu_available() {
        return;
    }
    volume_round_trip("microvm", "microvm,acpi=off", microvm_with_disk);
}

#[test]
fn a_volume_on_virtio_blk_pci_written_by_one_boot_is_read_by_the_next_under_q35() {
    if !qemu_available() {
        return;
    }
    volume_round_trip("q35", "q35", q35_with_disk);
}

/// A QEMU that is killed when dropped (a server does not end by itself).
struct Running(Option<std::process::Child>);

impl Running {
    fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("QEMU still runs")
    }

    /// Kills QEMU: its serial console, CR LF made LF.
    fn stop(mut self) -> String {
        let mut child = self.0.take().expect("QEMU still runs");
        let _ = child.kill();
        let out = child.wait_with_output().expect("qemu's output");
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The response to `GET /` on 127.0.0.1:`port`, if one came.
fn http_get(port: u16) -> Option<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: kiln\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Boots the flaky HTTP server (it answers two requests) exported, on `machine` with a user-networking card by
/// `card` (a QEMU device taking netdev n0) and the command line `append`; checks that 127.0.0.1's forwarded port
/// reaches it, twice, then no more.
fn serve_http_through_hostfwd(test: &str, machine: &str, card: &str, append: &str) {
    // flaky answers its first two requests, then stops answering (and runs on).
    let image = export(test, &[guests::c("flaky").to_str().expect("UTF-8 path"), "2"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let netdev = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80");
    let mut qemu = Command::new(QEMU);
    qemu.args(["-M", machine, "-cpu", "max", "-m", "128M", "-display", "none", "-no-reboot", "-nodefaults"])
        .args(["-serial", "stdio", "-global", "virtio-mmio.force-legacy=false", "-netdev", &netdev])
        .args(["-device", card, "-append", append])
        .arg("-kernel")
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut running = Running(Some(qemu.spawn().expect("start qemu")));
    let start = Instant::now();
    // QEMU takes connections at once and closes them while nothing listens in the guest: ask until one answers.
    let first = loop {
        if let Some(response) = http_get(port).filter(|r| !r.is_empty()) {
            break response;
        }
        assert!(start.elapsed() < QEMU_TIMEOUT, "no answer on port {port} within {QEMU_TIMEOUT:?}");
        if let Some(status) = running.child().try_wait().expect("wait for qemu") {
            panic!("QEMU ended ({status}) before the server answered");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(first.starts_with("HTTP/1.") && first.contains(" 200 "), "{first}");
    let second = http_get(port).unwrap_or_default();
    assert!(second.contains(" 200 "), "{second}");
    // Then nothing answers: the server closed its socket, and says so right after.
    let closed = Instant::now();
    while http_get(port).is_some_and(|r| !r.is_empty()) {
        assert!(closed.elapsed() < Duration::from_secs(30), "the server still answers after two requests");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let console = running.stop();
    assert!(console.contains("flaky: listening\n"), "{console}");
    assert!(console.contains("flaky: stopped answering\n"), "{console}");
}

/// Without `ip=`, the card's address comes from DHCP: QEMU's user networking leases 10.0.2.15, which `hostfwd`
/// forwards to.
#[test]
fn an_http_server_is_reached_through_qemu_user_networking_hostfwd_with_a_dhcp_lease() {
    if !qemu_available() {
        return;
    }
    serve_http_through_hostfwd("http", "microvm,acpi=off", "virtio-net-device,netdev=n0", "-- 2");
}

/// The same server under q35, its card a virtio-pci device (no option ROM: iPXE is not needed to boot a kernel).
#[test]
fn an_http_server_on_virtio_net_pci_is_reached_through_hostfwd_under_q35() {
    if !qemu_available() {
        return;
    }
    serve_http_through_hostfwd("http-pci", "q35", "virtio-net-pci,netdev=n0,romfile=", "-- 2");
}

/// The card's addresses as the program sees them (netlink): DHCP's lease without `ip=`, else the `ip=` word's.
#[test]
fn the_card_has_the_dhcp_lease_or_the_ip_words_address() {
    if !qemu_available() {
        return;
    }
    let image = export("netlink", &[guests::c("netlink").to_str().expect("UTF-8 path"), "all"]);
    for (append, address) in [("", "10.0.2.15/24"), ("ip=10.0.2.99::10.0.2.2:255.255.0.0", "10.0.2.99/16")] {
        let args = [
            "-global",
            "virtio-mmio.force-legacy=false",
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-device,netdev=n0",
            "-device",
            EXIT_DEVICE,
            "-append",
            append,
        ];
        let boot = boot(&image, "microvm,acpi=off", &args);
        let line = format!("eth0: inet {address} up");
        assert!(boot.console.lines().any(|l| l == line), "missing {line:?} with -append {append:?}:\n{}", boot.console);
        assert_eq!(boot.status, 1, "exit code 0\n{}", boot.console);
    }
}

#[test]
fn too_little_memory_is_said_on_the_console() {
    if !qemu_available() {
        return;
    }
    let hello = guests::c("hello");
    let image = export("small", &[hello.to_str().expect("UTF-8 path")]);
    // The boot layout (the main stack is 8 MiB) reaches past 8 MiB.
    let boot = boot_in(&image, "microvm", "8M", &["-device", EXIT_DEVICE]);
    assert!(boot.console.contains("kiln: this image needs more RAM than the loader gave"), "{}", boot.console);
    assert_eq!(boot.status, 3, "{}", boot.console);
}

#[test]
fn unsupported_exports_are_refused_in_one_line() {
    let hello = guests::c("hello");
    let image = out_dir("refused").join("app.elf");
    let out = kiln().args(["export", "-m", "1M", "-o"]).arg(&image).arg(&hello).run();
    assert_eq!(out.code, Some(125), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("--memory"), "{}", out.stderr_text());
    assert!(!image.exists(), "nothing is written for a refused export");
}

/// The DNS servers of the DHCP lease become the program's /etc/resolv.conf (QEMU's user networking names the one
/// its `dns=` option gives).
#[test]
fn the_dhcp_leases_dns_server_is_in_resolv_conf() {
    if !qemu_available() {
        return;
    }
    let image = export("resolv", &[guests::c("tree").to_str().expect("UTF-8 path"), "/etc"]);
    let args = [
        "-global",
        "virtio-mmio.force-legacy=false",
        "-netdev",
        "user,id=n0,dns=10.0.2.4",
        "-device",
        "virtio-net-device,netdev=n0",
        "-device",
        EXIT_DEVICE,
    ];
    let boot = boot(&image, "microvm,acpi=off", &args);
    let line = boot.console.lines().find(|l| l.starts_with("f resolv.conf ")).unwrap_or_default();
    assert!(line.contains("nameserver 10.0.2.4"), "/etc/resolv.conf is not the lease's:\n{}", boot.console);
    assert_eq!(boot.status, 1, "exit code 0\n{}", boot.console);
}

/// Whether `binary` is on PATH; says the test is skipped otherwise.
fn on_path(binary: &str) -> bool {
    let found =
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()));
    if !found {
        let test = std::thread::current().name().unwrap_or("unnamed").to_string();
        let _ = writeln!(std::io::stderr(), "{test}: skipped: {binary} is not on PATH (it is not packaged for Debian)");
    }
    found
}

/// Runs a hypervisor's `command` to its end (within [`QEMU_TIMEOUT`]): its stdout, the serial console, CR LF made LF.
fn run_to_end(mut command: Command) -> String {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().expect("start the hypervisor");
    while child.try_wait().expect("wait for the hypervisor").is_none() {
        if start.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("the hypervisor's output");
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// The exported hello's lines, in order, then the exit code's line (no exit device on these hypervisors).
#[track_caller]
fn assert_hello_then_exit_line(console: &str, argv: &[&str]) {
    let mut rest = console;
    for line in hello_lines(argv, &[]).iter().map(|l| format!("{l}\n")).chain(["kiln: exit 5\n".to_string()]) {
        let Some(at) = rest.find(&line) else { panic!("missing {line:?} (in order) on the console:\n{console}") };
        rest = &rest[at + line.len()..];
    }
}

/// Firecracker boots the PVH ELF from its JSON configuration, as docs/deploy.md gives it.
#[test]
fn hello_boots_under_firecracker() {
    if !on_path("firecracker") || !harness::kvm::available() {
        return;
    }
    let hello = guests::c("hello");
    let path = hello.to_str().expect("UTF-8 path");
    let image = export("firecracker", &[path, "5"]);
    let config = serde_json::json!({
        "boot-source": { "kernel_image_path": image, "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    let config_path = out_dir("firecracker").join("vm-config.json");
    std::fs::write(&config_path, config.to_string()).expect("write the configuration");
    let mut firecracker = Command::new("firecracker");
    firecracker.args(["--no-api", "--config-file"]).arg(&config_path);
    assert_hello_then_exit_line(&run_to_end(firecracker), &[path, "5"]);
}

/// Cloud Hypervisor boots the PVH ELF with `--kernel`, as docs/deploy.md gives it.
#[test]
fn hello_boots_under_cloud_hypervisor() {
    if !on_path("cloud-hypervisor") || !harness::kvm::available() {
        return;
    }
    let hello = guests::c("hello");
    let path = hello.to_str().expect("UTF-8 path");
    let image = export("cloud-hypervisor", &[path, "5"]);
    let mut ch = Command::new("cloud-hypervisor");
    ch.arg("--kernel").arg(&image).args([
        "--cpus",
        "boot=1",
        "--memory",
        "size=128M",
        "--serial",
        "tty",
        "--console",
        "off",
    ]);
    assert_hello_then_exit_line(&run_to_end(ch), &[path, "5"]);
}
