//! kiln-registry: Kiln images to and from registries that speak the OCI distribution spec, and any image a registry
//! holds into a local OCI image layout.
//!
//! On a registry a Kiln image is an OCI image manifest ([`media`]): its config is the Kiln manifest itself (media
//! type [`media::KILN_CONFIG`]), so the config's digest is the image's id and a pull gives the id that was pushed,
//! and its layers are the blobs that manifest names, in its order. The protocol, token flow and TLS are `oci-client`'s
//! (with rustls and the ring provider); this crate decides what to send, checks everything it receives against its
//! digest before a blob gets its name, and keeps credentials ([`credentials`]).

mod connect;
pub mod credentials;
mod error;
mod fetch;
pub mod media;
mod name;
mod pull;
mod push;
mod transfer;

pub use connect::{NoProgress, Options, Progress};
pub use error::RegistryError;
pub use fetch::{fetch_to_layout, Fetched};
pub use name::RemoteName;
pub use pull::{pull, Pulled};
pub use push::{push, Pushed};
