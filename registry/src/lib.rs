//! kiln-registry speaks the OCI distribution protocol: image references, manifest resolution,
//! streaming blob pull and push, and registry authentication.
//!
//! HTTP is done directly with reqwest (rustls): every blob transfer streams, existence checks
//! are HEAD requests, and plain http is only used for loopback hosts and hosts the caller
//! names in [`ClientOptions::insecure_registries`].

mod auth;
mod client;
mod digest;
mod error;
mod manifest;
mod platform;
mod reference;

pub use client::{ClientOptions, PushedBlob, RegistryClient};
pub use error::RegistryError;
pub use manifest::{media_type, Descriptor, ResolvedManifest};
pub use platform::Platform;
pub use reference::Reference;
