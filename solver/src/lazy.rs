//! Lazily imported build-cache layers: snapshots recorded empty, with the remote blob that fills
//! them, and filled (blob downloaded and verified, then unpacked) only when something reads their
//! files: a step that runs on them, `kiln run`, an export that needs the bytes.
//!
//! A lazy snapshot has its index record, its layer record (the blob's digest, diff ID, size and
//! media type, so an image's config and manifest can be written without the bytes) and a
//! `snapshot/<id>/lazy-layer` meta row; its blob has a `remote-blob:` row naming where it is.

use crate::{images, SolveError};
use kiln_cache::{LayerInfo, SnapshotId, Store};
use kiln_registry::{Reference, RegistryClient};
use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

const LAZY_LAYER: &str = "lazy-layer";

/// Where a lazy layer's blob can be fetched.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BlobSource {
    /// A repository, `REGISTRY/REPOSITORY`.
    Registry(String),
    /// An OCI layout directory.
    Local(PathBuf),
}

/// The `remote-blob:` row of a blob.
#[derive(serde::Serialize, serde::Deserialize)]
struct RemoteBlob {
    source: BlobSource,
    size: u64,
}

/// The layer that fills a lazy snapshot.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LazyLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    /// A layer of an image (pulled or imported), exported as this very blob.
    pub image: bool,
}

/// Cache layer blobs this process has downloaded: the build summary reports them.
static FETCHED: AtomicUsize = AtomicUsize::new(0);

/// How many lazily imported cache layers this process has downloaded so far.
pub fn blobs_fetched() -> usize {
    FETCHED.load(Ordering::Relaxed)
}

/// Records a new, empty snapshot on `parent` that `layer`, fetched from `source`, fills when it
/// is needed.
pub fn create(
    store: &Store,
    parent: Option<SnapshotId>,
    layer: &LazyLayer,
    source: &BlobSource,
) -> Result<SnapshotId, SolveError> {
    let snap = store.snapshots().create_mutable(parent)?;
    // A built layer is recorded under the exporter's key for it (media type and differ), as an
    // export of the snapshot would record it; an image's layer under its plain media type.
    let media_type = if layer.image {
        layer.media_type.clone()
    } else {
        format!("{};kiln.differ=1", layer.media_type)
    };
    store.snapshots().set_layer(
        snap.id(),
        LayerInfo {
            diff_id: layer.diff_id.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            media_type,
        },
    )?;
    if layer.image {
        images::mark_image_layer(store, snap.id())?;
    }
    let row = serde_json::to_string(layer).map_err(|e| SolveError::Op(e.to_string()))?;
    store
        .index()
        .snapshot_meta_put(snap.id(), LAZY_LAYER, &row)?;
    let remote = serde_json::to_string(&RemoteBlob {
        source: source.clone(),
        size: layer.size,
    })
    .map_err(|e| SolveError::Op(e.to_string()))?;
    store.index().remote_blob_put(&layer.digest, &remote)?;
    if let BlobSource::Registry(repo) = source {
        // A push to the same registry mounts the blob from there instead of uploading it.
        if let Ok(r) = Reference::parse(repo) {
            images::record_blob_source(store, &r, &layer.digest)?;
        }
    }
    Ok(snap.commit())
}

/// The layer that fills `snap`, if it is a lazy snapshot not filled yet.
pub fn lazy_layer(store: &Store, snap: SnapshotId) -> Result<Option<LazyLayer>, SolveError> {
    let Some(row) = store.index().snapshot_meta_get(snap, LAZY_LAYER)? else {
        return Ok(None);
    };
    serde_json::from_str(&row)
        .map(Some)
        .map_err(|e| SolveError::Op(format!("the lazy layer record of snapshot {snap}: {e}")))
}

/// Fills every lazy snapshot of `top`'s chain, so its files can be read. Returns how many were
/// filled.
pub async fn materialize(
    store: &Store,
    registry: &RegistryClient,
    top: SnapshotId,
) -> Result<usize, SolveError> {
    let mut filled = 0;
    for snap in store.snapshots().chain(top)? {
        if lazy_layer(store, snap)?.is_some() && fill(store, registry, snap).await? {
            filled += 1;
        }
    }
    Ok(filled)
}

/// One lock per snapshot being filled, so two steps that need it fill it once.
type FillLocks = HashMap<(PathBuf, u64), Arc<tokio::sync::Mutex<()>>>;
static FILLING: LazyLock<Mutex<FillLocks>> = LazyLock::new(Default::default);

async fn fill(
    store: &Store,
    registry: &RegistryClient,
    snap: SnapshotId,
) -> Result<bool, SolveError> {
    let lock = {
        let mut map = FILLING
            .lock()
            .map_err(|_| SolveError::Op("the lazy layer lock is poisoned".into()))?;
        map.entry((store.root().to_path_buf(), snap.0))
            .or_default()
            .clone()
    };
    let _filling = lock.lock().await;
    let Some(layer) = lazy_layer(store, snap)? else {
        return Ok(false);
    };
    fetch_blob(store, registry, &layer.digest).await?;
    let store2 = store.clone();
    let layer2 = layer.clone();
    tokio::task::spawn_blocking(move || -> Result<(), SolveError> {
        let file = store2.content().open(&layer2.digest)?;
        // The content store verified the blob when it was written; its digest is its name.
        let r = std::io::BufReader::with_capacity(1 << 20, file);
        let reader = images::decompressor(
            &format!("cache layer {}", layer2.digest),
            &layer2.media_type,
            r,
        )?;
        store2.snapshots().fill(snap, reader)?;
        Ok(())
    })
    .await??;
    store.index().snapshot_meta_remove(snap, LAZY_LAYER)?;
    tracing::debug!(%snap, digest = %layer.digest, "lazy cache layer filled");
    Ok(true)
}

/// Fetches `digest` from the build cache it was imported from when it is a lazy layer there
/// (its bytes are needed now: `kiln run`, `kiln save`); a blob the store has, or that no cache
/// names, is left alone.
pub async fn fetch_if_lazy(
    store: &Store,
    registry: &RegistryClient,
    digest: &str,
) -> Result<(), SolveError> {
    if is_lazy(store, digest)? {
        fetch_blob(store, registry, digest).await?;
    }
    Ok(())
}

/// Whether `digest` is a layer of a lazily imported build cache: not in the content store, and
/// recorded as fetchable from that cache.
pub fn is_lazy(store: &Store, digest: &str) -> Result<bool, SolveError> {
    Ok(!store.content().has(digest) && store.index().remote_blob_get(digest)?.is_some())
}

/// Puts the blob `digest` into the content store from where its `remote-blob:` row says it is,
/// unless it is there. Digest and size are checked before anything is stored.
pub async fn fetch_blob(
    store: &Store,
    registry: &RegistryClient,
    digest: &str,
) -> Result<(), SolveError> {
    if store.content().has(digest) {
        return Ok(());
    }
    let Some(row) = store.index().remote_blob_get(digest)? else {
        return Err(SolveError::Op(format!(
            "the blob `{digest}` is not in the store and no cache names where it is"
        )));
    };
    let remote: RemoteBlob = serde_json::from_str(&row)
        .map_err(|e| SolveError::Op(format!("the remote record of blob `{digest}`: {e}")))?;
    FETCHED.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%digest, size = remote.size, source = ?remote.source, "downloading a lazily imported cache layer");
    match remote.source {
        BlobSource::Registry(repo) => {
            let r = Reference::parse(&repo).map_err(|e| SolveError::Registry {
                image: repo.clone(),
                error: Box::new(e),
            })?;
            images::fetch_blob(store, registry, &r, digest, Some(remote.size), None).await
        }
        BlobSource::Local(dir) => {
            let store = store.clone();
            let digest = digest.to_string();
            tokio::task::spawn_blocking(move || copy_local(&store, &dir, &digest, remote.size))
                .await?
        }
    }
}

/// Copies a blob from an OCI layout into the content store, checking its size and digest.
fn copy_local(
    store: &Store,
    dir: &std::path::Path,
    digest: &str,
    size: u64,
) -> Result<(), SolveError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| SolveError::Op(format!("invalid blob digest `{digest}`")))?;
    let path = dir.join("blobs").join("sha256").join(hex);
    let file = std::fs::File::open(&path)
        .map_err(SolveError::io(format!("cannot read `{}`", path.display())))?;
    let len = file
        .metadata()
        .map_err(SolveError::io(format!("cannot read `{}`", path.display())))?
        .len();
    if len != size {
        return Err(SolveError::Op(format!(
            "the blob `{}` is {len} bytes, the cache says {size}",
            path.display()
        )));
    }
    let mut w = store.content().writer()?;
    std::io::copy(&mut file.take(size), &mut w)
        .map_err(SolveError::io(format!("cannot copy `{}`", path.display())))?;
    w.commit(Some(digest))?;
    Ok(())
}
