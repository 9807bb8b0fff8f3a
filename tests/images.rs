//! Image and instance tests: `kiln build` from a Kiln.toml (reproducible ids, errors with line numbers, a damaged
//! store refused), and the instance lifecycle (`run -d` → `ps` → `logs` → `stop` → `rm`) through the real VMM, with
//! `-o json` parsed. Each test has its own `KILN_HOME`, so their instances and images never meet.

#[allow(dead_code)]
mod harness;

use harness::store::kiln_in;
use harness::{guests, kvm, Outcome};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fresh directory under the target directory for one test.
fn scratch(test: &str) -> PathBuf {
    harness::store::scratch("images", test)
}

fn json(run: &Outcome) -> Value {
    serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e})\n{run}"))
}

/// A project directory holding `program` (copied), a file and a directory tree, and this Kiln.toml.
fn project(dir: &Path, program: &Path, kiln_toml: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("static/css")).unwrap();
    std::fs::copy(program, dir.join("app")).unwrap();
    std::fs::write(dir.join("static/index.html"), "<h1>hello</h1>\n").unwrap();
    std::fs::write(dir.join("static/css/site.css"), "h1 { color: red }\n").unwrap();
    std::fs::write(dir.join("greeting.txt"), "hi from the image\n").unwrap();
    std::fs::write(dir.join("Kiln.toml"), kiln_toml).unwrap();
    dir.to_path_buf()
}

const HELLO_TOML: &str = r#"name = "hello"
binary = "app"
args = ["one", "two"]
env = { KILN_GREETING = "from Kiln.toml" }
files = { "greeting.txt" = "/etc/greeting.txt" }
dirs = { static = "/srv/static" }
memory = "32M"
"#;

/// `kiln build -q` in `dir`; the image id it prints.
fn build(home: &Path, dir: &Path, extra: &[&str]) -> String {
    let run = kiln_in(home).current_dir(dir).args(["build", "-q"]).args(extra).run();
    run.assert_code(0);
    let id = run.stdout_text().trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{run}");
    id
}

#[test]
fn the_same_project_builds_the_same_image_anywhere() {
    let base = scratch("reproducible");
    let home = base.join("home");
    let hello = guests::c("hello");
    let one = project(&base.join("one"), &hello, HELLO_TOML);
    let first = build(&home, &one, &[]);
    assert_eq!(build(&home, &one, &[]), first, "a second build");

    // A copy elsewhere, written later, with other permission bits on a data file: still the same image.
    std::thread::sleep(Duration::from_millis(20));
    let two = project(&base.join("elsewhere/two"), &hello, HELLO_TOML);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(two.join("greeting.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(build(&home, &two, &["-t", "hello:copy"]), first, "a copy in another directory");

    // A changed file is a different image.
    std::fs::write(two.join("static/index.html"), "<h1>changed</h1>\n").unwrap();
    assert_ne!(build(&home, &two, &["-t", "hello:changed"]), first);

    let images = json(&kiln_in(&home).args(["images", "-o", "json"]).run());
    let tags: Vec<String> = images.as_array().unwrap().iter().map(|i| format!("{}:{}", i["name"], i["tag"])).collect();
    assert_eq!(tags, [r#""hello":"changed""#, r#""hello":"copy""#, r#""hello":"latest""#]);
    assert_eq!(images[2]["id"], first.as_str());

    // inspect: the size breakdown adds up, and it lists what is inside.
    let report = &json(&kiln_in(&home).args(["inspect", "hello"]).run())[0];
    let size = &report["size"];
    let parts: u64 =
        ["manifest", "kernel", "program", "prepared", "rootfs"].iter().map(|k| size[k].as_u64().unwrap()).sum();
    assert_eq!(size["total"].as_u64(), Some(parts));
    assert_eq!(size["program"].as_u64(), Some(std::fs::metadata(&hello).unwrap().len()));
    let paths: Vec<&str> = report["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/app",
            "/srv/static",
            "/srv/static/css",
            "/srv/static/css/site.css",
            "/srv/static/index.html",
            "/etc/greeting.txt"
        ]
    );

    // tag and rmi: the image goes with its last tag, and its blobs with it once no image needs them.
    kiln_in(&home).args(["tag", "hello:changed", "other:v1"]).run().assert_code(0);
    kiln_in(&home).args(["rmi", "hello:changed"]).run().assert_code(0);
    kiln_in(&home).args(["inspect", "other:v1"]).run().assert_code(0);
    // An error on a later name still frees what the earlier ones removed.
    let run = kiln_in(&home).args(["rmi", "other:v1", "nosuch"]).run();
    run.assert_code(125).assert_stderr("kiln: no such image: nosuch\n");
    assert!(run.stdout_text().contains("deleted sha256:") && run.stdout_text().contains("freed"), "{run}");
    kiln_in(&home).args(["rmi", "hello:copy", "hello"]).run().assert_code(0);
    let left = std::fs::read_dir(home.join("blobs/sha256")).unwrap().count();
    assert_eq!(left, 0, "every blob went with the last image");
}

/// A dynamically linked program's loader and libraries, rewritten, go into the image's root filesystem: the image
/// boots without the host's, and builds the same anywhere.
#[test]
fn a_dynamic_program_is_built_into_a_self_contained_image() {
    let base = scratch("dynamic");
    let home = base.join("home");
    let toml = "name = \"dyn\"\nbinary = \"app\"\nargs = [\"7\"]\n";
    let hello = guests::c("hello-dynamic");
    let first = build(&home, &project(&base.join("one"), &hello, toml), &[]);
    assert_eq!(build(&home, &project(&base.join("elsewhere/two"), &hello, toml), &[]), first, "a copy elsewhere");
    if !kvm::available() {
        return;
    }
    for round in 0..2 {
        let run = kiln_in(&home).env("KILN_LOG", "debug").args(["run", "dyn"]).run();
        run.assert_code(7);
        assert!(run.stdout_text().starts_with("hello from kiln\nargc=2\nargv[0]=/app\nargv[1]=7\n"), "{run}");
        // The image's root filesystem is read from the store once, then mapped from the root filesystem cache.
        assert_eq!(run.stderr_text().contains("root filesystem from the cache"), round == 1, "{run}");
    }
}

#[test]
fn kiln_toml_errors_name_the_line_and_the_key() {
    let dir = scratch("toml-errors");
    let home = dir.join("home");
    let error = |toml: &str| {
        std::fs::write(dir.join("Kiln.toml"), toml).unwrap();
        kiln_in(&home).current_dir(&dir).arg("build").run().assert_kiln_error()
    };
    let ok = "name = \"web\"\nbinary = \"app\"\n";
    assert_eq!(
        error(&format!("{ok}\n# the VM\nmemroy = \"1G\"\n")),
        "kiln: Kiln.toml:5: unknown key \"memroy\" — did you mean \"memory\"?"
    );
    assert_eq!(
        error(&format!("{ok}cpus = \"two\"\n")),
        format!("kiln: Kiln.toml:3: cpus must be a whole number from 1 to 64")
    );
    assert_eq!(
        error(&format!("{ok}ports = [\"80\"]\n")).split(':').take(3).collect::<Vec<_>>(),
        ["kiln", " Kiln.toml", "3"]
    );
    assert!(error("name = \"web\"\nbinary = \"app\n").starts_with("kiln: Kiln.toml:2: "));
    assert!(error(ok).contains("binary app: no such file"));
    std::fs::write(dir.join("app"), "#!/bin/sh\n").unwrap();
    assert!(error(ok).contains("not an ELF file"));
    let run = kiln_in(&home).args(["build", "-f", "/nonexistent/Kiln.toml"]).run();
    assert!(run.assert_kiln_error().contains("cannot read /nonexistent/Kiln.toml"));
    assert!(!home.join("refs").exists(), "nothing was tagged");
}

/// Flips one byte of a blob in the store: running or inspecting the image is then refused, and names the blob.
#[test]
fn a_damaged_blob_is_refused() {
    let base = scratch("damaged");
    let home = base.join("home");
    build(&home, &project(&base.join("p"), &guests::c("hello"), HELLO_TOML), &[]);
    let report = &json(&kiln_in(&home).args(["inspect", "hello"]).run())[0];
    let program = report["program"]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let blob = home.join("blobs/sha256").join(program);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    for command in [&["run", "hello"][..], &["run", "-d", "hello"], &["inspect", "hello"]] {
        let line = kiln_in(&home).args(command).run().assert_kiln_error();
        assert!(
            line.contains("image hello") && line.contains(program) && line.contains("does not match its digest"),
            "{line}"
        );
    }
    let images = kiln_in(&home).args(["images"]).run();
    images.assert_code(0);

    // A tag whose file holds no image id: images says so and lists the rest, and rmi removes it.
    std::fs::write(home.join("refs/broken:1"), "sha256:0\n").unwrap();
    let images = kiln_in(&home).args(["images"]).run();
    images.assert_code(0);
    assert!(images.stdout_text().contains("hello"), "{images}");
    assert!(images.stderr_text().ends_with("holds no image id; kiln rmi broken:1 removes it\n"), "{images}");
    let line = kiln_in(&home).args(["run", "broken:1"]).run().assert_kiln_error();
    assert!(line.starts_with("kiln: the store is damaged: tag broken:1 ("), "{line}");
    kiln_in(&home).args(["rmi", "broken:1"]).run().assert_code(0).assert_stdout("untagged broken:1\n");
    kiln_in(&home).args(["images"]).run().assert_code(0).assert_stderr("");
    assert!(instances(&home).is_empty());
}

/// A record that cannot be read (or that names another directory) is shown as damaged by `ps`, stops nothing else,
/// and `kiln rm ID` removes it.
#[test]
fn a_damaged_instance_record_is_reported_and_removable() {
    let home = scratch("damaged-record");
    std::fs::create_dir_all(home.join("instances/0123456789ab")).unwrap();
    std::fs::write(home.join("instances/0123456789ab/record.json"), "{\"id\": \"0123").unwrap();
    let ps = kiln_in(&home).args(["ps", "-a", "-o", "json"]).run();
    ps.assert_code(0);
    assert!(json(&ps).as_array().unwrap().is_empty(), "{ps}");
    assert!(
        ps.stderr_text().starts_with("kiln: instance record ")
            && ps.stderr_text().contains("is damaged (kiln rm 0123456789ab removes it)"),
        "{ps}"
    );
    let line = kiln_in(&home).args(["inspect", "0123456789ab"]).run().assert_kiln_error();
    assert!(line.contains("is damaged (kiln rm 0123456789ab removes it)"), "{line}");
    kiln_in(&home).args(["rm", "0123456789ab"]).run().assert_code(0).assert_stdout("0123456789ab\n");
    assert!(!home.join("instances/0123456789ab").exists());
    kiln_in(&home).args(["ps", "-a"]).run().assert_code(0).assert_stderr("");
}

/// An instance still starting (its process recorded, its VM not yet booted) can be stopped, killed and removed
/// like a running one; before, stop printed its name and let it run on. A `sleep` stands in for its process.
#[test]
fn a_starting_instance_can_be_stopped() {
    let home = scratch("starting");
    /// Kills the stand-in when the test ends, failed or not: it holds the test's output pipes open.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut starting = Reaped(std::process::Command::new("sleep").arg("120").spawn().unwrap());
    let pid = starting.0.id();
    let record = |id: &str, name: &str| {
        serde_json::json!({
            "id": id, "name": name, "image": "./app", "image_id": null, "command": ["./app"], "ports": [],
            "state": "created", "pid": pid, "pid_start": kiln_image::instance::process_start(pid).unwrap(),
            "created_ms": 1, "started_ms": null, "finished_ms": null, "exit_code": null, "reason": null,
            "auto_remove": false
        })
    };
    std::fs::create_dir_all(home.join("instances/0123456789ab")).unwrap();
    std::fs::write(home.join("instances/0123456789ab/record.json"), record("0123456789ab", "starting").to_string())
        .unwrap();
    let line = kiln_in(&home).args(["rm", "starting"]).run().assert_kiln_error();
    assert!(line.contains("is running; stop it first"), "{line}");
    kiln_in(&home).args(["stop", "-t", "30", "starting"]).run().assert_code(0).assert_stdout("starting\n");
    // stop returns once the process is gone, so it has ended by now; a stop that did nothing fails here, not hangs.
    let status = starting.0.try_wait().unwrap();
    let signal = status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
    assert_eq!(signal, Some(libc::SIGTERM), "{status:?}");
    let i = instance(&home, "starting");
    assert_eq!(
        (i["state"].as_str(), i["reason"].as_str()),
        (Some("exited"), Some("its process ended before the VM booted"))
    );
}

#[test]
fn an_image_runs_with_its_settings_and_files() {
    if !kvm::available() {
        return;
    }
    let base = scratch("run-image");
    let home = base.join("home");
    build(&home, &project(&base.join("hello"), &guests::c("hello"), &HELLO_TOML.replace("\"one\"", "\"3\"")), &[]);
    let run = kiln_in(&home).args(["run", "hello"]).run();
    run.assert_code(3);
    let out = run.stdout_text();
    assert!(out.contains("argc=3\nargv[0]=/app\nargv[1]=3\nargv[2]=two\n"), "{run}");
    assert!(out.contains("env[0]=KILN_GREETING=from Kiln.toml\nenvc=1\n"), "{run}");
    // Arguments on the command line replace the image's; --env adds to and overrides its environment.
    let run = kiln_in(&home).args(["run", "--env", "KILN_GREETING=flag", "--env", "B=2", "hello", "5"]).run();
    run.assert_code(5);
    assert!(
        run.stdout_text().contains("argc=2\n") && run.stdout_text().contains("env[0]=KILN_GREETING=flag\nenv[1]=B=2\n"),
        "{run}"
    );
    assert!(!home.join("cache/rewrite").exists(), "an image's program comes rewritten: the rewrite cache is not used");
    let line = kiln_in(&home).args(["run", "nosuchimage"]).run().assert_kiln_error();
    assert_eq!(line, "kiln: nosuchimage: no such image (kiln images lists them) or file");

    // The image's directories are in the guest's filesystem (the files guest checks them, and changes one).
    let dir = base.join("files");
    std::fs::create_dir_all(dir.join("data/sub")).unwrap();
    std::fs::write(dir.join("data/hello.txt"), "from the host\n").unwrap();
    std::fs::write(dir.join("data/sub/deep.txt"), "deep\n").unwrap();
    let toml = "name = \"files\"\nbinary = \"app\"\nargs = [\"with-image-files\"]\ndirs = { data = \"/srv/data\" }\n";
    build(&home, &project(&dir, &guests::c("files"), toml), &[]);
    let run = kiln_in(&home).args(["run", "files"]).run();
    run.assert_code(0);
    assert!(run.stdout_text().ends_with("files: ok\n"), "{run}");

    // workdir: the program starts there; -w replaces it.
    let toml = "name = \"pwd\"\nbinary = \"app\"\nargs = [\"--pwd\", \"index.html\"]\nworkdir = \"/srv/static\"\n\
                dirs = { static = \"/srv/static\" }\n";
    let pwd = project(&base.join("pwd"), &guests::c("fslinks"), toml);
    std::os::unix::fs::symlink("css/site.css", pwd.join("static/style")).unwrap();
    build(&home, &pwd, &[]);
    let run = kiln_in(&home).args(["run", "pwd"]).run();
    run.assert_code(0);
    assert_eq!(run.stdout_text(), "cwd: /srv/static\nread: <h1>hello</h1>\n\n", "{run}");
    let run = kiln_in(&home).args(["run", "-w", "/srv", "pwd", "--pwd", "static/css/site.css"]).run();
    assert_eq!(run.stdout_text(), "cwd: /srv\nread: h1 { color: red }\n\n", "{run}");
    let report = &json(&kiln_in(&home).args(["inspect", "pwd"]).run())[0];
    assert_eq!(report["config"]["workdir"], "/srv/static", "{report}");
    // A link of the project's tree is a link in the image.
    let link = report["files"].as_array().unwrap().iter().find(|f| f["path"] == "/srv/static/style").unwrap();
    assert_eq!((link["kind"].as_str(), link["target"].as_str()), (Some("symlink"), Some("css/site.css")), "{report}");
    let run = kiln_in(&home).args(["run", "pwd", "--pwd", "style"]).run();
    assert_eq!(run.stdout_text(), "cwd: /srv/static\nread: h1 { color: red }\n\n", "{run}");
}

/// `kiln run -d NAME` resolves NAME and the flags once and records the result (the launch specification, with the
/// image's id); the instance process launches that record. Started again (by hand here, with `KILN_INSTANCE` naming
/// the record, as `kiln run -d` starts it, and as a restart would), it boots the recorded image with the recorded
/// arguments, even though NAME has been given to another image and its command line now says otherwise.
#[test]
fn an_instance_boots_the_image_its_record_names() {
    if !kvm::available() {
        return;
    }
    let base = scratch("recorded-image");
    let home = base.join("home");
    let _cleanup = Cleanup(home.clone());
    let hello = guests::c("hello");
    build(&home, &project(&base.join("a"), &hello, &HELLO_TOML.replace("\"one\"", "\"3\"")), &[]);
    kiln_in(&home).args(["run", "-d", "--name", "recorded", "hello"]).run().assert_code(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while instance(&home, "recorded")["state"] != "exited" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let i = instance(&home, "recorded");
    assert_eq!((i["state"].as_str(), i["exit_code"].as_i64()), (Some("exited"), Some(3)), "{i}");
    assert_eq!(i["launch"]["argv"], serde_json::json!(["/app", "3", "two"]), "{i}");
    let id = i["id"].as_str().unwrap().to_string();

    build(&home, &project(&base.join("b"), &hello, &HELLO_TOML.replace("\"one\"", "\"4\"")), &[]);
    kiln_in(&home).args(["run", "hello"]).run().assert_code(4);
    kiln_in(&home).env("KILN_INSTANCE", &id).args(["run", "-d", "hello", "5"]).run().assert_code(3);
    let i = instance(&home, "recorded");
    assert_eq!((i["state"].as_str(), i["exit_code"].as_i64()), (Some("exited"), Some(3)), "{i}");

    // Once the recorded image is gone (the next rmi collects it, untagged as it is), that is what the process says.
    kiln_in(&home).args(["rmi", "hello"]).run().assert_code(0);
    let line = kiln_in(&home).env("KILN_INSTANCE", &id).args(["run", "-d", "hello"]).run().assert_kiln_error();
    assert_eq!(line, "kiln: hello: no such image: it was removed after kiln run -d named it");
}

/// Removes every instance of a store when the test ends, passed or not: no VM outlives its test.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(Value::Array(all)) =
            serde_json::from_slice(&kiln_in(&self.0).args(["ps", "-a", "-o", "json"]).run().stdout)
        {
            for i in all {
                kiln_in(&self.0).args(["rm", "-f", i["id"].as_str().unwrap_or_default()]).run();
            }
        }
    }
}

/// Every instance, as `kiln ps -a -o json` lists them.
fn instances(home: &Path) -> Vec<Value> {
    match json(&kiln_in(home).args(["ps", "-a", "-o", "json"]).run()) {
        Value::Array(all) => all,
        other => panic!("ps -o json printed no array: {other}"),
    }
}

fn names(home: &Path) -> Vec<String> {
    instances(home).iter().map(|i| i["name"].as_str().unwrap_or_default().to_string()).collect()
}

fn instance(home: &Path, name: &str) -> Value {
    let all = instances(home);
    all.iter().find(|i| i["name"] == name).cloned().unwrap_or_else(|| panic!("no instance {name}: {all:?}"))
}

/// Polls `kiln logs` until it holds `text` (a booted program may take a while to print on a loaded machine).
fn wait_for_log(home: &Path, name: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = kiln_in(home).args(["logs", name]).run().stdout_text();
        if log.contains(text) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn instances_go_from_run_to_rm() {
    if !kvm::available() {
        return;
    }
    let base = scratch("lifecycle");
    let home = base.join("home");
    let _cleanup = Cleanup(home.clone());
    let toml = "name = \"waiter\"\nbinary = \"app\"\nargs = [\"graceful\"]\n";
    let id = build(&home, &project(&base.join("p"), &guests::c("waiter"), toml), &[]);

    let run = kiln_in(&home).args(["run", "-d", "--name", "w1", "waiter"]).run();
    run.assert_code(0);
    let instance_id = run.stdout_text().trim().to_string();
    let w1 = instance(&home, "w1");
    assert_eq!((w1["id"].as_str(), w1["state"].as_str()), (Some(instance_id.as_str()), Some("running")), "{w1}");
    assert_eq!(w1["image_id"], id.as_str());
    assert_eq!(w1["command"], serde_json::json!(["/app", "graceful"]));
    assert_eq!(wait_for_log(&home, "w1", "waiter: ready\n"), "waiter: ready\n");

    // Names are unique.
    let line = kiln_in(&home).args(["run", "-d", "--name", "w1", "waiter"]).run().assert_kiln_error();
    assert!(line.contains("the name \"w1\" is already used"), "{line}");
    // An image an instance was started from stays.
    let line = kiln_in(&home).args(["rmi", "waiter"]).run().assert_kiln_error();
    assert_eq!(
        line,
        format!("kiln: waiter: instance w1 ({instance_id}) was started from it; remove the instance first (kiln rm) or use --force")
    );

    let inspected = &json(&kiln_in(&home).args(["inspect", "w1"]).run())[0];
    assert_eq!((inspected["id"].as_str(), inspected["state"].as_str()), (Some(instance_id.as_str()), Some("running")));
    assert!(Path::new(inspected["log"].as_str().unwrap()).is_file(), "{inspected}");

    // stop: SIGTERM reaches the program, which exits cleanly; `logs -f` follows the output until then.
    let follower = {
        let home = home.clone();
        std::thread::spawn(move || kiln_in(&home).args(["logs", "-f", "w1"]).run())
    };
    kiln_in(&home).args(["stop", "w1"]).run().assert_code(0);
    follower.join().unwrap().assert_code(0).assert_stdout("waiter: ready\nwaiter: stopped by signal 15\n");
    let w1 = instance(&home, "w1");
    assert_eq!(
        (w1["state"].as_str(), w1["exit_code"].as_i64(), w1["reason"].as_str()),
        (Some("exited"), Some(0), Some("exited"))
    );
    let log = kiln_in(&home).args(["logs", "--tail", "1", &instance_id[..6]]).run();
    log.assert_stdout("waiter: stopped by signal 15\n");
    assert!(
        json(&kiln_in(&home).args(["ps", "-o", "json"]).run()).as_array().unwrap().is_empty(),
        "ps shows running ones only"
    );

    kiln_in(&home).args(["rm", "w1"]).run().assert_code(0);
    assert!(instances(&home).is_empty());
    assert!(kiln_in(&home).args(["logs", "w1"]).run().assert_kiln_error().contains("no such instance: w1"));
}

#[test]
fn a_program_that_ignores_sigterm_is_killed_and_a_dead_vmm_is_noticed() {
    if !kvm::available() {
        return;
    }
    let base = scratch("stubborn");
    let home = base.join("home");
    let _cleanup = Cleanup(home.clone());
    let waiter = guests::c("waiter");
    let waiter = waiter.to_str().unwrap();
    kiln_in(&home).args(["run", "-d", "--name", "stubborn", waiter, "stubborn"]).run().assert_code(0);
    wait_for_log(&home, "stubborn", "waiter: ready\n");
    kiln_in(&home).args(["stop", "-t", "1", "stubborn"]).run().assert_code(0);
    let i = instance(&home, "stubborn");
    assert_eq!((i["state"].as_str(), i["exit_code"].as_i64()), (Some("exited"), Some(137)), "{i}");
    assert!(i["reason"].as_str().unwrap().contains("still running 1 s after SIGTERM"), "{i}");

    // kill: at once, and recorded as such.
    kiln_in(&home).args(["run", "-d", "--name", "killed", waiter, "graceful"]).run().assert_code(0);
    kiln_in(&home).args(["kill", "killed"]).run().assert_code(0);
    let i = instance(&home, "killed");
    assert_eq!((i["state"].as_str(), i["exit_code"].as_i64()), (Some("exited"), Some(137)), "{i}");
    assert_eq!(i["reason"], "killed by kiln kill (SIGKILL)");
    let line = kiln_in(&home).args(["kill", "killed"]).run().assert_kiln_error();
    assert_eq!(line, "kiln: instance killed is not running");

    // A VMM killed behind kiln's back: ps shows it exited, and why.
    kiln_in(&home).args(["run", "-d", "--name", "victim", waiter]).run().assert_code(0);
    let pid = instance(&home, "victim")["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the instance's VMM process, which this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while instance(&home, "victim")["state"] == "running" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let i = instance(&home, "victim");
    assert_eq!((i["state"].as_str(), i["exit_code"].as_i64()), (Some("exited"), None), "{i}");
    assert!(i["reason"].as_str().unwrap().contains("died without recording an exit"), "{i}");

    // --rm: the record goes with the instance.
    kiln_in(&home).args(["run", "-d", "--rm", "--name", "brief", waiter]).run().assert_code(0);
    kiln_in(&home).args(["stop", "brief"]).run().assert_code(0);
    assert_eq!(names(&home), ["stubborn", "killed", "victim"]);
}

#[test]
fn two_instances_cannot_publish_the_same_host_port() {
    if !kvm::available() {
        return;
    }
    let base = scratch("ports");
    let home = base.join("home");
    let _cleanup = Cleanup(home.clone());
    let waiter = guests::c("waiter");
    let waiter = waiter.to_str().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let publish = format!("127.0.0.1:{port}:80");
    kiln_in(&home).args(["run", "-d", "--name", "first", "-p", &publish, waiter]).run().assert_code(0);
    let line = kiln_in(&home).args(["run", "-d", "--name", "second", "-p", &publish, waiter]).run().assert_kiln_error();
    assert_eq!(
        line,
        format!(
            "kiln: host port {port}/tcp is already published by instance first ({})",
            instance(&home, "first")["id"].as_str().unwrap()
        )
    );
    // A port taken by another program: the instance's own error, and no record left behind.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("127.0.0.1:{}:80", other.local_addr().unwrap().port());
    let line = kiln_in(&home).args(["run", "-d", "--name", "third", "-p", &taken, waiter]).run().assert_kiln_error();
    assert!(line.contains("already in use"), "{line}");
    assert_eq!(names(&home), ["first"]);
}

/// `binary = { cargo = ... }`: kiln builds the package for the musl target and takes the executable cargo names.
#[test]
fn a_cargo_package_is_built_for_the_musl_target() {
    let dir = scratch("cargo");
    let home = dir.join("home");
    std::fs::create_dir_all(dir.join("src/bin")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\n\n[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[profile.release]\ndebug = false\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() { println!(\"tiny\"); }\n").unwrap();
    std::fs::write(dir.join("src/bin/other.rs"), "fn main() { println!(\"other\"); }\n").unwrap();
    std::fs::write(dir.join("Kiln.toml"), "name = \"tiny\"\nbinary = { cargo = \"tiny\", bin = \"other\" }\n").unwrap();
    let id = build(&home, &dir, &[]);
    assert_eq!(build(&home, &dir, &[]), id, "a second build (cargo has nothing to do)");
    let report = &json(&kiln_in(&home).args(["inspect", "tiny"]).run())[0];
    assert_eq!(report["config"]["program_path"], "/other");

    std::fs::write(dir.join("Kiln.toml"), "name = \"tiny\"\nbinary = { cargo = \"nosuch\" }\n").unwrap();
    let run = kiln_in(&home).current_dir(&dir).arg("build").run();
    assert_eq!(run.code, Some(125), "{run}");
    assert!(
        run.stderr_text().ends_with(
            "kiln: binary: cargo could not build package nosuch for x86_64-unknown-linux-musl (its errors are above)\n"
        ),
        "{run}"
    );

    if kvm::available() {
        kiln_in(&home).args(["run", "tiny"]).run().assert_code(0).assert_stdout("other\n");
    }
}

/// An image whose library OS speaks another boot protocol than this kiln's VMM is refused, with what to do.
#[test]
fn an_image_for_another_boot_protocol_is_refused() {
    let base = scratch("boot-protocol");
    let home = base.join("home");
    let id = build(&home, &project(&base.join("p"), &guests::c("hello"), HELLO_TOML), &[]);
    let manifest = std::fs::read_to_string(home.join("blobs/sha256").join(&id["sha256:".len()..])).unwrap();
    let ours =
        format!("\"boot_version\": {}", json(&kiln_in(&home).args(["inspect", "hello"]).run())[0]["boot_version"]);
    assert!(manifest.contains(&ours), "{manifest}");
    let old = manifest.replace(&ours, "\"boot_version\": 1");
    let scratch_file = base.join("old-manifest");
    std::fs::write(&scratch_file, &old).unwrap();
    let sum = std::process::Command::new("sha256sum").arg(&scratch_file).output().unwrap();
    let hex = String::from_utf8(sum.stdout).unwrap()[..64].to_string();
    std::fs::rename(&scratch_file, home.join("blobs/sha256").join(&hex)).unwrap();
    std::fs::write(home.join("refs/old:v1"), format!("sha256:{hex}\n")).unwrap();
    let line = kiln_in(&home).args(["run", "old:v1"]).run().assert_kiln_error();
    assert!(
        line.starts_with("kiln: image old:v1: it was built by kiln ") && line.contains("for boot protocol 1,"),
        "{line}"
    );
    assert!(line.ends_with("; build it again"), "{line}");
}

/// An image keeps its program's symbols and debug information: its crash report names the function and line, read
/// from the store's copy of the program (the host file it was built from is gone).
#[test]
fn an_image_crash_report_names_the_function_and_line() {
    if !kvm::available() {
        return;
    }
    let base = scratch("crash-report");
    let home = base.join("home");
    let dir = project(&base.join("p"), &guests::c("backtrace"), "name = \"crasher\"\nbinary = \"app\"\n");
    build(&home, &dir, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    let run = kiln_in(&home).args(["run", "crasher"]).run();
    run.assert_code(139);
    let stderr = run.stderr_text();
    let headline = stderr.lines().find(|l| l.starts_with("kiln: program crashed: SIGSEGV")).unwrap_or_default();
    assert!(headline.contains(" in parse_header (") && headline.contains("backtrace.c:"), "{run}");
    assert!(stderr.contains(" in handle_request ("), "{run}");
}
