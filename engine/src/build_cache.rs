//! Build cache export and import (`kiln build --cache-to` / `--cache-from`): the steps' cache
//! keys with their result layers, as one OCI manifest in a registry or an OCI layout directory.
//!
//! The format (docs/architecture.md, "Build cache export"): an OCI image manifest whose config
//! (`application/vnd.kiln.cache.config.v1+json`) lists each step's key with the indexes of the
//! layers that make its result, bottom-up, and whose layers are those layers, each the diff of
//! a snapshot against its parent as images' layers are. Import is lazy: every record's key is
//! recorded with snapshots that are empty until something reads them (`kiln_solver::lazy`), so
//! a step that is cached downloads nothing.
//!
//! `--cache-to type=inline` writes the records into the built image's config instead
//! (`kiln.cache.v1`, [`inline_cache`]), naming the image's own layers; `--cache-from IMAGE`
//! reads such an image ([`inline_config`]) through the same lazy import.

use anyhow::{bail, Context, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use kiln_cache::{CachedResult, SnapshotId, Store};
use kiln_exporter::{Compression, LayerOptions};
use kiln_registry::{Reference, RegistryClient};
use kiln_solver::lazy::{BlobSource, LazyLayer};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub(crate) const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// The image config field of an inline cache (`--cache-to type=inline`): kiln's records, whose
/// layers are the image's own (BuildKit's `moby.buildkit.cache.v0` holds BuildKit's instead).
pub(crate) const INLINE_KEY: &str = "kiln.cache.v1";
const ARTIFACT_TYPE: &str = "application/vnd.kiln.cache.v1";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_IMAGE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The largest cache manifest or config read (a config of 100,000 steps is ~30 MB).
const MAX_DOCUMENT: u64 = 64 << 20;
const PARALLEL_UPLOADS: usize = 4;
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where a cache goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=registry,ref=REF`.
    Registry(String),
    /// `type=local,dest=DIR` / `src=DIR`, under a tag of the layout's index, or (`src` with
    /// `digest=`) the manifest of that digest.
    Local {
        dir: PathBuf,
        tag: String,
        digest: Option<String>,
    },
    /// `type=inline`: the records go into the built image's config, naming its own layers.
    Inline,
}

/// One `--cache-to` or `--cache-from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSpec {
    pub location: CacheLocation,
    /// `mode=max`: every step that ran; `min` (default): the final image's steps.
    pub mode_max: bool,
    /// `ignore-error=true`: a failed export is a warning.
    pub ignore_error: bool,
    pub compression: Compression,
    /// `compression-level=N`; `None` is the compressor's default.
    pub compression_level: Option<i32>,
    /// `oci-mediatypes=false`: Docker media types (a manifest list, Docker layer types).
    pub oci_mediatypes: bool,
    /// `image-manifest=false`: an index listing the layers and the config, as BuildKit's
    /// default registry cache; `true` (kiln's default): one image manifest.
    pub image_manifest: bool,
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry(r) => write!(f, "`{r}`"),
            CacheLocation::Local {
                dir,
                digest: Some(d),
                ..
            } => write!(f, "`{}` (manifest `{d}`)", dir.display()),
            CacheLocation::Local { dir, tag, .. } => {
                write!(f, "`{}` (tag `{tag}`)", dir.display())
            }
            CacheLocation::Inline => write!(f, "`type=inline`"),
        }
    }
}

/// Parses a `--cache-to` (`export`) or `--cache-from` value, BuildKit's syntax; a `--cache-from`
/// without `=` is an image reference (`type=registry,ref=IMAGE`).
pub fn parse_cache_spec(s: &str, export: bool) -> Result<CacheSpec> {
    let flag = if export { "--cache-to" } else { "--cache-from" };
    if !export && !s.contains('=') {
        return Ok(CacheSpec {
            location: CacheLocation::Registry(s.to_string()),
            mode_max: false,
            ignore_error: false,
            compression: Compression::Gzip,
            compression_level: None,
            oci_mediatypes: true,
            image_manifest: true,
        });
    }
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    for part in s.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            bail!("`{flag} {s}`: `{part}` is not KEY=VALUE");
        };
        kv.insert(k.trim(), v.trim());
    }
    let mut spec = CacheSpec {
        location: CacheLocation::Registry(String::new()),
        mode_max: false,
        ignore_error: false,
        compression: Compression::Gzip,
        compression_level: None,
        oci_mediatypes: true,
        image_manifest: true,
    };
    let kind = kv.remove("type").unwrap_or("");
    spec.location = match kind {
        "registry" => match kv.remove("ref") {
            Some(r) if !r.is_empty() => CacheLocation::Registry(r.to_string()),
            _ => bail!("`{flag} {s}`: `type=registry` needs `ref=REGISTRY/REPOSITORY:TAG`"),
        },
        "local" => {
            let dir_key = if export { "dest" } else { "src" };
            let Some(dir) = kv.remove(dir_key).filter(|d| !d.is_empty()) else {
                bail!("`{flag} {s}`: `type=local` needs `{dir_key}=DIRECTORY`");
            };
            let tag = kv.remove("tag").unwrap_or("latest").to_string();
            // BuildKit's `digest=`: import the manifest of that digest, whatever its tag.
            let digest = match (export, kv.remove("digest")) {
                (true, Some(_)) => bail!("`{flag} {s}`: `digest` selects a cache to import; it is for `--cache-from`"),
                (false, Some(d)) if blob_path(Path::new(dir), d).is_ok() => Some(d.to_string()),
                (false, Some(d)) => bail!("`{flag} {s}`: `digest` is `sha256:` and 64 hex digits, not `{d}`"),
                (_, None) => None,
            };
            CacheLocation::Local {
                dir: PathBuf::from(dir),
                tag,
                digest,
            }
        }
        "inline" if export => CacheLocation::Inline,
        "inline" => bail!(
            "`{flag} {s}`: `type=inline` is for `--cache-to`; import an image's inline cache with `--cache-from IMAGE`"
        ),
        "" => bail!("`{flag} {s}`: give the cache's `type=registry`, `type=local` or `type=inline`"),
        other => bail!(
            "`{flag} {s}`: the cache type `{other}` is not supported; use `type=registry`, `type=local` or `type=inline`"
        ),
    };
    if let Some(m) = kv.remove("mode") {
        spec.mode_max = match m {
            "max" => true,
            "min" => false,
            _ => bail!("`{flag} {s}`: `mode` is `min` or `max`, not `{m}`"),
        };
    }
    if let Some(v) = kv.remove("ignore-error") {
        spec.ignore_error = match v {
            "true" => true,
            "false" => false,
            _ => bail!("`{flag} {s}`: `ignore-error` is `true` or `false`, not `{v}`"),
        };
    }
    if let Some(c) = kv.remove("compression") {
        spec.compression = match c {
            "gzip" => Compression::Gzip,
            "zstd" => Compression::Zstd,
            "uncompressed" => Compression::Uncompressed,
            _ => {
                bail!("`{flag} {s}`: `compression` is `gzip`, `zstd` or `uncompressed`, not `{c}`")
            }
        };
    }
    if let Some(l) = kv.remove("compression-level") {
        spec.compression_level = Some(l.parse().map_err(|_| {
            anyhow::anyhow!("`{flag} {s}`: `compression-level` is a number, not `{l}`")
        })?);
    }
    for (k, field) in [
        ("oci-mediatypes", &mut spec.oci_mediatypes),
        ("image-manifest", &mut spec.image_manifest),
    ] {
        if let Some(v) = kv.remove(k) {
            *field = match v {
                "true" => true,
                "false" => false,
                _ => bail!("`{flag} {s}`: `{k}` is `true` or `false`, not `{v}`"),
            };
        }
    }
    if spec.image_manifest && !spec.oci_mediatypes {
        bail!("`{flag} {s}`: `image-manifest=true` needs `oci-mediatypes=true`; add `image-manifest=false` for Docker media types");
    }
    if !spec.oci_mediatypes && spec.compression == Compression::Zstd {
        bail!("`{flag} {s}`: zstd layers have no Docker media type; use `oci-mediatypes=true`");
    }
    if let Some((k, _)) = kv.into_iter().next() {
        bail!("`{flag} {s}`: the option `{k}` is not supported");
    }
    Ok(spec)
}

/// The config blob of an exported cache.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheConfig {
    /// Layers, in the manifest's order.
    layers: Vec<LayerRecord>,
    records: Vec<StepRecord>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct LayerRecord {
    digest: String,
    diff_id: String,
    size: u64,
    media_type: String,
    /// A layer of a pulled or imported image, exported as the blob the image came with, so that
    /// an image built on it is the same on the importing machine.
    #[serde(default)]
    image: bool,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
struct StepRecord {
    /// The step's cache key (docs/cache-keys.md).
    key: String,
    /// When the result was first produced, so that a hit gives the same image.
    created_unix: u64,
    /// Indexes into `layers`, bottom-up: the result's snapshot chain. Empty: an empty result.
    layers: Vec<usize>,
}

/// The `kiln.cache.v1` field of an image config (`--cache-to type=inline`): the records of the
/// steps whose result is in the image's snapshot chain, each naming a prefix of the image's
/// layers (indexes into `rootfs.diff_ids` and the manifest's `layers`), so that the image's
/// own blobs are the cache's and nothing else is stored or pushed.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Eq)]
struct InlineCache {
    records: Vec<StepRecord>,
    /// Indexes of the layers that are a base image's own blobs (`LayerRecord::image`).
    #[serde(default)]
    image_layers: Vec<usize>,
}

/// The indexes into the image's layers of a result whose snapshot chain (bottom-up) is
/// `chain`: `None` unless it is a prefix of the image's chain `image`, whose layers are one per
/// snapshot in the same order.
fn inline_layers(chain: &[SnapshotId], image: &[SnapshotId]) -> Option<Vec<usize>> {
    (chain.len() <= image.len() && image[..chain.len()] == *chain)
        .then(|| (0..chain.len()).collect())
}

/// The inline cache of an image whose result is `root` (`None`: `FROM scratch` with no step
/// that made files): the records of `keys` whose result is in the image's chain (`mode=min`).
/// Sorted by key, so that the same build gives the same config, and so the same image ID, on
/// any machine.
pub(crate) fn inline_cache(
    store: &Store,
    keys: &[String],
    root: Option<SnapshotId>,
) -> Result<serde_json::Value> {
    let mut image: Vec<SnapshotId> = match root {
        Some(r) => store.snapshots().chain(r)?,
        None => Vec::new(),
    };
    image.reverse();
    let mut records: Vec<StepRecord> = Vec::new();
    for key in keys {
        let Some(hit) = store.index().get(key)? else {
            continue;
        };
        let Some(s) = hit.snapshot.filter(|s| image.contains(s)) else {
            continue;
        };
        let mut chain = store.snapshots().chain(s)?;
        chain.reverse();
        let Some(layers) = inline_layers(&chain, &image) else {
            continue;
        };
        records.push(StepRecord {
            key: key.clone(),
            created_unix: hit.created_unix,
            layers,
        });
    }
    records.sort_by(|a, b| a.key.cmp(&b.key));
    records.dedup_by(|a, b| a.key == b.key);
    let mut image_layers = Vec::new();
    for (i, snap) in image.iter().enumerate() {
        if kiln_solver::images::is_image_layer(store, *snap)? {
            image_layers.push(i);
        }
    }
    Ok(serde_json::to_value(InlineCache {
        records,
        image_layers,
    })?)
}

/// Whether this build writes an inline cache (`--cache-to type=inline`): only into an image,
/// so a build with no image output warns and writes none (BuildKit ignores it then), and only
/// `mode=min`, the image's own steps (a warning for `mode=max`, as BuildKit's).
pub(crate) fn inline_wanted(
    cache_to: &[CacheSpec],
    tags: &[String],
    outputs: &[crate::OutputSpec],
    warnings: &mut Vec<String>,
) -> bool {
    let Some(spec) = cache_to
        .iter()
        .find(|s| s.location == CacheLocation::Inline)
    else {
        return false;
    };
    let image_output = !tags.is_empty()
        || outputs.iter().any(|o| {
            !matches!(
                o.kind,
                crate::OutputKind::Local { .. } | crate::OutputKind::Tar { .. }
            )
        });
    if !image_output {
        warnings.push(
            "`--cache-to type=inline`: this build makes no image, so no cache is written; add `-t NAME`, `--push` or `--output type=image`".to_string(),
        );
        return false;
    }
    if spec.mode_max {
        warnings.push(
            "`--cache-to type=inline,mode=max`: an inline cache holds the image's own steps only, so `mode=min` is written; use `type=registry` for `mode=max`".to_string(),
        );
    }
    true
}

/// The cache config of an image manifest whose config holds an inline cache: the layers are the
/// manifest's (digest, size, media type) with the config's diff IDs. A record naming a layer the
/// image does not have is left out, with a warning in the second value.
fn inline_config(
    manifest: &serde_json::Value,
    config: &serde_json::Value,
) -> Result<(CacheConfig, Vec<String>)> {
    let field = &config[INLINE_KEY];
    if field.is_null() {
        bail!("not a kiln build cache: the image holds no `{INLINE_KEY}` (a build with `--cache-to type=inline` makes one)");
    }
    let inline: InlineCache = serde_json::from_value(field.clone())
        .with_context(|| format!("the image's `{INLINE_KEY}` is not valid"))?;
    let descs = manifest["layers"]
        .as_array()
        .context("the image manifest has no `layers`")?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("the image config has no `rootfs.diff_ids`")?;
    if descs.len() != diff_ids.len() {
        bail!(
            "the image has {} layers and its config {} diff IDs",
            descs.len(),
            diff_ids.len()
        );
    }
    let mut layers = Vec::with_capacity(descs.len());
    for (i, (d, id)) in descs.iter().zip(diff_ids).enumerate() {
        let (Some(digest), Some(size), Some(media_type), Some(diff_id)) = (
            d["digest"].as_str(),
            d["size"].as_u64(),
            d["mediaType"].as_str(),
            id.as_str(),
        ) else {
            bail!("the image's layer {i} has no digest, size, media type or diff ID");
        };
        layers.push(LayerRecord {
            digest: digest.to_string(),
            diff_id: diff_id.to_string(),
            size,
            media_type: media_type.to_string(),
            image: inline.image_layers.contains(&i),
        });
    }
    let mut warnings = Vec::new();
    let mut records = Vec::with_capacity(inline.records.len());
    for rec in inline.records {
        if let Some(bad) = rec.layers.iter().find(|&&i| i >= layers.len()) {
            warnings.push(format!(
                "the inline cache record `{}` names layer {bad} of an image of {} layers; that step is not imported",
                rec.key,
                layers.len()
            ));
            continue;
        }
        records.push(rec);
    }
    Ok((CacheConfig { layers, records }, warnings))
}

/// A cache ready to be written: the config and the blobs, all in the local content store.
struct Exported {
    config: Vec<u8>,
    layers: Vec<LayerRecord>,
}

/// Makes the cache of a solve: the records of `keys` (mode=max) or of those whose result is in
/// the final image's snapshot chain (mode=min).
fn collect(
    store: &Store,
    keys: &[String],
    roots: &[SnapshotId],
    spec: &CacheSpec,
) -> Result<Exported> {
    // Every platform's final image counts as final (a multi-platform build has several).
    let mut final_chain: Vec<SnapshotId> = Vec::new();
    for r in roots {
        final_chain.extend(store.snapshots().chain(*r)?);
    }
    let opts = LayerOptions {
        compression: spec.compression,
        source_date_epoch: None,
        level: spec.compression_level,
    };
    let mut layers: Vec<LayerRecord> = Vec::new();
    let mut layer_of_snap: HashMap<SnapshotId, usize> = HashMap::new();
    let mut records = Vec::new();
    for key in keys {
        let Some(hit) = store.index().get(key)? else {
            continue;
        };
        if !spec.mode_max {
            match hit.snapshot {
                Some(s) if final_chain.contains(&s) => {}
                _ => continue,
            }
        }
        let mut idx = Vec::new();
        if let Some(s) = hit.snapshot {
            let mut chain = store.snapshots().chain(s)?;
            chain.reverse();
            for snap in chain {
                if let Some(&i) = layer_of_snap.get(&snap) {
                    idx.push(i);
                    continue;
                }
                layers.push(layer_record(store, snap, &opts)?);
                layer_of_snap.insert(snap, layers.len() - 1);
                idx.push(layers.len() - 1);
            }
        }
        records.push(StepRecord {
            key: key.clone(),
            created_unix: hit.created_unix,
            layers: idx,
        });
    }
    let config = serde_json::to_vec(&CacheConfig {
        layers: layers.clone(),
        records,
    })?;
    Ok(Exported { config, layers })
}

/// The layer of one snapshot: an image's own blob, or the snapshot's diff as the exporter
/// makes it.
fn layer_record(store: &Store, snap: SnapshotId, opts: &LayerOptions) -> Result<LayerRecord> {
    if let Some(l) = kiln_solver::lazy::lazy_layer(store, snap)? {
        // Imported and never filled: its snapshot is empty, the blob is the layer.
        return Ok(LayerRecord {
            digest: l.digest,
            diff_id: l.diff_id,
            size: l.size,
            media_type: l.media_type,
            image: l.image,
        });
    }
    if kiln_solver::images::is_image_layer(store, snap)? {
        // Re-compressed variants carry `;kiln.` parameters; the image's own blob does not.
        let original = store
            .snapshots()
            .layers(snap)?
            .into_iter()
            .find(|l| !l.media_type.contains(';') && store.content().has(&l.digest));
        if let Some(l) = original {
            return Ok(LayerRecord {
                digest: l.digest,
                diff_id: l.diff_id,
                size: l.size,
                media_type: l.media_type,
                image: true,
            });
        }
    }
    let blob = kiln_exporter::export_layer(store, snap, opts)
        .with_context(|| format!("cannot export the layer of snapshot {snap}"))?;
    Ok(LayerRecord {
        digest: blob.digest,
        diff_id: blob.diff_id,
        size: blob.size,
        media_type: blob.media_type,
        image: false,
    })
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// The cache's top document and its media type: one image manifest (`image-manifest=true`), or
/// an index whose entries are the layers, then the config, as BuildKit writes its default form.
fn top_document(
    config_digest: &str,
    config_size: u64,
    layers: &[LayerRecord],
    spec: &CacheSpec,
) -> (Vec<u8>, &'static str) {
    if spec.image_manifest {
        return (
            manifest_bytes(config_digest, config_size, layers),
            MANIFEST_MEDIA_TYPE,
        );
    }
    let layer_type = |m: &str| -> String {
        if spec.oci_mediatypes {
            return m.to_string();
        }
        match Compression::from_media_type(m) {
            Some(Compression::Gzip) => "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            Some(Compression::Uncompressed) => {
                "application/vnd.docker.image.rootfs.diff.tar".into()
            }
            _ => m.to_string(),
        }
    };
    let mut manifests: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| descriptor(&layer_type(&l.media_type), &l.digest, l.size))
        .collect();
    manifests.push(descriptor(CONFIG_MEDIA_TYPE, config_digest, config_size));
    let media_type = if spec.oci_mediatypes {
        OCI_INDEX_MEDIA_TYPE
    } else {
        DOCKER_LIST_MEDIA_TYPE
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    (serde_json::to_vec(&index).unwrap_or_default(), media_type)
}

fn manifest_bytes(config_digest: &str, config_size: u64, layers: &[LayerRecord]) -> Vec<u8> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, config_digest, config_size),
        "layers": layers.iter().map(|l| descriptor(&l.media_type, &l.digest, l.size)).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).unwrap_or_default()
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Exports the cache of a solve to one destination.
pub(crate) async fn export(
    store: &Store,
    registry: &RegistryClient,
    keys: &[String],
    roots: &[SnapshotId],
    spec: &CacheSpec,
) -> Result<()> {
    if spec.location == CacheLocation::Inline {
        // Written into the image's config as it was made (`inline_cache`).
        return Ok(());
    }
    let exported = {
        let store = store.clone();
        let keys = keys.to_vec();
        let roots = roots.to_vec();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || collect(&store, &keys, &roots, &spec)).await??
    };
    // Layers imported lazily and never needed are not in the store yet: a directory needs
    // their bytes, a registry mounts them from where they are when it can.
    if !matches!(spec.location, CacheLocation::Registry(_)) {
        for l in &exported.layers {
            kiln_solver::lazy::fetch_blob(store, registry, &l.digest)
                .await
                .with_context(|| format!("cannot fetch the cache layer `{}`", l.digest))?;
        }
    }
    let (config_digest, config_size) = store.content().put_bytes(&exported.config)?;
    let config_digest = config_digest.to_string();
    let (manifest, manifest_type) =
        top_document(&config_digest, config_size, &exported.layers, spec);
    match &spec.location {
        CacheLocation::Registry(r) => {
            let reference = Reference::parse(r)?;
            // A few uploads at once: most layers of a cache are small, so round trips dominate.
            let reference = &reference;
            // Owned digests: a closure over borrowed records makes the build's future `Send` for
            // one lifetime only, which `tokio::spawn` (the daemon's) cannot accept.
            let layers: Vec<(String, u64)> = exported
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size))
                .collect();
            futures::stream::iter(layers.into_iter().map(|(digest, size)| async move {
                crate::transfer::push_stored_blob(store, registry, reference, &digest, size, None)
                    .await
                    .with_context(|| format!("cannot export the cache layer `{digest}`"))?;
                anyhow::Ok(())
            }))
            .buffer_unordered(PARALLEL_UPLOADS)
            .try_collect::<Vec<()>>()
            .await?;
            let path = store.content().path(&config_digest)?;
            registry
                .push_blob(reference, &config_digest, config_size, &path)
                .await?;
            registry
                .push_manifest(reference, manifest_type, &manifest)
                .await?;
        }
        CacheLocation::Inline => {}
        CacheLocation::Local { dir, tag, .. } => {
            let mut blobs: Vec<String> = exported.layers.iter().map(|l| l.digest.clone()).collect();
            blobs.push(config_digest.clone());
            write_layout(store, dir, tag, &blobs, &manifest, manifest_type)?;
        }
    }
    Ok(())
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        bail!("unsupported digest `{digest}`");
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("invalid digest `{digest}`");
    }
    Ok(dir.join("blobs").join("sha256").join(hex))
}

/// Writes the blobs and the manifest into the OCI layout `dir`, naming the manifest `tag` in its
/// `index.json` (other tags' entries stay: several caches may share one directory).
fn write_layout(
    store: &Store,
    dir: &Path,
    tag: &str,
    blobs: &[String],
    manifest: &[u8],
    manifest_type: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir.join("blobs").join("sha256"))
        .with_context(|| format!("cannot create the cache directory `{}`", dir.display()))?;
    for d in blobs {
        let to = blob_path(dir, d)?;
        if to.exists() {
            continue;
        }
        let from = store.content().path(d)?;
        let tmp = to.with_extension("tmp");
        std::fs::copy(&from, &tmp).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &to).with_context(|| format!("cannot write `{}`", to.display()))?;
    }
    let manifest_digest = sha256_of(manifest);
    std::fs::write(blob_path(dir, &manifest_digest)?, manifest)
        .with_context(|| format!("cannot write the cache manifest in `{}`", dir.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .with_context(|| format!("cannot write `{}/oci-layout`", dir.display()))?;
    let index_path = dir.join("index.json");
    let mut entries: Vec<serde_json::Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("manifests")?.as_array().cloned())
        .unwrap_or_default();
    entries.retain(|e| e["annotations"][REF_NAME].as_str() != Some(tag));
    let mut entry = descriptor(manifest_type, &manifest_digest, manifest.len() as u64);
    if manifest_type == MANIFEST_MEDIA_TYPE {
        entry["artifactType"] = ARTIFACT_TYPE.into();
    }
    entry["annotations"] = serde_json::json!({ REF_NAME: tag });
    entries.push(entry);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let tmp = dir.join("index.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&index)?)
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, &index_path)
        .with_context(|| format!("cannot write `{}`", index_path.display()))?;
    Ok(())
}

/// Where an import reads its blobs from.
enum Source<'a> {
    Registry(&'a RegistryClient, Reference),
    Local(PathBuf),
}

impl Source<'_> {
    /// The cache manifest: the registry's reference, or the layout's `tag` (or `digest`).
    async fn manifest(&self, tag: &str, digest: Option<&str>) -> Result<Vec<u8>> {
        match self {
            Source::Registry(client, r) => Ok(client.fetch_manifest(r).await?.bytes),
            Source::Local(dir) if digest.is_some() => {
                let digest = digest.unwrap_or_default();
                let p = blob_path(dir, digest)?;
                let size = std::fs::metadata(&p)
                    .with_context(|| format!("the cache directory has no manifest `{digest}`"))?
                    .len();
                self.blob_bytes(digest, size).await
            }
            Source::Local(dir) => {
                let index_path = dir.join("index.json");
                let bytes = std::fs::read(&index_path)
                    .with_context(|| format!("cannot read `{}`", index_path.display()))?;
                let index: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("`{}` is not JSON", index_path.display()))?;
                let entry = index["manifests"]
                    .as_array()
                    .and_then(|m| {
                        m.iter()
                            .find(|e| e["annotations"][REF_NAME].as_str() == Some(tag))
                    })
                    .with_context(|| format!("`{}` has no tag `{tag}`", index_path.display()))?;
                let digest = entry["digest"].as_str().unwrap_or_default();
                let size = entry["size"].as_u64().unwrap_or(u64::MAX);
                self.blob_bytes(digest, size).await
            }
        }
    }

    /// A manifest named by its digest (an image index's entry).
    async fn manifest_by_digest(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        match self {
            Source::Registry(client, r) => {
                Ok(client.fetch_manifest(&r.with_digest(digest)).await?.bytes)
            }
            Source::Local(_) => self.blob_bytes(digest, size).await,
        }
    }

    /// A small blob (a manifest, a config) read whole: `size` is what its descriptor says, and
    /// more than [`MAX_DOCUMENT`] is refused before anything is read.
    async fn blob_bytes(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        if size > MAX_DOCUMENT {
            bail!("the blob `{digest}` is {size} bytes, more than a cache document may be ({MAX_DOCUMENT})");
        }
        match self {
            Source::Registry(client, r) => {
                let mut buf: Vec<u8> = Vec::new();
                client
                    .fetch_blob_with(r, digest, Some(size), &mut buf, None)
                    .await?;
                Ok(buf)
            }
            Source::Local(dir) => {
                let p = blob_path(dir, digest)?;
                let len = std::fs::metadata(&p)
                    .with_context(|| format!("cannot read `{}`", p.display()))?
                    .len();
                if len != size {
                    bail!(
                        "the blob `{}` is {len} bytes, its descriptor says {size}",
                        p.display()
                    );
                }
                let bytes =
                    std::fs::read(&p).with_context(|| format!("cannot read `{}`", p.display()))?;
                if sha256_of(&bytes) != digest {
                    bail!("the blob `{}` does not match its digest", p.display());
                }
                Ok(bytes)
            }
        }
    }

    /// Where this source's blobs are, for the lazy snapshots that need them.
    fn blob_source(&self) -> BlobSource {
        match self {
            Source::Registry(_, r) => {
                BlobSource::Registry(format!("{}/{}", r.registry, r.repository))
            }
            // Absolute, so that a later `kiln run` from another directory finds it.
            Source::Local(dir) => {
                BlobSource::Local(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
            }
        }
    }

    /// Checks, without reading it, that a layer's blob is there: a directory's blob has the
    /// size the cache says. A registry is trusted to hold what its manifest references.
    fn check_blob(&self, l: &LayerRecord) -> Result<()> {
        if let Source::Local(dir) = self {
            let p = blob_path(dir, &l.digest)?;
            let len = std::fs::metadata(&p)
                .with_context(|| format!("cannot read `{}`", p.display()))?
                .len();
            if len != l.size {
                bail!(
                    "the blob `{}` is {len} bytes, the cache says {}",
                    p.display(),
                    l.size
                );
            }
        }
        Ok(())
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub(crate) struct Imported {
    /// Steps recorded.
    pub steps: usize,
    /// Records left out of an inline cache (a layer index out of range), one line each.
    pub warnings: Vec<String>,
}

/// Imports one cache: records whose keys the local index lacks are recorded, on snapshots that
/// their layers fill when something needs them. The cache is kiln's cache manifest (or index),
/// or an image (an index: the entries of `platforms`) whose config holds an inline cache.
pub(crate) async fn import(
    store: &Store,
    registry: &RegistryClient,
    spec: &CacheSpec,
    platforms: &[kiln_registry::Platform],
) -> Result<Imported> {
    let (source, tag, digest) = match &spec.location {
        CacheLocation::Registry(r) => (
            Source::Registry(registry, Reference::parse(r)?),
            String::new(),
            None,
        ),
        CacheLocation::Local { dir, tag, digest } => {
            (Source::Local(dir.clone()), tag.clone(), digest.as_deref())
        }
        CacheLocation::Inline => bail!("`type=inline` is for `--cache-to`"),
    };
    let manifest: serde_json::Value = serde_json::from_slice(&source.manifest(&tag, digest).await?)
        .context("the cache manifest is not JSON")?;
    let mut imported = Imported::default();
    if let Some(entries) = manifest["manifests"].as_array() {
        if !entries
            .iter()
            .any(|e| e["mediaType"].as_str() == Some(CONFIG_MEDIA_TYPE))
        {
            // An image index: each platform this build makes has its own image, with its own
            // records, since its own steps made it.
            let mut found = false;
            for platform in platforms {
                let Some(entry) = entries.iter().find(|e| {
                    let p = &e["platform"];
                    let entry = kiln_registry::Platform {
                        os: p["os"].as_str().unwrap_or_default().to_string(),
                        architecture: p["architecture"].as_str().unwrap_or_default().to_string(),
                        variant: p["variant"].as_str().map(str::to_string),
                    };
                    platform.matches(&entry)
                }) else {
                    continue;
                };
                found = true;
                let digest = entry["digest"]
                    .as_str()
                    .context("an entry of the image index has no digest")?;
                let size = entry["size"].as_u64().unwrap_or(MAX_DOCUMENT);
                let bytes = source.manifest_by_digest(digest, size).await?;
                let m: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("the image manifest `{digest}` is not JSON"))?;
                let (config, warnings) = image_cache_config(&source, &m).await?;
                imported.warnings.extend(warnings);
                imported.steps += import_config(store, &source, &config)?;
            }
            if !found {
                bail!(
                    "the image index has no image for {}",
                    platforms
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            return Ok(imported);
        }
    }
    // An index (`image-manifest=false`) lists the config among its entries.
    let config_desc = match manifest["manifests"].as_array() {
        Some(entries) => entries
            .iter()
            .find(|e| e["mediaType"].as_str() == Some(CONFIG_MEDIA_TYPE))
            .unwrap_or(&serde_json::Value::Null),
        None => &manifest["config"],
    };
    let config_type = config_desc["mediaType"].as_str();
    if matches!(config_type, Some(IMAGE_CONFIG | DOCKER_IMAGE_CONFIG)) {
        let (config, warnings) = image_cache_config(&source, &manifest).await?;
        imported.warnings.extend(warnings);
        imported.steps += import_config(store, &source, &config)?;
        return Ok(imported);
    }
    if config_type != Some(CONFIG_MEDIA_TYPE) {
        bail!(
            "not a kiln build cache (its config is `{}`, not `{CONFIG_MEDIA_TYPE}`)",
            config_type.unwrap_or("missing")
        );
    }
    let config_digest = config_desc["digest"]
        .as_str()
        .context("the cache manifest has no config digest")?;
    let config_size = config_desc["size"]
        .as_u64()
        .context("the cache manifest has no config size")?;
    let config: CacheConfig =
        serde_json::from_slice(&source.blob_bytes(config_digest, config_size).await?)
            .context("the cache config is not valid")?;
    imported.steps += import_config(store, &source, &config)?;
    Ok(imported)
}

/// The cache config of an image manifest whose config holds an inline cache.
async fn image_cache_config(
    source: &Source<'_>,
    manifest: &serde_json::Value,
) -> Result<(CacheConfig, Vec<String>)> {
    let desc = &manifest["config"];
    let digest = desc["digest"]
        .as_str()
        .context("the image manifest has no config digest")?;
    let size = desc["size"]
        .as_u64()
        .context("the image manifest has no config size")?;
    let config: serde_json::Value = serde_json::from_slice(&source.blob_bytes(digest, size).await?)
        .context("the image config is not JSON")?;
    inline_config(manifest, &config)
}

/// Records the records of `config` whose keys the local index lacks. Returns how many.
fn import_config(store: &Store, source: &Source<'_>, config: &CacheConfig) -> Result<usize> {
    for l in &config.layers {
        if Compression::from_media_type(&l.media_type).is_none() {
            bail!(
                "the cache has a layer of unknown media type `{}`",
                l.media_type
            );
        }
    }
    // Snapshots made by this import, by the layer chain (indexes bottom-up) they hold.
    let mut made: HashMap<Vec<usize>, SnapshotId> = HashMap::new();
    let mut imported = 0;
    let mut failed = 0;
    let mut first_error: Option<anyhow::Error> = None;
    for rec in &config.records {
        if let Some(hit) = store.index().get(&rec.key)? {
            if hit
                .snapshot
                .is_none_or(|s| store.snapshots().fs_dir(s).is_dir())
            {
                continue;
            }
        }
        // The snapshots this record makes, removed (newest first) if it fails half-way: they
        // would be named by nothing. The other records are still imported.
        let mut pending: Vec<SnapshotId> = Vec::new();
        let top = import_record(store, source, config, rec, &mut made, &mut pending);
        let top = match top {
            Ok(top) => top,
            Err(e) => {
                made.retain(|_, s| !pending.contains(s));
                for s in pending.iter().rev() {
                    if let Err(r) = store.snapshots().remove(*s) {
                        tracing::warn!("cannot remove snapshot {s} of a failed cache import: {r}");
                    }
                }
                failed += 1;
                first_error.get_or_insert(e);
                continue;
            }
        };
        store.index().put(
            &rec.key,
            &CachedResult {
                snapshot: top,
                created_unix: rec.created_unix,
            },
        )?;
        imported += 1;
    }
    match first_error {
        Some(e) => Err(e.context(format!(
            "{failed} of its {} steps could not be imported",
            config.records.len()
        ))),
        None => Ok(imported),
    }
}

/// Makes the (lazy) snapshot chain of one record, reusing what this import or an earlier pull
/// made (a snapshot is named by the chain ID of its layers' diff IDs, as pulled images' are).
fn import_record(
    store: &Store,
    source: &Source<'_>,
    config: &CacheConfig,
    rec: &StepRecord,
    made: &mut HashMap<Vec<usize>, SnapshotId>,
    pending: &mut Vec<SnapshotId>,
) -> Result<Option<SnapshotId>> {
    let mut parent: Option<SnapshotId> = None;
    let mut chain_id = String::new();
    for n in 1..=rec.layers.len() {
        let prefix = &rec.layers[..n];
        let l = config
            .layers
            .get(prefix[n - 1])
            .context("a cache record names a layer the cache does not have")?;
        chain_id = if chain_id.is_empty() {
            l.diff_id.clone()
        } else {
            sha256_of(format!("{chain_id} {}", l.diff_id).as_bytes())
        };
        if let Some(&s) = made.get(prefix) {
            parent = Some(s);
            continue;
        }
        let chain_key = format!("layerchain:{chain_id}");
        let known = store
            .index()
            .meta_get(&chain_key)?
            .and_then(|id| id.parse::<u64>().ok())
            .map(SnapshotId)
            .filter(|s| store.snapshots().fs_dir(*s).is_dir());
        let snap = match known {
            Some(s) => s,
            None => {
                source.check_blob(l)?;
                let layer = LazyLayer {
                    digest: l.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                    image: l.image,
                };
                let snap = kiln_solver::lazy::create(store, parent, &layer, &source.blob_source())?;
                pending.push(snap);
                if l.image {
                    store.index().meta_put(&chain_key, &snap.0.to_string())?;
                }
                snap
            }
        };
        made.insert(prefix.to_vec(), snap);
        parent = Some(snap);
    }
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_specs_parse_as_buildkit_names_them() {
        let s =
            parse_cache_spec("type=registry,ref=r:5/c:t,mode=max,ignore-error=true", true).unwrap();
        assert_eq!(s.location, CacheLocation::Registry("r:5/c:t".into()));
        assert!(s.mode_max && s.ignore_error);
        let s = parse_cache_spec("type=local,dest=/tmp/c", true).unwrap();
        assert_eq!(
            s.location,
            CacheLocation::Local {
                dir: "/tmp/c".into(),
                tag: "latest".into(),
                digest: None,
            }
        );
        assert!(!s.mode_max);
        let d = format!("sha256:{}", "ab".repeat(32));
        let s = parse_cache_spec(&format!("type=local,src=/c,digest={d}"), false).unwrap();
        assert_eq!(
            s.location,
            CacheLocation::Local {
                dir: "/c".into(),
                tag: "latest".into(),
                digest: Some(d),
            }
        );
        assert!(parse_cache_spec("type=local,src=/c,digest=sha256:../x", false).is_err());
        let s = parse_cache_spec("r:5/img:1", false).unwrap();
        assert_eq!(s.location, CacheLocation::Registry("r:5/img:1".into()));
        let s = parse_cache_spec(
            "type=registry,ref=x,compression=zstd,compression-level=9,oci-mediatypes=true,image-manifest=true",
            true,
        )
        .unwrap();
        assert_eq!(
            (s.compression, s.compression_level),
            (Compression::Zstd, Some(9))
        );
        let s = parse_cache_spec(
            "type=registry,ref=x,image-manifest=false,oci-mediatypes=false",
            true,
        )
        .unwrap();
        assert!(!s.image_manifest && !s.oci_mediatypes);
        for bad in [
            "type=registry,ref=x,image-manifest=false,oci-mediatypes=false,compression=zstd",
            "type=registry,ref=x,image-manifest=maybe",
            "type=registry,ref=x,oci-mediatypes=false",
            "type=registry,ref=x,compression-level=high",
            "type=local,src=/x",
            "type=registry",
            "type=s3,ref=x",
            "type=registry,ref=x,mode=mid",
            "type=registry,ref=x,color=blue",
        ] {
            assert!(parse_cache_spec(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn inline_records_name_a_prefix_of_the_image_layers() {
        let ids = |v: &[u64]| v.iter().map(|&i| SnapshotId(i)).collect::<Vec<_>>();
        let image = ids(&[3, 7, 9]);
        assert_eq!(inline_layers(&ids(&[3]), &image), Some(vec![0]));
        assert_eq!(inline_layers(&ids(&[3, 7, 9]), &image), Some(vec![0, 1, 2]));
        assert_eq!(inline_layers(&[], &image), Some(vec![]));
        // Not a prefix (another base, or a longer chain): left out.
        assert_eq!(inline_layers(&ids(&[7, 9]), &image), None);
        assert_eq!(inline_layers(&ids(&[3, 8]), &image), None);
        assert_eq!(inline_layers(&ids(&[3, 7, 9, 11]), &image), None);
    }

    #[test]
    fn inline_config_maps_indexes_to_the_manifest_and_skips_out_of_range() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = serde_json::json!({
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('a'), "size": 10},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('b'), "size": 20},
            ]
        });
        let config = serde_json::json!({
            "rootfs": {"type": "layers", "diff_ids": [d('c'), d('e')]},
            INLINE_KEY: {
                "records": [
                    {"key": "k1", "created_unix": 5, "layers": [0]},
                    {"key": "k2", "created_unix": 6, "layers": [0, 1]},
                    {"key": "k3", "created_unix": 7, "layers": [0, 1, 2]},
                    {"key": "k4", "created_unix": 8, "layers": [18446744073709551615u64]},
                ],
                "image_layers": [0],
            },
        });
        let (cache, warnings) = inline_config(&manifest, &config).unwrap();
        assert_eq!(cache.layers.len(), 2);
        assert_eq!(
            (
                cache.layers[1].digest.as_str(),
                cache.layers[1].diff_id.as_str(),
                cache.layers[1].size
            ),
            (d('b').as_str(), d('e').as_str(), 20)
        );
        assert!(cache.layers[0].image && !cache.layers[1].image);
        let keys: Vec<&str> = cache.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("`k3`"), "{warnings:?}");

        // No field: not a cache, and the message says how to make one.
        let plain = serde_json::json!({"rootfs": {"diff_ids": [d('c'), d('e')]}});
        let e = inline_config(&manifest, &plain).err().unwrap();
        assert!(format!("{e:#}").contains("--cache-to type=inline"), "{e:#}");
        // Layers and diff IDs that disagree are refused, not indexed.
        let short =
            serde_json::json!({"rootfs": {"diff_ids": [d('c')]}, INLINE_KEY: {"records": []}});
        assert!(inline_config(&manifest, &short).is_err());
    }

    #[test]
    fn inline_is_a_cache_to_type() {
        assert_eq!(
            parse_cache_spec("type=inline", true).unwrap().location,
            CacheLocation::Inline
        );
        assert!(parse_cache_spec("type=inline", false).is_err());
        let mut w = Vec::new();
        let to = vec![parse_cache_spec("type=inline,mode=max", true).unwrap()];
        assert!(!inline_wanted(&to, &[], &[], &mut w));
        assert_eq!(w.len(), 1, "{w:?}");
        w.clear();
        assert!(inline_wanted(&to, &["a:1".to_string()], &[], &mut w));
        assert!(w[0].contains("mode=min"), "{w:?}");
    }

    #[test]
    fn blob_paths_stay_in_the_layout() {
        assert!(blob_path(Path::new("/c"), "sha256:../../etc/passwd").is_err());
        assert!(blob_path(Path::new("/c"), &format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
