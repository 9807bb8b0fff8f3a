//! The API's HTTP side: hyper serving HTTP/1.1 on the Unix socket, one task per connection, routes matched on the
//! method and the path's segments. Each route's work blocks (files, the store's lock, a VM's start), so it runs on
//! tokio's blocking pool, never on the event loop.

use crate::api::{CreateRequest, ErrorBody, RestoreRequest, SnapshotRequest, Version, API_VERSION};
use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::services::spec::{ServiceRequest, ServiceUpdate};
use crate::services::Services;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Most bytes a request body may have: a create request is a few hundred.
const MAX_BODY: usize = 1 << 20;

/// What a route answers when it succeeds.
enum Reply {
    Json(StatusCode, serde_json::Value),
    Bytes(Vec<u8>),
    NoContent,
}

/// Serves connections from `listener` until the runtime is dropped.
pub async fn serve(listener: tokio::net::UnixListener, daemon: Arc<Daemon>, services: Arc<Services>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (daemon, services) = (daemon.clone(), services.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(daemon.clone(), services.clone(), request));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

async fn handle(
    daemon: Arc<Daemon>,
    services: Arc<Services>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = match request.uri().path().starts_with("/services") {
        true => service_route(services, request).await,
        false => route(daemon, request).await,
    };
    Ok(match reply {
        Ok(Reply::Json(status, value)) => json(status, &value),
        Ok(Reply::Bytes(bytes)) => response(StatusCode::OK, "text/plain; charset=utf-8", bytes),
        Ok(Reply::NoContent) => response(StatusCode::NO_CONTENT, "text/plain", Vec::new()),
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json(status, &serde_json::to_value(ErrorBody { message: e.to_string() }).unwrap_or_default())
        }
    })
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    response(status, "application/json", body)
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(format!("the route's work failed: {e}")))?
}

fn to_json<T: serde::Serialize>(status: StatusCode, value: &T) -> Result<Reply, ApiError> {
    serde_json::to_value(value).map(|v| Reply::Json(status, v)).map_err(|e| ApiError::Internal(e.to_string()))
}

async fn route(daemon: Arc<Daemon>, request: Request<Incoming>) -> Result<Reply, ApiError> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = Query::parse(request.uri().query().unwrap_or(""))?;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["version"]) => to_json(
            StatusCode::OK,
            &Version { version: env!("CARGO_PKG_VERSION").into(), api_version: API_VERSION, pid: daemon.process().0 },
        ),
        (&Method::GET, ["instances"]) => {
            let all = query.flag("all")?;
            to_json(StatusCode::OK, &blocking(move || daemon.list(all)).await?)
        }
        (&Method::POST, ["instances"]) => {
            let body = read_body(request).await?;
            let create: CreateRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not a create request: {e}")))?;
            to_json(StatusCode::CREATED, &blocking(move || daemon.create(create)).await?)
        }
        (&Method::POST, ["instances", "restore"]) => {
            let body = read_body(request).await?;
            let restore: RestoreRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not a restore request: {e}")))?;
            to_json(StatusCode::CREATED, &blocking(move || daemon.restore(&restore)).await?)
        }
        (&Method::POST, ["instances", id, "snapshot"]) => {
            let id = id.to_string();
            let body = read_body(request).await?;
            let snapshot: SnapshotRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not a snapshot request: {e}")))?;
            to_json(StatusCode::OK, &blocking(move || daemon.snapshot(&id, &snapshot)).await?)
        }
        (&Method::GET, ["instances", id]) => {
            let id = id.to_string();
            to_json(StatusCode::OK, &blocking(move || daemon.find(&id)).await?)
        }
        (&Method::GET, ["instances", id, "logs"]) => {
            let (id, tail, since) = (id.to_string(), query.number("tail")?, query.number("since")?.unwrap_or(0));
            Ok(Reply::Bytes(blocking(move || daemon.logs(&id, tail, since)).await?))
        }
        (&Method::POST, ["instances", id, "stop"]) => {
            let id = id.to_string();
            let time = query.number("t")?.unwrap_or(kiln_launch::DEFAULT_STOP_TIMEOUT as usize);
            blocking(move || daemon.stop(&id, Duration::from_secs(time as u64))).await?;
            Ok(Reply::NoContent)
        }
        (&Method::POST, ["instances", id, "kill"]) => {
            let id = id.to_string();
            blocking(move || daemon.kill(&id)).await?;
            Ok(Reply::NoContent)
        }
        (&Method::DELETE, ["instances", id]) => {
            let (id, force) = (id.to_string(), query.flag("force")?);
            blocking(move || daemon.remove(&id, force)).await?;
            Ok(Reply::NoContent)
        }
        _ => Err(ApiError::NotFound(format!("no route {method} {path} (docs/api.md lists them)"))),
    }
}

/// The routes of services (`/services...`).
async fn service_route(services: Arc<Services>, request: Request<Incoming>) -> Result<Reply, ApiError> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["services"]) => to_json(StatusCode::OK, &blocking(move || Ok(services.list())).await?),
        (&Method::POST, ["services"]) => {
            let body = read_body(request).await?;
            let create: ServiceRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not a service request: {e}")))?;
            to_json(StatusCode::CREATED, &blocking(move || services.create(create)).await?)
        }
        (&Method::GET, ["services", name]) => {
            let name = name.to_string();
            to_json(StatusCode::OK, &blocking(move || services.status(&name)).await?)
        }
        (&Method::POST, ["services", name, "update"]) => {
            let name = name.to_string();
            let body = read_body(request).await?;
            let update: ServiceUpdate = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not a service update: {e}")))?;
            to_json(StatusCode::ACCEPTED, &blocking(move || services.update(&name, update)).await?)
        }
        (&Method::POST, ["services", name, "rollback"]) => {
            let name = name.to_string();
            to_json(StatusCode::ACCEPTED, &blocking(move || services.rollback(&name)).await?)
        }
        (&Method::DELETE, ["services", name]) => {
            let name = name.to_string();
            blocking(move || services.remove(&name)).await?;
            Ok(Reply::NoContent)
        }
        _ => Err(ApiError::NotFound(format!("no route {method} {path} (docs/api.md lists them)"))),
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(ApiError::BadRequest(format!("cannot read the body (at most {MAX_BODY} bytes): {e}"))),
    }
}

/// A query string's `name=value` pairs (our values need no percent-decoding: numbers and booleans).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Result<Query, ApiError> {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect();
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `name`, `name=1`, `name=true`: true; absent, `0`, `false`: false.
    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("0" | "false") => Ok(false),
            Some("" | "1" | "true") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!("query parameter {name}: {other:?} is not true or false"))),
        }
    }

    fn number(&self, name: &str) -> Result<Option<usize>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| ApiError::BadRequest(format!("query parameter {name}: {v:?} is not a number")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::Query;

    #[test]
    fn queries_take_flags_and_numbers() {
        let q = Query::parse("all=1&tail=5&force&t=x").unwrap();
        assert!(q.flag("all").unwrap() && q.flag("force").unwrap() && !q.flag("none").unwrap());
        assert_eq!(q.number("tail").unwrap(), Some(5));
        assert!(q.number("t").unwrap_err().to_string().contains("is not a number"));
        assert!(Query::parse("all=maybe").unwrap().flag("all").is_err());
    }
}
