//! Images through a real registry: Debian's `docker-registry` (the CNCF distribution registry, 2.8), started by each
//! test on 127.0.0.1 with its storage in the test's scratch folder. Push, `rmi`, pull and run give the image that was
//! built (same id); a second push uploads no blob (the registry's own log says so); a blob damaged on the registry is
//! refused on pull and leaves nothing in the store; htpasswd auth behind TLS with a CA the test makes; and `skopeo`
//! reads what kiln pushed. A test whose registry (or skopeo, openssl, htpasswd) is missing says so and skips.

#[allow(dead_code)]
mod harness;

use harness::store::kiln_in;
use harness::{guests, kvm, Outcome};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY: &str = "/usr/bin/docker-registry";

fn scratch(test: &str) -> PathBuf {
    harness::store::scratch("registry", test)
}

/// Whether every program the test needs is installed; reports the skip otherwise.
fn have(programs: &[&str]) -> bool {
    for program in programs {
        let found = if program.starts_with('/') {
            Path::new(program).is_file()
        } else {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(program).is_file())
        };
        if !found {
            return kvm::skip(&format!("{program} is not installed (scripts/setup.sh installs it)"));
        }
    }
    true
}

/// A registry of the test's own, stopped when dropped.
struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    addr: String,
    storage: PathBuf,
    log: PathBuf,
}

impl Registry {
    /// Starts one in `dir`, with TLS from `tls` (certificate, key) and htpasswd auth from `htpasswd` if given.
    fn start(dir: &Path, tls: Option<(&Path, &Path)>, htpasswd: Option<&Path>) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            config += &format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
        }
        if let Some(path) = htpasswd {
            config += &format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", path.display());
        }
        let config_path = dir.join("registry.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("registry.log");
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config_path)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let mut registry = Registry { child, addr, storage, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.addr).is_err() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("the registry exited ({status}):\n{}", registry.log_text());
            }
            assert!(Instant::now() < deadline, "the registry did not listen:\n{}", registry.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many blob uploads the registry has been asked to start.
    fn uploads_started(&self) -> usize {
        self.log_text().lines().filter(|l| l.contains("\"POST /v2/") && l.contains("/blobs/uploads/")).count()
    }

    /// The file in which the registry keeps blob `digest`.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project with the C hello program and a file, built into `home`'s store as `hello`; its id.
fn build_hello(home: &Path, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(guests::c("hello"), dir.join("app")).unwrap();
    std::fs::write(dir.join("greeting.txt"), "hi from the registry\n").unwrap();
    std::fs::write(
        dir.join("Kiln.toml"),
        "name = \"hello\"\nbinary = \"app\"\nargs = [\"one\"]\nfiles = { \"greeting.txt\" = \"/etc/greeting.txt\" }\nmemory = \"32M\"\n",
    )
    .unwrap();
    let run = kiln_in(home).current_dir(dir).args(["build", "-q"]).run();
    run.assert_code(0);
    run.stdout_text().trim().to_string()
}

fn manifest_of(image: &str, home: &Path) -> serde_json::Value {
    let run = kiln_in(home).args(["inspect", "--type", "image", image]).run();
    run.assert_code(0);
    serde_json::from_slice(&run.stdout).unwrap()
}

/// Files in the store's blob directory that are not blobs (temporary files left behind).
fn temporaries(home: &Path) -> Vec<String> {
    std::fs::read_dir(home.join("blobs/sha256"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.len() != 64).collect())
        .unwrap_or_default()
}

fn skopeo(args: &[&str]) -> std::process::Output {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn push_rmi_pull_and_run_give_the_image_that_was_built() {
    if !have(&[REGISTRY, "skopeo"]) {
        return;
    }
    let base = scratch("round-trip");
    let home = base.join("home");
    let registry = Registry::start(&base, None, None);
    let id = build_hello(&home, &base.join("project"));
    let remote = format!("{}/kiln/hello:1", registry.addr);

    let push = kiln_in(&home).args(["push", "hello", &remote]).run();
    push.assert_code(0);
    assert!(push.stdout_text().contains("uploaded 5 blobs"), "{push}");
    let started = registry.uploads_started();
    assert_eq!(started, 5, "four blobs and the Kiln manifest\n{}", registry.log_text());

    // Again, under another tag: every blob is there (HEAD says so), so none is uploaded.
    let again = kiln_in(&home).args(["push", "-q", "hello", &format!("{}/kiln/hello:2", registry.addr)]).run();
    again.assert_code(0);
    assert_eq!(registry.uploads_started(), started, "a second push uploaded blobs\n{}", registry.log_text());
    let manifest_digest = again.stdout_text().trim().to_string();
    assert!(manifest_digest.starts_with("sha256:"), "{again}");

    // skopeo reads the manifest kiln pushed: an OCI manifest whose config is the Kiln manifest (the image's id).
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{remote}")]);
    let oci: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(oci["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(oci["config"]["mediaType"], "application/vnd.kiln.image.manifest.v1+json");
    assert_eq!(oci["config"]["digest"], id.as_str());
    let titles: Vec<&str> = oci["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["annotations"]["org.opencontainers.image.title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["kernel", "program", "prepared", "rootfs"]);
    let config = skopeo(&["inspect", "--config", "--raw", "--tls-verify=false", &format!("docker://{remote}")]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&config.stdout).unwrap()["name"], "hello");

    let before = if kvm::available() { Some(kiln_in(&home).args(["run", "hello"]).run()) } else { None };
    kiln_in(&home).args(["rmi", "hello"]).run().assert_code(0);
    assert!(std::fs::read_dir(home.join("blobs/sha256")).unwrap().next().is_none(), "rmi left blobs");

    let pull = kiln_in(&home).args(["pull", "-q", &remote]).run();
    pull.assert_code(0);
    assert_eq!(pull.stdout_text().trim(), id, "pull gives the id that was pushed");
    assert_eq!(manifest_of("kiln/hello:1", &home)[0]["id"], id.as_str());
    assert!(temporaries(&home).is_empty(), "{:?}", temporaries(&home));
    let again = kiln_in(&home).args(["pull", &remote]).run();
    again.assert_code(0);
    assert!(again.stdout_text().contains("fetched 0 blobs"), "{again}");

    // By digest: the same image, tagged by the digest's first digits.
    let by_digest = format!("{}/kiln/hello@{manifest_digest}", registry.addr);
    let pull = kiln_in(&home).args(["pull", "-q", &by_digest]).run();
    pull.assert_code(0);
    assert_eq!(pull.stdout_text().trim(), id);
    let short = &manifest_digest["sha256:".len()..][..12];
    assert_eq!(manifest_of(&format!("kiln/hello:sha256-{short}"), &home)[0]["id"], id.as_str());

    if let Some(before) = before {
        let after = kiln_in(&home).args(["run", "kiln/hello:1"]).run();
        after.assert_code(before.code.unwrap());
        assert_eq!(after.stdout_text(), before.stdout_text(), "the pulled image runs as the built one did");
    }
}

#[test]
fn a_blob_damaged_on_the_registry_is_refused() {
    if !have(&[REGISTRY]) {
        return;
    }
    let base = scratch("damaged");
    let home = base.join("home");
    let registry = Registry::start(&base, None, None);
    let id = build_hello(&home, &base.join("project"));
    let remote = format!("{}/kiln/hello:1", registry.addr);
    kiln_in(&home).args(["push", "-q", "hello", &remote]).run().assert_code(0);
    let rootfs = manifest_of("hello", &home)[0]["rootfs"]["digest"].as_str().unwrap().to_string();
    kiln_in(&home).args(["rmi", "hello"]).run().assert_code(0);

    // One byte changed in the middle of the root filesystem's blob, as a bad disk or a hostile mirror would.
    let file = registry.blob_file(&rootfs);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();

    let pull = kiln_in(&home).args(["pull", &remote]).run();
    let error = pull.assert_kiln_error();
    assert!(error.contains(&rootfs) && error.contains("do not match its digest"), "{error}");
    let images = kiln_in(&home).args(["images", "-o", "json"]).run();
    assert_eq!(images.stdout_text().trim(), "[]", "nothing is tagged");
    let hex = rootfs.strip_prefix("sha256:").unwrap();
    assert!(!home.join("blobs/sha256").join(hex).exists(), "the damaged blob was stored");
    assert!(temporaries(&home).is_empty(), "{:?}", temporaries(&home));
    let _ = id;
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it, with openssl; (ca, cert, key).
fn make_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // P-256 keys: generated in a millisecond, where RSA's take a while on a loaded machine.
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=kiln test CA"],
        ]
        .concat(),
    );
    openssl(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("san.cnf"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// `kiln login` with the password on stdin.
fn login(home: &Path, args: &[&str], password: &str) -> Outcome {
    let mut cmd = kiln_in(home).args(["login", "--password-stdin"]).args(args).into_command();
    let started = Instant::now();
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    Outcome {
        command: format!("kiln login {args:?}"),
        code: out.status.code(),
        signal: None,
        max_rss_kib: None,
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed: started.elapsed(),
    }
}

#[test]
fn htpasswd_auth_behind_tls_with_the_tests_own_ca() {
    if !have(&[REGISTRY, "openssl", "htpasswd", "skopeo"]) {
        return;
    }
    let base = scratch("tls-auth");
    let home = base.join("home");
    let (ca, cert, key) = make_ca(&base);
    let htpasswd = base.join("htpasswd");
    let out = Command::new("htpasswd").args(["-Bbc"]).arg(&htpasswd).args(["ann", "s3cret"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let registry = Registry::start(&base, Some((&cert, &key)), Some(&htpasswd));
    let id = build_hello(&home, &base.join("project"));
    let remote = format!("{}/team/hello:1", registry.addr);
    let ca = ca.to_str().unwrap();

    // The CA is not the system's: refused, and told what to do. Not logged in: told to.
    let untrusted = kiln_in(&home).args(["push", "hello", &remote]).run().assert_kiln_error();
    assert!(untrusted.contains("--ca-cert"), "{untrusted}");
    let anonymous = kiln_in(&home).args(["push", "--ca-cert", ca, "hello", &remote]).run().assert_kiln_error();
    assert!(anonymous.contains("not authorized") && anonymous.contains("kiln login"), "{anonymous}");

    let wrong = login(&home, &["-u", "ann", "--ca-cert", ca, &registry.addr], "guess");
    wrong.assert_kiln_error();
    assert!(!home.join("auth.json").exists(), "a refused login saved credentials");
    login(&home, &["-u", "ann", "--ca-cert", ca, &registry.addr], "s3cret").assert_code(0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.join("auth.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "credentials are readable by their owner only");

    kiln_in(&home).args(["push", "-q", "--ca-cert", ca, "hello", &remote]).run().assert_code(0);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        base.join("no-such-dir").to_str().unwrap(),
        "--tls-verify=false",
        "--creds",
        "ann:s3cret",
        &format!("docker://{remote}"),
    ]);
    assert!(String::from_utf8_lossy(&raw.stdout).contains(&id), "skopeo sees the image's id as its config");
    kiln_in(&home).args(["rmi", "hello"]).run().assert_code(0);
    let pull = kiln_in(&home).args(["pull", "-q", "--ca-cert", ca, &remote]).run();
    pull.assert_code(0);
    assert_eq!(pull.stdout_text().trim(), id);

    // Logged out, the registry refuses; Docker's config.json is read when kiln has nothing.
    kiln_in(&home).args(["logout", &registry.addr]).run().assert_code(0);
    kiln_in(&home).args(["pull", "--ca-cert", ca, &remote]).run().assert_kiln_error();
    let docker = base.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    // base64("ann:s3cret")
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "YW5uOnMzY3JldA=="}}}}}}"#, registry.addr),
    )
    .unwrap();
    let pull = kiln_in(&home).env("DOCKER_CONFIG", &docker).args(["pull", "-q", "--ca-cert", ca, &remote]).run();
    pull.assert_code(0);
    assert_eq!(pull.stdout_text().trim(), id);
}

/// `kiln run registry:REF` of a container image pulls, imports and runs it in one step, as `docker run` does; and
/// `kiln build` takes it as `from`.
#[test]
fn a_container_image_runs_straight_from_the_registry() {
    if !have(&[REGISTRY, "skopeo"]) || !kvm::available() {
        return;
    }
    let base = scratch("run-container");
    let registry = Registry::start(&base, None, None);
    container_layout(&base);
    let remote = format!("{}/containers/app:1", registry.addr);
    let layout = format!("oci:{}:1", base.join("layout").display());
    skopeo(&["copy", "-q", "--dest-tls-verify=false", &layout, &format!("docker://{remote}")]);
    let home = base.join("home");
    let run = kiln_in(&home).args(["run", &format!("registry:{remote}"), "9"]).run();
    run.assert_code(9);
    for line in ["argv[0]=/app\n", "argv[1]=9\n", "env[0]=GREETING=hi\n"] {
        assert!(run.stdout_text().contains(line), "{line}\n{run}");
    }
    let images: serde_json::Value =
        serde_json::from_slice(&kiln_in(&home).args(["images", "-o", "json"]).run().stdout).unwrap();
    assert_eq!((&images[0]["name"], &images[0]["tag"]), (&"app".into(), &"1".into()));
    assert!(!home.join("cache/layouts").read_dir().is_ok_and(|mut d| d.next().is_some()), "the download is removed");

    let project = base.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("Kiln.toml"), format!("name = \"web\"\nfrom = \"registry:{remote}\"\n")).unwrap();
    kiln_in(&home).current_dir(&project).args(["build", "-q"]).run().assert_code(0);
    kiln_in(&home).args(["run", "web", "4"]).run().assert_code(4);
    let missing = format!("registry:{}/containers/nothing:1", registry.addr);
    assert!(!kiln_in(&home).args(["run", &missing]).run().assert_kiln_error().is_empty());
}

/// A container image in an OCI layout, made here: one uncompressed layer (a program, a file, a whiteout), a config
/// naming its entrypoint, a manifest, `index.json` tagging it `1`. Returns the layer's digest.
fn container_layout(dir: &Path) -> String {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(guests::c("hello"), root.join("app")).unwrap();
    std::fs::write(root.join("etc/greeting.txt"), "hi from a container\n").unwrap();
    std::fs::write(root.join("etc/.wh.motd"), "").unwrap();
    let tar = dir.join("layer.tar");
    let out = Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--mtime=@0", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .args(["app", "etc"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let blobs = dir.join("layout/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = kiln_image::Digest::of(bytes);
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        (digest.to_string(), bytes.len())
    };
    let (layer, layer_size) = put(&std::fs::read(&tar).unwrap());
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/app"],"Env":["GREETING=hi"]}},"rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#
    );
    let (config, config_size) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_size}}}]}}"#
    );
    let (manifest, manifest_size) = put(manifest.as_bytes());
    std::fs::write(
        dir.join("layout/index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"1"}}}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("layout/oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layer
}

/// What `kiln build` will import from `registry:REF`: any image on a registry, fetched into an OCI layout that skopeo
/// reads back, every blob as the registry had it. A container image is not a Kiln image for `kiln pull`.
#[test]
fn a_container_image_is_fetched_into_an_oci_layout() {
    if !have(&[REGISTRY, "skopeo"]) {
        return;
    }
    let base = scratch("layout");
    let registry = Registry::start(&base, None, None);
    let tar_layer = container_layout(&base);
    let remote = format!("{}/containers/app:1", registry.addr);
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:1", base.join("layout").display()),
        &format!("docker://{remote}"),
    ]);
    let served = skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{remote}")]).stdout;
    // skopeo compressed the layer on the way: the registry's layer is what the manifest it serves names.
    let manifest: serde_json::Value = serde_json::from_slice(&served).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    assert_ne!(layer, tar_layer);

    let out = base.join("fetched");
    let name = kiln_registry::RemoteName::parse(&remote).unwrap();
    let progress = std::sync::Arc::new(kiln_registry::NoProgress);
    let fetched =
        kiln_registry::fetch_to_layout(&name, &out, &kiln_registry::Options::default(), progress.clone()).unwrap();
    assert_eq!(fetched.manifest_digest, kiln_image::Digest::of(&served), "the manifest as the registry serves it");
    assert_eq!(fetched.layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(), [layer.as_str()]);
    for digest in [fetched.manifest_digest.clone(), fetched.config.digest.clone(), fetched.layers[0].digest.clone()] {
        let ours = std::fs::read(out.join("blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(kiln_image::Digest::of(&ours), digest);
    }
    // skopeo reads the layout, by the tag index.json gives it.
    let inspect = skopeo(&["inspect", &format!("oci:{}:1", out.display())]);
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Layers"][0], layer.as_str());
    assert_eq!(inspect["Env"][0], "GREETING=hi");
    // Fetched again, every blob is checked and kept; a damaged one is fetched anew.
    let layer_file = out.join("blobs/sha256").join(fetched.layers[0].digest.hex());
    std::fs::write(&layer_file, b"damaged").unwrap();
    kiln_registry::fetch_to_layout(&name, &out, &kiln_registry::Options::default(), progress).unwrap();
    assert_eq!(kiln_image::Digest::of(&std::fs::read(&layer_file).unwrap()).to_string(), layer);

    let home = base.join("home");
    let error = kiln_in(&home).args(["pull", &remote]).run().assert_kiln_error();
    assert!(
        error.contains("is not a Kiln image") && error.contains("application/vnd.oci.image.config.v1+json"),
        "{error}"
    );
}
