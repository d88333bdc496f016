//! The one error type of the crate: every variant names what failed, where, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong talking to a registry or parsing its names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error(
        "invalid image reference `{input}`: {reason} (expected `[host[:port]/]path[:tag][@sha256:<64 hex>]`, \
         path components in lowercase a-z 0-9 joined by `.`, `_`, `__` or `-`; e.g. `alpine:3.20` or \
         `registry.example.com:5000/team/app@sha256:...`)"
    )]
    InvalidReference { input: String, reason: String },

    #[error("invalid digest `{digest}`: {reason} (expected `sha256:` followed by 64 lowercase hex digits)")]
    InvalidDigest { digest: String, reason: String },

    #[error("invalid platform `{input}`: expected `os/arch[/variant]`, e.g. `linux/amd64` or `linux/arm64/v8`")]
    InvalidPlatform { input: String },

    #[error("cannot set up the HTTP client: {detail}")]
    ClientSetup { detail: String },

    #[error(
        "{action} `{reference}`: cannot reach `{host}` after {attempts} attempt(s): {detail}; \
         check the network, the registry address and that the registry is running"
    )]
    Connection {
        action: String,
        reference: String,
        host: String,
        attempts: u32,
        detail: String,
    },

    #[error(
        "{action} `{reference}`: access denied (HTTP {status}){detail}; check the name, then log in: \
         `kiln login {registry}` (or `docker login {registry}`)"
    )]
    Unauthorized {
        action: String,
        reference: String,
        registry: String,
        status: u16,
        detail: String,
    },

    #[error("{action} `{reference}`: {what} not found (HTTP 404){detail}; check the repository name, tag or digest")]
    NotFound {
        action: String,
        reference: String,
        what: String,
        detail: String,
    },

    #[error("{action} `{reference}`: registry answered HTTP {status}{detail}; {hint}")]
    Http {
        action: String,
        reference: String,
        status: u16,
        detail: String,
        hint: String,
    },

    #[error(
        "`{reference}`: {what} has digest `{actual}` but `{expected}` was expected; the registry or a \
         proxy served other content than asked for: retry, and do not use this content if it persists"
    )]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error(
        "`{reference}`: blob `{digest}` was {actual} bytes but {expected} bytes were announced; \
         the transfer was cut or the registry is broken: retry the pull"
    )]
    SizeMismatch {
        reference: String,
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "`{reference}` has no image for platform `{wanted}`; available: {list}; choose one of these (e.g. with `--platform`)",
        list = if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error(
        "`{reference}`: unsupported manifest media type `{media_type}`; kiln reads OCI and Docker schema 2 \
         manifests and indexes (re-push the image with a current tool to convert it)"
    )]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },

    #[error("`{reference}`: the registry sent an invalid {what}: {reason}; the image is damaged or not an image: re-push it")]
    InvalidManifest {
        reference: String,
        what: String,
        reason: String,
    },

    #[error("{action} `{reference}`: authentication with `{registry}` failed: {detail}")]
    Auth {
        action: String,
        reference: String,
        registry: String,
        detail: String,
    },

    #[error(
        "push `{reference}`: the local blob `{digest}` (`{}`) is corrupt: its content hashes to \
         `{actual}`; the upload was stopped: run `kiln check` to drop it, then build, import or \
         pull the image again",
        path.display()
    )]
    CorruptLocalBlob {
        reference: String,
        digest: String,
        actual: String,
        path: PathBuf,
    },

    #[error("{action} `{reference}`: cannot read `{path}`: {cause}")]
    ReadFile {
        action: String,
        reference: String,
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error(
        "push `{reference}`: `{path}` is {actual} bytes but blob `{digest}` was declared as {expected} bytes; \
         the file changed after its digest was computed: rebuild the image"
    )]
    FileSizeMismatch {
        reference: String,
        path: PathBuf,
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("pull `{reference}`: writing blob `{digest}` failed: {cause}")]
    WriteBlob {
        reference: String,
        digest: String,
        cause: std::io::Error,
    },

    #[error("`{helper} {verb}` for `{registry}`: {detail}")]
    CredentialHelper {
        helper: String,
        verb: String,
        registry: String,
        detail: String,
    },

    #[error("Docker config `{path}`: {detail}")]
    Config { path: PathBuf, detail: String },

    /// Reading or writing the Docker config failed. The I/O error is printed in the text only
    /// (as a `source()` too, `{:#}` would print it twice).
    #[error("Docker config `{path}`: {what}: {cause}")]
    ConfigIo {
        path: PathBuf,
        /// `cannot read it`, `cannot write it`.
        what: &'static str,
        cause: std::io::Error,
    },

    /// A credential helper could not be started or talked to.
    #[error("`{helper} {verb}` for `{registry}`: {what}: {cause}")]
    CredentialHelperIo {
        helper: String,
        verb: String,
        registry: String,
        /// `cannot start it`, `talking to it failed`.
        what: &'static str,
        cause: std::io::Error,
    },
}
