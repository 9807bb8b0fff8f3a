//! Network tests: programs built from source in `tests/guests/` talk, through the VM's network card, to clients and
//! servers this test runs on the host. Tap tests run the VM in a network namespace of their own with a tap device
//! (`harness::netns`); they need root and skip, saying so, without it.

#[allow(dead_code)]
mod harness;

use harness::tcp::reset_on_close;

use harness::netns::{NetNs, TAP};
use harness::{guests, kiln, kvm};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Child;
use std::time::Duration;

const HOST: &str = "10.0.3.1";
const GUEST: &str = "10.0.3.2";
const HOST6: &str = "fd00:3::1";
const GUEST6: &str = "fd00:3::2";

fn byte(i: usize) -> u8 {
    (i * 7 + i / 251) as u8
}

/// A VM and a namespace with a tap to run it on, or None where the test cannot run.
fn tap_namespace() -> Option<NetNs> {
    if !kvm::available() {
        return None;
    }
    NetNs::with_tap(&format!("{HOST}/24"))
}

/// A `kiln` running in the background: killed if the test ends without waiting for it.
struct Running(Child);

impl Running {
    /// Its exit code, after at most a minute (then it is killed and the test fails).
    fn wait(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "kiln did not finish within a minute");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `netpeer` in the namespace on the tap, and waits for its "listening" line.
fn start_guest(ns: &NetNs, cpus: &str, args: &[&str]) -> (Running, BufReader<std::process::ChildStdout>) {
    let tap = format!("tap:{TAP}");
    let ip = format!("{GUEST}/24");
    start_netpeer(kiln().netns(ns), &["--cpus", cpus, "--net", &tap, "--ip", &ip], args)
}

/// A namespace whose tap also has [`HOST6`], for a VM at [`GUEST6`].
fn tap_namespace6() -> Option<NetNs> {
    let ns = tap_namespace()?;
    ns.add_address(&format!("{HOST6}/64"));
    Some(ns)
}

/// `kiln run` on the tap with IPv4 and IPv6 addresses.
fn dual_stack_args() -> Vec<String> {
    ["--net", &format!("tap:{TAP}"), "--ip", &format!("{GUEST}/24"), "--ip6", &format!("{GUEST6}/64")]
        .map(String::from)
        .to_vec()
}

/// Starts `kiln run KILN_ARGS netpeer ARGS` and waits for netpeer's "listening" line.
fn start_netpeer(
    kiln: harness::Kiln,
    kiln_args: &[&str],
    args: &[&str],
) -> (Running, BufReader<std::process::ChildStdout>) {
    let mut child = kiln
        .arg("run")
        .args(kiln_args)
        .arg(guests::c("netpeer"))
        .args(args)
        .into_command()
        .spawn()
        .expect("start kiln");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("netpeer's first line");
    assert!(line.starts_with("listening"), "netpeer said {line:?}");
    (Running(child), stdout)
}

/// Sends `len` bytes to `addr` and checks they come back byte for byte.
fn echo(addr: SocketAddr, len: usize) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect to the guest");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut back = Vec::with_capacity(len);
        reader.read_to_end(&mut back).expect("read the echo");
        back
    });
    let data: Vec<u8> = (0..len).map(byte).collect();
    stream.write_all(&data).expect("send to the guest");
    stream.shutdown(Shutdown::Write).unwrap();
    let back = receiver.join().unwrap();
    assert_eq!(back.len(), len);
    assert!(back == data, "the echo differs from what was sent");
}

/// Two echoes with a client that gives up mid-request between them: its reset ends that connection (the server sees
/// ECONNRESET, or never sees it if the reset came before `accept`), not the server.
fn echo_around_an_abort(addr: SocketAddr) {
    echo(addr, 5);
    let mut aborted = TcpStream::connect(addr).unwrap();
    aborted.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    reset_on_close(&aborted);
    drop(aborted);
    echo(addr, 20 << 20);
}

/// netpeer's report of [`echo_around_an_abort`], the connections coming from `peer`.
fn check_echo_lines(stdout: BufReader<std::process::ChildStdout>, peer: &str) {
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    let closed: Vec<&String> = lines.iter().filter(|l| l.ends_with("(closed)")).collect();
    let expected =
        [format!("echoed 5 bytes to {peer} (closed)"), format!("echoed {} bytes to {peer} (closed)", 20 << 20)];
    assert_eq!(closed, [&expected[0], &expected[1]], "{lines:?}");
    for line in lines.iter().filter(|l| !l.ends_with("(closed)")) {
        assert!(line.contains(&format!("bytes to {peer} (")), "{lines:?}");
    }
}

#[test]
fn tap_guest_server_echoes_host_clients_byte_exact() {
    let Some(ns) = tap_namespace() else { return };
    let (mut child, stdout) = start_guest(&ns, "2", &["serve", "8080", "2"]);
    let addr: SocketAddr = format!("{GUEST}:8080").parse().unwrap();
    ns.enter(|| echo_around_an_abort(addr));
    assert_eq!(child.wait(), Some(0));
    check_echo_lines(stdout, HOST);
}

#[test]
fn tap_guest_client_reaches_a_host_server() {
    let Some(ns) = tap_namespace() else { return };
    let listener = ns.enter(|| TcpListener::bind(format!("{HOST}:9000")).expect("bind in the namespace"));
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).unwrap();
        }
        peer
    });
    let netpeer = guests::c("netpeer");
    let tap = format!("tap:{TAP}");
    let ip = format!("{GUEST}/24");
    let run =
        |args: &[&str]| kiln().netns(&ns).args(["run", "--net", &tap, "--ip", &ip]).arg(&netpeer).args(args).run();
    run(&["fetch", HOST, "9000", "10000000"])
        .assert_code(0)
        .assert_stdout("fetched 10000000 of 10000000 bytes, 0 wrong\n");
    assert_eq!(server.join().unwrap().ip().to_string(), GUEST);
    run(&["refused", HOST, "9001"]).assert_code(0).assert_stdout("connect: Connection refused\n");
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends an ICMP echo request to `to` from a raw socket (root only) and waits for the matching reply.
fn ping(to: std::net::Ipv4Addr) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = UdpSocket::from(socket); // only for its send_to/recv and timeouts, which raw sockets share
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut request = vec![8u8, 0, 0, 0, 0x4b, 0x49, 0, 1];
    request.extend_from_slice(b"kiln ping payload");
    let sum = checksum(&request);
    request[2..4].copy_from_slice(&sum.to_be_bytes());
    socket.send_to(&request, (to, 0)).unwrap();
    let mut reply = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut reply) {
        let header = usize::from(reply[0] & 0x0f) * 4;
        let icmp = &reply[header..n];
        if from.ip() == to && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..8] == request[4..8] {
            return icmp[8..] == request[8..];
        }
    }
    false
}

#[test]
fn tap_guest_answers_ping() {
    let Some(ns) = tap_namespace() else { return };
    // The stack is set up (and the card with it) by the program's first socket.
    let (mut child, _stdout) = start_guest(&ns, "1", &["udp", "5301", "1"]);
    assert!(ns.enter(|| ping(GUEST.parse().unwrap())), "no echo reply from {GUEST}");
    ns.enter(|| UdpSocket::bind(format!("{HOST}:0")).unwrap().send_to(b"bye", format!("{GUEST}:5301")).unwrap());
    assert_eq!(child.wait(), Some(0));
}

#[test]
fn tap_guest_echoes_udp() {
    let Some(ns) = tap_namespace() else { return };
    let (mut child, stdout) = start_guest(&ns, "1", &["udp", "5300", "3"]);
    ns.enter(|| {
        let socket = UdpSocket::bind(format!("{HOST}:0")).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for size in [1usize, 512, 1400] {
            let data: Vec<u8> = (0..size).map(byte).collect();
            socket.send_to(&data, format!("{GUEST}:5300")).unwrap();
            let mut back = vec![0u8; 2048];
            let (n, from) = socket.recv_from(&mut back).expect("the echo");
            assert_eq!((&back[..n], from.to_string()), (&data[..], format!("{GUEST}:5300")));
        }
    });
    assert_eq!(child.wait(), Some(0));
    assert_eq!(stdout.lines().map(Result::unwrap).collect::<Vec<_>>(), ["echoed 3 datagrams"]);
}

/// The TTL a datagram arrives with (IP_RECVTTL), and its length, received on `socket`.
fn recv_with_ttl(socket: &UdpSocket) -> (usize, Option<i32>) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from `one`, which lives across the call.
    let r = unsafe { libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, (&one as *const libc::c_int).cast(), 4) };
    assert_eq!(r, 0, "IP_RECVTTL");
    let mut data = [0u8; 2048];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes buffers that live across the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    let mut ttl = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` bytes of `control`, which recvmsg filled.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_TTL {
                ttl = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    (n as usize, ttl)
}

/// Issue 11, item 13: IP_TTL reaches the packets: the guest echoes with IP_TTL 33, and the host reads that TTL off
/// each echo (the tap is one hop, so nothing lowers it); without the option the guest's packets carry 64.
#[test]
fn tap_guest_sends_with_the_ttl_it_set() {
    let Some(ns) = tap_namespace() else { return };
    for (args, expected) in [(&["udp-ttl", "5301", "2", "33"][..], 33), (&["udp", "5301", "2"][..], 64)] {
        let (mut child, _stdout) = start_guest(&ns, "1", args);
        ns.enter(|| {
            let socket = UdpSocket::bind(format!("{HOST}:0")).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            for size in [1usize, 100] {
                socket.send_to(&vec![7u8; size], format!("{GUEST}:5301")).unwrap();
                assert_eq!(recv_with_ttl(&socket), (size, Some(expected)), "{args:?}");
            }
        });
        assert_eq!(child.wait(), Some(0));
    }
}

/// Sends an ICMPv6 echo request to `to` from a raw socket (root only; the host kernel sums ICMPv6 itself) and waits
/// for the matching reply.
fn ping6(to: std::net::Ipv6Addr) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = UdpSocket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut request = vec![128u8, 0, 0, 0, 0x4b, 0x49, 0, 1];
    request.extend_from_slice(b"kiln ping6 payload");
    socket.send_to(&request, (to, 0)).unwrap();
    let mut reply = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut reply) {
        let icmp = &reply[..n];
        if from.ip() == to && icmp.len() >= 8 && icmp[0] == 129 && icmp[4..8] == request[4..8] {
            return icmp[8..] == request[8..];
        }
    }
    false
}

#[test]
fn tap_guest_serves_ipv6_and_ipv4_clients_on_one_listener() {
    let Some(ns) = tap_namespace6() else { return };
    let args = dual_stack_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, stdout) = start_netpeer(kiln().netns(&ns), &args, &["serve", "8086", "3", "::"]);
    // Neighbour discovery both ways: the host asks where the guest is, and the guest where the host is.
    assert!(ns.enter(|| ping6(GUEST6.parse().unwrap())), "no ICMPv6 echo reply from {GUEST6}");
    ns.enter(|| {
        echo(format!("[{GUEST6}]:8086").parse().unwrap(), 5);
        echo(format!("[{GUEST6}]:8086").parse().unwrap(), 20 << 20);
        echo(format!("{GUEST}:8086").parse().unwrap(), 5);
    });
    assert_eq!(child.wait(), Some(0));
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    let expected = [
        format!("echoed 5 bytes to {HOST6} (closed)"),
        format!("echoed {} bytes to {HOST6} (closed)", 20 << 20),
        format!("echoed 5 bytes to ::ffff:{HOST} (closed)"),
    ];
    assert_eq!(lines, expected);
}

#[test]
fn tap_guest_reaches_host_over_ipv6_tcp_and_udp() {
    let Some(ns) = tap_namespace6() else { return };
    let listener = ns.enter(|| TcpListener::bind(format!("[{HOST6}]:9006")).expect("bind in the namespace"));
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => break,
                n => conn.write_all(&buf[..n]).unwrap(),
            }
        }
        peer
    });
    let netpeer = guests::c("netpeer");
    let run = |args: &[&str]| kiln().netns(&ns).arg("run").args(dual_stack_args()).arg(&netpeer).args(args).run();
    run(&["fetch", HOST6, "9006", "3000000"])
        .assert_code(0)
        .assert_stdout("fetched 3000000 of 3000000 bytes, 0 wrong\n");
    assert_eq!(server.join().unwrap().ip().to_string(), GUEST6);
    run(&["refused", HOST6, "9007"]).assert_code(0).assert_stdout("connect: Connection refused\n");

    let args = dual_stack_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, _stdout) = start_netpeer(kiln().netns(&ns), &args, &["udp", "5306", "2", "::"]);
    ns.enter(|| {
        let socket = UdpSocket::bind(format!("[{HOST6}]:0")).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for size in [1usize, 1200] {
            let data: Vec<u8> = (0..size).map(byte).collect();
            socket.send_to(&data, format!("[{GUEST6}]:5306")).unwrap();
            let mut back = vec![0u8; 2048];
            let (n, from) = socket.recv_from(&mut back).expect("the echo");
            assert_eq!((&back[..n], from.to_string()), (&data[..], format!("[{GUEST6}]:5306")));
        }
    });
    assert_eq!(child.wait(), Some(0));
}

#[test]
fn a_tap_device_needs_permission() {
    let Some(ns) = tap_namespace() else { return };
    // kiln opens /dev/kvm before the tap: where `nobody` may not (Debian's udev rule makes it 0660 root:kvm, as
    // installing QEMU applies), this test cannot reach the tap's permission check.
    let mode = |path| std::fs::metadata(path).map_or(0, |m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if mode("/dev/kvm") & 0o006 != 0o006 {
        kvm::skip(&format!("user nobody cannot open /dev/kvm here (mode {:o})", mode("/dev/kvm") & 0o777));
        return;
    }
    // Where everyone may open /dev/net/tun, this host's kernel (6.18) also lets `nobody` attach a tap it does not
    // own (seen after installing QEMU made it 0666): there is no refusal to report.
    if mode("/dev/net/tun") & 0o006 == 0o006 {
        kvm::skip("everyone may open /dev/net/tun here, and this kernel lets them attach the test's tap");
        return;
    }
    // `nobody` may not open /dev/net/tun here.
    let nobody = 65534;
    let err = kiln()
        .netns(&ns)
        .unprivileged(nobody)
        .args(["run", "--net", &format!("tap:{TAP}")])
        .arg(guests::c("hello"))
        .run()
        .assert_kiln_error();
    assert!(err.contains("permission denied") && err.contains("user $USER"), "{err}");
}

#[test]
fn network_options_are_checked_before_boot() {
    let hello = guests::c("hello");
    let err = kiln().args(["run", "--net", "tap:kilnnosuch0"]).arg(&hello).run().assert_kiln_error();
    assert!(err.contains("kilnnosuch0") && err.contains("no such network device"), "{err}");
    let err = kiln().args(["run", "--net", "none", "--ip", "10.0.0.2/24"]).arg(&hello).run().assert_kiln_error();
    assert!(err.contains("need a network card"), "{err}");
    let err = kiln().args(["run", "--net", "none", "-p", "8080:80"]).arg(&hello).run().assert_kiln_error();
    assert!(err.contains("-p") && err.contains("--net none"), "{err}");
    for (flag, wanted) in [
        (["--net", "bridge"], "'bridge' is not a network"),
        (["-p", "8080"], "the guest port is missing"),
        (["-p", "99999:80"], "99999"),
    ] {
        let out = kiln().arg("run").args(flag).arg(&hello).run();
        assert_eq!(out.code, Some(2), "{out}");
        assert!(out.stderr_text().contains(wanted), "{}", out.stderr_text());
    }
    // A host port another program holds: refused before the VM boots, naming the port.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("127.0.0.1:{}:80", taken.local_addr().unwrap().port());
    let err = kiln().args(["run", "-p", &spec]).arg(&hello).run().assert_kiln_error();
    assert!(err.contains(&spec) && err.contains("already in use"), "{err}");
}

// ---- the user-mode network (the default) -------------------------------------------------------------------

/// A free TCP port on the host's loopback (bound, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn user_network_publishes_a_guest_server() {
    if !kvm::available() {
        return;
    }
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let (mut child, stdout) = start_netpeer(kiln(), &["--cpus", "2", "-p", &publish], &["serve", "8080", "2"]);
    echo_around_an_abort(format!("127.0.0.1:{port}").parse().unwrap());
    assert_eq!(child.wait(), Some(0));
    // Connections arrive from the gateway, as through a NAT.
    check_echo_lines(stdout, "10.0.2.2");
}

/// A request answered through `-p` costs the guest one frame, the answer: the ACK of the request rides on it (a
/// delayed ACK, as Linux's), rather than a bare ACK frame of its own going first. Counted with `--stats`.
#[test]
fn user_network_acks_ride_on_the_answers() {
    if !kvm::available() {
        return;
    }
    const ROUND_TRIPS: usize = 200;
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let mut child = kiln()
        .args(["run", "--stats", "-p", &publish])
        .arg(guests::c("netpeer"))
        .args(["serve", "8080", "1"])
        .into_command()
        .spawn()
        .expect("start kiln");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut child = Running(child);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("netpeer's first line");
    assert!(line.starts_with("listening"), "netpeer said {line:?}");
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect to the guest");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for i in 0..ROUND_TRIPS {
        stream.write_all(&[byte(i)]).unwrap();
        let mut back = [0u8];
        stream.read_exact(&mut back).expect("the echo");
        assert_eq!(back[0], byte(i));
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(child.wait(), Some(0));
    let mut report = String::new();
    BufReader::new(stderr).read_to_string(&mut report).unwrap();
    let frames_out: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("[kiln] network: ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in kiln's report:\n{report}"));
    // The handshake, the FINs and their ACKs are a few more; a bare ACK per request would be ROUND_TRIPS more.
    assert!(frames_out < ROUND_TRIPS + ROUND_TRIPS / 4, "{frames_out} frames out for {ROUND_TRIPS} answers:\n{report}");
}

#[test]
fn user_network_publishes_a_guest_server_to_host_ipv6_clients() {
    if !kvm::available() {
        return;
    }
    let port = free_port();
    let publish = format!("[::1]:{port}:8080");
    let (mut child, stdout) = start_netpeer(kiln(), &["-p", &publish], &["serve", "8080", "1", "::"]);
    echo(format!("[::1]:{port}").parse().unwrap(), 1 << 20);
    assert_eq!(child.wait(), Some(0));
    // The published port leads to the guest's IPv4 address, as Docker's do; the host's IPv6 client is behind the
    // gateway.
    let lines: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    assert_eq!(lines, [format!("echoed {} bytes to ::ffff:10.0.2.2 (closed)", 1 << 20)]);
}

#[test]
fn user_network_reaches_host_loopback_through_the_gateway() {
    reach_host_loopback("127.0.0.1", "10.0.2.2");
}

#[test]
fn user_network_reaches_host_ipv6_loopback_through_the_ipv6_gateway() {
    reach_host_loopback("::1", "fd00::2");
}

/// A guest client echoes 10 MB through the user network's `gateway` with a host server on `loopback`, and a connect
/// to a closed host port there is refused.
fn reach_host_loopback(loopback: &str, gateway: &str) {
    if !kvm::available() {
        return;
    }
    let listener = TcpListener::bind((loopback, 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break total;
            }
            conn.write_all(&buf[..n]).unwrap();
            total += n;
        }
    });
    let netpeer = guests::c("netpeer");
    kiln()
        .arg("run")
        .arg(&netpeer)
        .args(["fetch", gateway, &port, "10000000"])
        .run()
        .assert_code(0)
        .assert_stdout("fetched 10000000 of 10000000 bytes, 0 wrong\n");
    assert_eq!(server.join().unwrap(), 10_000_000);
    let closed = free_port().to_string();
    kiln()
        .arg("run")
        .arg(&netpeer)
        .args(["refused", gateway, &closed])
        .run()
        .assert_code(0)
        .assert_stdout("connect: Connection refused\n");
}

#[test]
fn a_program_waiting_only_on_loopback_sockets_is_still_reported_deadlocked() {
    if !kvm::available() {
        return;
    }
    // Nothing from the card can reach a listener on 127.0.0.1: waiting in its accept is a deadlock, as without a
    // card. (One on 0.0.0.0 can be reached, and waits.)
    let out = kiln().arg("run").arg(guests::c("netpeer")).args(["stuck", "127.0.0.1", "9999"]).run();
    out.assert_code(124).assert_stderr_contains("program deadlocked");
}

/// A connection to the host that the program closed, still closing in the background (the host keeps its side
/// open), can wake no thread: waiting on the loopback beside it is still reported as a deadlock (it hung before).
#[test]
fn a_connection_closing_in_the_background_hides_no_deadlock() {
    if !kvm::available() {
        return;
    }
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let server = std::thread::spawn(move || listener.accept().unwrap());
    let out = kiln().arg("run").arg(guests::c("netpeer")).args(["closed-then-stuck", "10.0.2.2", &port]).run();
    let _open_until_now = server.join().unwrap();
    out.assert_code(124).assert_stdout("closed\n").assert_stderr_contains("program deadlocked");
}

#[test]
fn user_network_publishes_udp() {
    if !kvm::available() {
        return;
    }
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:5300/udp");
    let (mut child, stdout) = start_netpeer(kiln(), &["-p", &publish], &["udp", "5300", "3"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for size in [1usize, 512, 1400] {
        let data: Vec<u8> = (0..size).map(byte).collect();
        socket.send_to(&data, format!("127.0.0.1:{port}")).unwrap();
        let mut back = vec![0u8; 2048];
        let (n, from) = socket.recv_from(&mut back).expect("the echo");
        assert_eq!((&back[..n], from.port()), (&data[..], port));
    }
    assert_eq!(child.wait(), Some(0));
    assert_eq!(stdout.lines().map(Result::unwrap).collect::<Vec<_>>(), ["echoed 3 datagrams"]);
}

/// SO_RCVBUF/SO_SNDBUF, SO_LINGER and the keep-alive options on the loopback, each checked by its effect inside the
/// guest (see tests/guests/c/sockopts.c).
#[test]
fn socket_options_change_what_connections_do() {
    if !kvm::available() {
        return;
    }
    let out = kiln().args(["run", "--cpus", "2"]).arg(guests::c("sockopts")).arg("local").run();
    out.assert_code(0);
    assert!(!out.stdout_text().contains("FAILED"), "{}", out.stdout_text());
}

/// A guest connection with keep-alive (probes after 1 s of silence, 1 s apart, 2 of them) fails once the host stops
/// answering (its address is taken off the tap, so Linux drops what the guest sends), while a connection without
/// keep-alive to the same host stays open.
#[test]
fn tap_keep_alive_finds_a_silent_peer() {
    let Some(ns) = tap_namespace() else { return };
    let listener = ns.enter(|| TcpListener::bind(format!("{HOST}:9002")).expect("bind in the namespace"));
    let server = std::thread::spawn(move || (listener.accept().unwrap(), listener.accept().unwrap()));
    let tap = format!("tap:{TAP}");
    let ip = format!("{GUEST}/24");
    let mut child = kiln()
        .netns(&ns)
        .args(["run", "--net", &tap, "--ip", &ip])
        .arg(guests::c("sockopts"))
        .args(["keepalive", HOST, "9002"])
        .into_command()
        .spawn()
        .expect("start kiln");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut child = Running(child);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("sockopts' first line");
    assert_eq!(line, "connected\n");
    // Both connections were accepted: keep them open on the host while the address goes.
    let _connections = server.join().unwrap();
    let status = std::process::Command::new("ip")
        .args(["-n", &ns.name, "addr", "del", &format!("{HOST}/24"), "dev", TAP])
        .status()
        .expect("run ip");
    assert!(status.success(), "ip addr del failed");
    let code = child.wait();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(code, Some(0), "{rest}");
    assert!(rest.contains("ok: a connection with keep-alive fails") && !rest.contains("FAILED"), "{rest}");
}

/// Runs `sockstate SECTION` natively and in Kiln (on two vCPUs) and compares their outputs line by line: each line is
/// one fact about a loopback connection, a datagram or an option (see tests/guests/c/sockstate.c), as Linux reports it.
fn sockstate_matches_linux(section: &str) {
    guest_matches_linux("sockstate", &[section], "sockstate: done\n");
}

/// Runs the C guest `name` with `args` natively and in Kiln (on two vCPUs) and compares their outputs line by line;
/// the native run must end with `last`.
fn guest_matches_linux(name: &str, args: &[&str], last: &str) {
    guest_with_flags_matches_linux(name, args, last, &[]);
}

/// [`guest_matches_linux`] with `kiln run` flags of the test's own.
fn guest_with_flags_matches_linux(name: &str, args: &[&str], last: &str, flags: &[&str]) {
    if !kvm::available() {
        return;
    }
    let guest = guests::c(name);
    let native = std::process::Command::new(&guest).args(args).output().expect("run the guest natively");
    let native = String::from_utf8_lossy(&native.stdout).into_owned();
    assert!(native.ends_with(last), "natively:\n{native}");
    let run = kiln().args(["run", "--cpus", "2"]).args(flags).arg(&guest).args(args).run();
    let kiln = run.stdout_text();
    let differences: Vec<String> = native
        .lines()
        .zip(kiln.lines().chain(std::iter::repeat("(missing)")))
        .filter(|(n, k)| n != k)
        .map(|(n, k)| format!("  Linux: {n}\n  Kiln:  {k}"))
        .collect();
    assert!(differences.is_empty(), "{} lines differ:\n{}\n{run}", differences.len(), differences.join("\n"));
    run.assert_code(0);
}

/// Issue 13: AF_UNIX sockets (socketpair of each type, path and abstract listeners, named datagrams, SCM_RIGHTS,
/// readiness, errors) report what Linux reports (see tests/guests/c/unix.c).
#[test]
fn unix_sockets_match_linux() {
    guest_matches_linux("unix", &[], "unix: done\n");
}

/// Issue 13: getifaddrs and if_nameindex (musl's and glibc's, both over NETLINK_ROUTE) find the loopback as Linux
/// describes it: up, 127.0.0.1/8 and ::1/128.
#[test]
fn netlink_describes_the_loopback_as_linux_does() {
    guest_matches_linux("netlink", &[], "netlink: lo link 1, 127.0.0.1/8 1, ::1/128 1\n");
    guest_matches_linux("netlink-glibc", &[], "netlink: lo link 1, 127.0.0.1/8 1, ::1/128 1\n");
}

/// Issue 13: with the user-mode network, netlink describes the card too: its hardware address, its IPv4 and IPv6
/// addresses with their prefixes, and its index.
#[test]
fn netlink_describes_the_card() {
    if !kvm::available() {
        return;
    }
    let run = kiln().args(["run", "--net", "user"]).arg(guests::c("netlink")).arg("all").run();
    run.assert_code(0);
    let out = run.stdout_text();
    for line in [
        "eth0: link up running, hardware address of 6 bytes, not zero",
        "eth0: inet 10.0.2.15/24 up",
        "eth0: inet6 fd00::15/64",
        "if_nameindex: eth0 has index above 1",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?}:\n{run}");
    }
}

/// Issue 11, item 10: a peer's FIN is reported (EPOLLRDHUP, to edge-triggered epoll too) while data is unread.
#[test]
fn a_peers_fin_is_reported_while_data_is_unread() {
    sockstate_matches_linux("fin");
}

/// Issue 11, item 11: closing with unread data resets the connection; the peer's reads, writes and SO_ERROR then.
#[test]
fn a_close_with_unread_data_resets_the_connection() {
    sockstate_matches_linux("reset");
}

/// Issue 11, item 11: shutdown's events, reads and writes.
#[test]
fn shutdown_reports_its_events_as_linux_does() {
    sockstate_matches_linux("shutdown");
}

/// Issue 11, item 12: a datagram read into a smaller buffer is truncated, not refused.
#[test]
fn udp_datagrams_are_truncated_to_the_buffer() {
    sockstate_matches_linux("udp");
}

/// A `write` or `writev` of a 20,000-byte datagram sends one datagram, as Linux (the library OS copied writes in
/// 16 KiB chunks and sent one datagram per chunk). On the loopback without a network card: the library OS does not
/// fragment, so a datagram beyond a card's MTU does not leave.
#[test]
fn a_large_datagram_written_is_one_datagram() {
    guest_with_flags_matches_linux("sockstate", &["bigudp"], "sockstate: done\n", &["--net", "none"]);
}
/// Issue 14: one listener and many connections, as Linux: accept hands them out in the order they came (smoltcp's
/// socket order decided before), 1,000 connections each reach their own socket and end by FIN or by reset as asked,
/// and a backlog of N takes N + 1 connections ahead of accept (see tests/guests/c/listenq.c).
#[test]
fn many_connections_to_one_listener_behave_as_on_linux() {
    guest_matches_linux("listenq", &[], "listenq: done\n");
}

/// Issue 11, item 13: socket options are kept, validated and inherited as on Linux, and timeouts act.
#[test]
fn socket_options_are_kept_and_validated_as_on_linux() {
    sockstate_matches_linux("options");
}
