//! kiln-registry speaks the OCI distribution protocol: image references, manifest resolution,
//! streaming blob pull and push, and registry authentication.
//!
//! HTTP is done directly with reqwest (rustls): every blob transfer streams, existence checks
//! are HEAD requests, and plain http is only used for loopback hosts and hosts the caller
//! names in [`ClientOptions::insecure_registries`] or marks `plain_http` in
//! [`ClientOptions::hosts`], whose [`HostOptions`] also give a registry its mirrors (tried in
//! order for pulls, then the registry itself), extra CA certificates or no TLS verification (a
//! registry with either is spoken to over https, loopback too).
//! Credentials come from `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`): its
//! `credHelpers` and `credsStore` (`docker-credential-*` programs), then its `auths`;
//! [`store_login`] and [`erase_login`] write them back as `docker login`/`logout` do. Basic and Bearer token challenges are answered and
//! the answer cached per registry and scope; an identity token (user `<token>` from a helper, or
//! `identitytoken` in `auths`) is sent to the token service as an OAuth2 refresh token.
//! Connection errors, 5xx and 429 are retried (four attempts, honouring `Retry-After` in seconds
//! or as an HTTP date, up to 10 s); a cut blob download resumes with a Range request; a failed
//! blob upload starts again for that blob only; blob digests and sizes are verified.
//!
//! Multi-platform images: [`RegistryClient::resolve`] picks one platform's manifest from an
//! index; [`RegistryClient::fetch_manifest`], [`parse_index`] and [`select_platform`] let a
//! caller copy or narrow a whole index itself (kiln's `pull --all-platforms` and index push).
//!
//! ```no_run
//! # async fn pull() -> Result<(), Box<dyn std::error::Error>> {
//! use kiln_registry::{ClientOptions, Platform, Reference, RegistryClient};
//!
//! let client = RegistryClient::new(ClientOptions::default())?;
//! let r = Reference::parse("busybox:1.36")?; // docker.io/library/busybox:1.36
//! let image = client.resolve(&r, &Platform::host()).await?;
//! let pinned = r.with_digest(&image.digest);
//! for layer in &image.layers {
//!     let mut file = tokio::fs::File::create(layer.digest.replace(':', "-")).await?;
//!     // Verified against `layer.digest` before Ok; on Err discard the file.
//!     client.fetch_blob(&pinned, &layer.digest, &mut file).await?;
//! }
//! # Ok(()) }
//! ```

mod auth;
mod client;
mod credentials;
mod digest;
mod error;
mod manifest;
mod platform;
mod reference;

pub use auth::normalize_host as registry_host;
pub use client::{ClientOptions, HostOptions, Progress, PushOptions, PushedBlob, RegistryClient};
pub use credentials::{erase_login, store_login, LoginStore};
pub use error::RegistryError;
pub use manifest::{
    is_index, media_type, parse_index, select_platform, Descriptor, FetchedManifest, IndexEntry,
    ResolvedManifest,
};
pub use platform::Platform;
pub use reference::Reference;
