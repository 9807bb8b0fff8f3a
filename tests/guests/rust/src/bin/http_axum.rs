//! An HTTP server on axum (hyper) and the tokio multi-thread runtime, on 0.0.0.0:8080 or the port given: `GET /` says
//! hello, `GET /bytes/N` streams N pattern bytes, `POST /sum` answers "LEN HASH" of the body it streamed.

#[path = "../http_pattern.rs"]
#[allow(dead_code)] // axum parses the paths itself
mod pattern;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use pattern::{fill_pattern, port_from_args, Fnv1a, HELLO};
use std::pin::Pin;
use std::task::{Context, Poll};

const CHUNK: u64 = 64 * 1024;

/// The pattern as a response body, `len` bytes long, generated a chunk at a time as hyper asks for it.
struct PatternBody {
    at: u64,
    len: u64,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.at == self.len {
            return Poll::Ready(None);
        }
        let n = CHUNK.min(self.len - self.at);
        let mut chunk = vec![0u8; n as usize];
        fill_pattern(&mut chunk, self.at);
        self.at += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.at == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.at)
    }
}

async fn hello() -> &'static str {
    HELLO
}

async fn bytes(Path(len): Path<u64>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], Body::new(PatternBody { at: 0, len })).into_response()
}

async fn sum(mut body: Body) -> Response {
    use http_body::Body as _;
    let mut hash = Fnv1a::new();
    let mut total = 0u64;
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    hash.update(data);
                    total += data.len() as u64;
                }
            }
            Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")).into_response(),
        }
    }
    format!("{total} {:016x}\n", hash.0).into_response()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port = port_from_args();
    let app = Router::new()
        .route("/", get(hello))
        .route("/bytes/{len}", get(bytes))
        .route("/sum", post(sum))
        .layer(DefaultBodyLimit::disable());
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("http_axum: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {port}");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("http_axum: {e}");
        std::process::exit(1);
    }
}
