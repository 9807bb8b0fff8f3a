//! An edge-triggered tokio server hearing a client's close: the server already waits to read when each client
//! writes a few bytes and shuts its sending side down (or closes) at once, so that one epoll report covers the data
//! and the FIN; the server reads into a larger buffer (a short read, after which tokio waits for the next edge) until
//! end-of-file. A FIN that is not an event of its own leaves the server waiting forever: each connection has 2 s.
//! Prints one line per way of closing.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `clients` connections on `listener`: how many ended in end-of-file after all their bytes within 5 s.
async fn serve(listener: TcpListener, clients: usize) -> usize {
    let mut done = 0;
    for _ in 0..clients {
        let (mut connection, _) = listener.accept().await.expect("accept");
        let read_to_end = async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            loop {
                match connection.read(&mut buf).await {
                    Ok(0) => return total,
                    Ok(n) => total += n,
                    Err(_) => return usize::MAX,
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), read_to_end).await == Ok(5) {
            done += 1;
        }
    }
    done
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    const CLIENTS: usize = 3;
    for close in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let server = tokio::spawn(serve(listener, CLIENTS));
        for _ in 0..CLIENTS {
            let mut client = TcpStream::connect(address).await.expect("connect");
            // The server accepts and waits to read meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"hello").await.expect("write");
            if close {
                drop(client);
            } else {
                client.shutdown().await.expect("shutdown");
                // Kept open until the server has read: only the FIN tells it the data ended.
                tokio::spawn(async move {
                    let mut rest = Vec::new();
                    let _ = client.read_to_end(&mut rest).await;
                });
            }
        }
        let done = server.await.expect("server");
        let how = if close { "close" } else { "shutdown" };
        println!("halfclose: {how}: {done} of {CLIENTS} connections read to end-of-file");
    }
}
