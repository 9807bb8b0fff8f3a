//! Servers people ship, unmodified: Debian's `redis-server`, `nginx` and `python3` (a script of the test's own on
//! the standard library's HTTP server; all dynamically linked against glibc) run in the foreground in Kiln with a
//! configuration of the test's own and a port published with `-p`; the test talks to them from the host (RESP to
//! redis, HTTP with curl and raw to nginx and python3), then stops them with SIGTERM, and does the same with the
//! program run natively to compare replies and exit codes. Each test skips where `scripts/setup.sh` has not
//! installed the server. Every wait has a deadline.

#[allow(dead_code)]
mod harness;

use harness::{kiln, kvm};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to answer its first request (a first `kiln run` rewrites the program and its
/// libraries; under a loaded CI machine that takes seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A free TCP port on the host's loopback (bound, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("servers-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server process (kiln, or the program natively) listening on `addr`; killed when dropped, so a failing test
/// never leaves one behind.
struct Running {
    name: String,
    child: Child,
    addr: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    /// Spawns `command` (its output to files in `dir`) and waits until `ready` succeeds against `addr`.
    fn start(
        name: &str,
        dir: &Path,
        mut command: Command,
        addr: SocketAddr,
        ready: impl Fn(SocketAddr) -> bool,
    ) -> Running {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = command.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut running = Running { name: name.into(), child, addr, stdout, stderr };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!("{name} ended before it answered ({status}):\n{}", running.output());
            }
            // Until the guest listens, kiln accepts a published port's connection and then closes it.
            if ready(addr) {
                return running;
            }
            assert!(Instant::now() < deadline, "{name} did not answer within {START_TIMEOUT:?}:\n{}", running.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn output(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{}", read(&self.stdout), read(&self.stderr))
    }

    /// Sends SIGTERM and returns the exit code once the process is gone (at most 15 s later) and its output.
    fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid of our own child that has not been reaped (we still hold it).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within 15 s of SIGTERM:\n{}", self.name, self.output());
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), self.output())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

// ---- redis -------------------------------------------------------------------------------------------------------

/// A RESP reply, as redis sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A command as a RESP array of bulk strings.
fn encode(command: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", command.len()).into_bytes();
    for part in command {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_reply(reader: &mut impl BufRead, depth: usize) -> std::io::Result<Reply> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    let text = line.strip_suffix(b"\r\n").ok_or_else(|| bad(format!("not a RESP line: {line:?}")))?;
    let (kind, rest) = text.split_first().ok_or_else(|| bad("an empty RESP line".into()))?;
    let rest = String::from_utf8_lossy(rest).into_owned();
    let number = |s: &str| s.parse::<i64>().map_err(|_| bad(format!("not a number: {s:?}")));
    Ok(match kind {
        b'+' => Reply::Status(rest),
        b'-' => Reply::Error(rest),
        b':' => Reply::Integer(number(&rest)?),
        b'$' => match number(&rest)? {
            -1 => Reply::Bulk(None),
            n if (0..=1 << 20).contains(&n) => {
                let mut body = vec![0; n as usize + 2];
                reader.read_exact(&mut body)?;
                body.truncate(n as usize);
                Reply::Bulk(Some(body))
            }
            n => return Err(bad(format!("bulk length {n}"))),
        },
        b'*' if depth < 4 => match number(&rest)? {
            -1 => Reply::Array(None),
            n if (0..=1024).contains(&n) => {
                Reply::Array(Some((0..n).map(|_| read_reply(reader, depth + 1)).collect::<Result<_, _>>()?))
            }
            n => return Err(bad(format!("array length {n}"))),
        },
        _ => return Err(bad(format!("unknown RESP reply {line:?}"))),
    })
}

/// The session both redis servers get: strings set and read back, a counter incremented, a missing key, a type
/// error, a list; 200 commands one at a time, then 200 sent in one write (pipelined). Returns the replies.
fn redis_session(addr: SocketAddr) -> std::io::Result<Vec<Reply>> {
    let mut commands: Vec<Vec<Vec<u8>>> = Vec::new();
    fn add(commands: &mut Vec<Vec<Vec<u8>>>, parts: &[&[u8]]) {
        commands.push(parts.iter().map(|p| p.to_vec()).collect());
    }
    add(&mut commands, &[b"PING"]);
    for i in 0..60 {
        let (key, value) = (format!("key:{i}"), format!("value {i} {}", "x".repeat(i * 37)));
        add(&mut commands, &[b"SET", key.as_bytes(), value.as_bytes()]);
        add(&mut commands, &[b"GET", key.as_bytes()]);
    }
    for _ in 0..70 {
        add(&mut commands, &[b"INCR", b"counter"]);
    }
    add(&mut commands, &[b"GET", b"no such key"]);
    add(&mut commands, &[b"INCR", b"key:1"]);
    add(&mut commands, &[b"RPUSH", b"list", b"a", b"b", b"c"]);
    add(&mut commands, &[b"LRANGE", b"list", b"0", b"-1"]);
    add(&mut commands, &[b"DBSIZE"]);
    let one_at_a_time = commands.len();
    for i in 0..200 {
        let key = format!("pipelined:{}", i % 10);
        add(&mut commands, &[b"INCRBY", key.as_bytes(), i.to_string().as_bytes()]);
    }
    let stream = connect(addr)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut replies = Vec::new();
    for command in &commands[..one_at_a_time] {
        let parts: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        writer.write_all(&encode(&parts))?;
        replies.push(read_reply(&mut reader, 0)?);
    }
    let batch: Vec<u8> = commands[one_at_a_time..]
        .iter()
        .flat_map(|command| encode(&command.iter().map(Vec::as_slice).collect::<Vec<_>>()))
        .collect();
    writer.write_all(&batch)?;
    for _ in one_at_a_time..commands.len() {
        replies.push(read_reply(&mut reader, 0)?);
    }
    Ok(replies)
}

/// What `redis_session` must get from any redis, worked out here rather than taken from a run.
fn check_redis_replies(replies: &[Reply]) {
    let bulk = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
    let ok = Reply::Status("OK".into());
    let mut expected = vec![Reply::Status("PONG".into())];
    for i in 0..60 {
        expected.push(ok.clone());
        expected.push(bulk(&format!("value {i} {}", "x".repeat(i * 37))));
    }
    expected.extend((1..=70).map(Reply::Integer));
    expected.push(Reply::Bulk(None));
    // INCR of "value 1 xxx..." is an error reply; the connection goes on.
    expected.push(Reply::Error("ERR value is not an integer or out of range".into()));
    expected.push(Reply::Integer(3));
    expected.push(Reply::Array(Some(vec![bulk("a"), bulk("b"), bulk("c")])));
    expected.push(Reply::Integer(62));
    let mut sums = [0i64; 10];
    for i in 0..200 {
        sums[i % 10] += i as i64;
        expected.push(Reply::Integer(sums[i % 10]));
    }
    assert_eq!(replies.len(), expected.len());
    for (n, (got, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "reply {n}");
    }
}

fn redis_pings(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<Reply> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        (&stream).write_all(&encode(&[b"PING"]))?;
        read_reply(&mut BufReader::new(stream), 0)
    };
    matches!(attempt(), Ok(Reply::Status(s)) if s == "PONG")
}

/// The test's own configuration, on the command line: no daemonising, no persistence (no fork for a save), and
/// protected mode off because the host's connections reach the guest from the user network's gateway, not from
/// its loopback.
const REDIS_ARGS: [&str; 11] =
    ["--daemonize", "no", "--save", "", "--appendonly", "no", "--bind", "0.0.0.0", "--protected-mode", "no", "--port"];

#[test]
fn debian_redis_server_answers_resp_in_the_foreground_and_exits_on_sigterm_as_natively() {
    if !kvm::available() {
        return;
    }
    let redis = Path::new("/usr/bin/redis-server");
    if !redis.exists() {
        eprintln!("skipped: no {} (scripts/setup.sh installs it)", redis.display());
        return;
    }
    let dir = scratch("redis");

    let port = free_port();
    let mut native = Command::new(redis);
    native.args(REDIS_ARGS).arg(port.to_string()).current_dir(&dir).env_clear();
    let native = Running::start("redis-native", &dir, native, SocketAddr::from(([127, 0, 0, 1], port)), redis_pings);
    let native_replies = redis_session(native.addr).expect("the session with redis natively");
    check_redis_replies(&native_replies);
    let (native_code, native_output) = native.terminate();

    let port = free_port();
    let guest = kiln()
        .args(["run", "--memory", "256M", "-p", &format!("127.0.0.1:{port}:6379")])
        .arg(redis)
        .args(REDIS_ARGS)
        .arg("6379")
        .into_command();
    let guest = Running::start("redis-kiln", &dir, guest, SocketAddr::from(([127, 0, 0, 1], port)), redis_pings);
    let replies = redis_session(guest.addr).unwrap_or_else(|e| panic!("the session with redis in kiln: {e}"));
    check_redis_replies(&replies);
    let (code, output) = guest.terminate();

    // redis catches SIGTERM, says goodbye and exits 0 (natively too; a second check against a stale expectation).
    assert_eq!(native_code, Some(0), "natively:\n{native_output}");
    assert_eq!(code, native_code, "{output}");
    for line in ["Ready to accept connections", "Received SIGTERM scheduling shutdown", "ready to exit, bye bye"] {
        assert!(native_output.contains(line), "natively, no {line:?}:\n{native_output}");
        assert!(output.contains(line), "in kiln, no {line:?}:\n{output}");
    }
}

// ---- nginx -------------------------------------------------------------------------------------------------------

/// `GET path` on a fresh connection: the status and the whole body (which must have a Content-Length).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = connect(addr)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let (status, length) = harness::tcp::read_http_head(&mut reader)?;
    let length = length.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no Content-Length"))?;
    let mut body = Vec::new();
    reader.take(length).read_to_end(&mut body)?;
    Ok((status, body))
}

/// The test's own nginx configuration: in the foreground, one process (no master forking workers), the error log on
/// stderr, the files under `root`, temporary files and the pid file under /tmp.
fn nginx_conf(port: u16, root: &Path, tmp: &Path) -> String {
    let (root, tmp) = (root.display(), tmp.display());
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log stderr notice;\npid {tmp}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {tmp}/client_body;\n  proxy_temp_path {tmp}/proxy;\n  \
         fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n  \
         server {{\n    listen {port};\n    root {root};\n  }}\n}}\n"
    )
}

/// The files nginx serves: a line of text and 300 KiB of bytes of every value (more than one socket buffer).
fn www_files(www: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![
        ("/index.html", b"hello from nginx\n".to_vec()),
        ("/data.bin", (0..300u32 * 1024).map(|i| (i.wrapping_mul(7) ^ (i >> 9)) as u8).collect()),
    ];
    for (name, bytes) in &files {
        std::fs::write(www.join(name.trim_start_matches('/')), bytes).unwrap();
    }
    files
}

fn nginx_answers(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/index.html"), Ok((200, _)))
}

/// Every request the test makes, with the host's curl and with raw HTTP/1.1.
fn exercise_nginx(addr: SocketAddr, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        for _ in 0..5 {
            let (status, body) = http_get(addr, name).unwrap_or_else(|e| panic!("GET {name}: {e}"));
            assert_eq!(status, 200, "GET {name}");
            assert!(body == *bytes, "GET {name}: {} bytes, not the file's {}", body.len(), bytes.len());
        }
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", &format!("http://{addr}{name}")])
            .output()
            .expect("run curl (scripts/setup.sh installs it)");
        assert!(out.status.success(), "curl {name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == *bytes, "curl {name}: {} bytes, not the file's {}", out.stdout.len(), bytes.len());
    }
    let (status, _) = http_get(addr, "/missing").expect("GET /missing");
    assert_eq!(status, 404);
}

#[test]
fn debian_nginx_serves_a_static_file_in_the_foreground_and_exits_on_sigterm_as_natively() {
    if !kvm::available() {
        return;
    }
    let nginx = Path::new("/usr/sbin/nginx");
    if !nginx.exists() {
        eprintln!("skipped: no {} (scripts/setup.sh installs it)", nginx.display());
        return;
    }
    let dir = scratch("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let files = www_files(&www);

    // Natively: the same configuration, with host paths.
    let port = free_port();
    let native_tmp = dir.join("native-tmp");
    std::fs::create_dir_all(&native_tmp).unwrap();
    let conf = dir.join("native.conf");
    std::fs::write(&conf, nginx_conf(port, &www, &native_tmp)).unwrap();
    let mut native = Command::new(nginx);
    native.args(["-e", "stderr", "-p"]).arg(&dir).arg("-c").arg(&conf).env_clear();
    let native = Running::start("nginx-native", &dir, native, SocketAddr::from(([127, 0, 0, 1], port)), nginx_answers);
    exercise_nginx(native.addr, &files);
    let (native_code, native_output) = native.terminate();

    // In kiln: the files from a --dir, the configuration from a --file. nginx running as root looks up the user
    // "nobody" and group "nogroup" while reading its configuration (it switches to them only in worker processes,
    // which `master_process off` has none of), so the guest gets an /etc/passwd and /etc/group naming them.
    let conf = dir.join("kiln.conf");
    std::fs::write(&conf, nginx_conf(8080, Path::new("/www"), Path::new("/tmp"))).unwrap();
    std::fs::write(
        dir.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    let port = free_port();
    let guest = kiln()
        .args(["run", "--memory", "256M", "-p", &format!("127.0.0.1:{port}:8080"), "--dir"])
        .arg(format!("{}:/www", www.display()))
        .arg("--file")
        .arg(format!("{}:/etc/nginx-test.conf", conf.display()))
        .arg("--file")
        .arg(format!("{}:/etc/passwd", dir.join("passwd").display()))
        .arg("--file")
        .arg(format!("{}:/etc/group", dir.join("group").display()))
        .arg(nginx)
        .args(["-e", "stderr", "-p", "/", "-c", "/etc/nginx-test.conf"])
        .into_command();
    let guest = Running::start("nginx-kiln", &dir, guest, SocketAddr::from(([127, 0, 0, 1], port)), nginx_answers);
    exercise_nginx(guest.addr, &files);
    let (code, output) = guest.terminate();

    // nginx takes SIGTERM as "exit now" and exits 0.
    assert_eq!(native_code, Some(0), "natively:\n{native_output}");
    assert_eq!(code, native_code, "{output}");
    for line in ["signal 15 (SIGTERM) received", "exiting"] {
        assert!(native_output.contains(line), "natively, no {line:?}:\n{native_output}");
        assert!(output.contains(line), "in kiln, no {line:?}:\n{output}");
    }
}

// ---- python3 -----------------------------------------------------------------------------------------------------

fn python_answers(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/hello"), Ok((200, _)))
}

/// `curl ARGS URL`: its stdout, which must be a success.
fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20"])
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Every request the test makes of tests/guests/python/httpserver.py, with each reply's body in a fixed order, so
/// the server in kiln and natively can be compared byte for byte.
fn exercise_python(addr: SocketAddr, post_file: &Path) -> Vec<(String, Vec<u8>)> {
    let mut replies = Vec::new();
    for path in ["/hello", "/json?kiln+python+threads", "/blob?300000", "/blob?0"] {
        for round in 0..3 {
            replies.push((format!("curl {path} #{round}"), curl(addr, path, &[])));
        }
        let (status, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}");
        replies.push((format!("GET {path}"), body));
    }
    // A request body larger than a socket buffer, and several requests on one kept-alive connection.
    replies.push(("curl POST".into(), curl(addr, "/post", &["--data-binary", &format!("@{}", post_file.display())])));
    let keep_alive = curl(addr, "/json?one", &[&format!("http://{addr}/json?two")]);
    replies.push(("curl two on one connection".into(), keep_alive));
    assert_eq!(http_get(addr, "/missing").expect("GET /missing").0, 404);
    // Concurrently: four clients the server must serve at once to get past its barrier, and eight more fetching
    // the large blob alongside them.
    let together: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let path = if i < 4 { "/together" } else { "/blob?200000" };
                (format!("concurrent {path}"), curl(addr, path, &[]))
            })
        })
        .collect();
    replies.extend(together.into_iter().map(|t| t.join().expect("a concurrent client panicked")));
    replies
}

#[test]
fn debian_python3_serves_http_through_a_published_port_and_exits_on_sigterm_as_natively() {
    if !kvm::available() {
        return;
    }
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        eprintln!("skipped: no {} (scripts/setup.sh installs it)", python.display());
        return;
    }
    let dir = scratch("python");
    let script = harness::guests::repo_root().join("tests/guests/python/httpserver.py");
    let post_file = dir.join("post.bin");
    std::fs::write(&post_file, (0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    let stdlib = Command::new(python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"])
        .output()
        .expect("ask python3 where its standard library is");
    let stdlib = String::from_utf8_lossy(&stdlib.stdout).trim().to_string();

    let port = free_port();
    let mut native = Command::new(python);
    native.arg(&script).arg(port.to_string()).env_clear();
    let native =
        Running::start("python-native", &dir, native, SocketAddr::from(([127, 0, 0, 1], port)), python_answers);
    let native_replies = exercise_python(native.addr, &post_file);
    let (native_code, native_output) = native.terminate();

    let port = free_port();
    let guest = kiln()
        .args(["run", "--memory", "512M", "--cpus", "2", "-p", &format!("127.0.0.1:{port}:8080"), "--dir"])
        .arg(format!("{stdlib}:{stdlib}"))
        .arg("--file")
        .arg(format!("{}:/httpserver.py", script.display()))
        .arg(python)
        .args(["/httpserver.py", "8080"])
        .into_command();
    let guest = Running::start("python-kiln", &dir, guest, SocketAddr::from(([127, 0, 0, 1], port)), python_answers);
    let replies = exercise_python(guest.addr, &post_file);
    let (code, output) = guest.terminate();

    assert_eq!(replies.len(), native_replies.len());
    for ((name, body), (_, native_body)) in replies.iter().zip(&native_replies) {
        assert!(
            body == native_body,
            "{name}: {} bytes in kiln, {} natively:\n{}\nnatively:\n{}",
            body.len(),
            native_body.len(),
            String::from_utf8_lossy(&body[..body.len().min(300)]),
            String::from_utf8_lossy(&native_body[..native_body.len().min(300)])
        );
    }
    // The script turns SIGTERM into an orderly exit with status 3 after closing its socket.
    let stopped = "httpserver: listening\nhttpserver: stopped by SIGTERM, served requests: True\n";
    assert_eq!(native_code, Some(3), "natively:\n{native_output}");
    assert!(native_output.starts_with(&format!("stdout:\n{stopped}")), "natively:\n{native_output}");
    assert_eq!(code, native_code, "{output}");
    assert_eq!(output, native_output);
}
