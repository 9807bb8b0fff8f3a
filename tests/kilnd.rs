//! kilnd (`kiln daemon`), through its real Unix socket: every route of its API (docs/api.md), bad bodies and unknown
//! ids refused with a status and a message, instances run on kilnd's threads through the real VMM (started, their
//! output logged, stopped, killed, removed), and kilnd's own stop. Each test starts its own kilnd on a store of its
//! own.

#[allow(dead_code)]
mod harness;

use harness::store::{kiln_in, scratch};
use harness::{guests, kvm};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A kilnd of the test's own, stopped (SIGTERM) when dropped.
struct Kilnd {
    child: Child,
    home: PathBuf,
}

impl Kilnd {
    fn start(test: &str) -> Kilnd {
        let home = scratch("kilnd", test);
        Kilnd::start_in(home)
    }

    fn start_in(home: PathBuf) -> Kilnd {
        Kilnd::start_with(home, &[])
    }

    fn start_with(home: PathBuf, args: &[&str]) -> Kilnd {
        Kilnd::start_logging(home, args, "info")
    }

    /// With `log` as its `KILN_LOG`.
    fn start_logging(home: PathBuf, args: &[&str], log: &str) -> Kilnd {
        let err = std::fs::File::create(home.with_extension("kilnd.err")).unwrap();
        let mut command = kiln_in(&home).arg("daemon").args(args).env("KILN_LOG", log).into_command();
        let child = command.stdout(Stdio::null()).stderr(err).spawn().unwrap();
        let kilnd = Kilnd { child, home };
        let start = Instant::now();
        while kilnd.try_call("GET", "/version", "").is_none() {
            assert!(start.elapsed() < Duration::from_secs(30), "kilnd did not answer within 30 s: {}", kilnd.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        kilnd
    }

    fn socket(&self) -> PathBuf {
        self.home.join("kilnd.sock")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.home.with_extension("kilnd.err")).unwrap_or_default()
    }

    fn try_call(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        http(&self.socket(), method, path, body.as_bytes())
    }

    /// One request; its status and body.
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_call(method, path, body).unwrap_or_else(|| panic!("{method} {path}: no answer; {}", self.stderr()))
    }

    /// A request that must succeed with `status`; its body as JSON (null when empty).
    fn ok(&self, method: &str, path: &str, body: &str, status: u16) -> serde_json::Value {
        let (got, text) = self.call(method, path, body);
        assert_eq!(got, status, "{method} {path} {body}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// A request that must be refused with `status`; its message.
    fn refused(&self, method: &str, path: &str, body: &str, status: u16) -> String {
        let (got, text) = self.call(method, path, body);
        assert_eq!(got, status, "{method} {path} {body}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let message = error["message"].as_str().unwrap_or_else(|| panic!("no message in {text}")).to_string();
        assert!(!message.is_empty() && !message.contains('\n'), "{message:?}");
        message
    }

    fn create(&self, body: serde_json::Value) -> String {
        self.ok("POST", "/instances", &body.to_string(), 201)["id"].as_str().unwrap().to_string()
    }

    fn instance(&self, id: &str) -> serde_json::Value {
        self.ok("GET", &format!("/instances/{id}"), "", 200)
    }

    /// Waits up to 30 s for the instance's record to say exited; returns it.
    fn wait_exited(&self, id: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let record = self.instance(id);
            if record["state"] == "exited" {
                return record;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{id} still runs: {record}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to 30 s for the instance's log to contain `text`.
    fn wait_log(&self, id: &str, text: &str) -> String {
        let start = Instant::now();
        loop {
            let (status, log) = self.call("GET", &format!("/instances/{id}/logs"), "");
            if status == 200 && log.contains(text) {
                return log;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{id}'s log has no {text:?}: {log:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and its exit status (within 60 s).
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the child this test started, which has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("kilnd did not stop within 60 s of SIGTERM: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// One HTTP/1.1 request on the Unix socket; none if nothing answers there.
fn http(socket: &Path, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: kilnd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    // kilnd may answer (and close) before it has read all of a body too big to take: its answer is still there.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    // After such a body, the end may come as a reset: what came before it counts.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[test]
fn the_api_refuses_bad_requests_and_unknown_ids_with_a_message() {
    let kilnd = Kilnd::start("refusals");
    let mode = std::fs::metadata(kilnd.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the user's only");
    let version = kilnd.ok("GET", "/version", "", 200);
    assert_eq!(version["api_version"], 1);
    assert_eq!(version["pid"], kilnd.child.id());
    assert_eq!(kilnd.ok("GET", "/instances", "", 200), serde_json::json!([]));

    for (method, path) in [
        ("GET", "/instances/nope"),
        ("GET", "/instances/nope/logs"),
        ("POST", "/instances/nope/stop"),
        ("POST", "/instances/nope/kill"),
        ("DELETE", "/instances/nope"),
    ] {
        assert_eq!(kilnd.refused(method, path, "", 404), "no such instance: nope");
    }
    assert!(kilnd.refused("GET", "/nowhere", "", 404).starts_with("no route GET /nowhere"));
    assert!(kilnd.refused("PUT", "/instances", "", 404).starts_with("no route PUT /instances"));
    assert!(kilnd.refused("GET", "/instances?all=maybe", "", 400).contains("is not true or false"));
    assert!(kilnd.refused("POST", "/instances/nope/stop?t=soon", "", 400).contains("is not a number"));

    let program = guests::c("hello");
    let program = program.to_str().unwrap();
    let bad_bodies = [
        ("", "the body is not a create request: EOF while parsing"),
        ("{\"image\":", "the body is not a create request: EOF while parsing"),
        ("[1,2]", "the body is not a create request: invalid type"),
        ("{\"image\":5}", "the body is not a create request: invalid type"),
        (r#"{"image":"x","memroy":"1M"}"#, "the body is not a create request: unknown field `memroy`"),
        ("{}", "image: missing"),
        (r#"{"image":"./hello"}"#, "image: './hello' is relative"),
        (r#"{"image":"/no/such/program"}"#, "/no/such/program: no such file"),
        (r#"{"image":"noimage"}"#, "noimage: no such image"),
        (&format!(r#"{{"image":"{program}","publish":["80:80","eighty"]}}"#), "publish[1]: "),
        (&format!(r#"{{"image":"{program}","env":["NOEQUALS"]}}"#), "env[0]: "),
        (&format!(r#"{{"image":"{program}","memory":"lots"}}"#), "memory: "),
        (&format!(r#"{{"image":"{program}","cpus":0}}"#), "cpus: 0 is out of range"),
        (&format!(r#"{{"image":"{program}","files":["rel:/x"]}}"#), "files[0]: 'rel' is relative"),
        (&format!(r#"{{"image":"{program}","volumes":["no volume"]}}"#), "volumes[0]: "),
        (&format!(r#"{{"image":"{program}","name":"bad name"}}"#), "\"bad name\" is not an instance name"),
    ];
    for (body, expected) in bad_bodies {
        let message = kilnd.refused("POST", "/instances", body, 400);
        assert!(message.starts_with(expected), "{body}: {message:?}, expected {expected:?}");
    }
    let huge = format!(r#"{{"image":"{}"}}"#, "x".repeat(2 << 20));
    assert!(kilnd.refused("POST", "/instances", &huge, 400).contains("at most 1048576 bytes"));
    // Nothing refused left a record behind.
    assert_eq!(kilnd.ok("GET", "/instances?all=1", "", 200), serde_json::json!([]));

    // One kilnd per store.
    let second = kiln_in(&kilnd.home).arg("daemon").run();
    second.assert_code(125);
    assert!(second.stderr_text().contains("another kilnd already runs"), "{}", second.stderr_text());
    assert_eq!(kilnd.ok("GET", "/version", "", 200)["pid"], kilnd.child.id());
}

#[test]
fn instances_run_on_kilnd_and_stop_kill_and_go() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("lifecycle");
    let waiter = guests::c("waiter");
    let waiter = waiter.to_str().unwrap();

    // Started, running in kilnd's process, its output in its log.
    let id = kilnd.create(serde_json::json!({"image": waiter, "args": ["graceful"], "name": "calm", "memory": "32M"}));
    let record = kilnd.instance("calm");
    assert_eq!((record["id"].as_str(), record["state"].as_str()), (Some(id.as_str()), Some("running")));
    assert_eq!((record["kilnd"].as_bool(), record["pid"].as_u64()), (Some(true), Some(u64::from(kilnd.child.id()))));
    kilnd.wait_log(&id, "waiter: ready\n");
    let running = kilnd.ok("GET", "/instances", "", 200);
    assert_eq!(running.as_array().unwrap().len(), 1, "{running}");
    // Names are unique among instances.
    let taken =
        kilnd.refused("POST", "/instances", &serde_json::json!({"image": waiter, "name": "calm"}).to_string(), 409);
    assert!(taken.starts_with("the name \"calm\" is already used"), "{taken}");
    // A running instance is removed only with force.
    assert!(kilnd.refused("DELETE", "/instances/calm", "", 409).contains("is running"));

    // stop: SIGTERM, which the program takes.
    assert_eq!(kilnd.ok("POST", "/instances/calm/stop", "", 204), serde_json::Value::Null);
    let record = kilnd.instance(&id);
    assert_eq!((record["state"].as_str(), record["exit_code"].as_i64()), (Some("exited"), Some(0)), "{record}");
    let (_, tail) = kilnd.call("GET", "/instances/calm/logs?tail=1", "");
    assert_eq!(tail, "waiter: stopped by signal 15\n");
    assert!(kilnd.refused("POST", "/instances/calm/kill", "", 409).contains("is not running"));
    kilnd.ok("POST", "/instances/calm/stop", "", 204);
    assert_eq!(kilnd.ok("GET", "/instances", "", 200), serde_json::json!([]), "exited: not listed without all");

    // stop of a program that ignores SIGTERM: killed after the time given.
    kilnd.create(serde_json::json!({"image": waiter, "args": ["stubborn"], "name": "stubborn"}));
    kilnd.wait_log("stubborn", "waiter: ready\n");
    let start = Instant::now();
    kilnd.ok("POST", "/instances/stubborn/stop?t=1", "", 204);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let record = kilnd.instance("stubborn");
    assert_eq!(record["exit_code"], 137);
    assert_eq!(record["reason"], "killed by kiln stop: still running 1 s after SIGTERM");

    // kill ends a VM that computes without ever leaving the guest.
    kilnd.create(serde_json::json!({"image": waiter, "args": ["spin"], "name": "spinner"}));
    kilnd.wait_log("spinner", "waiter: ready\n");
    kilnd.ok("POST", "/instances/spinner/kill", "", 204);
    let record = kilnd.instance("spinner");
    assert_eq!(
        (record["exit_code"].as_i64(), record["reason"].as_str()),
        (Some(137), Some("killed by kiln kill (SIGKILL)"))
    );

    // DELETE with force kills first; the record and log go.
    let doomed = kilnd.create(serde_json::json!({"image": waiter, "name": "doomed"}));
    kilnd.ok("DELETE", "/instances/doomed?force=true", "", 204);
    kilnd.refused("GET", &format!("/instances/{doomed}"), "", 404);
    assert!(!kilnd.home.join("instances").join(&doomed).exists());
    kilnd.ok("DELETE", "/instances/calm", "", 204);

    // A program that ends by itself is recorded so; with auto_remove, it leaves nothing.
    let hello = guests::c("hello");
    let id = kilnd.create(serde_json::json!({"image": hello, "args": ["a", "b"]}));
    let record = kilnd.wait_exited(&id);
    assert_eq!((record["exit_code"].as_i64(), record["reason"].as_str()), (Some(0), Some("exited")), "{record}");
    assert!(record["name"].as_str().unwrap().starts_with("hello-"), "{record}");
    let gone = kilnd.create(serde_json::json!({"image": hello, "auto_remove": true}));
    let start = Instant::now();
    while kilnd.call("GET", &format!("/instances/{gone}"), "").0 != 404 {
        assert!(start.elapsed() < Duration::from_secs(30), "auto_remove left {gone}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = kilnd.ok("GET", "/instances?all=true", "", 200);
    let names: Vec<&str> = all.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn kilnd_stops_its_instances_when_it_stops() {
    if !kvm::available() {
        return;
    }
    let mut kilnd = Kilnd::start_with(scratch("kilnd", "shutdown"), &["--stop-instances"]);
    let waiter = guests::c("waiter");
    let id = kilnd.create(serde_json::json!({"image": waiter, "args": ["graceful"]}));
    kilnd.wait_log(&id, "waiter: ready\n");
    assert!(kilnd.stop().success());
    assert!(!kilnd.socket().exists(), "the socket goes with kilnd");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kilnd.home.join("instances").join(&id).join("record.json")).unwrap())
            .unwrap();
    assert_eq!((record["state"].as_str(), record["exit_code"].as_i64()), (Some("exited"), Some(0)), "{record}");
}

/// The `kiln` commands go through kilnd while it answers, and back to an instance process per instance without it.
#[test]
fn kiln_commands_go_through_kilnd_when_it_answers() {
    if !kvm::available() {
        return;
    }
    let mut kilnd = Kilnd::start("cli");
    let home = kilnd.home.clone();
    let waiter = guests::c("waiter");
    let kiln = || kiln_in(&home);

    let run = kiln().arg("run").arg("-d").args(["--name", "w", "-m", "32M"]).arg(&waiter).arg("graceful").run();
    run.assert_code(0);
    let id = run.stdout_text().trim().to_string();
    let record = kilnd.instance(&id);
    assert_eq!((record["name"].as_str(), record["kilnd"].as_bool()), (Some("w"), Some(true)), "{record}");
    assert_eq!(record["pid"].as_u64(), Some(u64::from(kilnd.child.id())), "it runs on kilnd's threads");
    kilnd.wait_log("w", "waiter: ready\n");
    let ps = kiln().arg("ps").run();
    ps.assert_code(0);
    assert!(
        ps.stdout_text().lines().any(|l| l.starts_with(&id) && l.contains(" w ") && l.contains("running")),
        "{}",
        ps.stdout_text()
    );
    kiln().args(["logs", "w"]).run().assert_code(0).assert_stdout("waiter: ready\n");
    kiln().args(["stop", "w"]).run().assert_code(0).assert_stdout("w\n");
    let record = kilnd.instance(&id);
    assert_eq!((record["state"].as_str(), record["exit_code"].as_i64()), (Some("exited"), Some(0)), "{record}");
    kiln()
        .args(["logs", "-f", "w"])
        .run()
        .assert_code(0)
        .assert_stdout("waiter: ready\nwaiter: stopped by signal 15\n");

    // kill and rm --force, and a relative program path made absolute for kilnd.
    let relative =
        kiln().current_dir(waiter.parent().unwrap()).args(["run", "-d", "--name", "s", "./waiter", "spin"]).run();
    relative.assert_code(0);
    kilnd.wait_log("s", "waiter: ready\n");
    kiln().args(["kill", "s"]).run().assert_code(0);
    assert_eq!(kilnd.instance("s")["reason"], "killed by kiln kill (SIGKILL)");
    kiln().arg("run").arg("-d").args(["--name", "f"]).arg(&waiter).run().assert_code(0);
    let refused = kiln().args(["rm", "f"]).run();
    refused.assert_code(125);
    assert!(refused.stderr_text().contains("instance f is running"), "{}", refused.stderr_text());
    kiln().args(["rm", "--force", "f", "w", "s"]).run().assert_code(0);
    assert_eq!(kilnd.ok("GET", "/instances?all=1", "", 200), serde_json::json!([]));
    // A bad flag value is kilnd's 400, said as kiln says its errors.
    let bad = kiln().args(["run", "-d", "/no/such/program"]).run();
    bad.assert_code(125);
    assert!(bad.stderr_text().starts_with("kiln: /no/such/program: no such file"), "{}", bad.stderr_text());

    // Without kilnd: an instance process of its own, as before.
    assert!(kilnd.stop().success());
    let run = kiln().arg("run").arg("-d").args(["--name", "alone"]).arg(&waiter).arg("graceful").run();
    run.assert_code(0);
    let record = kiln().args(["inspect", "alone"]).run();
    let record: serde_json::Value = serde_json::from_str(&record.stdout_text()).unwrap();
    let record = &record[0];
    assert_eq!(record["kilnd"], false, "{record}");
    assert_ne!(record["pid"].as_u64(), Some(u64::from(kilnd.child.id())));
    kiln().args(["stop", "alone"]).run().assert_code(0);
}

/// Restart policies: a crashing program restarted with a growing back-off until its limit; `always` shown as
/// restarting in `kiln ps`, and stopped for good by `kiln stop`; a program that exits 0 is no failure.
#[test]
fn restart_policies_restart_a_crashing_program_with_backoff() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("restart");
    let crash = guests::c("crash");
    let start = Instant::now();
    let id = kilnd.create(serde_json::json!({"image": crash, "restart": "on-failure:2", "memory": "32M"}));
    let mut seen_restarting = false;
    let record = loop {
        let record = kilnd.instance(&id);
        seen_restarting |= record["state"] == "restarting";
        if record["state"] == "exited" {
            break record;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still not ended: {record}");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Two restarts after 100 and 200 ms.
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    assert!(seen_restarting, "never seen restarting");
    assert_eq!((record["restarts"].as_u64(), record["exit_code"].as_i64()), (Some(2), Some(139)), "{record}");
    assert_eq!(record["restart"], "on-failure:2");
    assert!(record["reason"].as_str().unwrap().starts_with("crashed: SIGSEGV"), "{record}");
    let (_, log) = kilnd.call("GET", &format!("/instances/{id}/logs"), "");
    assert_eq!(log.matches("about to crash\n").count(), 3, "{log}");

    // `always`, in kiln ps as restarting (N), until kiln stop.
    kiln_in(&kilnd.home).args(["run", "-d", "--restart", "always", "--name", "again"]).arg(&crash).run().assert_code(0);
    let start = Instant::now();
    loop {
        let ps = kiln_in(&kilnd.home).arg("ps").run();
        let line = ps.stdout_text().lines().find(|l| l.contains(" again ")).map(str::to_string);
        if line.as_deref().is_some_and(|l| l.contains("restarting (")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never restarting in ps: {line:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    kiln_in(&kilnd.home).args(["stop", "again"]).run().assert_code(0);
    let record = kilnd.instance("again");
    assert_eq!(record["state"], "exited", "{record}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kilnd.instance("again")["restarts"], record["restarts"], "no restart after a stop");

    // Exit code 0 is no failure.
    let id = kilnd.create(serde_json::json!({"image": guests::c("hello"), "restart": "on-failure"}));
    let record = kilnd.wait_exited(&id);
    assert_eq!((record["restarts"].as_u64(), record["exit_code"].as_i64()), (Some(0), Some(0)), "{record}");
    // A policy is checked, and does not go with auto_remove.
    let bad = serde_json::json!({"image": crash, "restart": "sometimes"}).to_string();
    assert!(kilnd.refused("POST", "/instances", &bad, 400).starts_with("restart: 'sometimes' is not a restart policy"));
    let bad = serde_json::json!({"image": crash, "restart": "always", "auto_remove": true}).to_string();
    assert!(kilnd.refused("POST", "/instances", &bad, 400).contains("cannot go together"));
}

/// A kilnd stopped with `--stop-instances` ends its instances (they run in its process), and the next kilnd starts
/// again those whose policy is `always`, and `unless-stopped` ones the user did not stop.
#[test]
fn a_kilnd_restart_starts_its_always_instances_again() {
    if !kvm::available() {
        return;
    }
    let mut kilnd = Kilnd::start_with(scratch("kilnd", "kilnd-restart"), &["--stop-instances"]);
    let waiter = guests::c("waiter");
    let keep = kilnd.create(serde_json::json!({"image": waiter, "args": ["graceful"], "restart": "always"}));
    let unless = kilnd.create(serde_json::json!({"image": waiter, "args": ["graceful"], "restart": "unless-stopped"}));
    let user_stopped =
        kilnd.create(serde_json::json!({"image": waiter, "args": ["graceful"], "restart": "unless-stopped"}));
    let plain = kilnd.create(serde_json::json!({"image": waiter, "args": ["graceful"]}));
    for id in [&keep, &unless, &user_stopped, &plain] {
        kilnd.wait_log(id, "waiter: ready\n");
    }
    kilnd.ok("POST", &format!("/instances/{user_stopped}/stop"), "", 204);
    let old_pid = kilnd.child.id();
    assert!(kilnd.stop().success());

    let kilnd = Kilnd::start_in(kilnd.home.clone());
    assert_ne!(kilnd.child.id(), old_pid);
    for id in [&keep, &unless] {
        let record = kilnd.instance(id);
        assert_eq!(record["state"], "running", "{record}");
        assert_eq!(record["pid"].as_u64(), Some(u64::from(kilnd.child.id())), "{record}");
        assert_eq!(record["restarts"], 1, "{record}");
        let start = Instant::now();
        while kilnd.call("GET", &format!("/instances/{id}/logs"), "").1.matches("waiter: ready\n").count() < 2 {
            assert!(start.elapsed() < Duration::from_secs(30), "{id} did not boot again");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for id in [&user_stopped, &plain] {
        let record = kilnd.instance(id);
        assert_eq!((record["state"].as_str(), record["restarts"].as_u64()), (Some("exited"), Some(0)), "{record}");
    }
}

fn record_file(home: &Path, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(home.join("instances").join(id).join("record.json")).unwrap()).unwrap()
}

/// The number in hitcount's answer (`hit N`).
fn hits(answer: &str) -> u64 {
    answer.trim().strip_prefix("hit ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("answer {answer:?}"))
}

/// A kilnd stop keeps its instances (paused, written to their folder) and the next kilnd runs them on from there:
/// the same VM, its state kept (the counter goes on), the same id, its uptime going on, no second boot; a second
/// restart keeps the restored one too, and one with a volume.
#[test]
fn instances_keep_running_across_a_kilnd_restart() {
    if !kvm::available() {
        return;
    }
    let mut kilnd = Kilnd::start("keep");
    let port = free_port();
    let id = kilnd.create(serde_json::json!({
        "image": guests::c("hitcount"), "memory": "32M", "publish": [format!("127.0.0.1:{port}:80")],
    }));
    let other = kilnd.create(serde_json::json!({"image": guests::c("waiter"), "name": "other", "args": ["graceful"]}));
    kilnd.wait_log(&id, "hitcount: listening\n");
    kilnd.wait_log(&other, "waiter: ready\n");
    assert_eq!(get(port).as_deref(), Ok("hit 1\n"));
    assert_eq!(get(port).as_deref(), Ok("hit 2\n"));
    let before = kilnd.instance(&id);
    let old_pid = kilnd.child.id();
    assert!(kilnd.stop().success(), "{}", kilnd.stderr());

    // Between the two: recorded running and kept, its state in its folder; kiln ps (no kilnd) shows it running.
    let kept = record_file(&kilnd.home, &id);
    assert_eq!((kept["state"].as_str(), kept["kept"].as_bool()), (Some("running"), Some(true)), "{kept}");
    let snapshot = kilnd.home.join("instances").join(&id).join("kept.snap");
    assert!(snapshot.exists());
    let ps = kiln_in(&kilnd.home).args(["ps"]).run();
    ps.assert_code(0);
    assert!(ps.stdout_text().lines().any(|l| l.starts_with(&id) && l.contains("running for")), "{}", ps.stdout_text());
    assert!(get(port).is_err(), "nothing answers while no kilnd runs");
    assert!(ps.stdout_text().contains("(kept: waiting for kilnd to start)"), "{}", ps.stdout_text());
    // A second kept instance, stopped while no kilnd runs: its state goes, and the next kilnd does not run it on.
    kiln_in(&kilnd.home).args(["stop", "other"]).run().assert_code(0);
    let other_record = record_file(&kilnd.home, &other);
    assert_eq!(other_record["state"], "exited", "{other_record}");
    assert!(!kilnd.home.join("instances").join(&other).join("kept.snap").exists());

    let mut kilnd = Kilnd::start_in(kilnd.home.clone());
    assert_ne!(kilnd.child.id(), old_pid);
    assert_eq!(get(port).as_deref(), Ok("hit 3\n"), "the counter does not go on");
    let after = kilnd.instance(&id);
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["pid"].as_u64(), Some(u64::from(kilnd.child.id())), "{after}");
    assert_eq!((&after["started_ms"], &after["restarts"]), (&before["started_ms"], &before["restarts"]), "{after}");
    assert!(after.get("kept").is_none(), "{after}");
    assert!(!snapshot.exists(), "the snapshot stays after the restore");
    let log = kilnd.call("GET", &format!("/instances/{id}/logs"), "").1;
    assert_eq!(log.matches("hitcount: listening").count(), 1, "it booted again: {log:?}");
    let other_record = kilnd.instance(&other);
    assert_eq!((other_record["state"].as_str(), other_record["restarts"].as_u64()), (Some("exited"), Some(0)));
    let ps = kiln_in(&kilnd.home).args(["ps"]).run();
    assert!(ps.stdout_text().lines().any(|l| l.starts_with(&id) && l.contains("running for")), "{}", ps.stdout_text());

    // Kept again (a restored VM's untouched pages are in the file it came from, which is gone from the folder).
    let volume = kiln_in(&kilnd.home).args(["volume", "create", "data", "--size", "16M"]).run();
    volume.assert_code(0);
    let with_volume = kilnd.create(serde_json::json!({
        "image": guests::c("waiter"), "args": ["graceful"], "volumes": ["data:/data"],
    }));
    kilnd.wait_log(&with_volume, "waiter: ready\n");
    assert!(kilnd.stop().success());
    let stderr = kilnd.stderr();
    assert!(!stderr.contains("cannot be kept"), "{stderr}");
    let kept = record_file(&kilnd.home, &with_volume);
    assert_eq!((kept["state"].as_str(), kept["kept"].as_bool()), (Some("running"), Some(true)), "{kept}");
    let kilnd = Kilnd::start_in(kilnd.home.clone());
    assert_eq!(get(port).as_deref(), Ok("hit 4\n"), "the second restart lost the count");
    assert_eq!(kilnd.instance(&id)["started_ms"], before["started_ms"]);
    // The instance with a volume was kept too (its volume, not copied, was found as the snapshot left it): it runs
    // on without a second boot and ends as asked.
    assert_eq!(kilnd.instance(&with_volume)["state"], "running");
    kilnd.ok("POST", &format!("/instances/{with_volume}/stop"), "", 204);
    let log = kilnd.wait_log(&with_volume, "waiter: stopped by signal 15\n");
    assert_eq!(log.matches("waiter: ready").count(), 1, "it booted again: {log:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let record = kilnd.instance(&with_volume);
        if record["state"] == "exited" || Instant::now() > deadline {
            break record;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((stopped["state"].as_str(), stopped["exit_code"].as_i64()), (Some("exited"), Some(0)), "{stopped}");
}

/// A kept instance that cannot be run on (its published port taken meanwhile) is not lost silently: its log and
/// record say why, and its restart policy decides as for an instance that died with kilnd.
#[test]
fn a_kept_instance_that_cannot_be_restored_says_why() {
    if !kvm::available() {
        return;
    }
    let mut kilnd = Kilnd::start("keep-fails");
    let port = free_port();
    let id = kilnd.create(serde_json::json!({
        "image": guests::c("hitcount"), "memory": "32M", "publish": [format!("127.0.0.1:{port}:80")],
    }));
    kilnd.wait_log(&id, "hitcount: listening\n");
    assert!(kilnd.stop().success());
    assert_eq!(record_file(&kilnd.home, &id)["kept"], true);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let kilnd = Kilnd::start_in(kilnd.home.clone());
    let record = kilnd.instance(&id);
    assert_eq!(record["state"], "exited", "{record}");
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.starts_with("kept by the last kilnd, but "), "{record}");
    let log = kilnd.call("GET", &format!("/instances/{id}/logs"), "").1;
    assert!(log.contains(&format!("kiln: {reason}")), "{log}");
    assert!(!kilnd.home.join("instances").join(&id).join("kept.snap").exists());
}

/// A service's replicas are kept across a kilnd restart too: the same replicas (same ids, no second boot, their
/// counts going on) behind the service's port, which the next kilnd serves again.
#[test]
fn a_services_replicas_keep_running_across_a_kilnd_restart() {
    if !kvm::available() {
        return;
    }
    let mut kilnd = Kilnd::start("keep-service");
    let port = free_port();
    let body = serde_json::json!({
        "name": "count", "image": guests::c("hitcount"), "replicas": 2, "memory": "32M",
        "publish": [format!("127.0.0.1:{port}:80")],
        "health": {"check": format!("http:{port}/"), "interval_ms": 100, "timeout_ms": 1000, "retries": 2},
    });
    kilnd.ok("POST", "/services", &body.to_string(), 201);
    let ids = |status: &serde_json::Value| -> Vec<String> {
        let mut ids: Vec<String> =
            status["running"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let replicas = ids(&kilnd.wait_service("count", "steady", 1));
    // Health checks count too: after 3 s at 10 probes a second, each replica is well past what a new one would say
    // at its first answer.
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = (0..2).map(|_| hits(&get(port).unwrap())).collect();
    assert!(before.iter().all(|&n| n > 20), "{before:?}");
    assert!(kilnd.stop().success(), "{}", kilnd.stderr());
    for id in &replicas {
        assert_eq!(record_file(&kilnd.home, id)["kept"], true);
    }

    let kilnd = Kilnd::start_in(kilnd.home.clone());
    assert_eq!(ids(&kilnd.wait_service("count", "steady", 1)), replicas, "other replicas run");
    let after: Vec<u64> = (0..4).map(|_| hits(&get(port).unwrap())).collect();
    let least = *before.iter().min().unwrap();
    assert!(after.iter().all(|&n| n > least), "a replica counts from the start again: {before:?} then {after:?}");
    for id in &replicas {
        let log = kilnd.call("GET", &format!("/instances/{id}/logs"), "").1;
        assert_eq!(log.matches("hitcount: listening").count(), 1, "{id} booted again: {log:?}");
    }
    assert_eq!(kilnd.ok("GET", "/instances?all=1", "", 200).as_array().unwrap().len(), 2);
}

/// `kiln snapshot` and `kiln restore -d` of kilnd's instances go through kilnd's API: a snapshot that leaves the
/// instance running, one that ends it for good (no restart, its port free), a restore that runs on kilnd's threads
/// from where it was; the routes' refusals.
#[test]
fn snapshots_and_restores_of_kilnd_instances_go_through_kilnd() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("snapshot");
    let kiln = || kiln_in(&kilnd.home);
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let hitcount = guests::c("hitcount");
    let run = kiln().args(["run", "-d", "--name", "web", "--restart", "always", "-p", &publish]).arg(&hitcount).run();
    run.assert_code(0);
    let id = run.stdout_text().trim().to_string();
    kilnd.wait_log(&id, "hitcount: listening\n");
    assert_eq!(get(port).as_deref(), Ok("hit 1\n"));

    let dir = kilnd.home.with_extension("snaps");
    std::fs::create_dir_all(&dir).unwrap();
    let (first, second) = (dir.join("first.snap"), dir.join("second.snap"));
    let out = kiln().args(["snapshot", "--leave-running", "web"]).arg(&first).run();
    out.assert_code(0);
    assert!(out.stdout_text().contains("KiB of memory written"), "{out}");
    assert_eq!(get(port).as_deref(), Ok("hit 2\n"), "the instance left running does not answer");
    kiln().args(["snapshot", "web"]).arg(&second).run().assert_code(0);
    let web = kilnd.instance(&id);
    assert_eq!((web["state"].as_str(), web["exit_code"].as_i64()), (Some("exited"), Some(0)), "{web}");
    assert_eq!(web["reason"].as_str(), Some(format!("snapshotted to {}", second.display()).as_str()), "{web}");
    assert_eq!(web["restarts"], 0, "a snapshot that ends it is no reason to restart it: {web}");
    assert!(get(port).is_err(), "the snapshotted instance still answers");

    // Restored on kilnd's threads, from where each snapshot was.
    let out = kiln().args(["restore", "-d", "--name", "web2"]).arg(&second).run();
    out.assert_code(0);
    let web2 = out.stdout_text().trim().to_string();
    let record = kilnd.instance(&web2);
    assert_eq!((record["kilnd"].as_bool(), record["state"].as_str()), (Some(true), Some("running")), "{record}");
    assert_eq!(get(port).as_deref(), Ok("hit 3\n"));
    kilnd.ok("POST", &format!("/instances/{web2}/kill"), "", 204);
    let body = serde_json::json!({"path": first, "name": "web3"}).to_string();
    let web3 = kilnd.ok("POST", "/instances/restore", &body, 201)["id"].as_str().unwrap().to_string();
    assert_eq!(get(port).as_deref(), Ok("hit 2\n"), "the first snapshot's count goes on from its own");
    assert_eq!(kilnd.instance(&web3)["name"], "web3");

    // Refusals.
    let snapshot = format!("/instances/{web3}/snapshot");
    assert!(kilnd.refused("POST", &snapshot, r#"{"path":"rel.snap"}"#, 400).contains("is not absolute"));
    assert!(kilnd
        .refused("POST", &snapshot, r#"{"paht":"/x"}"#, 400)
        .starts_with("the body is not a snapshot request"));
    let body = serde_json::json!({"path": dir.join("x.snap")}).to_string();
    assert_eq!(kilnd.refused("POST", "/instances/nope/snapshot", &body, 404), "no such instance: nope");
    assert_eq!(kilnd.refused("POST", &format!("/instances/{id}/snapshot"), &body, 409), "instance web is not running");
    let not_a_snapshot = serde_json::json!({"path": hitcount}).to_string();
    let message = kilnd.refused("POST", "/instances/restore", &not_a_snapshot, 400);
    assert!(message.contains("is not a Kiln snapshot"), "{message}");
    let message = kilnd.refused("POST", "/instances/restore", r#"{"path":"first.snap"}"#, 400);
    assert!(message.contains("is not absolute"), "{message}");
    let body = serde_json::json!({"path": first, "name": "web3"}).to_string();
    assert!(kilnd.refused("POST", "/instances/restore", &body, 409).contains("already used"));
    kilnd.ok("DELETE", &format!("/instances/{web3}?force=true"), "", 204);
}

/// Waits up to 30 s until kilnd's log has `n` lines containing `text`.
fn wait_lines(kilnd: &Kilnd, text: &str, n: usize) {
    let start = Instant::now();
    while kilnd.stderr().matches(text).count() < n {
        assert!(start.elapsed() < Duration::from_secs(30), "not {n} times {text:?} in {}", kilnd.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With `--ready-vms 2`, restores and creates through kilnd take VMs made ahead of time, which are made again after
/// each is taken: a restored server answers from where it was, each time from a ready VM (three restores, more than
/// the pool holds: it refilled), and two servers created at once, each on its own ready VM, count their own hits.
/// With `--ready-vms 0`, none is made and the restore makes its own VM, and answers the same.
#[test]
fn restores_and_creates_take_vms_made_ahead_of_time() {
    if !kvm::available() {
        return;
    }
    const TAKEN: &str = "ready=true";
    const MADE: &str = "a VM made ahead of time";
    let kilnd = Kilnd::start_logging(scratch("kilnd", "ready-vms"), &["--ready-vms", "2"], "info,kilnd=debug");
    let port = free_port();
    let hitcount = guests::c("hitcount");
    wait_lines(&kilnd, MADE, 2);
    let id = kilnd.create(serde_json::json!({"image": hitcount, "publish": [format!("127.0.0.1:{port}:80")]}));
    kilnd.wait_log(&id, "hitcount: listening\n");
    assert_eq!(get(port).as_deref(), Ok("hit 1\n"));
    let snap = kilnd.home.with_extension("ready.snap");
    kilnd.ok("POST", &format!("/instances/{id}/snapshot"), &serde_json::json!({"path": snap}).to_string(), 200);
    wait_lines(&kilnd, MADE, 3);
    for round in 0..3 {
        // The pool is full again before each restore (two made at the start, one after each take).
        wait_lines(&kilnd, MADE, 3 + round);
        let taken = kilnd.stderr().matches(TAKEN).count();
        let body = serde_json::json!({"path": snap}).to_string();
        let restored = kilnd.ok("POST", "/instances/restore", &body, 201)["id"].as_str().unwrap().to_string();
        assert_eq!(get(port).as_deref(), Ok("hit 2\n"), "restore {round}");
        assert_eq!(kilnd.stderr().matches(TAKEN).count(), taken + 1, "restore {round}: {}", kilnd.stderr());
        kilnd.ok("DELETE", &format!("/instances/{restored}?force=true"), "", 204);
    }
    wait_lines(&kilnd, MADE, 6);
    let ports = [free_port(), free_port()];
    let ids: Vec<String> = ports
        .iter()
        .map(|p| kilnd.create(serde_json::json!({"image": hitcount, "publish": [format!("127.0.0.1:{p}:80")]})))
        .collect();
    for (id, port) in ids.iter().zip(ports) {
        kilnd.wait_log(id, "hitcount: listening\n");
        assert_eq!(get(port).as_deref(), Ok("hit 1\n"), "{id}");
        assert_eq!(get(port).as_deref(), Ok("hit 2\n"), "{id}");
    }
    assert!(!kilnd.stderr().contains("ready=false"), "every VM came ready: {}", kilnd.stderr());
    drop(kilnd);

    let kilnd = Kilnd::start_logging(scratch("kilnd", "no-ready-vms"), &["--ready-vms", "0"], "info,kilnd=debug");
    let body = serde_json::json!({"path": snap}).to_string();
    let restored = kilnd.ok("POST", "/instances/restore", &body, 201)["id"].as_str().unwrap().to_string();
    assert_eq!(get(port).as_deref(), Ok("hit 2\n"));
    let log = kilnd.stderr();
    assert!(log.contains("ready=false") && !log.contains(TAKEN) && !log.contains(MADE), "{log}");
    kilnd.ok("DELETE", &format!("/instances/{restored}?force=true"), "", 204);
}

/// `kiln debug` attaches gdb to a kilnd instance (through the socket in its folder, as for `kiln run -d`), and a
/// kilnd instance that crashes leaves its core file in its folder.
#[test]
fn kiln_debug_and_cores_work_for_kilnd_instances() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("debug");
    let kiln = || kiln_in(&kilnd.home);
    let crashy = kiln().args(["run", "-d", "--name", "crashy"]).arg(guests::c("corethreads")).run();
    crashy.assert_code(0);
    let crashy = crashy.stdout_text().trim().to_string();
    let record = kilnd.wait_exited(&crashy);
    assert_eq!(record["exit_code"], 139, "{record}");
    let core = kilnd.home.join("instances").join(&crashy).join("core");
    let log = kilnd.call("GET", &format!("/instances/{crashy}/logs"), "").1;
    assert!(log.contains(&format!("kiln: core dumped to {}", core.display())), "{log}");
    let bytes = std::fs::read(&core).unwrap_or_else(|e| panic!("{}: {e}\n{log}", core.display()));
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF core");

    if std::process::Command::new("gdb").arg("--version").output().is_err() {
        eprintln!("skipped: kiln debug of a kilnd instance needs gdb, which is not installed");
        return;
    }
    let counter = guests::c("counter");
    let id = kiln().args(["run", "-d", "--name", "counter"]).arg(&counter).run().stdout_text().trim().to_string();
    kilnd.wait_log(&id, "counter: started\n");
    let mut child = kiln().args(["debug", "counter"]).into_command().stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) > 0 && !line.contains("waiting for gdb on") {
        line.clear();
    }
    let addr =
        line.split("waiting for gdb on ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| {
            panic!("kiln debug never listened: {line:?}");
        });
    let gdb = std::process::Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set pagination off", "-ex", &format!("target remote {addr}")])
        .args(["-ex", "break tick", "-ex", "continue", "-ex", "bt", "-ex", "detach"])
        .arg(&counter)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let g = String::from_utf8_lossy(&gdb.stdout).into_owned() + &String::from_utf8_lossy(&gdb.stderr);
    assert_eq!(child.wait().unwrap().code(), Some(0), "{g}");
    assert!(g.contains("Breakpoint 1, tick (n="), "no stop in tick\n{g}");
    assert!(g.lines().any(|l| l.starts_with("#1 ") && l.contains(" in main () at ")), "bt lacks main\n{g}");
    // Detached: it runs on under kilnd.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(kilnd.instance(&id)["state"], "running");
    kilnd.ok("DELETE", &format!("/instances/{id}?force=true"), "", 204);
}

/// Health checks from the host to a published port: healthy while the program answers, unhealthy once it stops.
#[test]
fn a_health_check_sees_a_program_stop_answering() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("health");
    let flaky = guests::c("flaky");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let health =
        serde_json::json!({"check": format!("http:{port}/"), "interval_ms": 100, "timeout_ms": 500, "retries": 2});
    let unpublished = serde_json::json!({"image": flaky, "health": health}).to_string();
    assert!(kilnd
        .refused("POST", "/instances", &unpublished, 400)
        .contains(&format!("host port {port} is not published")));
    let bad =
        serde_json::json!({"image": flaky, "publish": [format!("127.0.0.1:{port}:80")], "health": {"check": "ping"}});
    assert!(kilnd.refused("POST", "/instances", &bad.to_string(), 400).starts_with("health: 'ping' is not"));

    // Through kiln's flags.
    let run = kiln_in(&kilnd.home)
        .args(["run", "-d", "--name", "flaky", "-p", &format!("127.0.0.1:{port}:80"), "--health-check"])
        .arg(format!("http:{port}/"))
        .args(["--health-interval", "100", "--health-timeout", "500", "--health-retries", "2"])
        .arg(&flaky)
        .arg("4")
        .run();
    run.assert_code(0);
    let id = run.stdout_text().trim().to_string();
    assert_eq!(kilnd.instance(&id)["health_check"]["retries"], 2);
    let wait_for = |verdict: &str| {
        let start = Instant::now();
        loop {
            let record = kilnd.instance(&id);
            if record["health"] == verdict {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "never {verdict}: {record}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("healthy");
    let ps = kiln_in(&kilnd.home).arg("ps").run();
    assert!(ps.stdout_text().contains("(healthy)") || ps.stdout_text().contains("(unhealthy)"), "{}", ps.stdout_text());
    wait_for("unhealthy");
    kilnd.wait_log(&id, "flaky: stopped answering\n");
    let ps = kiln_in(&kilnd.home).arg("ps").run();
    assert!(
        ps.stdout_text().lines().any(|l| l.contains(" flaky ") && l.ends_with("(unhealthy)")),
        "{}",
        ps.stdout_text()
    );
    kilnd.ok("POST", "/instances/flaky/kill", "", 204);
}

/// One HTTP/1.0 GET on a new connection to 127.0.0.1:`port`: the body of a 200, or what went wrong.
fn get(port: u16) -> Result<String, String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\nHost: service\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200 ") => Ok(body.to_string()),
        _ => Err(format!("answer {answer:?}")),
    }
}

/// A client that sends one request after another to `port`, each on a new connection, until stopped: what it saw.
struct Hammer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>, std::collections::BTreeMap<String, usize>)>,
}

impl Hammer {
    fn start(port: u16) -> Hammer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut sent, mut errors, mut bodies) = (0, Vec::new(), std::collections::BTreeMap::new());
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                sent += 1;
                match get(port) {
                    Ok(body) => *bodies.entry(body).or_insert(0) += 1,
                    Err(e) => errors.push(e),
                }
            }
            (sent, errors, bodies)
        });
        Hammer { stop, thread }
    }

    /// Requests sent, the errors, and how many answers each body had.
    fn finish(self) -> (usize, Vec<String>, std::collections::BTreeMap<String, usize>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

impl Kilnd {
    /// Waits up to 60 s for the service to be in `phase` with every replica of generation `generation` ready.
    fn wait_service(&self, name: &str, phase: &str, generation: u64) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let status = self.ok("GET", &format!("/services/{name}"), "", 200);
            let running = status["running"].as_array().unwrap();
            if status["phase"] == phase
                && status["current"]["generation"] == generation
                && status["ready"] == status["replicas"]
                && running.len() as u64 == status["replicas"].as_u64().unwrap()
                && running.iter().all(|r| r["generation"] == generation && r["ready"] == true)
            {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "never {phase} at generation {generation}: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A service of `flaky` replicas answering `body`, health-checked every 100 ms.
fn service_body(name: &str, port: u16, replicas: u32, body: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "image": guests::c("flaky"), "args": ["1000000000", body], "replicas": replicas,
        "memory": "32M", "publish": [format!("127.0.0.1:{port}:80")],
        "health": {"check": format!("http:{port}/"), "interval_ms": 100, "timeout_ms": 1000, "retries": 2},
    })
}

/// Services: created with replicas behind one port, scaled up and down, listed, refused when wrong, brought back by
/// a kilnd restart, and removed with their replicas.
#[test]
fn services_run_replicas_behind_one_port_and_scale() {
    if !kvm::available() {
        return;
    }
    let mut kilnd = Kilnd::start("service-scale");
    let port = free_port();
    let body = service_body("web", port, 3, "v1");
    assert_eq!(kilnd.ok("POST", "/services", &body.to_string(), 201)["name"], "web");
    kilnd.wait_service("web", "steady", 1);
    for _ in 0..6 {
        assert_eq!(get(port).as_deref(), Ok("v1\n"));
    }
    // Its replicas are instances, named after it.
    let instances = kilnd.ok("GET", "/instances", "", 200);
    let names: Vec<&str> = instances.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert!(names.len() == 3 && names.iter().all(|n| n.starts_with("web.1.")), "{names:?}");
    assert!(instances.as_array().unwrap().iter().all(|i| i["service"] == "web"));

    // Refusals.
    let taken = kilnd.refused("POST", "/services", &body.to_string(), 409);
    assert!(taken.starts_with("service web exists"), "{taken}");
    let in_use = service_body("other", port, 1, "x");
    assert!(kilnd.refused("POST", "/services", &in_use.to_string(), 409).contains("cannot publish"));
    let flaky = guests::c("flaky");
    for (bad, expected) in [
        ("{", "the body is not a service request: EOF"),
        (r#"{"name":"x","image":"/x","replicsa":2}"#, "the body is not a service request: unknown field `replicsa`"),
        (r#"{"name":"no good","image":"/x"}"#, "name: "),
        (r#"{"name":"x","image":"/no/such/program"}"#, "/no/such/program: no such file"),
        (&format!(r#"{{"name":"x","image":"{}","publish":["53:53/udp"]}}"#, flaky.display()), "publish[0]: "),
        (&format!(r#"{{"name":"x","image":"{}","max_surge":0}}"#, flaky.display()), "max_surge: "),
    ] {
        let message = kilnd.refused("POST", "/services", bad, 400);
        assert!(message.starts_with(expected), "{bad}: {message}");
    }
    assert_eq!(kilnd.refused("GET", "/services/nope", "", 404), "no such service: nope");
    assert_eq!(kilnd.refused("DELETE", "/services/nope", "", 404), "no such service: nope");
    assert_eq!(kilnd.refused("POST", "/services/nope/rollback", "", 404), "no such service: nope");
    assert!(kilnd.refused("POST", "/services/web/update", r#"{"replicas":"many"}"#, 400).contains("invalid type"));
    assert!(kilnd.refused("POST", "/services/web/rollback", "", 409).contains("no previous version"));

    // Scaled up and down through kiln.
    let kiln = || kiln_in(&kilnd.home);
    kiln().args(["service", "update", "web", "--replicas", "5"]).run().assert_code(0);
    kilnd.wait_service("web", "steady", 1);
    kiln().args(["service", "update", "web", "--replicas", "2"]).run().assert_code(0);
    let status = kilnd.wait_service("web", "steady", 1);
    assert_eq!(status["running"].as_array().unwrap().len(), 2);
    let start = Instant::now();
    while kilnd.ok("GET", "/instances?all=1", "", 200).as_array().unwrap().len() != 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "retired replicas' records stay");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ls = kiln().args(["service", "ls"]).run();
    ls.assert_code(0);
    assert!(
        ls.stdout_text().lines().any(|l| l.starts_with("web ") && l.contains(" 2/2 ") && l.contains("steady")),
        "{}",
        ls.stdout_text()
    );
    let ps = kiln().args(["service", "ps", "web"]).run();
    ps.assert_code(0);
    assert_eq!(
        ps.stdout_text().lines().filter(|l| l.contains(" web.1.") && l.ends_with("ready")).count(),
        2,
        "{}",
        ps.stdout_text()
    );

    // A kilnd restart brings the service back, with new replicas.
    assert!(kilnd.stop().success());
    assert!(get(port).is_err(), "the port closes with kilnd");
    let kilnd = Kilnd::start_in(kilnd.home.clone());
    kilnd.wait_service("web", "steady", 1);
    assert_eq!(get(port).as_deref(), Ok("v1\n"));
    assert_eq!(
        kilnd.ok("GET", "/instances?all=1", "", 200).as_array().unwrap().len(),
        2,
        "the old replicas' records go"
    );

    // Removed: its port closed, its replicas gone.
    kiln_in(&kilnd.home).args(["service", "rm", "web"]).run().assert_code(0).assert_stdout("web\n");
    assert!(get(port).is_err());
    assert_eq!(kilnd.ok("GET", "/instances?all=1", "", 200), serde_json::json!([]));
    assert_eq!(kilnd.ok("GET", "/services", "", 200), serde_json::json!([]));
    assert!(!kilnd.home.join("services").join("web.json").exists());
}

/// A rolling update replaces every replica, a new one healthy before an old one goes, while a client sends request
/// after request through the service's port: none fails.
#[test]
fn a_rolling_update_refuses_no_request() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("service-update");
    let port = free_port();
    kilnd.ok("POST", "/services", &service_body("web", port, 4, "v1").to_string(), 201);
    kilnd.wait_service("web", "steady", 1);
    let hammer = Hammer::start(port);
    std::thread::sleep(Duration::from_millis(300));
    let update = kiln_in(&kilnd.home)
        .args(["service", "update", "web", "--max-surge", "2", "--max-unavailable", "0", "--", "1000000000", "v2"])
        .run();
    update.assert_code(0);
    assert_eq!(update.stdout_text(), "web: updated to generation 2\n");
    std::thread::sleep(Duration::from_millis(300));
    let (sent, errors, bodies) = hammer.finish();
    assert!(errors.is_empty(), "{} of {sent} requests failed: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert!(bodies.get("v1\n").is_some_and(|&n| n > 0) && bodies.get("v2\n").is_some_and(|&n| n > 0), "{bodies:?}");
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let status = kilnd.wait_service("web", "steady", 2);
    assert_eq!(status["previous"]["generation"], 1);
    assert_eq!(get(port).as_deref(), Ok("v2\n"));
    // Replaced, not changed: no replica of generation 1 is left, their records included.
    let instances = kilnd.ok("GET", "/instances?all=1", "", 200);
    let names: Vec<&str> = instances.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert!(names.len() == 4 && names.iter().all(|n| n.starts_with("web.2.")), "{names:?}");
}

/// An update whose replicas fail their health checks rolls back by itself, refusing no request meanwhile; and a
/// good update is rolled back when asked.
#[test]
fn a_failing_update_rolls_back_by_itself_and_rollback_goes_back() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("service-rollback");
    let port = free_port();
    kilnd.ok("POST", "/services", &service_body("web", port, 2, "v1").to_string(), 201);
    kilnd.wait_service("web", "steady", 1);
    let hammer = Hammer::start(port);
    // Generation 2 never answers: its replicas turn unhealthy.
    let update = kiln_in(&kilnd.home).args(["service", "update", "web", "--", "0", "v2"]).run();
    update.assert_code(1);
    let said = update.stderr_text();
    assert!(said.starts_with("kiln: service web: generation 2 failed: replica web.2."), "{said}");
    assert!(said.trim_end().ends_with("rolled back to generation 1"), "{said}");
    let (sent, errors, bodies) = hammer.finish();
    assert!(errors.is_empty(), "{} of {sent} requests failed: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert_eq!(bodies.keys().collect::<Vec<_>>(), ["v1\n"]);
    let status = kilnd.wait_service("web", "rolled-back", 1);
    assert_eq!(status["previous"]["generation"], 2);
    assert_eq!(status["current"]["template"]["args"], serde_json::json!(["1000000000", "v1"]));

    // A good update, then rolled back when asked.
    let body = serde_json::json!({"args": ["1000000000", "v3"]}).to_string();
    let accepted = kilnd.ok("POST", "/services/web/update", &body, 202);
    assert_eq!((accepted["phase"].as_str(), accepted["current"]["generation"].as_u64()), (Some("updating"), Some(3)));
    assert!(kilnd.refused("POST", "/services/web/update", r#"{"args":["1","v4"]}"#, 409).contains("is updating"));
    kilnd.wait_service("web", "steady", 3);
    assert_eq!(get(port).as_deref(), Ok("v3\n"));
    let back = kiln_in(&kilnd.home).args(["service", "rollback", "web"]).run();
    back.assert_code(0);
    assert_eq!(back.stdout_text(), "web: rolled back to generation 1\n");
    kilnd.wait_service("web", "steady", 1);
    assert_eq!(get(port).as_deref(), Ok("v1\n"));
}

/// `--max-instances`: a create beyond the cap is refused with a message naming it, and one more fits once one goes.
#[test]
fn kilnd_refuses_instances_beyond_its_cap() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start_with(scratch("kilnd", "cap"), &["--max-instances", "2"]);
    let waiter = guests::c("waiter");
    let body = serde_json::json!({"image": waiter, "memory": "32M"}).to_string();
    let first = kilnd.create(serde_json::from_str(&body).unwrap());
    kilnd.create(serde_json::from_str(&body).unwrap());
    let refused = kilnd.refused("POST", "/instances", &body, 409);
    assert!(refused.starts_with("kilnd runs 2 instances, its cap (kiln daemon --max-instances 2)"), "{refused}");
    kilnd.ok("POST", &format!("/instances/{first}/kill"), "", 204);
    kilnd.create(serde_json::from_str(&body).unwrap());
    let bad = kiln_in(&kilnd.home).args(["daemon", "--max-instances", "0"]).run();
    bad.assert_code(2);
}

/// A VM kilnd restored from a snapshot writes a core file on a crash into its instance's folder, as one it booted.
#[test]
fn a_restored_kilnd_instance_leaves_its_core_in_its_folder() {
    if !kvm::available() {
        return;
    }
    let kilnd = Kilnd::start("restored-core");
    let id = kilnd.create(serde_json::json!({"image": guests::c("corethreads"), "args": ["wait"]}));
    kilnd.wait_log(&id, "corethreads: waiting\n");
    let snap = kilnd.home.join("c.snap");
    kiln_in(&kilnd.home).args(["snapshot", &id]).arg(&snap).run().assert_code(0);
    let body = serde_json::json!({"path": snap, "name": "restored"}).to_string();
    let restored = kilnd.ok("POST", "/instances/restore", &body, 201)["id"].as_str().unwrap().to_string();
    kilnd.ok("POST", &format!("/instances/{restored}/stop"), "", 204);
    let record = kilnd.wait_exited(&restored);
    assert_eq!(record["exit_code"], 139, "{record}");
    let core = kilnd.home.join("instances").join(&restored).join("core");
    let log = kilnd.wait_log(&restored, "kiln: core dumped to ");
    assert!(log.contains(&format!("kiln: core dumped to {}", core.display())), "{log}");
    let bytes = std::fs::read(&core).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{}", core.display());
    assert_eq!(bytes[16], 4, "ET_CORE");
}

/// Whether kilnd can jail instances here (it must run as root), saying why not.
fn jail_possible() -> bool {
    if !kvm::available() {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return kvm::skip("jailed instances need kilnd to run as root");
    }
    true
}

/// The children of `pid`, from each of its threads' lists (kilnd's instance processes are its threads' children).
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect()).unwrap_or(Vec::new());
    let lists = tasks.iter().filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok());
    lists.flat_map(|l| l.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>()).collect()
}

/// kilnd's one jailed instance: its instance process (the jail's parent) and the jailed VMM process, its child.
fn jailed_processes(kilnd: &Kilnd) -> (u32, u32) {
    let start = Instant::now();
    loop {
        let parents = children(kilnd.child.id());
        if let [parent] = parents[..] {
            if let [child] = children(parent)[..] {
                return (parent, child);
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no one jailed process under kilnd: {parents:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to 10 s for `pid` to be gone (or a zombie, for init to reap).
fn assert_gone(pid: u32) {
    let start = Instant::now();
    while let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "process {pid} is still there: {stat}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A jailed instance through kilnd (`"jail": true`): a process of its own, confined as `kiln run --jail` confines
/// (its uid, no capabilities, seccomp, an empty root), its output in its log; stop, kill and rm end it and leave no
/// process behind.
#[test]
fn a_jailed_kilnd_instance_is_confined_and_stops_kills_and_goes() {
    if !jail_possible() {
        return;
    }
    let kilnd = Kilnd::start("jailed");
    let waiter = guests::c("waiter");
    let waiter = waiter.to_str().unwrap();
    let body = serde_json::json!({"image": waiter, "args": ["graceful"], "name": "caged", "net": "none", "jail": true});
    let id = kilnd.create(body);
    let record = kilnd.instance(&id);
    assert_eq!((record["state"].as_str(), record["jailed"].as_bool()), (Some("running"), Some(true)), "{record}");
    assert_eq!(record["pid"].as_u64(), Some(u64::from(kilnd.child.id())), "{record}");
    kilnd.wait_log(&id, "waiter: ready\n");
    let (parent, child) = jailed_processes(&kilnd);
    // The VMM confines its main thread once every thread of the VM is started: soon after the program's first line.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
        if status.contains("\nSeccomp:\t2\n") || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let uid = 2_000_000_000 + child;
    assert!(status.contains(&format!("\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")), "{status}");
    assert!(status.contains("\nCapEff:\t0000000000000000\n"), "{status}");
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{child}/root")).unwrap().collect();
    assert!(root.is_empty(), "the jail's root is not empty: {root:?}");
    let mine = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(mine, std::fs::read_link(format!("/proc/{child}/ns/pid")).unwrap(), "no PID namespace of its own");
    // A snapshot is refused with the reason.
    let snapshot = serde_json::json!({"path": kilnd.home.join("caged.snap")}).to_string();
    assert!(kilnd.refused("POST", "/instances/caged/snapshot", &snapshot, 409).contains("is jailed"));

    // stop: SIGTERM reaches the program through the jail, which ends as it likes.
    kilnd.ok("POST", "/instances/caged/stop", "", 204);
    let record = kilnd.instance(&id);
    assert_eq!((record["state"].as_str(), record["exit_code"].as_i64()), (Some("exited"), Some(0)), "{record}");
    assert_eq!(record["reason"], "exited", "{record}");
    kilnd.wait_log(&id, "waiter: stopped by signal 15\n");
    assert_gone(parent);
    assert_gone(child);

    // stop of a program that ignores SIGTERM: killed after the time given.
    kilnd.create(serde_json::json!({"image": waiter, "args": ["stubborn"], "name": "stubborn", "jail": true}));
    kilnd.wait_log("stubborn", "waiter: ready\n");
    let (parent, child) = jailed_processes(&kilnd);
    kilnd.ok("POST", "/instances/stubborn/stop?t=1", "", 204);
    let record = kilnd.instance("stubborn");
    assert_eq!(record["exit_code"], 137, "{record}");
    assert_eq!(record["reason"], "killed by kiln stop: still running 1 s after SIGTERM");
    assert_gone(parent);
    assert_gone(child);

    // kill ends a VM that computes without ever leaving the guest.
    kilnd.create(serde_json::json!({"image": waiter, "args": ["spin"], "name": "spinner", "jail": true}));
    kilnd.wait_log("spinner", "waiter: ready\n");
    let (parent, child) = jailed_processes(&kilnd);
    kilnd.ok("POST", "/instances/spinner/kill", "", 204);
    let record = kilnd.instance("spinner");
    assert_eq!(
        (record["exit_code"].as_i64(), record["reason"].as_str()),
        (Some(137), Some("killed by kiln kill (SIGKILL)")),
        "{record}"
    );
    assert_gone(parent);
    assert_gone(child);

    // DELETE with force kills first; the record, the log and the processes go.
    let doomed = kilnd.create(serde_json::json!({"image": waiter, "name": "doomed", "jail": true}));
    let (parent, child) = jailed_processes(&kilnd);
    kilnd.ok("DELETE", "/instances/doomed?force=true", "", 204);
    kilnd.refused("GET", &format!("/instances/{doomed}"), "", 404);
    assert!(!kilnd.home.join("instances").join(&doomed).exists());
    assert_gone(parent);
    assert_gone(child);
    assert_eq!(children(kilnd.child.id()), Vec::<u32>::new(), "instance processes left under kilnd");
}

/// Under `kiln daemon --jail-instances`, every instance is jailed, and a jailed crashing program is restarted by its
/// policy as one on kilnd's threads is.
#[test]
fn a_jailed_crashing_program_restarts_on_failure() {
    if !jail_possible() {
        return;
    }
    let kilnd = Kilnd::start_with(scratch("kilnd", "jailed-restart"), &["--jail-instances"]);
    let crash = guests::c("crash");
    let id = kilnd.create(serde_json::json!({"image": crash, "restart": "on-failure:2", "net": "none"}));
    assert_eq!(kilnd.instance(&id)["jailed"], true);
    let start = Instant::now();
    let mut seen_restarting = false;
    let record = loop {
        let record = kilnd.instance(&id);
        seen_restarting |= record["state"] == "restarting";
        if record["state"] == "exited" {
            break record;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still not ended: {record}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(seen_restarting, "never seen restarting");
    assert_eq!((record["restarts"].as_u64(), record["exit_code"].as_i64()), (Some(2), Some(139)), "{record}");
    assert!(record["reason"].as_str().unwrap().starts_with("crashed: SIGSEGV"), "{record}");
    let (_, log) = kilnd.call("GET", &format!("/instances/{id}/logs"), "");
    assert_eq!(log.matches("about to crash\n").count(), 3, "{log}");
    assert_eq!(children(kilnd.child.id()), Vec::<u32>::new(), "instance processes left under kilnd");
}

/// `kiln run -d --jail --health-check` goes through kilnd (no longer refused): the check from the host sees the
/// jailed program stop answering.
#[test]
fn a_jailed_instances_health_check_goes_unhealthy() {
    if !jail_possible() {
        return;
    }
    let kilnd = Kilnd::start("jailed-health");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = kiln_in(&kilnd.home)
        .args(["run", "-d", "--jail", "--name", "flaky", "-p", &format!("127.0.0.1:{port}:80"), "--health-check"])
        .arg(format!("http:{port}/"))
        .args(["--health-interval", "100", "--health-timeout", "500", "--health-retries", "2"])
        .arg(guests::c("flaky"))
        .arg("4")
        .run();
    run.assert_code(0);
    let id = run.stdout_text().trim().to_string();
    assert_eq!(kilnd.instance(&id)["jailed"], true);
    let wait_for = |verdict: &str| {
        let start = Instant::now();
        loop {
            let record = kilnd.instance(&id);
            if record["health"] == verdict {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "never {verdict}: {record}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("healthy");
    wait_for("unhealthy");
    let ps = kiln_in(&kilnd.home).arg("ps").run();
    assert!(
        ps.stdout_text().lines().any(|l| l.contains(" flaky ") && l.ends_with("(unhealthy)")),
        "{}",
        ps.stdout_text()
    );
    let (parent, child) = jailed_processes(&kilnd);
    kiln_in(&kilnd.home).args(["kill", "flaky"]).run().assert_code(0);
    assert_eq!(kilnd.instance(&id)["state"], "exited");
    assert_gone(parent);
    assert_gone(child);
    // --jail-uid is kilnd's to choose: with --restart, refused in one line.
    let refused = kiln_in(&kilnd.home)
        .args(["run", "-d", "--jail", "--jail-uid", "4000123", "--restart", "always"])
        .arg(guests::c("hello"))
        .run();
    assert!(refused.assert_kiln_error().contains("--jail-uid with --restart"), "{refused}");
}
