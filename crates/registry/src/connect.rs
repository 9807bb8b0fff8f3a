//! A session with one registry: the client (TLS, scheme), the credentials, and the runtime its requests run on.
//!
//! TLS trusts the system's roots and `--ca-cert`. Plain HTTP is used only for loopback registries (`localhost`,
//! `127.0.0.0/8`, `[::1]`) or with `--insecure`, and then only when the registry answers plain HTTP
//! ([`speaks_plain_http`]); otherwise HTTPS.

use crate::credentials::Sources;
use crate::{RegistryError, RemoteName};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use std::path::PathBuf;
use std::sync::Arc;

/// How to reach registries, from `kiln push/pull/login`'s flags.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A PEM file of CA certificates to trust besides the system's.
    pub ca_cert: Option<PathBuf>,
    /// Allow plain HTTP and unverified certificates for any registry.
    pub insecure: bool,
    pub credentials: Sources,
}

/// Told how many bytes a transfer will move, then each piece as it moves (from the runtime's thread).
pub trait Progress: Send + Sync {
    fn start(&self, total_bytes: u64);
    fn advance(&self, bytes: u64);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

pub(crate) struct Session {
    pub client: Client,
    pub auth: RegistryAuth,
    pub name: RemoteName,
    pub runtime: tokio::runtime::Runtime,
    pub progress: Arc<dyn Progress>,
}

/// Whether `registry` answers plain HTTP: an anonymous `GET /v2/` (no credentials) over TCP, answered with an HTTP
/// status other than 400 (what TLS servers answer plain HTTP with). Asked before any client is made, since each
/// client reads and parses the system's CA certificates, which costs more than this round trip.
fn speaks_plain_http(registry: &str) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let with_port = if registry.rsplit_once(':').is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())) {
        registry.to_string()
    } else {
        format!("{registry}:80")
    };
    let timeout = std::time::Duration::from_secs(5);
    let answer = || -> std::io::Result<Vec<u8>> {
        let addr = with_port.to_socket_addrs()?.next().ok_or(std::io::ErrorKind::NotFound)?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {registry}\r\n\r\n").as_bytes())?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.to_vec())
    };
    answer().is_ok_and(|head| head.starts_with(b"HTTP/1.") && !head.ends_with(b" 400"))
}

/// Whether `registry` (`HOST[:PORT]`) is this machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn client(options: &Options, protocol: ClientProtocol) -> Result<Client, RegistryError> {
    // Every client of this process uses ring: aws-lc-rs, rustls' default, builds a C library of its own for minutes
    // on every clean build. ring's provider is deprecated only for lacking post-quantum key exchange (X25519 is what
    // registries get). A second install is a no-op.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut extra = Vec::new();
    if let Some(path) = &options.ca_cert {
        let data = std::fs::read(path).map_err(|source| RegistryError::CaCert { path: path.clone(), source })?;
        extra.push(Certificate { encoding: CertificateEncoding::Pem, data });
    }
    let config = ClientConfig {
        protocol,
        extra_root_certificates: extra,
        accept_invalid_certificates: options.insecure,
        // One POST and one PUT a blob, where chunks would add a PATCH each: blobs come whole from the store anyway.
        use_monolithic_push: true,
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    Client::try_from(config).map_err(|source| match source {
        OciDistributionError::RequestError(e) => RegistryError::CaCert {
            path: options.ca_cert.clone().unwrap_or_default(),
            source: std::io::Error::other(e),
        },
        source => RegistryError::Protocol { registry: "client".into(), source },
    })
}

/// Opens a session for `operation` on `name`'s registry, with its stored credentials.
pub(crate) fn connect(
    name: &RemoteName,
    options: &Options,
    operation: RegistryOperation,
    progress: Arc<dyn Progress>,
) -> Result<Session, RegistryError> {
    let registry = name.registry().to_string();
    let auth = match options.credentials.lookup(&registry)? {
        Some(c) => RegistryAuth::Basic(c.username, c.password),
        None => RegistryAuth::Anonymous,
    };
    connect_with(name, options, operation, auth, progress)
}

pub(crate) fn connect_with(
    name: &RemoteName,
    options: &Options,
    operation: RegistryOperation,
    auth: RegistryAuth,
    progress: Arc<dyn Progress>,
) -> Result<Session, RegistryError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RegistryError::Io { path: "tokio runtime".into(), source })?;
    let registry = name.registry().to_string();
    let plain = (is_loopback(&registry) || options.insecure) && speaks_plain_http(&registry);
    let client = client(options, if plain { ClientProtocol::Http } else { ClientProtocol::Https })?;
    // With credentials, get the token (or check that basic auth is what the registry wants) once, up front.
    // Anonymously there is nothing to check, and oci-client, holding an anonymous entry for a registry that asks
    // for no auth, would ask `GET /v2/` again before every request (18 of a push's 34 requests); a registry that
    // wants an anonymous token (Docker Hub's pulls) still gets asked, as the manifest pull stores the entry.
    if !matches!(auth, RegistryAuth::Anonymous) {
        runtime.block_on(client.auth(&name.inner, &auth, operation)).map_err(|e| classify(&registry, e))?;
    }
    Ok(Session { client, auth, name: name.clone(), runtime, progress })
}

/// The certificate error somewhere in `e`'s causes, if that is why it failed.
fn untrusted(e: &OciDistributionError) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let rustls_error = c
            .downcast_ref::<rustls::Error>()
            .or_else(|| c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref()));
        if let Some(rustls::Error::InvalidCertificate(why)) = rustls_error {
            return Some(format!("{why:?}"));
        }
        // Some layers on the way (hyper's connector) keep only the text of the TLS error.
        let text = c.to_string();
        if let Some((_, why)) = text.split_once("invalid peer certificate: ") {
            return Some(why.to_string());
        }
        cause = c.source();
    }
    None
}

/// A client error as what it means for the user.
pub(crate) fn classify(registry: &str, e: OciDistributionError) -> RegistryError {
    if let Some(why) = untrusted(&e) {
        return RegistryError::Untrusted { registry: registry.to_string(), why };
    }
    match e {
        OciDistributionError::UnauthorizedError { .. } => {
            RegistryError::Unauthorized { registry: registry.to_string(), why: "the registry refused".into() }
        }
        OciDistributionError::RequestError(e) if e.status().is_some_and(|s| s == 401 || s == 403) => {
            let status = e.status().expect("checked");
            RegistryError::Unauthorized { registry: registry.to_string(), why: format!("HTTP {status}") }
        }
        OciDistributionError::AuthenticationFailure(why) => {
            RegistryError::Unauthorized { registry: registry.to_string(), why: why.trim().to_string() }
        }
        source => RegistryError::Protocol { registry: registry.to_string(), source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection server answering `answer` to whatever it is sent; its `HOST:PORT`.
    fn answering(answer: &'static [u8]) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.read(&mut [0; 256]);
            let _ = stream.write_all(answer);
        });
        addr
    }

    #[test]
    fn plain_http_is_told_from_tls_by_the_answer() {
        assert!(speaks_plain_http(&answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")));
        assert!(speaks_plain_http(&answering(b"HTTP/1.1 401 Unauthorized\r\n\r\n")));
        assert!(!speaks_plain_http(&answering(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
        )));
        assert!(!speaks_plain_http(&answering(b"\x15\x03\x01\x00\x02\x02\x32")), "a TLS alert");
        assert!(!speaks_plain_http(&answering(b"")), "closed");
    }

    #[test]
    fn only_this_machine_is_loopback() {
        for r in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["ghcr.io", "10.0.0.1:5000", "localhost.example:5000", "[::2]:5000", "docker.io"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
