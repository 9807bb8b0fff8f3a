//! What can go wrong talking to a registry, each with what to do about it where there is something.

use kiln_image::StoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0:?} is not a registry reference (REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]): {1}")]
    BadReference(String, String),
    #[error("{registry}: not authorized ({why}); kiln login {registry}")]
    Unauthorized { registry: String, why: String },
    #[error("{registry}: the certificate is not trusted ({why}); give its CA with --ca-cert FILE")]
    Untrusted { registry: String, why: String },
    #[error("{registry}")]
    Protocol {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference}: {why}")]
    BadManifest { reference: String, why: String },
    #[error("{reference} is not a Kiln image: its config is {media_type} (a container image?)")]
    NotKiln { reference: String, media_type: String },
    #[error("blob {digest} from {reference} was refused")]
    Blob {
        reference: String,
        digest: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{0}")]
    Mismatch(String),
    #[error("the transfer failed")]
    Transfer(#[source] std::io::Error),
    #[error("the CA certificate {path}")]
    CaCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.into();
    move |source| RegistryError::Io { path, source }
}
