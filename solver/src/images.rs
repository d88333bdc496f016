//! Images as build inputs: find an image in the local store or pull it, and unpack its layers
//! into snapshots (one per layer, memoised by chain ID so a base is unpacked once per store).
//! Pulled blobs are verified (digest and size) before they enter the store, downloaded several
//! at a time with byte progress, and remembered with the repository they came from so a later
//! push to another repository of that registry can mount them instead of uploading.

use crate::SolveError;
use futures::stream::{self, StreamExt, TryStreamExt};
use kiln_cache::{ImageRecord, LayerInfo, SnapshotId, Store, VerifyingReader};
use kiln_registry::{Platform, Progress, Reference, RegistryClient, RegistryError};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::sync::Arc;

/// Byte progress of blob downloads: `(digest, bytes done, bytes in all)`, called often.
pub type BlobProgress = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// An image whose manifest and config are in the content store.
#[derive(Clone, Debug)]
pub struct ImageRef {
    /// Full normalised name, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

/// How many layers are downloaded at once.
const PARALLEL_LAYERS: usize = 4;

/// Where [`resolve_image_with`] looks for a tag first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The local store's image of that name, whatever platform it was made for (an index in the
    /// store is still narrowed to the wanted platform); the registry when the store has none.
    Local,
    /// As [`Lookup::Local`], but a stored image made for another platform is passed over for the
    /// registry's (builds: `kiln build --platform`).
    LocalForPlatform,
    /// Ask the registry what the tag names now (`kiln pull`, `kiln build --pull`).
    Remote,
}

/// Finds `name` in the local image store or, failing that, pulls its manifest and config from
/// its registry (layers are fetched by [`ensure_layers`]). A digest-pinned name whose manifest is
/// already stored needs no network at all. Pulled images are recorded in the image store.
pub async fn resolve_image(
    store: &Store,
    registry: &RegistryClient,
    platform: &Platform,
    name: &str,
    pull: bool,
) -> Result<ImageRef, SolveError> {
    let lookup = if pull { Lookup::Remote } else { Lookup::Local };
    resolve_image_with(store, registry, platform, name, lookup).await
}

/// [`resolve_image`] with the local store's part chosen by `lookup`. An index (or manifest list)
/// in the store, by tag or by digest, is narrowed to `platform` there; only a platform manifest
/// it lacks is fetched, by digest.
pub async fn resolve_image_with(
    store: &Store,
    registry: &RegistryClient,
    platform: &Platform,
    name: &str,
    lookup: Lookup,
) -> Result<ImageRef, SolveError> {
    resolve_image_progress(store, registry, platform, name, lookup, None).await
}

/// [`resolve_image_with`] reporting layer downloads to `progress`. An image fetched from the
/// registry is named in the image store only once its config and every layer are stored and
/// verified, so a pull cut off half-way leaves no image that lacks a blob.
pub async fn resolve_image_progress(
    store: &Store,
    registry: &RegistryClient,
    platform: &Platform,
    name: &str,
    lookup: Lookup,
    progress: Option<BlobProgress>,
) -> Result<ImageRef, SolveError> {
    let reference = Reference::parse(name).map_err(|e| SolveError::Registry {
        image: name.to_string(),
        error: Box::new(e),
    })?;
    let full = reference.full_name();
    let tagged = without_digest(&reference);
    // Why the registry is asked, said after its error.
    let mut why = None;
    let stored = match &reference.digest {
        Some(d) if store.content().has(d) => Some(d.clone()),
        Some(_) => None,
        None if lookup == Lookup::Remote => None,
        None => match store.images().get(&full).map_err(SolveError::from)? {
            Some(rec) => Some(rec.digest),
            None => {
                why = Some("the image is not in the local store either: see `kiln images`".into());
                None
            }
        },
    };
    let mut wanted = reference.clone();
    if let Some(digest) = stored {
        match local_image(store, &reference, &tagged, &digest, platform)? {
            Local::Found(image) => {
                let made_for = config_platform(&image.config);
                if lookup != Lookup::LocalForPlatform
                    || reference.digest.is_some()
                    || platform.matches(&made_for)
                {
                    return Ok(*image);
                }
                why = Some(format!(
                    "the local store's `{full}` is for `{made_for}`, not `{platform}`: pull the \
                     `{platform}` image with `kiln pull --platform {platform} {full}`"
                ));
            }
            Local::Missing(child) => {
                why = Some(format!(
                    "the local store has the index of `{full}` but not its `{platform}` manifest"
                ));
                wanted = reference.with_digest(&child);
            }
        }
    }
    let resolved = registry
        .resolve(&wanted, platform)
        .await
        .map_err(|e| match why {
            Some(why) => SolveError::hinted(format!("image `{full}`"), e, why),
            None => SolveError::Registry {
                image: full.clone(),
                error: Box::new(e),
            },
        })?;
    let (digest, size) = store
        .content()
        .put_bytes(&resolved.bytes)
        .map_err(SolveError::from)?;
    if !store.content().has(&resolved.config.digest) {
        let config = &resolved.config;
        fetch_blob(
            store,
            registry,
            &wanted,
            &config.digest,
            Some(config.size),
            None,
        )
        .await?;
    }
    let image = load(store, &tagged, &digest)?;
    ensure_layers_with(store, registry, &image, progress).await?;
    if wanted.digest.is_none() {
        // A tag naming an index keeps naming the index in the store (as containerd's store
        // does), so every platform pulled under it stays reachable by the name; the others are
        // fetched by digest when asked for.
        let (digest, size, media_type) = match &resolved.index {
            Some(index) => {
                let (d, s) = store
                    .content()
                    .put_bytes(&index.bytes)
                    .map_err(SolveError::from)?;
                (d, s, index.media_type.clone())
            }
            None => (digest.clone(), size, resolved.media_type.clone()),
        };
        store
            .images()
            .put(&ImageRecord {
                name: tagged.clone(),
                digest,
                size,
                media_type,
                created: None,
            })
            .map_err(SolveError::from)?;
    }
    Ok(image)
}

/// Pulls every manifest of a multi-platform image (an index or manifest list) with their configs
/// and layers, then names the index in the image store, so that a push copies the whole image;
/// a single-platform image is pulled as [`resolve_image`] does. Returns the digest the name now
/// points at.
pub async fn pull_all_platforms(
    store: &Store,
    registry: &RegistryClient,
    name: &str,
    progress: Option<BlobProgress>,
) -> Result<String, SolveError> {
    let reference = Reference::parse(name).map_err(|e| SolveError::Registry {
        image: name.to_string(),
        error: Box::new(e),
    })?;
    let full = reference.full_name();
    let failed = |e: RegistryError| SolveError::Registry {
        image: full.clone(),
        error: Box::new(e),
    };
    let top = registry.fetch_manifest(&reference).await.map_err(failed)?;
    if !kiln_registry::is_index(&top.media_type) {
        let image = resolve_image_progress(
            store,
            registry,
            &Platform::host(),
            name,
            Lookup::Remote,
            progress,
        )
        .await?;
        return Ok(image.manifest_digest);
    }
    let entries = kiln_registry::parse_index(&reference, &top.bytes).map_err(failed)?;
    for entry in &entries {
        let child = reference.with_digest(&entry.descriptor.digest).to_string();
        // A pinned manifest is taken as it is: the platform only matters for nested indexes.
        let platform = entry.platform.clone().unwrap_or_else(Platform::host);
        let image = resolve_image_progress(
            store,
            registry,
            &platform,
            &child,
            Lookup::Local,
            progress.clone(),
        )
        .await?;
        ensure_layers_with(store, registry, &image, progress.clone()).await?;
    }
    let (digest, size) = store
        .content()
        .put_bytes(&top.bytes)
        .map_err(SolveError::from)?;
    if reference.digest.is_none() {
        store
            .images()
            .put(&ImageRecord {
                name: without_digest(&reference),
                digest: digest.clone(),
                size,
                media_type: top.media_type.clone(),
                created: None,
            })
            .map_err(SolveError::from)?;
    }
    Ok(digest)
}

/// What the local store has for a stored manifest or index digest.
enum Local {
    Found(Box<ImageRef>),
    /// The digest is an index whose manifest for the platform is not stored: this one.
    Missing(String),
}

fn local_image(
    store: &Store,
    reference: &Reference,
    name: &str,
    digest: &str,
    platform: &Platform,
) -> Result<Local, SolveError> {
    let bytes = store
        .content()
        .read_verified(digest)
        .map_err(SolveError::from)?;
    if !looks_like_index(&bytes) {
        return load(store, name, digest).map(|i| Local::Found(Box::new(i)));
    }
    let entry = kiln_registry::select_platform(reference, &bytes, platform).map_err(|e| {
        SolveError::Registry {
            image: reference.full_name(),
            error: Box::new(e),
        }
    })?;
    if store.content().has(&entry.digest) {
        load(store, name, &entry.digest).map(|i| Local::Found(Box::new(i)))
    } else {
        Ok(Local::Missing(entry.digest))
    }
}

/// Whether a stored manifest blob is an index (its `mediaType`, or a `manifests` list).
fn looks_like_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => match p.media_type {
            Some(mt) => kiln_registry::is_index(&mt),
            None => p.manifests.is_some(),
        },
        Err(_) => false,
    }
}

/// The platform an image config says it was made for.
fn config_platform(config: &ImageConfiguration) -> Platform {
    Platform {
        os: config.os().to_string(),
        architecture: config.architecture().to_string(),
        variant: config.variant().clone(),
    }
}

fn without_digest(r: &Reference) -> String {
    let mut r = r.clone();
    r.digest = None;
    r.full_name()
}

/// Reads a stored manifest and its config.
pub fn load(store: &Store, name: &str, manifest_digest: &str) -> Result<ImageRef, SolveError> {
    // Both are small and used as they are read: verify them here, every time.
    let bytes = store
        .content()
        .read_verified(manifest_digest)
        .map_err(SolveError::from)?;
    let manifest =
        ImageManifest::from_reader(bytes.as_slice()).map_err(|source| SolveError::Spec {
            what: format!("image `{name}`: manifest {manifest_digest} is not an image manifest"),
            source,
        })?;
    let config_digest = manifest.config().digest().to_string();
    let cbytes = store
        .content()
        .read_verified(&config_digest)
        .map_err(SolveError::from)?;
    let config =
        ImageConfiguration::from_reader(cbytes.as_slice()).map_err(|source| SolveError::Spec {
            what: format!("image `{name}`: config {config_digest} is not an image config"),
            source,
        })?;
    Ok(ImageRef {
        name: name.to_string(),
        manifest_digest: manifest_digest.to_string(),
        manifest_size: bytes.len() as u64,
        manifest,
        config,
    })
}

fn blob_source_key(digest: &str) -> String {
    format!("blob-source:{digest}")
}

/// Remembers that `reference`'s repository holds the blob `digest` (pulled from or pushed to it).
pub fn record_blob_source(
    store: &Store,
    reference: &Reference,
    digest: &str,
) -> Result<(), SolveError> {
    store
        .index()
        .meta_put(
            &blob_source_key(digest),
            &format!("{}/{}", reference.registry, reference.repository),
        )
        .map_err(SolveError::from)
}

/// A repository of `registry` known to hold the blob, if [`record_blob_source`] saw one.
pub fn blob_source(
    store: &Store,
    registry: &str,
    digest: &str,
) -> Result<Option<String>, SolveError> {
    let Some(v) = store
        .index()
        .meta_get(&blob_source_key(digest))
        .map_err(SolveError::from)?
    else {
        return Ok(None);
    };
    Ok(v.strip_prefix(registry)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(str::to_string))
}

/// Downloads a blob into the content store. Nothing is stored unless its digest and size match;
/// a blob that arrives damaged despite the client's own resumes is downloaded once more.
pub(crate) async fn fetch_blob(
    store: &Store,
    registry: &RegistryClient,
    reference: &Reference,
    digest: &str,
    size: Option<u64>,
    progress: Option<Progress>,
) -> Result<(), SolveError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match fetch_blob_once(store, registry, reference, digest, size, progress.clone()).await {
            Err(FetchError::Registry(
                e @ (RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. }),
            )) if tries < 2 => {
                tracing::warn!("{e}; downloading it again");
            }
            Err(FetchError::Registry(e)) => {
                let what = match size {
                    Some(n) => format!("blob `{digest}` ({n} bytes)"),
                    None => format!("blob `{digest}`"),
                };
                return Err(SolveError::hinted(
                    format!(
                        "image `{}`: downloading {what} failed",
                        reference.full_name()
                    ),
                    e,
                    "nothing of it was stored: run the command again once the registry answers \
                     (blobs already downloaded are kept)",
                ));
            }
            Err(FetchError::Solve(e)) => return Err(e),
            Ok(()) => return record_blob_source(store, reference, digest),
        }
    }
}

enum FetchError {
    Registry(RegistryError),
    Solve(SolveError),
}

fn is_disk_full(e: &SolveError) -> bool {
    matches!(e, SolveError::Cache(c) if c.is_disk_full())
}

async fn fetch_blob_once(
    store: &Store,
    registry: &RegistryClient,
    reference: &Reference,
    digest: &str,
    size: Option<u64>,
    progress: Option<Progress>,
) -> Result<(), FetchError> {
    let mut writer = store
        .content()
        .writer()
        .map_err(|e| FetchError::Solve(SolveError::from(e)))?;
    let (tx, mut rx) = tokio::io::duplex(1 << 20);
    let reg = registry.clone();
    let r = reference.clone();
    let d = digest.to_string();
    let fetch = tokio::spawn(async move {
        let mut tx = tx;
        reg.fetch_blob_with(&r, &d, size, &mut tx, progress).await
    });
    let tmp_dir = store.tmp_dir();
    // The blob writer is synchronous: feed it from a blocking task.
    let write = tokio::task::spawn_blocking(move || -> Result<_, SolveError> {
        use std::io::Write;
        let rt = tokio::runtime::Handle::current();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = rt
                .block_on(tokio::io::AsyncReadExt::read(&mut rx, &mut buf))
                .map_err(SolveError::io("cannot read a downloading blob"))?;
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n]).map_err(|e| {
                SolveError::from(kiln_cache::CacheError::io(
                    "write a downloaded blob into",
                    &tmp_dir,
                )(e))
            })?;
        }
        Ok(writer)
    });
    let fetched = fetch
        .await
        .map_err(|e| FetchError::Solve(SolveError::from(e)))?;
    let written = write
        .await
        .map_err(|e| FetchError::Solve(SolveError::from(e)))?;
    // A full disk stops the writer, which closes the pipe under the download: say so, not that
    // the pipe broke. Otherwise a failed download closed the pipe early: its error matters.
    let written = match written {
        Err(e @ SolveError::Cache(_)) if is_disk_full(&e) => return Err(FetchError::Solve(e)),
        w => w,
    };
    fetched.map_err(FetchError::Registry)?;
    let writer = written.map_err(FetchError::Solve)?;
    // `commit` hashes what was written again: a blob on disk always matches its name.
    writer
        .commit(Some(digest))
        .map_err(|e| FetchError::Solve(SolveError::from(e)))?;
    Ok(())
}

/// Downloads the image's layers that the content store lacks, several at a time.
pub async fn ensure_layers(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
) -> Result<(), SolveError> {
    ensure_layers_with(store, registry, image, None).await
}

/// [`ensure_layers`] reporting each download's bytes to `progress`.
pub async fn ensure_layers_with(
    store: &Store,
    registry: &RegistryClient,
    image: &ImageRef,
    progress: Option<BlobProgress>,
) -> Result<(), SolveError> {
    let reference = Reference::parse(&image.name).map_err(|e| SolveError::Registry {
        image: image.name.clone(),
        error: Box::new(e),
    })?;
    let mut missing: Vec<(String, u64)> = image
        .manifest
        .layers()
        .iter()
        .map(|l| (l.digest().to_string(), l.size()))
        .filter(|(d, _)| !store.content().has(d))
        .collect();
    // The same layer twice in one image is downloaded once.
    let mut seen = std::collections::HashSet::new();
    missing.retain(|(d, _)| seen.insert(d.clone()));
    stream::iter(missing)
        .map(|(d, size)| {
            let reference = reference.clone();
            let per_blob: Option<Progress> = progress.clone().map(|p| {
                let d = d.clone();
                Arc::new(move |done: u64| p(&d, done, size)) as Progress
            });
            async move { fetch_blob(store, registry, &reference, &d, Some(size), per_blob).await }
        })
        .buffer_unordered(PARALLEL_LAYERS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Unpacks the image's layers into snapshots and returns the top one (`None` for an image with
/// no layers). Each layer's snapshot is found again by its chain ID, so shared bases are unpacked
/// once.
pub fn unpack(store: &Store, image: &ImageRef) -> Result<Option<SnapshotId>, SolveError> {
    let diff_ids = image.config.rootfs().diff_ids();
    let layers = image.manifest.layers();
    if diff_ids.len() != layers.len() {
        return Err(SolveError::Image {
            image: image.name.clone(),
            message: format!(
                "manifest has {} layers but the config lists {} diff IDs",
                layers.len(),
                diff_ids.len()
            ),
        });
    }
    let mut parent: Option<SnapshotId> = None;
    let mut chain_id = String::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        chain_id = if chain_id.is_empty() {
            diff_id.clone()
        } else {
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{chain_id} {diff_id}")))
            )
        };
        let key = format!("layerchain:{chain_id}");
        if let Some(id) = store.index().meta_get(&key).map_err(SolveError::from)? {
            if let Ok(n) = id.parse::<u64>() {
                let snap = SnapshotId(n);
                if store.snapshots().fs_dir(snap).is_dir() {
                    parent = Some(snap);
                    continue;
                }
            }
        }
        let digest = layer.digest().to_string();
        let media_type = layer.media_type().to_string();
        let file = store.content().open(&digest).map_err(SolveError::from)?;
        // The blob is hashed as it is unpacked (one pass), and the snapshot is dropped before
        // anything records it when the content is not the blob's.
        let mut verifying =
            VerifyingReader::new(std::io::BufReader::with_capacity(1 << 20, file), &digest);
        let reader = decompressor(&image.name, &media_type, &mut verifying)?;
        let unpacked = store.snapshots().unpack_layer_mutable(parent, reader);
        let snap = match (unpacked, verifying.finish()) {
            (Ok(snap), Ok(())) => snap.commit(),
            // An unpacked snapshot is dropped uncommitted, and so removed.
            (_, Err(corrupt)) => {
                return Err(SolveError::Image {
                    image: image.name.clone(),
                    message: corrupt.to_string(),
                });
            }
            (Err(e), Ok(())) => return Err(SolveError::from(e)),
        };
        store
            .snapshots()
            .set_layer(
                snap,
                LayerInfo {
                    diff_id: diff_id.clone(),
                    digest,
                    size: layer.size(),
                    media_type,
                },
            )
            .map_err(SolveError::from)?;
        store
            .index()
            .meta_put(&key, &snap.0.to_string())
            .map_err(SolveError::from)?;
        mark_image_layer(store, snap)?;
        parent = Some(snap);
    }
    Ok(parent)
}

pub(crate) fn decompressor<'a>(
    image: &str,
    media_type: &str,
    r: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, SolveError> {
    if media_type.ends_with("gzip") {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if media_type.ends_with("zstd") {
        Ok(Box::new(zstd::stream::read::Decoder::new(r).map_err(
            SolveError::io(format!("image `{image}`: cannot start a zstd decoder")),
        )?))
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        Ok(Box::new(r))
    } else {
        Err(SolveError::Image {
            image: image.to_string(),
            message: format!("unsupported layer media type `{media_type}`"),
        })
    }
}

fn image_layer_key(snap: SnapshotId) -> String {
    format!("image-layer:{snap}")
}

/// Records that a snapshot holds a layer of an image (pulled or imported): exports reuse that
/// layer's blob exactly, even when it is empty, instead of re-deriving it.
pub fn mark_image_layer(store: &Store, snap: SnapshotId) -> Result<(), SolveError> {
    store
        .index()
        .meta_put(&image_layer_key(snap), "1")
        .map_err(SolveError::from)
}

/// Whether [`mark_image_layer`] was called for this snapshot.
pub fn is_image_layer(store: &Store, snap: SnapshotId) -> Result<bool, SolveError> {
    Ok(store
        .index()
        .meta_get(&image_layer_key(snap))
        .map_err(SolveError::from)?
        .is_some())
}
