//! Sockets from Rust std and tokio over 127.0.0.1: a threaded std echo server with eight clients, a read timeout, a
//! UDP round trip, and a tokio multi-thread echo server with 100 concurrent client tasks. Prints one line per part
//! and exits 0 when all held.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn echo_connection(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => stream.write_all(&buf[..n]).unwrap(),
        }
    }
}

fn std_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            std::thread::spawn(move || echo_connection(stream));
        }
    });
    let clients: Vec<_> = (0..8u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_nodelay(true).unwrap();
                let data: Vec<u8> = (0..100_000u32).map(|j| (j as u8) ^ i).collect();
                let mut writer = stream.try_clone().unwrap();
                let expected = data.clone();
                let sender = std::thread::spawn(move || writer.write_all(&data).unwrap());
                let mut back = vec![0u8; expected.len()];
                stream.read_exact(&mut back).unwrap();
                sender.join().unwrap();
                back == expected
            })
        })
        .collect();
    let all = clients.into_iter().all(|c| c.join().unwrap());
    println!("net: std tcp echo, 8 clients x 100 kB: {all}");
    assert!(all);

    let mut quiet = TcpStream::connect(addr).unwrap();
    quiet.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let started = Instant::now();
    let err = quiet.read(&mut [0u8; 1]).unwrap_err();
    let timed_out = matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    let waited = started.elapsed() >= Duration::from_millis(50);
    println!("net: read timeout: {}", timed_out && waited);
    assert!(timed_out && waited, "{err:?} after {:?}", started.elapsed());
}

fn std_udp() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.send_to(b"datagram", b.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = b.recv_from(&mut buf).unwrap();
    let ok = &buf[..n] == b"datagram" && from == a.local_addr().unwrap();
    println!("net: std udp: {ok}");
    assert!(ok);
}

fn tokio_tcp() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ok = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => stream.write_all(&buf[..n]).await.unwrap(),
                        }
                    }
                });
            }
        });
        let tasks: Vec<_> = (0..100u32)
            .map(|i| {
                tokio::spawn(async move {
                    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                    for round in 0..10u32 {
                        let message = format!("task {i} round {round}");
                        stream.write_all(message.as_bytes()).await.unwrap();
                        let mut back = vec![0u8; message.len()];
                        stream.read_exact(&mut back).await.unwrap();
                        if back != message.as_bytes() {
                            return false;
                        }
                    }
                    true
                })
            })
            .collect();
        let mut all = true;
        for task in tasks {
            all &= task.await.unwrap();
        }
        all
    });
    println!("net: tokio tcp echo, 100 tasks x 10 rounds: {ok}");
    assert!(ok);
}

fn main() {
    std_tcp();
    std_udp();
    tokio_tcp();
}
