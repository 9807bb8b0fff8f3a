//! HTTP tests: unmodified HTTP servers (tiny_http on std threads, axum on tokio, Go's net/http) boot in Kiln with a
//! published port, and clients on the host (curl, and raw HTTP/1.1 from this test) fetch, upload, open a thousand
//! connections at once and give up mid-request. The Go guest also fetches from a server this test runs on the host.
//! Every server serves the same routes (see tests/guests/rust/src/http_pattern.rs); every wait has a deadline.

#[allow(dead_code)]
mod harness;

use harness::tcp::{read_http_head as read_head, reset_on_close};

use harness::{guests, kiln, kvm};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const HELLO: &str = "hello from kiln\n";
const MIB_100: u64 = 100 << 20;
/// How long a single request may take before the test fails (a 100 MiB transfer included).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 251)) as u8
}

/// The 64-bit FNV-1a hash that `POST /sum` answers with.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A free TCP port on the host's loopback (bound, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An HTTP server running in `kiln` with its port 8080 published on the host's loopback; killed when dropped, so a
/// failing test never leaves a VM behind.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Server {
    /// Boots `program ARGS` with 2 vCPUs and 256 MiB (unless `kiln_args` say `--memory`) and waits (at most 30 s) until `GET /` answers through the port.
    fn start(name: &str, kiln_args: &[&str], program: &Path, args: &[&str]) -> Server {
        let port = free_port();
        let stderr = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("http-{name}-{port}.stderr"));
        let memory = if kiln_args.contains(&"--memory") { &[][..] } else { &["--memory", "256M"][..] };
        let mut command = kiln()
            .args(["run", "--cpus", "2", "-p", &format!("127.0.0.1:{port}:8080")])
            .args(memory)
            .args(kiln_args)
            .arg(program)
            .args(args)
            .into_command();
        command.stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).unwrap());
        let child = command.spawn().expect("start kiln");
        let mut server = Server { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), stderr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{name} in kiln ended before it answered ({status}):\n{}", server.stderr_text());
            }
            // Until the guest listens, the connection is accepted by kiln and then reset or closed without a reply.
            if let Ok((200, body)) = get(server.addr, "/", Duration::from_secs(2)) {
                assert_eq!(body, HELLO.as_bytes());
                return server;
            }
            assert!(Instant::now() < deadline, "{name} did not answer within 30 s:\n{}", server.stderr_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM to kiln, which forwards it to the program; the program does not handle it, so it dies of it and
    /// kiln exits 128 + 15. Fails the test if that takes more than 10 s.
    fn stop(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid of our own child that has not been reaped (we still hold it).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "kiln did not stop within 10 s of SIGTERM:\n{}", self.stderr_text());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", self.stderr_text());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// `GET path` on a fresh connection: the status and the whole body (which must have a Content-Length).
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = connect(addr, timeout)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let (status, length) = read_head(&mut reader)?;
    let mut body = Vec::new();
    reader.take(length.unwrap_or(0)).read_to_end(&mut body)?;
    Ok((status, body))
}

/// Checks `GET /` with the host's curl.
fn curl_hello(addr: SocketAddr) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", &format!("http://{addr}/")])
        .output()
        .expect("run curl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), HELLO);
}

/// Lifts this process's soft limit on open files to the hard limit: a thousand client sockets do not fit in the
/// soft limit of 1,024 that many systems start processes with.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one `struct rlimit` through the pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `n` connections open at once (all connected before any sends), then each makes one `GET /` and must get 200.
fn concurrent_hellos(addr: SocketAddr, n: usize) {
    raise_open_file_limit();
    let barrier = Arc::new(Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    let stream = connect(addr, Duration::from_secs(30));
                    barrier.wait();
                    let mut stream = stream.map_err(|e| format!("connect: {e}"))?;
                    write!(stream, "GET / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
                        .map_err(|e| format!("send: {e}"))?;
                    let mut reader = BufReader::new(stream);
                    let (status, length) = read_head(&mut reader).map_err(|e| format!("response: {e}"))?;
                    let mut body = Vec::new();
                    reader.take(length.unwrap_or(0)).read_to_end(&mut body).map_err(|e| format!("body: {e}"))?;
                    if status != 200 || body != HELLO.as_bytes() {
                        return Err(format!("status {status}, body {:?}", String::from_utf8_lossy(&body)));
                    }
                    Ok(())
                })
                .expect("spawn a client thread")
        })
        .collect();
    let failures: Vec<String> = clients.into_iter().filter_map(|c| c.join().unwrap().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {n} concurrent requests failed, e.g. {:?}",
        failures.len(),
        &failures[..3.min(failures.len())]
    );
}

/// `GET /bytes/N` for 100 MiB, checked byte for byte as it streams in.
fn download_100mib(addr: SocketAddr) {
    let mut stream = connect(addr, IO_TIMEOUT).expect("connect");
    write!(stream, "GET /bytes/{MIB_100} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let (status, length) = read_head(&mut reader).expect("the response head");
    assert_eq!((status, length), (200, Some(MIB_100)));
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).expect("read the body");
        if n == 0 {
            break;
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern_byte(at + k as u64)) {
            panic!("byte {} of the download is {:#x}, not {:#x}", at + k as u64, buf[k], pattern_byte(at + k as u64));
        }
        at += n as u64;
    }
    assert_eq!(at, MIB_100, "the download ended early");
}

/// `POST /sum` of 100 MiB: the server streams it through FNV-1a and must report the length and hash sent.
fn upload_100mib(addr: SocketAddr) {
    let mut stream = connect(addr, IO_TIMEOUT).expect("connect");
    write!(
        stream,
        "POST /sum HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\nContent-Length: {MIB_100}\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .unwrap();
    let mut hash = Fnv1a::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < MIB_100 {
        for (k, b) in chunk.iter_mut().enumerate() {
            *b = pattern_byte(at + k as u64);
        }
        hash.update(&chunk);
        stream.write_all(&chunk).expect("send the body");
        at += chunk.len() as u64;
    }
    let mut reader = BufReader::new(stream);
    let (status, length) = read_head(&mut reader).expect("the response head");
    let mut body = String::new();
    reader.take(length.unwrap_or(0)).read_to_string(&mut body).unwrap();
    assert_eq!((status, body), (200, format!("{MIB_100} {:016x}\n", hash.0)));
}

/// Clients that give up mid-request (half a head; half a body) and reset: the server must go on answering.
fn aborted_clients(addr: SocketAddr) {
    for partial in [
        &b"GET / HTTP/1.1\r\nHost: ki"[..],
        &b"POST /sum HTTP/1.1\r\nHost: kiln\r\nContent-Length: 1000000\r\n\r\nsome of the body"[..],
    ] {
        let mut stream = connect(addr, Duration::from_secs(10)).expect("connect");
        stream.write_all(partial).unwrap();
        // Let the partial request reach the server before the reset.
        std::thread::sleep(Duration::from_millis(100));
        reset_on_close(&stream);
        drop(stream);
        let (status, body) = get(addr, "/", Duration::from_secs(10)).expect("GET / after a client gave up");
        assert_eq!((status, &body[..]), (200, HELLO.as_bytes()));
    }
}

/// Everything the tests ask of every server.
fn exercise(name: &str, kiln_args: &[&str], concurrent: usize, program: &Path, args: &[&str]) {
    let start = Instant::now();
    let server = Server::start(name, kiln_args, program, args);
    let addr = server.addr;
    let step = |what: &str| eprintln!("{name}: {what} after {:.1?}", start.elapsed());
    step("up");
    curl_hello(addr);
    aborted_clients(addr);
    step("curl and aborted clients");
    concurrent_hellos(addr, concurrent);
    step(&format!("{concurrent} concurrent requests"));
    download_100mib(addr);
    step("100 MiB download");
    upload_100mib(addr);
    step("100 MiB upload");
    let (status, body) = get(addr, "/", Duration::from_secs(10)).expect("GET / at the end");
    assert_eq!((status, &body[..]), (200, HELLO.as_bytes()));
    server.stop();
}

#[test]
fn tiny_http_server_serves_host_clients() {
    if !kvm::available() {
        return;
    }
    // tiny_http runs each connection on a thread of its own: 1,000 connections at once are 1,000 threads blocked in
    // reads, each woken only by its own connection. Kiln backs a thread's whole stack with guest memory (no
    // overcommit): 1,000 of Rust's default 2 MiB stacks would not fit, and 128 KiB is plenty for this server; with
    // the library OS's 32 KiB stack each and the sockets' buffers, 1,000 connections need more than 256 MiB.
    let kiln_args = ["--memory", "1G", "--env", "RUST_MIN_STACK=131072"];
    exercise("http_tiny", &kiln_args, 1000, &guests::rust("http_tiny"), &[]);
}

#[test]
fn axum_server_serves_host_clients() {
    if !kvm::available() {
        return;
    }
    exercise("http_axum", &[], 1000, &guests::rust("http_axum"), &[]);
}

#[test]
fn go_server_serves_host_clients() {
    if !kvm::available() {
        return;
    }
    exercise("go", &[], 1000, &guests::go(), &["serve"]);
}

/// Requests one after another on one keep-alive connection: the median time of one must be that of a round trip
/// through the VM, well under the 40 ms a peer may hold back an ACK. axum leaves Nagle's algorithm on (as most
/// programs do) and writes each response with one writev of head and body; when Kiln sent each iovec as a segment of
/// its own, the body waited for the ACK of the head: 11 ms a request behind -p, 44 ms on a tap (0.3 ms with
/// TCP_NODELAY, and natively).
#[test]
fn axum_keep_alive_requests_do_not_wait_for_delayed_acks() {
    if !kvm::available() {
        return;
    }
    let server = Server::start("http_axum", &[], &guests::rust("http_axum"), &[]);
    let mut stream = connect(server.addr, Duration::from_secs(10)).expect("connect");
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut times: Vec<Duration> = (0..50)
        .map(|_| {
            let start = Instant::now();
            stream.write_all(b"GET / HTTP/1.1\r\nHost: kiln\r\n\r\n").unwrap();
            let (status, length) = read_head(&mut reader).expect("a response");
            let mut body = vec![0u8; length.unwrap_or(0) as usize];
            reader.read_exact(&mut body).unwrap();
            assert_eq!((status, &body[..]), (200, HELLO.as_bytes()));
            start.elapsed()
        })
        .collect();
    times.sort();
    assert!(times[25] < Duration::from_millis(5), "the median request took {:?}", times[25]);
    server.stop();
}

/// A mini HTTP server on the host's loopback: answers one `GET /bytes/N` with N pattern bytes, and returns the
/// request head it read.
fn serve_one_download(listener: TcpListener) -> String {
    let (stream, _) = listener.accept().expect("the guest connects");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let before = head.len();
        reader.read_line(&mut head).expect("the request head");
        if head.len() == before || head.ends_with("\r\n\r\n") {
            break;
        }
    }
    let len: u64 = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET /bytes/"))
        .and_then(|l| l.strip_suffix(" HTTP/1.1"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a GET /bytes/N: {head:?}"));
    let mut stream = reader.into_inner();
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").unwrap();
    let body: Vec<u8> = (0..len).map(pattern_byte).collect();
    stream.write_all(&body).expect("send the body");
    head
}

#[test]
fn go_client_fetches_from_a_host_server() {
    if !kvm::available() {
        return;
    }
    const LEN: u64 = 10 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The test's server thread is left behind (not joined) if the guest never connects; kiln's time limit fails
    // the test first.
    let server = std::thread::spawn(move || serve_one_download(listener));
    let mut hash = Fnv1a::new();
    hash.update(&(0..LEN).map(pattern_byte).collect::<Vec<u8>>());
    kiln()
        .args(["run", "--cpus", "2", "--memory", "256M"])
        .arg(guests::go())
        .args(["get", &format!("http://10.0.2.2:{port}/bytes/{LEN}")])
        .run()
        .assert_code(0)
        .assert_stdout(&format!("status 200 bytes {LEN} fnv1a {:016x}\n", hash.0));
    let head = server.join().unwrap();
    // The guest's request reached the host's loopback unchanged, addressed to the gateway it dialled.
    assert!(head.contains(&format!("Host: 10.0.2.2:{port}\r\n")), "{head:?}");
}

/// A DNS server for one test: answers every A question with `answer` and every other question with no records, until
/// `queries` questions came; returns the names asked.
fn serve_dns(socket: std::net::UdpSocket, answer: [u8; 4], queries: usize) -> Vec<String> {
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut names = Vec::new();
    let mut buf = [0u8; 1500];
    while names.len() < queries {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { break };
        let query = &buf[..n];
        // The question: labels, then type and class.
        let mut at = 12;
        let mut labels = Vec::new();
        while at < n && query[at] != 0 {
            let len = usize::from(query[at]);
            labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len]).into_owned());
            at += 1 + len;
        }
        let question_end = at + 5;
        let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
        names.push(labels.join("."));
        let mut reply = query[..question_end].to_vec();
        reply[2..4].copy_from_slice(&[0x81, 0x80]); // a response, recursion available, no error
        let a = qtype == 1;
        reply[6..12].copy_from_slice(&[0, u8::from(a), 0, 0, 0, 0]); // answers; no authority or additional records
        if a {
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&answer);
        }
        socket.send_to(&reply, from).unwrap();
    }
    names
}

#[test]
fn go_client_resolves_a_name_through_the_dns_forwarder() {
    if !kvm::available() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || serve_one_download(listener));
    let dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_addr = dns.local_addr().unwrap();
    // The name stands for the gateway, which is the host's loopback; Go asks for A and AAAA.
    let resolver = std::thread::spawn(move || serve_dns(dns, [10, 0, 2, 2], 2));
    // 256 MiB as for the other Go guests: the Go runtime takes nearly all of the default 64 MiB (it does not start
    // in 56), so at 64 MiB three pages more of the library OS's left no room for the second resolver socket's
    // buffers (ENOMEM, then "no such host").
    kiln()
        .args(["run", "--memory", "256M", "--dns", &dns_addr.to_string()])
        .arg(guests::go())
        .args(["get", &format!("http://files.kiln.test:{port}/bytes/1000")])
        .run()
        .assert_code(0)
        .assert_stdout(&format!("status 200 bytes 1000 fnv1a {:016x}\n", {
            let mut hash = Fnv1a::new();
            hash.update(&(0..1000u64).map(pattern_byte).collect::<Vec<u8>>());
            hash.0
        }));
    assert!(server.join().unwrap().contains(&format!("Host: files.kiln.test:{port}\r\n")));
    assert!(resolver.join().unwrap().iter().all(|name| name == "files.kiln.test"));
}

/// Ten thousand connections open at once, each then making one `GET /`: the bar for connection limits and
/// buffer sizes. Connected one after another (kiln's listener accepts them as they come), all requests sent, then the
/// answers read as they come; no threads, so the test process holds 10,000 sockets and nothing more. On a busy machine
/// the answers take minutes and any one of them may come last, so what fails is a wrong or broken answer, or two
/// minutes in which none arrives, not the time one connection waited.
#[test]
fn axum_holds_ten_thousand_connections() {
    if !kvm::available() {
        return;
    }
    const N: usize = 10_000;
    const STALL: Duration = Duration::from_secs(120);
    raise_open_file_limit();
    let server = Server::start("http_axum", &["--memory", "4G"], &guests::rust("http_axum"), &[]);
    let connecting = Instant::now();
    let mut streams: Vec<TcpStream> = (0..N)
        .map(|i| connect(server.addr, Duration::from_secs(30)).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let connected_in = connecting.elapsed();
    for stream in &mut streams {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").unwrap();
    }
    // Each kind of failure, how often, and where and when it was first seen.
    let began = Instant::now();
    let mut failures: std::collections::BTreeMap<String, (usize, usize, Duration)> = Default::default();
    let mut waiting: Vec<(usize, TcpStream)> = streams.into_iter().enumerate().collect();
    let mut answered_at = Instant::now();
    while !waiting.is_empty() {
        let mut fds: Vec<libc::pollfd> =
            waiting.iter().map(|(_, s)| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        // SAFETY: poll(2) reads and writes `fds.len()` pollfds through the pointer, all in the live vector.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        assert!(ready >= 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted);
        let mut still = Vec::with_capacity(waiting.len());
        for ((i, stream), fd) in waiting.into_iter().zip(&fds) {
            if fd.revents == 0 {
                still.push((i, stream));
                continue;
            }
            answered_at = Instant::now();
            // The head comes in one segment with the body: once readable, it is all there, or nearly.
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let why = match read_head(&mut BufReader::new(stream)) {
                Ok((200, _)) => continue,
                Ok((status, _)) => format!("status {status}"),
                Err(e) => format!("{:?}: {e}", e.kind()),
            };
            failures.entry(why).or_insert((0, i, began.elapsed())).0 += 1;
        }
        waiting = still;
        if answered_at.elapsed() >= STALL {
            let first: Vec<usize> = waiting.iter().take(10).map(|(i, _)| *i).collect();
            let why = format!("no answer in {STALL:?} (connections {first:?}...)");
            failures.insert(why, (waiting.len(), first[0], began.elapsed()));
            break;
        }
    }
    let failed: usize = failures.values().map(|f| f.0).sum();
    assert!(
        failures.is_empty(),
        "{failed} of {N} requests failed (all connected in {connected_in:.1?}): {}\n{}",
        failures
            .iter()
            .map(|(why, (n, i, t))| format!("{n} x {why} (first: #{i}, {t:.1?} into the reads)"))
            .collect::<Vec<_>>()
            .join("; "),
        server.stderr_text()
    );
    server.stop();
}
