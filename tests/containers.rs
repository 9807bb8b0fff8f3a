//! Container images in: `kiln build` from an OCI layout, an OCI archive and a docker archive made here (layers with
//! whiteouts, links and a hard link; a static program and a dynamically linked one whose loader and libraries are
//! in the image), run through the real VMM and compared with native runs; damaged and hostile images refused with
//! one line.

#[allow(dead_code)]
mod harness;

use harness::container::{self, file, layer, program, Entry};
use harness::store::kiln_in;
use harness::{guests, kvm};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(test: &str) -> PathBuf {
    harness::store::scratch("containers", test)
}

/// `kiln build -q` of a project in `dir` whose Kiln.toml has `from` and `extra` lines; the image id.
fn build(home: &Path, dir: &Path, from: &str, extra: &str) -> String {
    std::fs::write(dir.join("Kiln.toml"), format!("name = \"app\"\nfrom = \"{from}\"\n{extra}")).unwrap();
    let run = kiln_in(home).current_dir(dir).args(["build", "-q"]).run();
    run.assert_code(0);
    run.stdout_text().trim().to_string()
}

/// What `kiln build` says when it refuses the image `from` (one `kiln:` line).
fn refused(home: &Path, dir: &Path, from: &str) -> String {
    std::fs::write(dir.join("Kiln.toml"), format!("name = \"app\"\nfrom = \"{from}\"\n")).unwrap();
    kiln_in(home).current_dir(dir).arg("build").run().assert_kiln_error()
}

/// Two layers over a static `tree`: the second removes a file (`.wh.`), empties a directory of what the first put
/// there (`.wh..wh..opq`) and adds a hard link to a file of the first.
fn tree_layers() -> Vec<Vec<u8>> {
    let lower = layer(&[
        ("usr/", Entry::Dir),
        ("usr/bin/", Entry::Dir),
        ("usr/bin/tree", program(&guests::c("tree"))),
        ("proc/", Entry::Dir),
        ("data/", Entry::Dir),
        ("data/keep.txt", file("kept\n")),
        ("data/gone.txt", file("removed by the upper layer\n")),
        ("data/old/", Entry::Dir),
        ("data/old/a.txt", file("hidden by the opaque whiteout\n")),
        ("data/link", Entry::Symlink("keep.txt".into())),
        ("data/abs", Entry::Symlink("/data/keep.txt".into())),
    ]);
    let upper = layer(&[
        ("data/.wh.gone.txt", file("")),
        ("data/old/.wh..wh..opq", file("")),
        ("data/old/b.txt", file("new\n")),
        ("data/hard", Entry::HardLink("data/keep.txt".into())),
        ("data/deep/er/x.txt", file("parents made as needed\n")),
    ]);
    vec![lower, upper]
}

/// The tree the layers add up to, made on the host, as `tree` lists it natively.
fn expected_tree(dir: &Path) -> String {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("old")).unwrap();
    std::fs::create_dir_all(dir.join("deep/er")).unwrap();
    std::fs::write(dir.join("keep.txt"), "kept\n").unwrap();
    std::fs::write(dir.join("old/b.txt"), "new\n").unwrap();
    std::fs::write(dir.join("hard"), "kept\n").unwrap();
    std::fs::write(dir.join("deep/er/x.txt"), "parents made as needed\n").unwrap();
    std::os::unix::fs::symlink("keep.txt", dir.join("link")).unwrap();
    std::os::unix::fs::symlink("/data/keep.txt", dir.join("abs")).unwrap();
    let perm = |p: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    for f in ["keep.txt", "old/b.txt", "hard", "deep/er/x.txt"] {
        perm(f, 0o644);
    }
    for d in [".", "old", "deep", "deep/er"] {
        perm(d, 0o755);
    }
    let native = Command::new(guests::c("tree")).arg(".").current_dir(dir).output().unwrap();
    assert!(native.status.success(), "native tree: {native:?}");
    String::from_utf8(native.stdout).unwrap()
}

#[test]
fn a_static_program_from_an_oci_layout_and_archive_sees_the_layers_applied() {
    if !kvm::available() {
        return;
    }
    let base = scratch("static-oci");
    let home = base.join("home");
    let raw = tree_layers();
    // `tree` is found through PATH and lists the working directory, as the config says.
    let config = container::config(
        &raw,
        serde_json::json!({"Entrypoint": ["tree"], "Cmd": ["."], "WorkingDir": "/data",
                           "Env": ["PATH=/usr/local/bin:/usr/bin"], "ExposedPorts": {"8080/tcp": {}}}),
    );
    // The upper layer gzip-compressed, as registries and skopeo store them.
    container::oci_layout(&base.join("layout"), &config, &[raw[0].clone(), container::gzip(&raw[1])]);
    let id = build(&home, &base, "oci:layout", "");
    let expected = expected_tree(&base.join("expected"));
    kiln_in(&home).args(["run", "-p", "18080:8080", "app"]).run().assert_code(0).assert_stdout(&expected);

    let report: serde_json::Value =
        serde_json::from_slice(&kiln_in(&home).args(["inspect", "app"]).run().stdout).unwrap();
    let config = &report[0]["config"];
    assert_eq!(config["program_path"], "/usr/bin/tree");
    assert_eq!(config["args"], serde_json::json!(["."]));
    assert_eq!(config["workdir"], "/data");
    assert_eq!(config["env"], serde_json::json!(["PATH=/usr/local/bin:/usr/bin"]));
    assert_eq!(config["ports"], serde_json::json!(["8080:8080"]));

    // The same layout as an OCI archive is the same image.
    let tar = Command::new("tar").args(["-cf", "../app.tar", "."]).current_dir(base.join("layout")).status().unwrap();
    assert!(tar.success());
    assert_eq!(build(&home, &base, "oci-archive:app.tar", ""), id);

    // kiln run takes it straight from the archive, as docker run takes an image: made an image named after the file,
    // then run.
    let other_home = base.join("other-home");
    let run = kiln_in(&other_home).current_dir(&base).args(["run", "oci-archive:app.tar"]).run();
    run.assert_code(0).assert_stdout(&expected);
    let images = kiln_in(&other_home).args(["images", "-o", "json"]).run();
    let images: serde_json::Value = serde_json::from_slice(&images.stdout).unwrap();
    assert_eq!(
        (&images[0]["name"], &images[0]["tag"], &images[0]["id"]),
        (&"app".into(), &"latest".into(), &id.into())
    );
}

#[test]
fn a_static_program_from_a_docker_archive_gets_its_config() {
    if !kvm::available() {
        return;
    }
    let base = scratch("static-docker");
    let home = base.join("home");
    let raw = vec![layer(&[("bin/", Entry::Dir), ("bin/hello", program(&guests::c("hello")))])];
    let config = container::config(
        &raw,
        serde_json::json!({"Entrypoint": ["/bin/hello"], "Cmd": ["7"], "Env": ["KILN_GREETING=from the image", "A=1"]}),
    );
    container::docker_archive(&base.join("app.tar"), &config, &raw);
    build(&home, &base, "docker-archive:app.tar", "env = { A = \"from Kiln.toml\" }\n");
    let run = kiln_in(&home).args(["run", "app"]).run();
    run.assert_code(7);
    let out = run.stdout_text();
    for line in ["argv[0]=/bin/hello", "argv[1]=7", "KILN_GREETING=from the image", "env[0]=A=from Kiln.toml"] {
        assert!(out.contains(line), "{line}\n{run}");
    }
    // Arguments replace the Cmd, as with docker run; and so straight from the archive.
    kiln_in(&home).args(["run", "app", "3"]).run().assert_code(3);
    let archive = format!("docker-archive:{}", base.join("app.tar").display());
    let run = kiln_in(&home).args(["run", "--env", "A=2", &archive, "4"]).run();
    run.assert_code(4);
    assert!(run.stdout_text().contains("]=A=2\n") && !run.stdout_text().contains("A=1"), "{run}");

    // A script whose interpreter is in the image runs it, as execve does: interpreter, its argument, the script.
    let script = Entry::File {
        mode: 0o755,
        data: b"#!/bin/hello 9
"
        .to_vec(),
    };
    let raw = vec![layer(&[("bin/", Entry::Dir), ("bin/hello", program(&guests::c("hello"))), ("start", script)])];
    let config = container::config(&raw, serde_json::json!({"Entrypoint": ["/start"], "Cmd": ["x"]}));
    container::docker_archive(&base.join("script.tar"), &config, &raw);
    build(&home, &base, "docker-archive:script.tar", "");
    let run = kiln_in(&home).args(["run", "app"]).run();
    run.assert_code(9);
    assert!(run.stdout_text().contains("argc=4\nargv[0]=/bin/hello\nargv[1]=9\nargv[2]=/start\nargv[3]=x\n"), "{run}");
}

/// The libraries `ldd` says a host program loads, and its loader: (path on the host, file name).
fn host_libraries(program: &Path) -> Vec<(PathBuf, String)> {
    let out = Command::new("ldd").arg(program).output().expect("ldd (libc-bin) runs");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| {
            let path = l.split_whitespace().find(|w| w.starts_with('/'))?;
            let path = std::fs::canonicalize(path).ok()?;
            let name = l.split_whitespace().next()?.rsplit('/').next()?.to_string();
            Some((path, name))
        })
        .collect()
}

#[test]
fn a_dynamic_program_runs_with_the_images_own_loader_and_libraries() {
    if !kvm::available() {
        return;
    }
    let base = scratch("dynamic");
    let home = base.join("home");
    let hello = guests::c("hello-dynamic");
    // The libraries in a directory no host has, found through the image's LD_LIBRARY_PATH, and the loader's path
    // (PT_INTERP) an absolute link to it, through a linked directory as in a merged-/usr image.
    let mut entries: Vec<(String, Entry)> = vec![
        ("usr/".into(), Entry::Dir),
        ("usr/bin/".into(), Entry::Dir),
        ("usr/bin/hello".into(), program(&hello)),
        ("opt/".into(), Entry::Dir),
        ("opt/kiln-libs/".into(), Entry::Dir),
        ("lib64".into(), Entry::Symlink("usr/lib64".into())),
        ("usr/lib64/".into(), Entry::Dir),
    ];
    let mut interpreter = None;
    for (path, name) in host_libraries(&hello) {
        if name.starts_with("ld-linux") {
            interpreter = Some(name.clone());
            entries.push((format!("usr/lib64/{name}"), Entry::Symlink(format!("/opt/kiln-libs/{name}"))));
        }
        entries.push((format!("opt/kiln-libs/{name}"), program(&path)));
    }
    assert_eq!(interpreter.as_deref(), Some("ld-linux-x86-64.so.2"), "the host's loader");
    let raw = vec![layer(&entries)];
    let env = ["PATH=/usr/bin", "LD_LIBRARY_PATH=/opt/kiln-libs", "KILN_GREETING=dynamic"];
    let config = container::config(&raw, serde_json::json!({"Entrypoint": ["hello"], "Cmd": ["5"], "Env": env}));
    container::oci_layout(&base.join("layout"), &config, &raw);
    build(&home, &base, "oci:layout", "");

    let run = kiln_in(&home).args(["run", "app"]).run();
    let native = Command::new(&hello)
        .arg0("/usr/bin/hello")
        .arg("5")
        .env_clear()
        .envs(env.map(|kv| kv.split_once('=').unwrap()))
        .output()
        .unwrap();
    assert_eq!(native.status.code(), Some(5));
    run.assert_code(5).assert_stdout(&String::from_utf8(native.stdout).unwrap());

    // Nothing of the host's came in: the only libraries in the image are its own.
    let report: serde_json::Value =
        serde_json::from_slice(&kiln_in(&home).args(["inspect", "app"]).run().stdout).unwrap();
    let libs: Vec<&str> = report[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .filter(|p| p.contains(".so"))
        .collect();
    assert!(libs.iter().all(|p| p.starts_with("/opt/kiln-libs/") || p.starts_with("/usr/lib64/")), "{libs:?}");
}

#[test]
fn damaged_and_hostile_images_are_refused_with_one_line() {
    let base = scratch("refused");
    let home = base.join("home");
    let hello = || program(&guests::c("hello"));
    let image = |dir: &str, entries: Vec<(&str, Entry)>, config: serde_json::Value| {
        let raw = vec![layer(&entries)];
        let config = container::config(&raw, config);
        container::oci_layout(&base.join(dir), &config, &raw)
    };
    let run_hello = serde_json::json!({"Entrypoint": ["/hello"]});

    // A layer whose bytes changed after the manifest named them, and one that is missing.
    let blobs = image("changed", vec![("hello", hello())], run_hello.clone());
    let mut bytes = std::fs::read(&blobs[0]).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&blobs[0], bytes).unwrap();
    let line = refused(&home, &base, "oci:changed");
    assert!(line.contains("layer 1 of 1 (blobs/sha256/") && line.contains("does not match its digest"), "{line}");
    std::fs::remove_file(&blobs[0]).unwrap();
    assert!(refused(&home, &base, "oci:changed")
        .ends_with(&format!("has no blobs/sha256/{}", blobs[0].file_name().unwrap().to_string_lossy())));

    // A docker archive whose layer is not the one its config names.
    let raw = vec![layer(&[("hello", hello())])];
    let config = container::config(&[layer(&[("other", file("x"))])], run_hello.clone());
    container::docker_archive(&base.join("swapped.tar"), &config, &raw);
    let line = refused(&home, &base, "docker-archive:swapped.tar");
    assert!(line.contains("layer 1 of 1 (layer0/layer.tar) does not match its digest"), "{line}");

    // Names and links that would reach outside the image if it were unpacked on the host.
    image("traversal", vec![("hello", hello()), ("../../etc/evil", file("x"))], run_hello.clone());
    let line = refused(&home, &base, "oci:traversal");
    assert!(line.ends_with(r#"entry "../../etc/evil" climbs out of the image's root with `..`"#), "{line}");
    image("escape", vec![("hello", hello()), ("lib/host", Entry::Symlink("/../../../etc".into()))], run_hello.clone());
    let line = refused(&home, &base, "oci:escape");
    assert!(line.ends_with(r#"symbolic link "lib/host" -> "/../../../etc" points outside the image's root"#), "{line}");
    image("absolute", vec![("/etc/passwd", file("x"))], run_hello.clone());
    assert!(refused(&home, &base, "oci:absolute").ends_with(r#"entry "/etc/passwd" has an absolute name"#));

    // A program the loader cannot run: a script whose interpreter the image lacks, a file that is no program.
    let script = Entry::File { mode: 0o755, data: b"#!/bin/sh\necho hi\n".to_vec() };
    image(
        "script",
        vec![("app/", Entry::Dir), ("app/start.sh", script)],
        serde_json::json!({"Cmd": ["/app/start.sh"]}),
    );
    let line = refused(&home, &base, "oci:script");
    assert!(line.ends_with("/app/start.sh is a script for /bin/sh, which is not in the image: add it to the image, or make the Entrypoint an ELF program"), "{line}");
    let text = Entry::File { mode: 0o755, data: b"just text".to_vec() };
    image("text", vec![("run", text)], serde_json::json!({"Entrypoint": ["/run"]}));
    assert!(refused(&home, &base, "oci:text")
        .ends_with("/run is neither an ELF program nor a script starting with #!; Kiln runs ELF programs"));
    image("nothing", vec![("hello", hello())], serde_json::json!({}));
    assert!(refused(&home, &base, "oci:nothing")
        .ends_with("the image has neither an Entrypoint nor a Cmd: there is no program to run"));
    assert!(refused(&home, &base, "docker-archive:missing.tar").contains("cannot read"));
}
