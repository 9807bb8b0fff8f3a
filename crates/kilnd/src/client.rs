//! A blocking client for kilnd's API, for `kiln` (and tests): one request per connection on the Unix socket, through
//! hyper's client side, on a runtime of its own.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket (no kilnd, or a stale socket).
    #[error("cannot reach kilnd at {}", .0.display())]
    Unreachable(PathBuf, #[source] std::io::Error),
    #[error("cannot start the client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("kilnd's answer")]
    Http(#[source] hyper::Error),
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
    /// kilnd refused: its status and message.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("kilnd's answer is not what the API says")]
    Body(#[source] serde_json::Error),
}

pub struct Client {
    socket: PathBuf,
}

/// A successful answer: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(ClientError::Body)
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a kilnd answers on the socket.
    pub fn answers(&self) -> bool {
        self.request("GET", "/version", None).is_ok()
    }

    /// Sends one request; a 4xx or 5xx answer is [`ClientError::Refused`] with kilnd's message.
    pub fn request(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<Answer, ClientError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(ClientError::Runtime)?;
        let (status, bytes) = runtime.block_on(self.exchange(method, path, body))?;
        if status >= 400 {
            let message = serde_json::from_slice::<crate::api::ErrorBody>(&bytes)
                .map(|e| e.message)
                .unwrap_or_else(|_| format!("kilnd answered {status}: {}", String::from_utf8_lossy(&bytes)));
            return Err(ClientError::Refused { status, message });
        }
        Ok(Answer { status, body: bytes })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| ClientError::Unreachable(self.socket.clone(), e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        let driver = tokio::spawn(connection);
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "kilnd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(ClientError::Request)?;
        let response = sender.send_request(request).await.map_err(ClientError::Http)?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(ClientError::Http)?.to_bytes().to_vec();
        driver.abort();
        Ok((status, body))
    }
}
