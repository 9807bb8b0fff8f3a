//! Kubernetes' runtime runs Kiln: Debian's containerd, started here with a configuration of its own (root, state and
//! socket in a scratch folder) and `containerd-shim-kiln-v2` on its PATH, imports an OCI archive made here (the static
//! C guests as the image's files) and runs it with `ctr run --runtime io.containerd.kiln.v2`: output through
//! containerd's FIFOs, exit codes as the program's (compared with the same guest run natively), `ctr task kill`
//! forwarding SIGTERM to a server that shuts down cleanly, its metrics, Exec refused, a program Kiln cannot boot
//! refused at create, ctr's stdin read by the program, and a terminal (`ctr run -t`, ctr on a pty the test holds);
//! and a pod's network made as a container runtime makes it (a namespace, Debian's CNI `bridge` and `host-local`
//! plugins run with CNI's environment and configuration, or `ptp` and `static` for an IPv6 /128), its Go HTTP server
//! reached from the host at the pod's address. Skipped, with the reason, where root, containerd, the CNI plugins or
//! KVM is missing.

#[allow(dead_code)]
#[path = "harness/container.rs"]
mod container;
#[allow(dead_code)]
#[path = "harness/guests.rs"]
mod guests;
#[allow(dead_code)]
#[path = "harness/kvm.rs"]
mod kvm;

use container::{file, layer, program, Entry};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RUNTIME: &str = "io.containerd.kiln.v2";
const IMAGE: &str = "docker.io/library/kiln-test:latest";
/// How long one `ctr` command may take before the test fails (a hang must not stall CI).
const CTR_TIMEOUT: Duration = Duration::from_secs(30);

/// A containerd of the test's own, stopped when dropped.
struct Containerd {
    dir: PathBuf,
    process: Child,
}

impl Containerd {
    /// Starts containerd in a fresh `dir` with the shim on its PATH; None (the skip reported) where it cannot run.
    fn start(test: &str) -> Option<Containerd> {
        if !kvm::available() {
            return None;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            kvm::skip("containerd needs root (mounts, namespaces)");
            return None;
        }
        if !Path::new("/usr/bin/containerd").exists() || !Path::new("/usr/bin/ctr").exists() {
            kvm::skip("containerd is not installed (scripts/setup.sh installs Debian's)");
            return None;
        }
        // Short: containerd's sockets live in it, and a socket path has at most 107 bytes.
        let dir = PathBuf::from(format!("/tmp/kiln-ctrd-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_containerd-shim-kiln-v2"),
            dir.join("bin/containerd-shim-kiln-v2"),
        )
        .unwrap();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[debug]\n  level = \"debug\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let path = format!("{}:{}", dir.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let process = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("KILN_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { dir, process };
        let started = Instant::now();
        while containerd.ctr(&["version"]).status.code() != Some(0) {
            assert!(started.elapsed() < Duration::from_secs(20), "containerd did not start:\n{}", containerd.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(containerd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("/usr/bin/ctr");
        command.arg("--address").arg(self.dir.join("c.sock")).args(["--namespace", "kiln-test"]).args(args);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    /// Runs `ctr ARGS` to its end (failing the test after [`CTR_TIMEOUT`]).
    fn ctr(&self, args: &[&str]) -> Output {
        let child = self.ctr_command(args).spawn().expect("run ctr");
        let pid = child.id();
        let (done, timed_out) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = done.send(());
            out
        });
        if timed_out.recv_timeout(CTR_TIMEOUT).is_err() {
            // SAFETY: kill(2) of the ctr process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("ctr {args:?} took more than {CTR_TIMEOUT:?}; containerd's log:\n{}", self.log());
        }
        waiter.join().unwrap().unwrap()
    }

    /// Imports an OCI archive of `layers` (one image, named [`IMAGE`]).
    fn import(&self, layers: &[Vec<u8>], cmd: &[&str]) {
        let layout = self.dir.join("layout");
        let config = container::config(layers, serde_json::json!({"Cmd": cmd, "Env": ["PATH=/bin"]}));
        container::oci_layout(&layout, &config, layers);
        // Named as containerd names what it imports.
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        index["manifests"][0]["annotations"] =
            serde_json::json!({"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "latest"});
        std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        let mut members = vec![("blobs/".to_string(), Entry::Dir), ("blobs/sha256/".to_string(), Entry::Dir)];
        for name in ["oci-layout", "index.json"] {
            members.push((name.to_string(), file(std::fs::read(layout.join(name)).unwrap())));
        }
        for blob in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            members.push((
                format!("blobs/sha256/{}", blob.file_name().to_string_lossy()),
                file(std::fs::read(blob.path()).unwrap()),
            ));
        }
        let archive = self.dir.join("image.tar");
        std::fs::write(&archive, layer(&members)).unwrap();
        let out = self.ctr(&["image", "import", "--snapshotter", "native", archive.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "ctr image import: {}", text(&out.stderr));
    }

    /// `ctr run --rm` of the image with the Kiln runtime.
    fn run(&self, id: &str, command: &[&str]) -> Output {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", IMAGE, id];
        args.extend(command);
        self.ctr(&args)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the containerd this test started; it leaves its shims, which end with their tasks.
        unsafe { libc::kill(self.process.id() as i32, libc::SIGTERM) };
        let _ = self.process.wait();
        if !std::thread::panicking() {
            let _ = Command::new("umount").arg("-R").arg(self.dir.join("root")).output();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The image: the static C guests in /bin.
fn guest_layer() -> Vec<u8> {
    layer(&[
        ("bin/", Entry::Dir),
        ("bin/hello", program(&guests::c("hello"))),
        ("bin/crash", program(&guests::c("crash"))),
        ("bin/waiter", program(&guests::c("waiter"))),
        ("bin/files", program(&guests::c("files"))),
        ("bin/limits", program(&guests::c("limits"))),
        ("bin/stdin", program(&guests::c("stdin"))),
        ("bin/script", Entry::File { mode: 0o755, data: b"#!/bin/sh\necho not a program\n".to_vec() }),
        ("tmp/", Entry::Dir),
    ])
}

#[test]
fn containerd_runs_containers_as_kiln_vms() {
    let Some(containerd) = Containerd::start("run") else { return };
    containerd.import(&[guest_layer()], &["/bin/hello"]);

    // Output and exit code, as the same guest gives natively.
    let native = Command::new(guests::c("hello")).arg("7").env_clear().output().unwrap();
    let run = containerd.run("hello", &["/bin/hello", "7"]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), native.status.code(), "stdout: {stdout}\nstderr: {stderr}\n{}", containerd.log());
    assert_eq!(run.status.code(), Some(7));
    assert!(stdout.starts_with("hello from kiln\nargc=2\nargv[0]=/bin/hello\nargv[1]=7\n"), "{stdout}");
    assert!(stdout.contains("=PATH=/bin\n"), "the image's environment: {stdout}");
    assert!(stderr.contains("hello: this line goes to stderr"), "{stderr}");

    // A bare name is found through the image's PATH.
    let run = containerd.run("bare", &["hello"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("argv[0]=hello\n"));

    // A crash: 139, as natively.
    let native = Command::new(guests::c("crash")).output().unwrap();
    let run = containerd.run("crash", &["/bin/crash"]);
    assert_eq!(native.status.code(), None, "natively it dies of a signal");
    assert_eq!(run.status.code(), Some(139), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("about to crash"));
    assert!(text(&run.stderr).contains("kiln: program crashed: SIGSEGV"), "{}", text(&run.stderr));

    // A program Kiln cannot boot is refused at create, with the reason.
    let run = containerd.run("script", &["/bin/script"]);
    assert_ne!(run.status.code(), Some(0));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("/bin/script: Kiln runs Linux x86-64 ELF programs"), "{stderr}");

    // process.rlimits' RLIMIT_NOFILE (ctr's default spec sets 1024) is the guest's.
    let run = containerd.run("limits", &["/bin/limits"]);
    assert_eq!(text(&run.stdout), "nofile 1024 1024\n", "{}", text(&run.stderr));

    // Bind mounts: a host file and a read-only host directory are copied into the VM (the guest checks both).
    let host = containerd.dir.join("host-data");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("sub/deep.txt"), "deep\n").unwrap();
    std::fs::write(containerd.dir.join("hello.txt"), "from the host\n").unwrap();
    let dir_mount = format!("type=bind,src={},dst=/srv/data,options=rbind:ro", host.display());
    let file_mount = format!(
        "type=bind,src={},dst=/srv/data/hello.txt,options=rbind:ro",
        containerd.dir.join("hello.txt").display()
    );
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", "--mount", &dir_mount];
    args.extend(["--mount", &file_mount, IMAGE, "mounts", "/bin/files", "with-host-files"]);
    let run = containerd.ctr(&args);
    assert_eq!(run.status.code(), Some(0), "{}{}", text(&run.stdout), text(&run.stderr));

    // A server: Exec refused while it runs, then `ctr task kill` (SIGTERM) reaches it and it shuts down cleanly.
    let mut server = containerd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--snapshotter",
            "native",
            IMAGE,
            "server",
            "/bin/waiter",
            "graceful",
        ])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().map(Result::unwrap);
    assert_eq!(first.as_deref(), Some("waiter: ready"), "{}", containerd.log());
    let exec = containerd.ctr(&["task", "exec", "--exec-id", "sh", "server", "/bin/hello"]);
    assert_ne!(exec.status.code(), Some(0));
    assert!(text(&exec.stderr).contains("exec is not supported: a Kiln VM runs one program"), "{}", text(&exec.stderr));
    let pids = containerd.ctr(&["task", "ps", "server"]);
    assert_eq!(pids.status.code(), Some(0), "{}", text(&pids.stderr));
    // The VM process is jailed (the shim runs as root here): a uid of its own, no capabilities, an empty root.
    let tasks = text(&containerd.ctr(&["task", "ls"]).stdout);
    let pid: u32 = tasks
        .lines()
        .find_map(|l| l.strip_prefix("server").and_then(|rest| rest.split_whitespace().next()?.parse().ok()))
        .unwrap_or_else(|| panic!("no pid for the server in {tasks}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if status.contains("\nSeccomp:\t2\n") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = 2_000_000_000 + pid;
    assert!(status.contains(&format!("\nUid:\t{id}\t{id}\t{id}\t{id}\n")), "{status}");
    assert!(status.contains("\nCapEff:\t0000000000000000\n"), "{status}");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root")).unwrap().collect();
    assert!(root.is_empty(), "the VM process's root is not empty: {root:?}");
    let metrics = containerd.ctr(&["task", "metrics", "server"]);
    let table = text(&metrics.stdout);
    assert_eq!(metrics.status.code(), Some(0), "{}", text(&metrics.stderr));
    assert!(table.contains("memory.usage_in_bytes") && table.contains("pids.current"), "{table}");
    let kill = containerd.ctr(&["task", "kill", "server"]);
    assert_eq!(kill.status.code(), Some(0), "{}", text(&kill.stderr));
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = server.wait().unwrap();
    assert_eq!(rest, ["waiter: stopped by signal 15"]);
    assert_eq!(status.code(), Some(0), "the server took SIGTERM and exited 0: {rest:?}");

    // stdin (ctr run's own): what ctr reads reaches the program, which waits for it in poll(2), then its end.
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native"];
    args.extend([IMAGE, "stdin", "/bin/stdin"]);
    let mut child = containerd.ctr_command(&args).stdin(Stdio::piped()).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        input.write_all(b"one\n").unwrap();
        // A pause: the program waits for more, then the next line and the end come.
        std::thread::sleep(Duration::from_millis(300));
        input.write_all(b"two\n").unwrap();
    });
    let run = wait_output(child, CTR_TIMEOUT);
    writer.join().unwrap();
    assert!(run.starts_with("Some(0)\nstdout: got: one\ngot: two\nstdin: end after 8 bytes\n"), "{run}");

    // Nothing is left: every task was deleted, and its shim ended.
    let tasks = containerd.ctr(&["task", "ls", "-q"]);
    assert_eq!(text(&tasks.stdout).trim(), "");
}

/// A pod's network as CNI makes it: a namespace, and one of Debian's containernetworking-plugins (`bridge` with
/// `host-local` addresses, or `ptp` with `static` ones) run in it as a container runtime runs them. CNI DEL and the
/// namespace's removal happen when dropped, whatever the test did.
struct CniPod {
    netns: String,
    config: String,
    env: Vec<(&'static str, String)>,
    /// The pod's addresses.
    ip: String,
    ip6: std::net::Ipv6Addr,
}

const CNI_BIN: &str = "/usr/lib/cni";

impl CniPod {
    /// A dual-stack pod on a bridge: an IPv4 /24 and an IPv6 /64 from `host-local`. None (the skip reported) where
    /// the plugins are missing. `n` tells apart the pods of tests that run at once (names, addresses and bridge).
    fn add(dir: &Path, n: u32) -> Option<CniPod> {
        let pid = std::process::id();
        // Dual-stack, as Kubernetes' dual-stack clusters give pods an address of each family.
        let ipam = serde_json::json!({
            "type": "host-local",
            "ranges": [
                [{"subnet": format!("10.{}.{}.0/24", 77 + n, pid % 250)}],
                [{"subnet": format!("fd{}:{:x}::/64", 77 + n, pid % 65_000)}],
            ],
            "dataDir": dir.join("cni-ipam"),
        });
        let bridge = serde_json::json!({"bridge": format!("kpn{n}-{}", pid % 100_000), "isGateway": true});
        CniPod::add_with(n, "bridge", bridge, ipam)
    }

    /// A pod of `plugin` (its own settings in `settings`) with the addresses `ipam` gives, the first of each family
    /// taken as the pod's.
    fn add_with(n: u32, plugin: &str, settings: serde_json::Value, ipam: serde_json::Value) -> Option<CniPod> {
        let ipam_plugin = ipam["type"].as_str().expect("an IPAM type").to_string();
        for needed in [plugin, &ipam_plugin] {
            if !Path::new(CNI_BIN).join(needed).exists() {
                kvm::skip(&format!(
                    "the CNI plugin {needed} is missing: containernetworking-plugins is not installed \
                     (scripts/setup.sh installs Debian's)"
                ));
                return None;
            }
        }
        let pid = std::process::id();
        let netns = format!("podnet{n}-{pid}");
        let made = Command::new("ip").args(["netns", "add", &netns]).output().expect("run ip");
        assert!(made.status.success(), "ip netns add: {}", text(&made.stderr));
        let mut config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("podnet{n}-{pid}"),
            "type": plugin,
            "ipam": ipam,
        });
        for (key, value) in settings.as_object().expect("the plugin's settings are an object") {
            config[key] = value.clone();
        }
        let env = vec![
            ("CNI_CONTAINERID", format!("podnet{n}-{pid}")),
            ("CNI_NETNS", format!("/var/run/netns/{netns}")),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", CNI_BIN.to_string()),
        ];
        let config = config.to_string();
        let mut pod = CniPod { netns, config, env, ip: String::new(), ip6: std::net::Ipv6Addr::UNSPECIFIED };
        let out = pod.plugin("ADD");
        assert!(out.status.success(), "CNI ADD: {}{}", text(&out.stdout), text(&out.stderr));
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("CNI ADD prints its result");
        let ips = result["ips"].as_array().expect("CNI gave addresses");
        let of_family = |v6: bool| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str()?.split('/').next())
                .find(|address| address.contains(':') == v6)
                .map(str::to_string)
        };
        pod.ip = of_family(false).expect("CNI gave an IPv4 address");
        pod.ip6 = of_family(true).expect("CNI gave an IPv6 address").parse().expect("an IPv6 address");
        Some(pod)
    }

    /// The pod's plugin as configured.
    fn config(&self) -> serde_json::Value {
        serde_json::from_str(&self.config).unwrap()
    }

    /// Runs the pod's plugin with `command`, as a runtime does: the settings in the environment, the network's
    /// configuration on stdin.
    fn plugin(&self, command: &str) -> Output {
        use std::io::Write;
        let plugin = self.config()["type"].as_str().unwrap().to_string();
        let mut child = Command::new(Path::new(CNI_BIN).join(plugin))
            .env("CNI_COMMAND", command)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the CNI plugin");
        child.stdin.take().unwrap().write_all(self.config.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// What the namespace looks like, for a failure's message: links with counters, the ingress filters.
    fn describe(&self) -> String {
        let mut out = String::new();
        for args in
            [vec!["-n", &self.netns, "-s", "link"], vec!["-n", &self.netns, "addr"], vec!["-n", &self.netns, "route"]]
        {
            let o = Command::new("ip").args(&args).output().unwrap();
            out += &format!("$ ip {}\n{}{}", args.join(" "), text(&o.stdout), text(&o.stderr));
        }
        for dev in ["eth0", "kiln-tap0"] {
            let o = Command::new("ip")
                .args(["netns", "exec", &self.netns, "tc", "-s", "filter", "show", "dev", dev, "ingress"])
                .output()
                .unwrap();
            out += &format!("$ tc -s filter show dev {dev} ingress\n{}{}", text(&o.stdout), text(&o.stderr));
        }
        out
    }
}

impl Drop for CniPod {
    fn drop(&mut self) {
        let out = self.plugin("DEL");
        if !out.status.success() {
            eprintln!("CNI DEL failed: {}{}", text(&out.stdout), text(&out.stderr));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        if let Some(bridge) = self.config()["bridge"].as_str() {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
    }
}

/// `curl http://ADDR/` until it answers or `deadline` passes; every attempt's outcome, for the failure message.
fn fetch_until(url: &str, deadline: Instant) -> Result<String, Vec<String>> {
    let mut seen = Vec::new();
    loop {
        let out = Command::new("curl").args(["-sS", "--max-time", "2", url]).output().expect("run curl");
        if out.status.success() {
            return Ok(text(&out.stdout));
        }
        seen.push(format!("{:?}: {}", out.status.code(), text(&out.stderr).trim()));
        if Instant::now() > deadline {
            return Err(seen);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn containerd_gives_a_pod_its_network() {
    let Some(containerd) = Containerd::start("cni") else { return };
    if !Path::new("/usr/bin/curl").exists() {
        kvm::skip("curl is not installed (scripts/setup.sh installs it)");
        return;
    }
    let Some(pod) = CniPod::add(&containerd.dir, 0) else { return };
    let server = layer(&[
        ("bin/", Entry::Dir),
        ("bin/server", program(&guests::go())),
        ("bin/netpeer", program(&guests::c("netpeer"))),
    ]);
    containerd.import(&[server], &["/bin/server", "serve", "8080"]);

    let with_ns = format!("network:/var/run/netns/{}", pod.netns);
    // Go's runtime wants more than Kiln's default 64 MiB: the memory limit is the guest's memory.
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", "--memory-limit", "268435456"];
    args.extend(["--with-ns", &with_ns, "--annotation", "io.kiln.pod-network=tap"]);
    args.extend([IMAGE, "podweb", "/bin/server", "serve", "8080"]);
    let run = containerd.ctr_command(&args).spawn().unwrap();
    let url = format!("http://{}:8080/", pod.ip);
    let fetched = fetch_until(&url, Instant::now() + Duration::from_secs(30));
    let tap_in_use = pod.describe();
    // A second container cannot take the pod's address from the first, which keeps serving.
    let mut second = args.clone();
    let id = second.len() - 4;
    second[id] = "podweb2";
    let refused = containerd.ctr(&second);
    let again = fetch_until(&url, Instant::now() + Duration::from_secs(5));
    let _ = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "podweb"]);
    let ran = wait_output(run, Duration::from_secs(20));
    let body = fetched.unwrap_or_else(|seen| {
        panic!(
            "the guest at {url} never answered; curl said ({} tries, the last ones):\n{}\nthe namespace:\n{tap_in_use}\n\
             ctr run: {ran}\ncontainerd:\n{}",
            seen.len(),
            seen[seen.len().saturating_sub(3)..].join("\n"),
            containerd.log()
        )
    });
    assert_eq!(body, "hello from kiln\n");
    assert!(tap_in_use.contains("kiln-tap0") && tap_in_use.contains("mirred"), "{tap_in_use}");
    assert_ne!(refused.status.code(), Some(0));
    assert!(text(&refused.stderr).contains("the pod's network is taken"), "{}", text(&refused.stderr));
    assert_eq!(again.as_deref(), Ok("hello from kiln\n"), "the first container kept the network");

    // The VM gave the namespace back: no tap, no redirection on eth0.
    let after = pod.describe();
    assert!(!after.contains("kiln-tap0:") && !after.contains("mirred"), "{after}");

    // The next container of the pod takes it, and its IPv6 address too: an echo server on [::]:7070 answers the host
    // at the pod's IPv6 address.
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", "--with-ns", &with_ns];
    args.extend([
        "--annotation",
        "io.kiln.pod-network=tap",
        IMAGE,
        "podecho",
        "/bin/netpeer",
        "serve",
        "7070",
        "1",
        "::",
    ]);
    let run = containerd.ctr_command(&args).spawn().unwrap();
    let address = std::net::SocketAddr::from((pod.ip6, 7070));
    let deadline = Instant::now() + Duration::from_secs(30);
    let echoed = loop {
        use std::io::{Read, Write};
        let attempt = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"over IPv6")?;
            c.shutdown(std::net::Shutdown::Write)?;
            let mut echo = String::new();
            c.read_to_string(&mut echo)?;
            Ok(echo)
        });
        match attempt {
            Ok(echo) => break Ok(echo),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let in_use = pod.describe();
    let ran = wait_output(run, Duration::from_secs(20));
    assert_eq!(echoed.as_deref().ok(), Some("over IPv6"), "{echoed:?}\nthe namespace:\n{in_use}\nctr run: {ran}");
    assert!(ran.starts_with("Some(0)"), "the echo server ended after its connection: {ran}");
}

/// Sends `message` to `address`, half-closes and reads the echo back (an error for a refused or broken connection).
fn echo_at(address: std::net::SocketAddr, message: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(message.as_bytes())?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut echo = String::new();
    c.read_to_string(&mut echo)?;
    Ok(echo)
}

/// A pod's containers share its network (the default, `io.kiln.pod-network=shared`): each VM on the user-mode network
/// in the pod's namespace, its listening ports published there as it listens. An echo server and a Go HTTP server run
/// side by side in one pod; the host reaches the echo server at the pod's addresses (IPv4 and IPv6), two client
/// containers reach it on 127.0.0.1 and on the pod's address, and a connection made from inside the pod's namespace to
/// its loopback (what `kubectl port-forward` does) reaches the HTTP server; a second listener on a port the pod has is
/// refused with EADDRINUSE.
#[test]
fn containerd_runs_a_pods_containers_side_by_side() {
    let Some(containerd) = Containerd::start("pod") else { return };
    for tool in ["/usr/bin/curl", "/usr/bin/nsenter"] {
        if !Path::new(tool).exists() {
            kvm::skip(&format!("{tool} is not installed (scripts/setup.sh installs it)"));
            return;
        }
    }
    let Some(pod) = CniPod::add(&containerd.dir, 1) else { return };
    let image = layer(&[
        ("bin/", Entry::Dir),
        ("bin/server", program(&guests::go())),
        ("bin/netpeer", program(&guests::c("netpeer"))),
    ]);
    containerd.import(&[image], &["/bin/netpeer"]);
    let with_ns = format!("network:/var/run/netns/{}", pod.netns);
    let in_pod = |id: &str, memory: &str, command: &[&str]| {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", "--memory-limit", memory];
        args.extend(["--with-ns", with_ns.as_str(), IMAGE, id]);
        args.extend(command);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let spawn = |args: &[String]| containerd.ctr_command(&args.iter().map(String::as_str).collect::<Vec<_>>()).spawn();
    let echo = spawn(&in_pod("podecho", "67108864", &["/bin/netpeer", "serve", "7070", "4"])).unwrap();
    let web = spawn(&in_pod("podweb", "268435456", &["/bin/server", "serve", "8080"])).unwrap();

    // The host at the pod's address: the echo server's port was published when it listened.
    let echo_until = |address: std::net::SocketAddr, message: &str, deadline: Instant| loop {
        match echo_at(address, message) {
            Ok(echo) => break Ok(echo),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let from_host = echo_until(std::net::SocketAddr::new(pod.ip.parse().unwrap(), 7070), "from the host", deadline);
    // Retried too: the pod's IPv6 address may still be tentative (duplicate address detection) when IPv4 answers.
    let from_host6 = echo_until(std::net::SocketAddr::from((pod.ip6, 7070)), "over IPv6", deadline);
    // The pod's other containers, on its loopback and at its address.
    // Run to their end; a hang is killed after 30 s and reported with what it printed.
    let run = |args: Vec<String>| wait_output(spawn(&args).unwrap(), CTR_TIMEOUT);
    let on_loopback = run(in_pod("podcli1", "67108864", &["/bin/netpeer", "fetch", "127.0.0.1", "7070", "100000"]));
    let at_address = run(in_pod("podcli2", "67108864", &["/bin/netpeer", "fetch", &pod.ip, "7070", "100000"]));
    // A port the pod has (the web server's) is taken for the pod's other containers too.
    let taken = run(in_pod("podtaken", "67108864", &["/bin/netpeer", "serve", "8080", "1"]));
    // kubectl port-forward: a connection from inside the pod's namespace to 127.0.0.1.
    let netns_path = format!("--net=/var/run/netns/{}", pod.netns);
    let deadline = Instant::now() + Duration::from_secs(20);
    let forwarded = loop {
        let out = Command::new("nsenter")
            .args([netns_path.as_str(), "curl", "-sS", "--max-time", "2", "http://127.0.0.1:8080/"])
            .output()
            .expect("run nsenter");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let web_from_host = fetch_until(&format!("http://{}:8080/", pod.ip), Instant::now() + Duration::from_secs(10));
    let in_use = pod.describe();
    let _ = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "podweb"]);
    let echo_ran = wait_output(echo, Duration::from_secs(20));
    let web_ran = wait_output(web, Duration::from_secs(20));
    let context = format!("the namespace:\n{in_use}\necho server: {echo_ran}\nweb server: {web_ran}");

    assert_eq!(from_host.as_deref().ok(), Some("from the host"), "{from_host:?}\n{context}");
    assert_eq!(from_host6.as_deref().ok(), Some("over IPv6"), "{from_host6:?}\n{context}");
    assert!(on_loopback.starts_with("Some(0)"), "on the loopback: {on_loopback}\n{context}");
    assert!(at_address.starts_with("Some(0)"), "at the pod's address: {at_address}\n{context}");
    assert!(taken.starts_with("Some(1)") && taken.contains("Address in use"), "{taken}");
    let answer = (text(&forwarded.stdout), text(&forwarded.stderr));
    assert_eq!(answer.0, "hello from kiln\n", "on the pod's loopback: {answer:?}\n{context}");
    assert_eq!(web_from_host.as_deref(), Ok("hello from kiln\n"), "{context}");
    assert!(echo_ran.starts_with("Some(0)"), "the echo server ended after its four connections: {echo_ran}");
    assert!(!in_use.contains("kiln-tap0:") && !in_use.contains("mirred"), "no tap on the shared network: {in_use}");
}

/// A pod's namespace as Calico's CNI plugin makes it, by hand: a veth whose pod side has a /32 address and no
/// network, a link-scope route to a gateway (169.254.1.1) that the host side answers ARP for (proxy ARP), and, instead
/// of a default route, one CNI route through that gateway to a network (a TEST-NET, an address of which the host side
/// has). Removed when dropped.
struct CalicoPod {
    netns: String,
    host_veth: String,
    ip: String,
    /// The host's address on the routed network.
    routed: String,
}

impl CalicoPod {
    /// `n` tells apart the pods of tests that run at once (names, addresses and routed network: TEST-NET-2 for 2,
    /// TEST-NET-3 for 3).
    fn add(n: u32) -> CalicoPod {
        let pid = std::process::id();
        let network = if n == 2 { "198.51.100" } else { "203.0.113" };
        let pod = CalicoPod {
            netns: format!("podnet{n}-{pid}"),
            host_veth: format!("kc{n}-{}", pid % 100_000),
            ip: format!("10.{}.{}.5", 91 + n, pid % 250),
            routed: format!("{network}.{}", 1 + pid % 250),
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(out.status.success(), "ip {}: {}", args.join(" "), text(&out.stderr));
        };
        let (ns, veth) = (pod.netns.as_str(), pod.host_veth.as_str());
        ip(&["netns", "add", ns]);
        ip(&["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        ip(&["-n", ns, "addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
        ip(&["-n", ns, "route", "add", &format!("{network}.0/24"), "via", "169.254.1.1", "dev", "eth0"]);
        ip(&["link", "set", veth, "up"]);
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{veth}/proxy_arp"), "1").unwrap();
        ip(&["route", "add", &format!("{}/32", pod.ip), "dev", veth]);
        ip(&["addr", "add", &format!("{}/32", pod.routed), "dev", veth]);
        pod
    }

    /// The namespace's links, addresses, routes and ingress filters, for a failure's message.
    fn describe(&self) -> String {
        let mut out = String::new();
        for args in [vec!["-n", &self.netns, "link"], vec!["-n", &self.netns, "addr"], vec!["-n", &self.netns, "route"]]
        {
            let o = Command::new("ip").args(&args).output().unwrap();
            out += &format!("$ ip {}\n{}{}", args.join(" "), text(&o.stdout), text(&o.stderr));
        }
        let o = Command::new("ip")
            .args(["netns", "exec", &self.netns, "tc", "filter", "show", "dev", "eth0", "ingress"])
            .output()
            .unwrap();
        out + &format!("$ tc filter show dev eth0 ingress\n{}{}", text(&o.stdout), text(&o.stderr))
    }
}

impl Drop for CalicoPod {
    fn drop(&mut self) {
        for args in [["link", "del", &self.host_veth], ["netns", "del", &self.netns]] {
            let _ = Command::new("ip").args(args).output();
        }
    }
}

/// The shared pod network takes whatever the pod's namespace routes: a /32 address with an on-link gateway, as
/// Calico gives, and a CNI route through that gateway (no default route at all). A container reaches a host server
/// on the routed network, and the host, from an address on that network, reaches a server container at the pod's
/// address.
#[test]
fn containerd_pods_take_calico_style_addresses_and_cni_routes() {
    on_a_calico_style_pod("calico", 2, false);
}

/// The same pod in tap mode (`io.kiln.pod-network=tap`): the VM takes the /32 address, the link-scope route to the
/// gateway and the CNI route through it, and routes by them itself (it asks for the gateway's hardware address with
/// ARP, which the host answers by proxy); with no default route, an address no route leads to is unreachable
/// (ENETUNREACH), as it is in the namespace.
#[test]
fn containerd_tap_pods_take_calico_style_addresses_and_cni_routes() {
    on_a_calico_style_pod("calicotap", 3, true);
}

fn on_a_calico_style_pod(test: &str, n: u32, tap: bool) {
    let Some(containerd) = Containerd::start(test) else { return };
    if !Path::new("/usr/bin/curl").exists() {
        kvm::skip("curl is not installed (scripts/setup.sh installs it)");
        return;
    }
    let pod = CalicoPod::add(n);
    let image = layer(&[
        ("bin/", Entry::Dir),
        ("bin/server", program(&guests::go())),
        ("bin/netpeer", program(&guests::c("netpeer"))),
    ]);
    containerd.import(&[image], &["/bin/netpeer"]);
    // An echo server of the host's on the routed network, for one connection.
    let listener = std::net::TcpListener::bind((pod.routed.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let host_echo = echo_once(listener);
    let with_ns = format!("network:/var/run/netns/{}", pod.netns);
    let in_pod = |id: &str, command: &[&str]| {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", "--with-ns", &with_ns];
        if tap {
            args.extend(["--annotation", "io.kiln.pod-network=tap"]);
        }
        args.extend(["--memory-limit", "268435456", IMAGE, id]);
        args.extend(command);
        containerd.ctr_command(&args).spawn().unwrap()
    };
    let fetch = ["/bin/netpeer", "fetch", &pod.routed, &port, "10000"];
    let fetched = wait_output(in_pod("calicocli", &fetch), CTR_TIMEOUT);
    // TEST-NET-1, which no route of the pod's leads to.
    let unroutable = ["/bin/netpeer", "refused", "192.0.2.1", "80"];
    let unreachable = tap.then(|| wait_output(in_pod("calicounr", &unroutable), CTR_TIMEOUT));

    let web = in_pod("calicoweb", &["/bin/server", "serve", "8080"]);
    let url = format!("http://{}:8080/", pod.ip);
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "2", "--interface", &pod.routed, &url])
            .output()
            .expect("run curl");
        if out.status.success() || Instant::now() > deadline {
            break (out.status.code(), text(&out.stdout), text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let in_use = pod.describe();
    let _ = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "calicoweb"]);
    let web_ran = wait_output(web, Duration::from_secs(20));
    let context = format!("the namespace:\n{in_use}\nweb server: {web_ran}");
    assert!(fetched.starts_with("Some(0)"), "the container on the routed network: {fetched}\n{context}");
    let peer = host_echo.join().unwrap().map(|p| p.ip().to_string());
    assert_eq!(peer, Some(pod.ip.clone()), "the container's connection came from the pod's address");
    assert_eq!(answered.1, "hello from kiln\n", "{answered:?}\n{context}");
    if let Some(unreachable) = unreachable {
        // musl's words for ENETUNREACH.
        assert!(unreachable.contains("connect: Network unreachable"), "no route to TEST-NET-1: {unreachable}");
        assert!(in_use.contains("kiln-tap0") && in_use.contains("mirred"), "the VM took the pod's address: {in_use}");
    }
}

/// Echoes one connection `listener` accepts within [`CTR_TIMEOUT`] (until its peer half-closes); the peer's address,
/// none if no connection came.
fn echo_once(listener: std::net::TcpListener) -> std::thread::JoinHandle<Option<std::net::SocketAddr>> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let deadline = Instant::now() + CTR_TIMEOUT;
        let (mut c, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(_) if Instant::now() > deadline => return None,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        let _ = c.write_all(&got);
        Some(peer)
    })
}

/// A tap pod whose IPv6 address is a /128, as routed pod networks (Calico, Cilium) give one: CNI's `ptp` plugin with
/// `static` addresses, an IPv4 /24 and an IPv6 /128 on a veth pair, the gateways' addresses on the host's end and a
/// route to each gateway on the link (no IPv6 prefix is on the link: every IPv6 packet leaves through that route). The
/// VM takes the /128 and the route: it reaches an echo server of the host's at the IPv6 gateway's address, from the
/// pod's address, and the host reaches an echo server in the VM at the pod's IPv6 address.
#[test]
fn containerd_tap_pods_take_a_128_ipv6_address() {
    let Some(containerd) = Containerd::start("tap128") else { return };
    let (n, pid) = (4, std::process::id());
    let (net4, net6) = (format!("10.{}.{}", 77 + n, pid % 250), format!("fd{}:{:x}:", 77 + n, pid % 65_000));
    let ipam = serde_json::json!({
        "type": "static",
        "addresses": [
            {"address": format!("{net4}.5/24"), "gateway": format!("{net4}.1")},
            {"address": format!("{net6}:5/128"), "gateway": format!("{net6}:1")},
        ],
    });
    let Some(pod) = CniPod::add_with(n, "ptp", serde_json::json!({"ipMasq": false}), ipam) else { return };
    let made = pod.describe();
    assert!(made.contains(&format!("inet6 {}/128 ", pod.ip6)), "CNI gave the pod a /128: {made}");
    let image = layer(&[("bin/", Entry::Dir), ("bin/netpeer", program(&guests::c("netpeer")))]);
    containerd.import(&[image], &["/bin/netpeer"]);
    let with_ns = format!("network:/var/run/netns/{}", pod.netns);
    let in_pod = |id: &str, command: &[&str]| {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", "--with-ns", &with_ns];
        args.extend(["--annotation", "io.kiln.pod-network=tap", IMAGE, id]);
        args.extend(command);
        containerd.ctr_command(&args).spawn().unwrap()
    };

    // Out of the VM: to a host server at the gateway's address (on all the host's addresses: the gateway's may still
    // be tentative when the listener is made).
    let listener = std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let host_echo = echo_once(listener);
    let gateway6 = format!("{net6}:1");
    let fetched = wait_output(in_pod("tap128cli", &["/bin/netpeer", "fetch", &gateway6, &port, "10000"]), CTR_TIMEOUT);
    let peer = host_echo.join().unwrap().map(|p| p.ip());

    // Into the VM: an echo server on [::]:7070, for two connections, at the pod's IPv6 address; the namespace is
    // looked at between them, while the VM has it.
    let server = in_pod("tap128echo", &["/bin/netpeer", "serve", "7070", "2", "::"]);
    let at_pod = std::net::SocketAddr::from((pod.ip6, 7070));
    let deadline = Instant::now() + CTR_TIMEOUT;
    let echoed = loop {
        match echo_at(at_pod, "to a /128") {
            Ok(echo) => break Ok(echo),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let in_use = pod.describe();
    let again = echo_at(at_pod, "again");
    if again.is_err() {
        let _ = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "tap128echo"]);
    }
    let served = wait_output(server, Duration::from_secs(20));
    let context = format!("the namespace:\n{in_use}\nctr run: {served}\ncontainerd:\n{}", containerd.log());
    assert!(fetched.starts_with("Some(0)"), "the VM to the host's IPv6 gateway: {fetched}\n{made}");
    assert_eq!(peer, Some(std::net::IpAddr::V6(pod.ip6)), "the VM's connection came from the pod's /128");
    assert_eq!(echoed.as_deref().ok(), Some("to a /128"), "{echoed:?}\n{context}");
    assert_eq!(again.as_deref().ok(), Some("again"), "{again:?}\n{context}");
    assert!(in_use.contains("kiln-tap0") && in_use.contains("mirred"), "the VM took the pod's address: {in_use}");
    assert!(served.starts_with("Some(0)"), "the echo server ended after its connections: {context}");
}

/// A writable mount of a host directory (an `emptyDir`) is a volume of the container's own: a container writes files
/// and directories into it (the volume guest's `write`), and when it ends they are in the host directory, beside the
/// file the directory held before (copied in at create); the next container on the directory reads them all (`read`:
/// bytes, modes, names, a 64 MiB ext2 volume as the annotation sized it). While one container has the directory, a
/// second one mounting it writable is refused with the reason.
#[test]
fn containerd_gives_writable_mounts_volumes_written_back() {
    let Some(containerd) = Containerd::start("rw") else { return };
    let image = layer(&[
        ("bin/", Entry::Dir),
        ("bin/volume", program(&guests::c("volume"))),
        ("bin/waiter", program(&guests::c("waiter"))),
    ]);
    containerd.import(&[image], &["/bin/volume"]);
    let host = containerd.dir.join("empty-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("seed.txt"), "from the host\n").unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", host.display());
    let with_volume = |id: &str, command: &[&str]| {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", "--mount", &mount];
        args.extend(["--annotation", "io.kiln.volume-size./data=64M", IMAGE, id]);
        args.extend(command);
        containerd.ctr_command(&args).spawn().unwrap()
    };

    let wrote = wait_output(with_volume("volwrite", &["/bin/volume", "write", "/data"]), CTR_TIMEOUT);
    assert!(wrote.starts_with("Some(0)"), "{wrote}\ncontainerd:\n{}", containerd.log());
    let on_host = |rest: &str| std::fs::read(host.join(rest)).map_err(|e| format!("{rest}: {e}"));
    assert_eq!(on_host("dir/sub/hello.txt").as_deref(), Ok(&b"hello, volume\n"[..]), "written back");
    assert_eq!(on_host("big.bin").map(|b| b.len()), Ok((3 << 20) + 3));
    assert_eq!(on_host("seed.txt").as_deref(), Ok(&b"from the host\n"[..]), "copied in, kept");
    assert!(!host.join("gone").exists() && !host.join("lost+found").exists());

    let read = wait_output(with_volume("volread", &["/bin/volume", "read", "/data"]), CTR_TIMEOUT);
    assert!(read.starts_with("Some(0)"), "the next container reads what the first wrote: {read}");

    // One container at a time: a second one's writable mount of the directory is refused while the first runs.
    let holder = with_volume("volhold", &["/bin/waiter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text(&containerd.ctr(&["task", "ls"]).stdout).contains("RUNNING") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = wait_output(with_volume("volsecond", &["/bin/volume", "read", "/data"]), CTR_TIMEOUT);
    let _ = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "volhold"]);
    let held = wait_output(holder, Duration::from_secs(20));
    assert!(!refused.starts_with("Some(0)"), "{refused}");
    assert!(refused.contains("is in use by another Kiln container"), "{refused}\nthe holder: {held}");
}

/// A child's exit and output, killed after `limit` (for a failure message, never a hang).
fn wait_output(mut child: Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    format!("{:?}\nstdout: {}\nstderr: {}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `ctr run -t` as a user at a terminal runs it: ctr's own streams are a pseudo-terminal whose master the test holds
/// (ctr puts it in raw mode and passes its window size on); the program sees a terminal of that size, what is typed
/// reaches it through its terminal's line discipline (echoed, CR made a newline), and it ends when told.
#[test]
fn containerd_gives_a_terminal() {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    let Some(containerd) = Containerd::start("tty") else { return };
    containerd.import(&[guest_layer()], &["/bin/hello"]);
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize { ws_row: 30, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two descriptors; the window size is read.
    let made = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
    assert_eq!(made, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both are open descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut command = containerd.ctr_command(&["run", "--rm", "-t", "--runtime", RUNTIME, "--snapshotter", "native"]);
    command.args([IMAGE, "tty", "/bin/stdin", "tty"]);
    command.stdin(slave.try_clone().unwrap()).stdout(slave.try_clone().unwrap()).stderr(slave);
    // ctr wants its terminal to be its controlling one, as a shell gives it.
    // SAFETY: setsid(2) and ioctl(2) are async-signal-safe; they run in the child between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY as _, 0);
            Ok(())
        });
    }
    let mut ctr = command.spawn().unwrap();
    drop(command);
    // Everything the master side shows, gathered by a thread (reads end once ctr's side closes).
    let shown = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let gathered = shown.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            gathered.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let until = |what: &str, limit: Duration| {
        let deadline = Instant::now() + limit;
        while !shown.lock().unwrap().contains(what) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        shown.lock().unwrap().contains(what)
    };
    let mut typing = std::fs::File::from(master.try_clone().unwrap());
    let ready = until("tty: ready", CTR_TIMEOUT);
    // ctr passes the window's size on once the task started: asked until the program sees it.
    let mut sized = false;
    for _ in 0..20 {
        typing.write_all(b"size\r").unwrap();
        if until("rows=30 cols=100", Duration::from_millis(500)) {
            sized = true;
            break;
        }
    }
    typing.write_all(b"hi there\r").unwrap();
    let echoed = until("got: hi there", Duration::from_secs(10));
    typing.write_all(b"quit\r").unwrap();
    let deadline = Instant::now() + CTR_TIMEOUT;
    let status = loop {
        if let Some(status) = ctr.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = ctr.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let shown = shown.lock().unwrap().clone();
    assert!(ready, "the program never said it was ready: {shown:?}\n{}", containerd.log());
    assert!(sized, "the program never saw the window's size: {shown:?}");
    // The container's terminal ends each line with CR LF (ctr's own, the test's pty, adds a CR of its own).
    assert!(shown.contains("tty: in=1 out=1 rows=30 cols=100\r"), "a terminal: {shown:?}");
    assert!(echoed && shown.contains("hi there\r"), "typed text is echoed, then read as a line: {shown:?}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{shown:?}");
}
