//! The distribution-protocol client: manifest resolution, streaming blob transfer, push, auth
//! (anonymous, Bearer token challenge, Basic from the Docker config) and bounded retries.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::header::{
    HeaderName, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
    RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWrite, AsyncWriteExt};
use url::Url;

use crate::auth::{self, Challenge, Credentials};
use crate::credentials::Keychain;
use crate::digest::{self, Hasher};
use crate::manifest::{self, Kind, ACCEPT_ALL};
use crate::{FetchedManifest, Platform, Reference, RegistryError, ResolvedManifest};

/// Tries per request (connection errors, 5xx, 429), per blob body (a cut download resumes with
/// a Range request) and per blob upload (a failed upload restarts that blob only).
const MAX_ATTEMPTS: u32 = 4;
const MAX_MANIFEST_BYTES: usize = 4 << 20;
const MAX_ERROR_BODY: usize = 64 << 10;
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Blob transfers have no overall limit (layers can be large); a stalled read still ends.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How a [`RegistryClient`] is set up.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Hosts (`host` or `host:port`) that may be spoken to over plain http besides loopback.
    pub insecure_registries: Vec<String>,
    pub user_agent: String,
    /// Blobs larger than this are uploaded in chunks of this size (`PATCH`); smaller ones in
    /// one `PUT`.
    pub upload_chunk_size: u64,
    /// Settings per registry (`host` or `host:port`, `docker.io` for Docker Hub), as
    /// `buildkitd.toml`'s `[registry."HOST"]` sections give them.
    pub hosts: HashMap<String, HostOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            user_agent: format!("kiln/{}", env!("CARGO_PKG_VERSION")),
            upload_chunk_size: 128 << 20,
            hosts: HashMap::new(),
        }
    }
}

/// How to reach one registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostOptions {
    /// Registries (`host` or `host:port`) asked first, in order, for what is pulled from this
    /// one: the same repository path, e.g. `library/python` for `python:3.12`. The registry
    /// itself is asked when no mirror answers. Pushes never go to a mirror.
    pub mirrors: Vec<String>,
    /// Speak plain http to it (loopback hosts always may).
    pub plain_http: bool,
    /// Accept its TLS certificate without verifying it.
    pub insecure: bool,
    /// PEM certificates of the authorities that sign its certificate, besides the system's.
    pub ca_certs: Vec<Vec<u8>>,
}

/// What [`RegistryClient::push_blob`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushedBlob {
    Uploaded,
    AlreadyPresent,
    /// Mounted from another repository of the same registry, without uploading.
    Mounted,
}

/// Reports the bytes of one blob transferred so far (it may go back when a transfer restarts).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Extras for [`RegistryClient::push_blob_with`].
#[derive(Clone, Default)]
pub struct PushOptions {
    /// Another repository of the same registry known to hold the blob: it is mounted from
    /// there (`POST ?mount=&from=`) instead of uploaded when the registry allows it.
    pub mount_from: Option<String>,
    pub progress: Option<Progress>,
}

/// A client for OCI registries. Cheap to clone; clones share connections and auth tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Clients of the registries with their own TLS settings (`insecure`, `ca`).
    tls_clients: HashMap<String, reqwest::Client>,
    hosts: HashMap<String, HostOptions>,
    /// Mirrors that could not be reached: not asked again by this client.
    dead_mirrors: Mutex<std::collections::HashSet<String>>,
    insecure: Vec<String>,
    credentials: Keychain,
    /// `(registry, scope)` → `Authorization` value that worked last time.
    auth_cache: Mutex<HashMap<(String, String), String>>,
    retry_base: Duration,
    chunk_size: u64,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("insecure_registries", &self.inner.insecure)
            .field("credentials_for", &self.inner.credentials.hosts())
            .finish()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
}

enum ReqBody {
    Empty,
    Bytes(Bytes),
    /// `len` bytes of a file from `offset`, reported to `progress` as `offset + sent`.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
        progress: Option<Progress>,
        /// Hashes the bytes as they are sent; the body fails at its end when `last` and the
        /// whole blob does not hash to its digest, so a corrupt local blob is never completed.
        hash: Option<Arc<UploadHash>>,
    },
}

/// The running hash of one blob upload, across its chunks (sent in order, each once).
struct UploadHash {
    digest: String,
    size: u64,
    state: std::sync::Mutex<HashState>,
}

struct HashState {
    hasher: Sha256,
    bytes: u64,
    /// What the content hashed to, once all of it passed and it was not the digest.
    mismatch: Option<String>,
}

impl UploadHash {
    fn new(digest: &str, size: u64) -> Self {
        UploadHash {
            digest: digest.to_string(),
            size,
            state: std::sync::Mutex::new(HashState {
                hasher: Sha256::new(),
                bytes: 0,
                mismatch: None,
            }),
        }
    }

    /// Hashes the next bytes; when they complete the blob and it is not what its digest says,
    /// `Err` with what it hashed to, before the last bytes are handed on.
    /// `at` is the offset of `bytes` in the blob: a body sent again (after an auth challenge)
    /// repeats bytes already hashed, which are skipped.
    fn update(&self, at: u64, bytes: &[u8]) -> Result<(), String> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        let end = at + bytes.len() as u64;
        if let (Some(actual), true) = (&s.mismatch, end == self.size) {
            // Sent again: the last bytes of a corrupt blob are still withheld.
            return Err(actual.clone());
        }
        if at > s.bytes || end <= s.bytes || s.bytes == self.size {
            // A gap cannot happen (chunks go in order); already hashed bytes add nothing.
            return Ok(());
        }
        let skip = usize::try_from(s.bytes - at).unwrap_or(0);
        s.hasher.update(&bytes[skip..]);
        s.bytes = end;
        if s.bytes == self.size {
            let actual = format!(
                "sha256:{}",
                hex::encode(std::mem::take(&mut s.hasher).finalize())
            );
            if actual != self.digest {
                s.mismatch = Some(actual.clone());
                return Err(actual);
            }
        }
        Ok(())
    }

    /// What a blob whose bytes all passed hashed to, when it was not its digest.
    fn mismatch(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.mismatch.clone())
    }
}

struct Call<'a> {
    action: &'static str,
    reference: &'a Reference,
    method: Method,
    url: Url,
    headers: Vec<(HeaderName, String)>,
    body: ReqBody,
    access: Access,
    /// Scopes beyond this repository's (the source of a cross-repository mount).
    extra_scopes: Vec<String>,
    timeout: Option<Duration>,
    /// Whether the request may simply be sent again. Not for bodies sent to an upload
    /// session: a partial first send would leave the session unusable.
    retry: bool,
}

impl<'a> Call<'a> {
    fn new(
        action: &'static str,
        reference: &'a Reference,
        method: Method,
        url: Url,
        access: Access,
    ) -> Self {
        Call {
            action,
            reference,
            method,
            url,
            headers: Vec::new(),
            body: ReqBody::Empty,
            access,
            extra_scopes: Vec::new(),
            timeout: Some(SMALL_REQUEST_TIMEOUT),
            retry: true,
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl RegistryClient {
    /// Builds a client; credentials are read once from `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` when present.
    pub fn new(opts: ClientOptions) -> Result<Self, RegistryError> {
        Self::build(opts, Keychain::load())
    }

    fn build(opts: ClientOptions, credentials: Keychain) -> Result<Self, RegistryError> {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(opts.user_agent.clone())
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
        };
        let setup = |e: reqwest::Error| RegistryError::ClientSetup {
            detail: error_chain(&e),
        };
        let http = builder().build().map_err(setup)?;
        let mut tls_clients = HashMap::new();
        let mut hosts = HashMap::new();
        for (host, o) in opts.hosts {
            let host = auth::normalize_host(&host);
            if o.insecure || !o.ca_certs.is_empty() {
                let mut b = builder().danger_accept_invalid_certs(o.insecure);
                for pem in &o.ca_certs {
                    let not_pem = |detail: String| RegistryError::ClientSetup {
                        detail: format!(
                            "a `ca` file of registry `{host}` holds no PEM certificate{detail}: \
                             give the CA certificate in PEM form (`-----BEGIN CERTIFICATE-----`)"
                        ),
                    };
                    let certs = reqwest::Certificate::from_pem_bundle(pem)
                        .map_err(|e| not_pem(format!(" ({})", error_chain(&e))))?;
                    if certs.is_empty() {
                        return Err(not_pem(String::new()));
                    }
                    for cert in certs {
                        b = b.add_root_certificate(cert);
                    }
                }
                tls_clients.insert(host.clone(), b.build().map_err(setup)?);
            }
            hosts.insert(host, o);
        }
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                tls_clients,
                hosts,
                dead_mirrors: Mutex::new(Default::default()),
                insecure: opts.insecure_registries,
                credentials,
                auth_cache: Mutex::new(HashMap::new()),
                retry_base: Duration::from_millis(400),
                chunk_size: opts.upload_chunk_size.max(1 << 10),
            }),
        })
    }

    /// Where a pull of `r` is tried, in order: its registry's mirrors (same repository and
    /// tag or digest, under the mirror's path prefix when it has one, as BuildKit's
    /// `mirrors = ["host/prefix"]`), then the registry itself.
    fn pull_sources(&self, r: &Reference) -> Vec<Reference> {
        let mut out: Vec<Reference> = self
            .inner
            .hosts
            .get(&r.registry)
            .map(|h| h.mirrors.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| match m.split_once('/') {
                Some((host, prefix)) => (host, Some(prefix)),
                None => (m.as_str(), None),
            })
            .filter(|(host, _)| *host != r.registry && !self.mirror_is_dead(host))
            .map(|(host, prefix)| Reference {
                registry: host.to_string(),
                repository: match prefix {
                    Some(p) => format!("{p}/{}", r.repository),
                    None => r.repository.clone(),
                },
                ..r.clone()
            })
            .collect();
        out.push(r.clone());
        out
    }

    fn mirror_is_dead(&self, mirror: &str) -> bool {
        self.inner
            .dead_mirrors
            .lock()
            .is_ok_and(|d| d.contains(mirror))
    }

    /// Notes a mirror's failure; one that cannot be connected to is skipped from now on, so a
    /// mirror that is down costs its retries once, not once per blob.
    fn mirror_failed(&self, mirror: &Reference, r: &Reference, e: &RegistryError) {
        tracing::warn!(mirror = %mirror.registry, reference = %r, "mirror failed, trying the next source: {e}");
        if matches!(e, RegistryError::Connection { .. }) {
            if let Ok(mut d) = self.inner.dead_mirrors.lock() {
                d.insert(mirror.registry.clone());
            }
        }
    }

    /// Resolves a reference to one image manifest for `platform`, picking from an index when
    /// the reference names one, and verifying every digest that is known in advance. A
    /// registry with mirrors is resolved through the first mirror that answers.
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedManifest, RegistryError> {
        let sources = self.pull_sources(r);
        let last = sources.len() - 1;
        for (i, source) in sources.iter().enumerate() {
            match self.resolve_at(source, platform).await {
                Err(e) if i < last => self.mirror_failed(source, r, &e),
                other => return other,
            }
        }
        unreachable_sources(r)
    }

    async fn resolve_at(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedManifest, RegistryError> {
        let (bytes, content_type) = self.get_manifest(r, r.manifest_ref()).await?;
        if let Some(pinned) = &r.digest {
            verify_digest(r, "manifest", pinned, &bytes)?;
        }
        let (kind, media_type) = manifest::classify(r, content_type.as_deref(), &bytes)?;
        let mut index = None;
        let (digest, media_type, bytes) = match kind {
            Kind::Manifest => {
                let d = r
                    .digest
                    .clone()
                    .unwrap_or_else(|| digest::sha256_of(&bytes));
                (d, media_type, bytes)
            }
            Kind::Index => {
                let entry = manifest::select_platform(r, &bytes, platform)?;
                let (child, child_type) = self.get_manifest(r, &entry.digest).await?;
                verify_digest(
                    r,
                    &format!("manifest for `{platform}`"),
                    &entry.digest,
                    &child,
                )?;
                if child.len() as u64 != entry.size {
                    return Err(RegistryError::SizeMismatch {
                        reference: r.to_string(),
                        digest: entry.digest,
                        expected: entry.size,
                        actual: child.len() as u64,
                    });
                }
                match manifest::classify(r, child_type.as_deref(), &child)? {
                    (Kind::Manifest, mt) => {
                        index = Some(FetchedManifest {
                            digest: r
                                .digest
                                .clone()
                                .unwrap_or_else(|| digest::sha256_of(&bytes)),
                            media_type,
                            bytes,
                        });
                        (entry.digest, mt, child)
                    }
                    (Kind::Index, mt) => {
                        return Err(RegistryError::UnsupportedMediaType {
                            reference: r.to_string(),
                            media_type: format!("{mt} nested inside an index"),
                        })
                    }
                }
            }
        };
        let (config, layers) = manifest::parse_manifest(r, &bytes)?;
        Ok(ResolvedManifest {
            digest,
            media_type,
            bytes,
            config,
            layers,
            index,
        })
    }

    /// The manifest or index `r` names, exactly as the registry sends it, with its media type
    /// (from the Content-Type, the document's own field, or its shape) and digest (verified when
    /// `r` is pinned to one). For copying whole multi-platform images; [`resolve`](Self::resolve)
    /// picks one platform.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let sources = self.pull_sources(r);
        let last = sources.len() - 1;
        for (i, source) in sources.iter().enumerate() {
            match self.fetch_manifest_at(source).await {
                Err(e) if i < last => self.mirror_failed(source, r, &e),
                other => return other,
            }
        }
        unreachable_sources(r)
    }

    async fn fetch_manifest_at(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let (bytes, content_type) = self.get_manifest(r, r.manifest_ref()).await?;
        let digest = match &r.digest {
            Some(pinned) => {
                verify_digest(r, "manifest", pinned, &bytes)?;
                pinned.clone()
            }
            None => digest::sha256_of(&bytes),
        };
        let (_, media_type) = manifest::classify(r, content_type.as_deref(), &bytes)?;
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// Streams a blob into `dest`, returning its size once length and digest are verified.
    /// On error, whatever was written to `dest` must be discarded by the caller.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<u64, RegistryError> {
        self.fetch_blob_with(r, digest, None, dest, None).await
    }

    /// [`fetch_blob`](Self::fetch_blob) with the size the manifest declares (checked before and
    /// while the bytes arrive) and a progress callback. A download cut mid-body resumes where it
    /// stopped with an HTTP Range request; a registry that ignores the range sends the blob
    /// again and the part already written is skipped. Only the bytes that hash to `digest` and
    /// add up to `size` make an `Ok`.
    pub async fn fetch_blob_with(
        &self,
        r: &Reference,
        digest: &str,
        size: Option<u64>,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
        progress: Option<Progress>,
    ) -> Result<u64, RegistryError> {
        digest::validate(digest)?;
        // A blob download cannot move to another source once bytes reached `dest`: a mirror
        // is used for a blob when it says it has it.
        let sources = self.pull_sources(r);
        let last = sources.len() - 1;
        for (i, source) in sources.iter().enumerate() {
            if i == last {
                return self
                    .fetch_blob_at(source, digest, size, dest, progress)
                    .await;
            }
            match self.head_blob(source, digest, Access::Pull, "pull").await {
                Ok(true) => {
                    return self
                        .fetch_blob_at(source, digest, size, dest, progress)
                        .await
                }
                Ok(false) => {}
                Err(e) => self.mirror_failed(source, r, &e),
            }
        }
        unreachable_sources(r)
    }

    async fn fetch_blob_at(
        &self,
        r: &Reference,
        digest: &str,
        size: Option<u64>,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
        progress: Option<Progress>,
    ) -> Result<u64, RegistryError> {
        let url = self.url(r, &format!("blobs/{digest}"))?;
        let mut hasher = Hasher::for_digest(digest);
        let mut written: u64 = 0;
        let mut attempt = 0;
        let write_err = |source| RegistryError::WriteBlob {
            reference: r.to_string(),
            digest: digest.to_string(),
            cause: source,
        };
        let too_long = |actual| RegistryError::SizeMismatch {
            reference: r.to_string(),
            digest: digest.to_string(),
            expected: size.unwrap_or(0),
            actual,
        };
        loop {
            attempt += 1;
            let mut call = Call::new("pull", r, Method::GET, url.clone(), Access::Pull);
            call.timeout = None;
            if written > 0 {
                call.headers.push((RANGE, format!("bytes={written}-")));
            }
            let mut resp = self.execute(&call).await?;
            if !resp.status().is_success() {
                return Err(self.fail(&call, resp, &format!("blob `{digest}`")).await);
            }
            // The bytes at the start of this body that were written before.
            let (mut skip, total) = if resp.status() == StatusCode::PARTIAL_CONTENT {
                match content_range(&resp) {
                    Some((start, total)) if start == written => (0, total),
                    _ => {
                        return Err(RegistryError::Http {
                            action: "pull".to_string(),
                            reference: r.to_string(),
                            status: 206,
                            detail: String::new(),
                            hint: format!(
                                "the registry answered a request for blob `{digest}` from byte {written} with another range: retry the pull"
                            ),
                        })
                    }
                }
            } else {
                (written, resp.content_length())
            };
            if let (Some(total), Some(size)) = (total, size) {
                if total != size {
                    return Err(RegistryError::SizeMismatch {
                        reference: r.to_string(),
                        digest: digest.to_string(),
                        expected: size,
                        actual: total,
                    });
                }
            }
            let expected = size.or(total);
            let cut = loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break None,
                    Err(e) => break Some(connection_error(&call, attempt, &e)),
                };
                let mut chunk = &chunk[..];
                if skip > 0 {
                    let n = skip.min(chunk.len() as u64) as usize;
                    chunk = &chunk[n..];
                    skip -= n as u64;
                }
                if chunk.is_empty() {
                    continue;
                }
                let now = written + chunk.len() as u64;
                if expected.is_some_and(|e| now > e) {
                    return Err(too_long(now));
                }
                hasher.update(chunk);
                dest.write_all(chunk).await.map_err(write_err)?;
                written = now;
                if let Some(p) = &progress {
                    p(written);
                }
            };
            let short = expected.is_some_and(|e| written < e);
            match cut {
                None if !short => break,
                Some(e) if attempt >= MAX_ATTEMPTS => return Err(e),
                None if attempt >= MAX_ATTEMPTS => {
                    return Err(RegistryError::SizeMismatch {
                        reference: r.to_string(),
                        digest: digest.to_string(),
                        expected: expected.unwrap_or(0),
                        actual: written,
                    })
                }
                _ => {
                    tracing::debug!(url = %url, written, attempt, "blob download cut; resuming");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
        }
        dest.flush().await.map_err(write_err)?;
        let actual = hasher.finish();
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                reference: r.to_string(),
                what: "blob".to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(written)
    }

    /// Whether the repository of `r` has the blob (a HEAD request).
    pub async fn blob_exists(&self, r: &Reference, digest: &str) -> Result<bool, RegistryError> {
        self.head_blob(r, digest, Access::Pull, "pull").await
    }

    /// Uploads a blob from a file unless the registry has it already.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        path: &Path,
    ) -> Result<PushedBlob, RegistryError> {
        self.push_blob_with(r, digest, size, path, &PushOptions::default())
            .await
    }

    /// Uploads a blob from a file unless the registry has it already (`HEAD`): mounted from
    /// `opts.mount_from` when given and the registry agrees, else `POST /blobs/uploads/` and then
    /// one `PUT` of the whole file, or `PATCH`es of [`ClientOptions::upload_chunk_size`] and a
    /// closing `PUT` for larger files. A failed upload is started again (this blob only).
    pub async fn push_blob_with(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        path: &Path,
        opts: &PushOptions,
    ) -> Result<PushedBlob, RegistryError> {
        digest::validate(digest)?;
        // A blob that can be mounted need not be here (a lazily imported cache layer): the file
        // is checked once an upload is certain.
        let mounting = opts
            .mount_from
            .as_deref()
            .is_some_and(|from| from != r.repository);
        if !mounting {
            check_upload_file(r, digest, size, path).await?;
        }
        // Asking with push access up front gets a token good for the upload too.
        if self.head_blob(r, digest, Access::Push, "push").await? {
            return Ok(PushedBlob::AlreadyPresent);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.upload_once(r, digest, size, path, opts).await {
                Err(e) if attempt < MAX_ATTEMPTS && is_transient(&e) => {
                    tracing::debug!(reference = %r, digest, attempt, error = %e, "blob upload failed; starting it again");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                // Say how many uploads were tried, not how many sends the last one made.
                Err(RegistryError::Connection {
                    action,
                    reference,
                    host,
                    detail,
                    ..
                }) => {
                    return Err(RegistryError::Connection {
                        action,
                        reference,
                        host,
                        attempts: attempt,
                        detail,
                    })
                }
                done => return done,
            }
        }
    }

    async fn upload_once(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        path: &Path,
        opts: &PushOptions,
    ) -> Result<PushedBlob, RegistryError> {
        let mut start = Call::new(
            "push",
            r,
            Method::POST,
            self.url(r, "blobs/uploads/")?,
            Access::Push,
        );
        let mounting = opts
            .mount_from
            .as_deref()
            .filter(|from| *from != r.repository);
        if let Some(from) = mounting {
            start
                .url
                .query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
            start.extra_scopes.push(format!("repository:{from}:pull"));
        }
        let resp = self.execute(&start).await?;
        if mounting.is_some() && resp.status() == StatusCode::CREATED {
            if let Some(p) = &opts.progress {
                p(size);
            }
            return Ok(PushedBlob::Mounted);
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.fail(&start, resp, "upload endpoint").await);
        }
        if mounting.is_some() {
            // The registry would not mount it: the blob is uploaded after all.
            check_upload_file(r, digest, size, path).await?;
        }
        let mut location = self.upload_location(&start, &resp)?;
        // The last byte is reported only once the registry has accepted the blob, so nothing
        // says `pushed` for a blob the registry then rejects.
        let progress: Option<Progress> = opts.progress.clone().map(|p| {
            let cap = size.saturating_sub(1);
            Arc::new(move |n: u64| p(n.min(cap))) as Progress
        });
        let hash = Arc::new(UploadHash::new(digest, size));
        let corrupt = |hash: &UploadHash| {
            hash.mismatch()
                .map(|actual| RegistryError::CorruptLocalBlob {
                    reference: r.to_string(),
                    digest: digest.to_string(),
                    actual,
                    path: path.to_path_buf(),
                })
        };
        let mut offset = 0;
        if size > self.inner.chunk_size {
            while offset < size {
                let len = self.inner.chunk_size.min(size - offset);
                let mut patch = Call::new("push", r, Method::PATCH, location.clone(), Access::Push);
                patch.timeout = None;
                patch.retry = false;
                patch
                    .headers
                    .push((CONTENT_TYPE, "application/octet-stream".to_string()));
                patch
                    .headers
                    .push((CONTENT_RANGE, format!("{offset}-{}", offset + len - 1)));
                patch.body = ReqBody::File {
                    path: path.to_path_buf(),
                    offset,
                    len,
                    progress: progress.clone(),
                    hash: Some(hash.clone()),
                };
                let resp = match self.execute(&patch).await {
                    Ok(resp) => resp,
                    Err(e) => return Err(corrupt(&hash).unwrap_or(e)),
                };
                if let Some(e) = corrupt(&hash) {
                    return Err(e);
                }
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self
                        .fail(&patch, resp, &format!("chunk of blob `{digest}`"))
                        .await);
                }
                location = self.upload_location(&patch, &resp)?;
                offset += len;
            }
        }
        location.query_pairs_mut().append_pair("digest", digest);
        let mut put = Call::new("push", r, Method::PUT, location, Access::Push);
        put.timeout = None;
        put.retry = false;
        put.headers
            .push((CONTENT_TYPE, "application/octet-stream".to_string()));
        put.body = if offset < size {
            ReqBody::File {
                path: path.to_path_buf(),
                offset,
                len: size - offset,
                progress: progress.clone(),
                hash: Some(hash.clone()),
            }
        } else {
            ReqBody::Bytes(Bytes::new())
        };
        let resp = match self.execute(&put).await {
            Ok(resp) => resp,
            Err(e) => return Err(corrupt(&hash).unwrap_or(e)),
        };
        if let Some(e) = corrupt(&hash) {
            return Err(e);
        }
        if !resp.status().is_success() {
            return Err(self
                .fail(&put, resp, &format!("upload of blob `{digest}`"))
                .await);
        }
        if let Some(p) = &opts.progress {
            p(size);
        }
        Ok(PushedBlob::Uploaded)
    }

    /// The `Location` of an upload session, resolved against the request's URL.
    fn upload_location(&self, call: &Call<'_>, resp: &Response) -> Result<Url, RegistryError> {
        let r = call.reference;
        let bad = |hint: String| RegistryError::Http {
            action: "push".to_string(),
            reference: r.to_string(),
            status: resp.status().as_u16(),
            detail: String::new(),
            hint,
        };
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("the registry answered an upload step without a `Location` header: it does not follow the OCI distribution spec".to_string()))?;
        call.url.join(location).map_err(|e| {
            bad(format!(
                "the registry sent an unusable upload location: {e}"
            ))
        })
    }

    /// Checks credentials against `registry` (a host such as `ghcr.io` or `127.0.0.1:5000`) the
    /// way `docker login` does: `GET /v2/`, answering a Basic or Bearer challenge with them.
    pub async fn check_login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let creds = Credentials {
            username: username.to_string(),
            password: password.to_string(),
        };
        let r = Reference {
            registry: registry.to_string(),
            repository: String::new(),
            tag: None,
            digest: None,
        };
        let mut url = self.url(&r, "")?;
        url.set_path("/v2/");
        let call = Call::new("log in to", &r, Method::GET, url, Access::Pull);
        let resp = self.send(&call, None).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.fail(&call, resp, "the API root `/v2/`").await)
            };
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge);
        let header = match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self
                    .fetch_token(&call, &realm, service.as_deref(), &[], Some(&creds))
                    .await?;
                format!("Bearer {token}")
            }
            _ => creds.basic_header(),
        };
        let resp = self.send(&call, Some(&header)).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.fail(&call, resp, "the API root `/v2/`").await)
        }
    }

    /// PUTs a manifest under the reference's tag (or its digest when it has no tag) and
    /// returns the manifest's digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        let digest = match &r.digest {
            Some(pinned) => {
                verify_digest(r, "manifest to push", pinned, bytes)?;
                pinned.clone()
            }
            None => digest::sha256_of(bytes),
        };
        let target = r.tag.clone().unwrap_or_else(|| digest.clone());
        let mut call = Call::new(
            "push",
            r,
            Method::PUT,
            self.url(r, &format!("manifests/{target}"))?,
            Access::Push,
        );
        call.headers.push((CONTENT_TYPE, media_type.to_string()));
        call.body = ReqBody::Bytes(Bytes::copy_from_slice(bytes));
        let resp = self.execute(&call).await?;
        if !resp.status().is_success() {
            return Err(self
                .fail(&call, resp, &format!("manifest `{target}`"))
                .await);
        }
        if let Some(theirs) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if theirs.starts_with("sha256:") && digest.starts_with("sha256:") && theirs != digest {
                tracing::warn!(reference = %r, ours = %digest, theirs, "registry reports another manifest digest than kiln computed");
            }
        }
        Ok(digest)
    }

    async fn head_blob(
        &self,
        r: &Reference,
        digest: &str,
        access: Access,
        action: &'static str,
    ) -> Result<bool, RegistryError> {
        digest::validate(digest)?;
        let call = Call::new(
            action,
            r,
            Method::HEAD,
            self.url(r, &format!("blobs/{digest}"))?,
            access,
        );
        let resp = self.execute(&call).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.fail(&call, resp, &format!("blob `{digest}`")).await),
        }
    }

    async fn get_manifest(
        &self,
        r: &Reference,
        which: &str,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let mut call = Call::new(
            "resolve",
            r,
            Method::GET,
            self.url(r, &format!("manifests/{which}"))?,
            Access::Pull,
        );
        call.headers.push((ACCEPT, ACCEPT_ALL.to_string()));
        let mut resp = self.execute(&call).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&call, resp, &format!("manifest `{which}`")).await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| connection_error(&call, 1, &e))?
        {
            if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::InvalidManifest {
                    reference: r.to_string(),
                    what: "manifest".to_string(),
                    reason: format!("it is larger than {} MiB", MAX_MANIFEST_BYTES >> 20),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((bytes, content_type))
    }

    /// `http` only for loopback hosts and the configured insecure registries; a registry given
    /// TLS settings (`insecure`, `ca`) is spoken to over https, even on loopback.
    fn plain_http_allowed(&self, registry: &str) -> bool {
        if let Some(h) = self.inner.hosts.get(registry) {
            if h.plain_http {
                return true;
            }
            if h.insecure || !h.ca_certs.is_empty() {
                return false;
            }
        }
        let host = host_of(registry);
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback
            || self
                .inner
                .insecure
                .iter()
                .any(|i| i == registry || i == host)
    }

    fn url(&self, r: &Reference, tail: &str) -> Result<Url, RegistryError> {
        let scheme = if self.plain_http_allowed(&r.registry) {
            "http"
        } else {
            "https"
        };
        // Docker Hub's API does not live at its name.
        let host = if r.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &r.registry
        };
        Url::parse(&format!("{scheme}://{host}/v2/{}/{tail}", r.repository)).map_err(|e| {
            RegistryError::InvalidReference {
                input: r.to_string(),
                reason: format!("it does not make a valid URL ({e})"),
            }
        })
    }

    /// Sends with the cached authorisation, answering one auth challenge if the registry sends one.
    async fn execute(&self, call: &Call<'_>) -> Result<Response, RegistryError> {
        let r = call.reference;
        let scope = match call.access {
            Access::Pull => format!("repository:{}:pull", r.repository),
            Access::Push => format!("repository:{}:pull,push", r.repository),
        };
        let mut key_scope = scope.clone();
        for extra in &call.extra_scopes {
            key_scope.push(' ');
            key_scope.push_str(extra);
        }
        let key = (r.registry.clone(), key_scope);
        let cached = self
            .inner
            .auth_cache
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let resp = self.send(call, cached.as_deref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge);
        let header = match challenge {
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => {
                let mut scopes = vec![asked.unwrap_or_else(|| scope.clone())];
                if call.access == Access::Push && !scopes.contains(&scope) {
                    scopes.push(scope.clone());
                }
                for extra in &call.extra_scopes {
                    if !scopes.contains(extra) {
                        scopes.push(extra.clone());
                    }
                }
                let creds = self.inner.credentials.get(&r.registry).await;
                let token = self
                    .fetch_token(call, &realm, service.as_deref(), &scopes, creds.as_ref())
                    .await?;
                format!("Bearer {token}")
            }
            Some(Challenge::Basic) => match self.inner.credentials.get(&r.registry).await {
                Some(c) => c.basic_header(),
                None => return Ok(resp),
            },
            None => return Ok(resp),
        };
        if cached.as_deref() == Some(header.as_str()) {
            return Ok(resp);
        }
        if let Ok(mut m) = self.inner.auth_cache.lock() {
            m.insert(key, header.clone());
        }
        self.send(call, Some(&header)).await
    }

    async fn fetch_token(
        &self,
        call: &Call<'_>,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let r = call.reference;
        let auth_err = |detail: String| RegistryError::Auth {
            action: call.action.to_string(),
            reference: r.to_string(),
            registry: r.registry.clone(),
            detail,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| auth_err(format!("the token realm `{realm}` is not a URL ({e})")))?;
        // Credentials go only where they cannot be read on the wire (or to an allowed host).
        let realm_host = url.host_str().unwrap_or("");
        let safe = url.scheme() == "https"
            || self.plain_http_allowed(&match url.port() {
                Some(p) => format!("{realm_host}:{p}"),
                None => realm_host.to_string(),
            });
        let creds = creds.filter(|_| safe);
        let token_call = match creds.and_then(Credentials::identity_token) {
            // An identity token is an OAuth2 refresh token: POSTed as a form, as Docker does.
            Some(refresh) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh)
                    .append_pair("client_id", "kiln")
                    .append_pair("access_type", "offline");
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                form.append_pair("scope", &scopes.join(" "));
                let mut c = Call::new(call.action, r, Method::POST, url, call.access);
                c.headers.push((
                    CONTENT_TYPE,
                    "application/x-www-form-urlencoded".to_string(),
                ));
                c.body = ReqBody::Bytes(Bytes::from(form.finish()));
                c
            }
            None => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                }
                Call::new(call.action, r, Method::GET, url, call.access)
            }
        };
        let basic = creds
            .filter(|c| c.identity_token().is_none())
            .map(Credentials::basic_header);
        let mut resp = self.send(&token_call, basic.as_deref()).await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let denied = status == 401 || status == 403;
            return Err(auth_err(if denied && creds.is_some() {
                format!(
                    "the token service rejected the credentials for `{}` (HTTP {status}): log in again (`kiln login {}`)",
                    r.registry, r.registry
                )
            } else if denied {
                format!(
                    "the token service refused anonymous access (HTTP {status}): log in with `kiln login {}`",
                    r.registry
                )
            } else {
                format!("the token service at `{realm}` answered HTTP {status}: retry later")
            }));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| connection_error(&token_call, 1, &e))?
        {
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(auth_err("the token response is too large".to_string()));
            }
            body.extend_from_slice(&chunk);
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| auth_err(format!("the token service at `{realm}` sent no JSON token")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err(format!("the token service at `{realm}` sent no token")))
    }

    /// One request with up to [`MAX_ATTEMPTS`] tries on connection errors, 5xx and 429.
    async fn send(
        &self,
        call: &Call<'_>,
        authorization: Option<&str>,
    ) -> Result<Response, RegistryError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let http = self
                .inner
                .tls_clients
                .get(&call.reference.registry)
                .unwrap_or(&self.inner.http);
            let mut rb = http.request(call.method.clone(), call.url.clone());
            for (k, v) in &call.headers {
                rb = rb.header(k, v);
            }
            if let Some(a) = authorization {
                rb = rb.header(AUTHORIZATION, a);
            }
            if let Some(t) = call.timeout {
                rb = rb.timeout(t);
            }
            rb = match &call.body {
                ReqBody::Empty => rb,
                ReqBody::Bytes(b) => rb.body(b.clone()),
                ReqBody::File {
                    path,
                    offset,
                    len,
                    progress,
                    hash,
                } => {
                    let read_err = |source| RegistryError::ReadFile {
                        action: call.action.to_string(),
                        reference: call.reference.to_string(),
                        path: path.clone(),
                        cause: source,
                    };
                    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
                    file.seek(std::io::SeekFrom::Start(*offset))
                        .await
                        .map_err(read_err)?;
                    let sent = Arc::new(AtomicU64::new(*offset));
                    let progress = progress.clone();
                    let hashing = hash.clone();
                    let stream =
                        tokio_util::io::ReaderStream::with_capacity(file.take(*len), 256 << 10)
                            .map(move |chunk| {
                                let c = chunk?;
                                let at = sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                                // A blob that is not what its digest says never gets its last
                                // bytes sent, so the registry cannot complete it.
                                if let Some(h) = &hashing {
                                    h.update(at, &c).map_err(|actual| {
                                        std::io::Error::other(format!(
                                            "the local blob hashes to `{actual}`"
                                        ))
                                    })?;
                                }
                                let now = at + c.len() as u64;
                                if let Some(p) = &progress {
                                    p(now);
                                }
                                Ok::<_, std::io::Error>(c)
                            });
                    rb.header(CONTENT_LENGTH, *len)
                        .body(reqwest::Body::wrap_stream(stream))
                }
            };
            let may_retry = call.retry && attempt < MAX_ATTEMPTS;
            match rb.send().await {
                Ok(resp) => {
                    let s = resp.status();
                    let transient = s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS;
                    if transient && may_retry {
                        let wait = retry_after(&resp).unwrap_or_else(|| self.backoff(attempt));
                        tracing::debug!(url = %call.url, status = s.as_u16(), attempt, "retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout() || e.is_request();
                    if transient && may_retry {
                        tracing::debug!(url = %call.url, error = %e, attempt, "retrying");
                        tokio::time::sleep(self.backoff(attempt)).await;
                        continue;
                    }
                    return Err(connection_error(call, attempt, &e));
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.inner.retry_base * 2u32.saturating_pow(attempt.saturating_sub(1))
    }

    /// Turns an unexpected response into an error carrying the registry's own message.
    async fn fail(&self, call: &Call<'_>, resp: Response, what: &str) -> RegistryError {
        let status = resp.status();
        let detail = error_detail(resp).await;
        let r = call.reference;
        let action = call.action.to_string();
        let reference = r.to_string();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                action,
                reference,
                registry: r.registry.clone(),
                status: status.as_u16(),
                detail,
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                action,
                reference,
                what: what.to_string(),
                detail,
            },
            s => {
                let hint = if s == StatusCode::TOO_MANY_REQUESTS {
                    format!("the registry is rate-limiting (tried {MAX_ATTEMPTS} times): wait and retry, or log in for a higher limit")
                } else if s.is_server_error() {
                    format!("the registry failed (tried {MAX_ATTEMPTS} times): retry later or check the registry's logs")
                } else {
                    format!("the registry refused the request for {what}: see its message above")
                };
                RegistryError::Http {
                    action,
                    reference,
                    status: s.as_u16(),
                    detail,
                    hint,
                }
            }
        }
    }
}

/// `pull_sources` always ends with the registry itself, so no loop above gets here.
fn unreachable_sources<T>(r: &Reference) -> Result<T, RegistryError> {
    Err(RegistryError::InvalidReference {
        input: r.to_string(),
        reason: "no registry to pull it from".to_string(),
    })
}

fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split_once(']')
            .map_or(registry, |(h, _)| &registry[..h.len() + 1]);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn verify_digest(
    r: &Reference,
    what: &str,
    expected: &str,
    bytes: &[u8],
) -> Result<(), RegistryError> {
    let actual = digest::digest_like(expected, bytes);
    if actual != expected {
        return Err(RegistryError::DigestMismatch {
            reference: r.to_string(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Whether an upload that failed this way may succeed when started again.
fn is_transient(e: &RegistryError) -> bool {
    match e {
        RegistryError::Connection { .. } => true,
        RegistryError::Http { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}

/// `Content-Range: bytes START-END/TOTAL` → `(START, TOTAL)` (TOTAL may be `*`).
fn content_range(resp: &Response) -> Option<(u64, Option<u64>)> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let value = resp.headers().get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, std::time::SystemTime::now())
}

/// The longest a `Retry-After` is waited for: a registry asking for more gets the error sooner.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110: IMF-fixdate, and the obsolete
/// RFC 850 and asctime forms), as a wait from `now`, at most [`MAX_RETRY_AFTER`]; a date in the
/// past is no wait.
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = std::time::UNIX_EPOCH + Duration::from_secs(parse_http_date(value)?);
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Seconds since the Unix epoch of an HTTP date in GMT.
fn parse_http_date(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as u64 + 1);
    let parts: Vec<&str> = s.split_whitespace().collect();
    let (day, mon, year, time): (u64, u64, u64, &str) = match parts.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [_, d, m, y, t, "GMT"] => (d.parse().ok()?, month(m)?, y.parse().ok()?, *t),
        // Sunday, 06-Nov-94 08:49:37 GMT (two-digit years: RFC 9110 says the nearest past
        // century that is not more than 50 years ahead)
        [_, dmy, t, "GMT"] => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            let y: u64 = y.parse().ok()?;
            let y = if y < 100 {
                if y < 70 {
                    2000 + y
                } else {
                    1900 + y
                }
            } else {
                y
            };
            (d.parse().ok()?, month(m)?, y, *t)
        }
        // Sun Nov  6 08:49:37 1994
        [_, m, d, t, y] => (d.parse().ok()?, month(m)?, y.parse().ok()?, *t),
        _ => return None,
    };
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, mi, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 || year < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970.
    let (y, m) = if mon <= 2 {
        (year - 1, mon + 9)
    } else {
        (year, mon - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

fn connection_error(call: &Call<'_>, attempts: u32, e: &reqwest::Error) -> RegistryError {
    let host = match call.url.port() {
        Some(p) => format!("{}:{p}", call.url.host_str().unwrap_or("")),
        None => call.url.host_str().unwrap_or("").to_string(),
    };
    RegistryError::Connection {
        action: call.action.to_string(),
        reference: call.reference.to_string(),
        host,
        attempts,
        detail: error_chain(e),
    }
}

/// The error and its causes on one line (reqwest's own text hides the useful part in sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// `: CODE: message; …` from an OCI error body, or a short excerpt of other text.
async fn error_detail(mut resp: Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            break;
        }
    }
    let text = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) if !b.errors.is_empty() => b
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body).trim().to_string(),
    };
    if text.is_empty() {
        return String::new();
    }
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!(": {short}")
}

/// Checks that the file to upload as blob `digest` is there and has the blob's size.
async fn check_upload_file(
    r: &Reference,
    digest: &str,
    size: u64,
    path: &Path,
) -> Result<(), RegistryError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|source| RegistryError::ReadFile {
            action: "push".to_string(),
            reference: r.to_string(),
            path: path.to_path_buf(),
            cause: source,
        })?;
    if meta.len() != size {
        return Err(RegistryError::FileSizeMismatch {
            reference: r.to_string(),
            path: path.to_path_buf(),
            digest: digest.to_string(),
            expected: size,
            actual: meta.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod upload_hash_tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[test]
    fn chunks_sent_again_are_hashed_once() {
        let h = UploadHash::new(&sha(b"hello world"), 11);
        assert!(h.update(0, b"hello").is_ok());
        // The same body sent again after an auth challenge.
        assert!(h.update(0, b"hel").is_ok());
        assert!(h.update(3, b"lo wor").is_ok());
        assert!(h.update(9, b"ld").is_ok());
        assert_eq!(h.mismatch(), None);
    }

    #[test]
    fn a_corrupt_blob_fails_at_its_last_bytes() {
        let h = UploadHash::new(&sha(b"hello world"), 11);
        assert!(h.update(0, b"hello ").is_ok());
        let actual = h.update(6, b"wurld").unwrap_err();
        assert_eq!(actual, sha(b"hello wurld"));
        assert_eq!(h.mismatch(), Some(actual.clone()));
        // Sent again, the end is withheld again.
        assert!(h.update(0, b"hello ").is_ok());
        assert_eq!(h.update(6, b"wurld"), Err(actual));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_try_mirrors_in_order_then_the_registry() {
        let hub = HostOptions {
            mirrors: vec![
                "mirror-a:5000".into(),
                "docker.io".into(),
                "mirror-b".into(),
                "harbor.internal/v2-proxy/hub".into(),
            ],
            ..HostOptions::default()
        };
        let plain = HostOptions {
            plain_http: true,
            ..HostOptions::default()
        };
        let c = RegistryClient::build(
            ClientOptions {
                hosts: HashMap::from([
                    ("index.docker.io".to_string(), hub),
                    ("mirror-b".to_string(), plain),
                ]),
                ..ClientOptions::default()
            },
            Keychain::new(Default::default()),
        )
        .unwrap();
        let r = Reference::parse("python:3.12").unwrap();
        let sources: Vec<String> = c.pull_sources(&r).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            sources,
            vec![
                "mirror-a:5000/library/python:3.12",
                "mirror-b/library/python:3.12",
                "harbor.internal/v2-proxy/hub/library/python:3.12",
                "docker.io/library/python:3.12",
            ]
        );
        // A path prefix goes after `/v2/`, as BuildKit sends it.
        assert_eq!(
            c.url(&c.pull_sources(&r)[2], "manifests/3.12")
                .unwrap()
                .as_str(),
            "https://harbor.internal/v2/v2-proxy/hub/library/python/manifests/3.12"
        );
        assert_eq!(
            c.url(&c.pull_sources(&r)[1], "manifests/3.12")
                .unwrap()
                .as_str(),
            "http://mirror-b/v2/library/python/manifests/3.12"
        );
        // A mirror that cannot be reached is not asked again.
        let e = RegistryError::Connection {
            action: "pull".into(),
            reference: r.to_string(),
            host: "mirror-a:5000".into(),
            attempts: 4,
            detail: "refused".into(),
        };
        c.mirror_failed(&c.pull_sources(&r)[0], &r, &e);
        assert_eq!(c.pull_sources(&r).len(), 3);
        // Other registries have no mirrors.
        let other = Reference::parse("ghcr.io/a/b:1").unwrap();
        assert_eq!(c.pull_sources(&other), vec![other]);
    }

    #[test]
    fn a_ca_that_is_not_pem_is_a_setup_error_naming_the_registry() {
        let err = RegistryClient::build(
            ClientOptions {
                hosts: HashMap::from([(
                    "reg.example:443".to_string(),
                    HostOptions {
                        ca_certs: vec![b"not a certificate".to_vec()],
                        ..HostOptions::default()
                    },
                )]),
                ..ClientOptions::default()
            },
            Keychain::new(Default::default()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("reg.example:443"), "{err}");
    }

    fn client(insecure: &[&str]) -> RegistryClient {
        RegistryClient::build(
            ClientOptions {
                insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
                ..ClientOptions::default()
            },
            Keychain::new(Default::default()),
        )
        .unwrap()
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let c = client(&["reg.lan:5000", "other.lan"]);
        for (reg, http) in [
            ("127.0.0.1:5000", true),
            ("127.3.4.5", true),
            ("localhost:80", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("reg.lan:5000", true),
            ("reg.lan:6000", false),
            ("other.lan:1234", true),
            ("docker.io", false),
            ("10.0.0.1:5000", false),
            ("localhost.evil.com", false),
        ] {
            assert_eq!(c.plain_http_allowed(reg), http, "{reg}");
        }
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            c.url(&r, "manifests/latest").unwrap().as_str(),
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
        let r = Reference::parse("[::1]:5000/a/b").unwrap();
        assert_eq!(
            c.url(&r, "blobs/x").unwrap().as_str(),
            "http://[::1]:5000/v2/a/b/blobs/x"
        );
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        // 1994-11-06 08:49:37 GMT, in its three spellings.
        let at = 784_111_777;
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(at));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(at));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(at));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        let now = std::time::UNIX_EPOCH + Duration::from_secs(at);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("3600", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:41 GMT", now),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("later", now), None);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let c = client(&[]);
        assert!(c.backoff(1) < c.backoff(2));
        assert!(c.backoff(MAX_ATTEMPTS) <= Duration::from_secs(5));
    }

    #[test]
    fn client_and_its_futures_can_cross_threads() {
        fn send_sync<T: Send + Sync + Clone + 'static>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let c = client(&[]);
        send_sync(&c);
        let r = Reference::parse("a/b").unwrap();
        let p = Platform::host();
        let mut sink = Vec::new();
        // Only constructed, never polled: this checks the types, not the network.
        send(c.resolve(&r, &p));
        send(c.fetch_blob(&r, "sha256:x", &mut sink));
        send(c.push_blob(&r, "sha256:x", 0, Path::new("/nonexistent")));
        send(c.push_manifest(&r, "x", b""));
        send(c.blob_exists(&r, "sha256:x"));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let mut config = auth::ConfigCredentials::default();
        config.auths.insert(
            "reg.io".to_string(),
            Credentials {
                username: "u".into(),
                password: "hunter2".into(),
            },
        );
        let c = RegistryClient::build(ClientOptions::default(), Keychain::new(config)).unwrap();
        let dbg = format!("{c:?}");
        assert!(dbg.contains("reg.io") && !dbg.contains("hunter2"), "{dbg}");
    }
}
