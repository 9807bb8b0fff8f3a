//! An HTTP server on std threads (tiny_http, four workers sharing one listener) on 0.0.0.0:8080 or the port given:
//! `GET /` says hello, `GET /bytes/N` streams N pattern bytes, `POST /sum` answers "LEN HASH" of the body it streamed.

#[path = "../http_pattern.rs"]
mod pattern;

use pattern::{bytes_len, fill_pattern, port_from_args, Fnv1a, HELLO};
use std::io::Read;
use std::sync::Arc;
use tiny_http::{Method, Request, Response, Server, StatusCode};

const WORKERS: usize = 4;

/// The pattern as a reader, `len` bytes long, generated as it is read.
struct PatternReader {
    at: u64,
    len: u64,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.at) as usize);
        fill_pattern(&mut buf[..n], self.at);
        self.at += n as u64;
        Ok(n)
    }
}

fn handle(mut request: Request) -> std::io::Result<()> {
    let path = request.url().to_string();
    match (request.method(), path.as_str()) {
        (Method::Get, "/") => request.respond(Response::from_string(HELLO)),
        (Method::Get, p) if bytes_len(p).is_some() => {
            let len = bytes_len(p).unwrap_or(0);
            let body = PatternReader { at: 0, len };
            // The length is known: send it, rather than tiny_http's chunked encoding for long bodies.
            let response = Response::new(StatusCode(200), vec![], body, Some(len as usize), None);
            request.respond(response.with_chunked_threshold(usize::MAX))
        }
        (Method::Post, "/sum") => {
            let mut hash = Fnv1a::new();
            let mut total = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = request.as_reader().read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                total += n as u64;
            }
            request.respond(Response::from_string(format!("{total} {:016x}\n", hash.0)))
        }
        _ => request.respond(Response::from_string("not found\n").with_status_code(404)),
    }
}

fn main() {
    let port = port_from_args();
    let server = match Server::http(("0.0.0.0", port)) {
        Ok(server) => Arc::new(server),
        Err(e) => {
            eprintln!("http_tiny: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {port}");
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    // A client that goes away mid-response is its own problem, not the server's.
                    let _ = handle(request);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
