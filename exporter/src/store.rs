//! The thin layer between this crate's path- and writer-based core and the kiln-cache store.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_cache::{ImageRecord, LayerInfo, SnapshotId, Store};
use oci_spec::image::ImageConfiguration;

use crate::error::ExportError;
use crate::image::{
    config_bytes_with_extras, config_bytes_with_fields, manifest_bytes, ImageDescriptor,
    DOCKER_MANIFEST, MEDIA_MANIFEST,
};
use crate::layer::{pipe_layer, Compression, LayerBlob, LayerOptions};
use crate::{docker, layout, rootfs};

/// Which media types an image's manifest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// OCI image spec media types (the default).
    #[default]
    Oci,
    /// Docker schema2 media types (`--oci-mediatypes=false`); gzip or uncompressed layers only.
    Docker,
}

/// The key a layer blob is recorded under for a snapshot: its media type, plus the level and
/// epoch when they are not the defaults, since both change the bytes, and the differ's version
/// (blobs recorded before layers left out what the lower layers have are not reused).
fn record_key(opts: &LayerOptions) -> String {
    let mut key = opts.compression.media_type().to_string();
    key.push_str(";kiln.differ=1");
    if let Some(l) = opts.level {
        key.push_str(&format!(";kiln.level={l}"));
    }
    if let Some(e) = opts.source_date_epoch {
        key.push_str(&format!(";kiln.epoch={e}"));
    }
    key
}

/// The tar of an empty directory: just the two end-of-archive blocks.
fn is_empty_tar_diff_id(diff_id: &str) -> bool {
    // sha256 of 1024 zero bytes.
    diff_id == "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
}

/// Tars, compresses and stores a snapshot's own changes as a layer blob.
///
/// The result is recorded per (snapshot, media type), and a recorded blob that is still in the
/// content store is returned without reading the snapshot again.
pub fn export_layer(
    store: &Store,
    snapshot: SnapshotId,
    opts: &LayerOptions,
) -> Result<LayerBlob, ExportError> {
    let media_type = opts.compression.media_type();
    let key = record_key(opts);
    let known = store.snapshots().layers(snapshot)?;
    if let Some(l) = known.into_iter().find(|l| l.media_type == key) {
        if store.content().has(&l.digest) {
            return Ok(LayerBlob {
                empty: is_empty_tar_diff_id(&l.diff_id),
                diff_id: l.diff_id,
                digest: l.digest,
                size: l.size,
                media_type: media_type.to_string(),
            });
        }
    }
    let dir = store.snapshots().fs_dir(snapshot);
    // A layer holds only what its lower layers do not have already, as BuildKit's differ makes it.
    let lowers: Vec<PathBuf> = store
        .snapshots()
        .diff_lowers(snapshot)?
        .into_iter()
        .map(|s| store.snapshots().fs_dir(s))
        .collect();
    // The blob writer hashes what it stores: the pipe need not hash the blob a second time.
    let writer = store.content().writer()?;
    let piped = pipe_layer(&dir, Some(&lowers), writer, opts, false)?;
    let (digest, size) = piped.out.commit(None)?;
    let blob = LayerBlob {
        diff_id: piped.diff_id.unwrap_or_else(|| digest.clone()),
        digest,
        size,
        media_type: media_type.to_string(),
        empty: piped.empty,
    };
    store.snapshots().set_layer(
        snapshot,
        LayerInfo {
            diff_id: blob.diff_id.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: key,
        },
    )?;
    Ok(blob)
}

/// Stores the config and manifest of an image. `config.rootfs` must list the layers' diffIDs in
/// order (see [`crate::fill_rootfs`]).
pub fn write_image(
    store: &Store,
    config: &ImageConfiguration,
    layers: &[LayerBlob],
) -> Result<ImageDescriptor, ExportError> {
    write_image_with_extras(store, config, &serde_json::Map::new(), layers)
}

/// [`write_image`] with extra `config` fields that oci-spec cannot represent (`Healthcheck`,
/// `OnBuild`, `Shell`, `ArgsEscaped`), merged in before the config is hashed.
pub fn write_image_with_extras(
    store: &Store,
    config: &ImageConfiguration,
    extras: &serde_json::Map<String, serde_json::Value>,
    layers: &[LayerBlob],
) -> Result<ImageDescriptor, ExportError> {
    write_image_as(store, config, extras, layers, ManifestFormat::Oci)
}

/// [`write_image_with_extras`] with the manifest's media types chosen by `format`.
pub fn write_image_as(
    store: &Store,
    config: &ImageConfiguration,
    extras: &serde_json::Map<String, serde_json::Value>,
    layers: &[LayerBlob],
    format: ManifestFormat,
) -> Result<ImageDescriptor, ExportError> {
    let oci = format == ManifestFormat::Oci;
    let config = config_bytes_with_extras(config, extras, layers)?;
    write_config_and_manifest(store, &config, layers, oci)
}

/// [`write_image_with_extras`] with fields `top` on the config's top level too (kiln's inline
/// build cache, `kiln.cache.v1`).
pub fn write_image_with_fields(
    store: &Store,
    config: &ImageConfiguration,
    extras: &serde_json::Map<String, serde_json::Value>,
    top: &serde_json::Map<String, serde_json::Value>,
    layers: &[LayerBlob],
) -> Result<ImageDescriptor, ExportError> {
    let config = config_bytes_with_fields(config, extras, top, layers)?;
    write_config_and_manifest(store, &config, layers, true)
}

fn write_config_and_manifest(
    store: &Store,
    config: &[u8],
    layers: &[LayerBlob],
    oci: bool,
) -> Result<ImageDescriptor, ExportError> {
    let (config_digest, config_size) = store.content().put_bytes(config)?;
    let manifest = manifest_bytes(&config_digest, config_size, layers, oci)?;
    let (manifest_digest, manifest_size) = store.content().put_bytes(&manifest)?;
    Ok(ImageDescriptor {
        manifest_digest,
        manifest_size,
        config_digest,
        media_type: if oci { MEDIA_MANIFEST } else { DOCKER_MANIFEST }.to_string(),
    })
}

/// Names an image in the local image store.
pub fn tag_image(
    store: &Store,
    name: &str,
    image: &ImageDescriptor,
    created: Option<String>,
) -> Result<(), ExportError> {
    store.images().put(&ImageRecord {
        name: name.to_string(),
        digest: image.manifest_digest.clone(),
        size: image.manifest_size,
        media_type: image.media_type.clone(),
        created,
    })?;
    Ok(())
}

fn lookup(store: &Store) -> impl Fn(&str) -> Result<PathBuf, ExportError> + '_ {
    move |digest| {
        if !store.content().has(digest) {
            return Err(ExportError::MissingBlob {
                digest: digest.to_string(),
            });
        }
        Ok(store.content().path(digest)?)
    }
}

/// Writes the image as an OCI layout tar (`oci-archive:`) to `dest`, or to stdout for `-`,
/// listed once under each of `names` (full, normalised names such as
/// `docker.io/library/app:1`): `ref.name` is the tag, `io.containerd.image.name` the name.
pub fn write_oci_archive(
    store: &Store,
    image: &ImageDescriptor,
    names: &[&str],
    dest: &Path,
) -> Result<(), ExportError> {
    layout::write_archive(&lookup(store), image, names, dest)
}

/// Adds the image to the OCI layout directory `dest` (created when missing), named as
/// [`write_oci_archive`] names it.
pub fn write_oci_dir(
    store: &Store,
    image: &ImageDescriptor,
    names: &[&str],
    dest: &Path,
) -> Result<(), ExportError> {
    layout::write_dir(&lookup(store), image, names, dest)
}

/// Runs `write` against `dest` (atomically: a temporary file in the same directory, synced and
/// renamed) or against stdout when `dest` is `-`.
fn write_dest(
    dest: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let what = || format!("`{}`", dest.display());
    if dest == Path::new("-") {
        let mut out = BufWriter::new(io::stdout().lock());
        write(&mut out)?;
        return out.flush().map_err(|e| ExportError::write("to stdout", e));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-out-")
        .tempfile_in(parent)
        .map_err(|e| ExportError::write(what(), e))?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        write(&mut out)?;
        out.flush().map_err(|e| ExportError::write(what(), e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| ExportError::write(what(), e))?;
    tmp.persist(dest)
        .map_err(|e| ExportError::write(what(), e.error))?;
    Ok(())
}

/// Writes the image as a docker-archive (`docker load`, `skopeo docker-archive:`) to `dest`, or
/// to stdout for `-`. `tags` become its `RepoTags`.
pub fn write_docker_archive(
    store: &Store,
    image: &ImageDescriptor,
    tags: &[String],
    dest: &Path,
) -> Result<(), ExportError> {
    save_docker_archive(store, &[(image.clone(), tags.to_vec())], dest)
}

/// Writes several images, each with its names (`RepoTags`), as one docker-archive to `dest` (or
/// stdout for `-`), as `docker save IMAGE...` does: shared layers and configs are written once.
pub fn save_docker_archive(
    store: &Store,
    images: &[(ImageDescriptor, Vec<String>)],
    dest: &Path,
) -> Result<(), ExportError> {
    if let Some((image, _)) = images
        .iter()
        .find(|(i, _)| crate::image::is_index(&i.media_type))
    {
        // As BuildKit's docker exporter, which refuses manifest lists.
        return Err(ExportError::Oci {
            what: format!("the docker archive of `{}`", image.manifest_digest),
            detail: "a docker archive holds one platform's image: export a multi-platform image with `type=oci`".into(),
        });
    }
    let tmp = store.tmp_dir();
    std::fs::create_dir_all(&tmp)
        .map_err(|e| ExportError::write(format!("`{}`", tmp.display()), e))?;
    write_dest(dest, |out| {
        docker::docker_archive_to(&lookup(store), images, &tmp, out).map(|_| ())
    })
}

/// Writes the final file system of a snapshot chain (bottom first) into the directory `dest`.
pub fn write_rootfs(store: &Store, chain: &[SnapshotId], dest: &Path) -> Result<(), ExportError> {
    let dirs: Vec<PathBuf> = chain.iter().map(|s| store.snapshots().fs_dir(*s)).collect();
    rootfs::apply_layers(&dirs, dest)
}

/// Writes the final file system of a snapshot chain as one deterministic tar to `dest` (or
/// stdout for `-`), with mtimes clamped to `source_date_epoch` when given.
pub fn write_rootfs_tar(
    store: &Store,
    chain: &[SnapshotId],
    dest: &Path,
    source_date_epoch: Option<i64>,
) -> Result<(), ExportError> {
    tar_of_staged(store, dest, source_date_epoch, |staging| {
        write_rootfs(store, chain, staging)
    })
}

/// Makes a file system in a staging directory of the store's `tmp/` with `fill`, then writes
/// it as one plain tar to `dest` (or stdout for `-`), mtimes clamped to `source_date_epoch`.
fn tar_of_staged(
    store: &Store,
    dest: &Path,
    source_date_epoch: Option<i64>,
    fill: impl FnOnce(&Path) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let tmp = store.tmp_dir();
    std::fs::create_dir_all(&tmp)
        .map_err(|e| ExportError::write(format!("`{}`", tmp.display()), e))?;
    let staging = tempfile::Builder::new()
        .prefix(".kiln-rootfs-")
        .tempdir_in(&tmp)
        .map_err(|e| ExportError::write(format!("`{}`", tmp.display()), e))?;
    fill(staging.path())?;
    let opts = LayerOptions {
        compression: Compression::Uncompressed,
        source_date_epoch,
        level: None,
    };
    write_dest(dest, |out| {
        crate::layer::write_layer_tar(staging.path(), out, &opts)
    })
}

/// Writes the final file systems of several platforms' images as one tar to `dest` (or stdout
/// for `-`), each under its own top directory (`linux_amd64/`, named by the caller), as
/// BuildKit's tar exporter splits a multi-platform build. Each top directory is 0755 with the
/// mtime `source_date_epoch` (or 0), as BuildKit makes it; mtimes below are clamped as in
/// [`write_rootfs_tar`].
pub fn write_split_rootfs_tar(
    store: &Store,
    parts: &[(String, Vec<SnapshotId>)],
    dest: &Path,
    source_date_epoch: Option<i64>,
) -> Result<(), ExportError> {
    tar_of_staged(store, dest, source_date_epoch, |staging| {
        write_split_rootfs(store, parts, staging, source_date_epoch)
    })
}

/// Writes the final file systems of several platforms' images into `dest`, each in its own
/// directory (`dest/linux_amd64`, named by the caller), as BuildKit's local exporter splits a
/// multi-platform build: each directory 0755 with the mtime `source_date_epoch` (or 0).
pub fn write_split_rootfs(
    store: &Store,
    parts: &[(String, Vec<SnapshotId>)],
    dest: &Path,
    source_date_epoch: Option<i64>,
) -> Result<(), ExportError> {
    for (name, chain) in parts {
        let dir = dest.join(name);
        write_rootfs(store, chain, &dir)?;
        split_dir_metadata(&dir, source_date_epoch)
            .map_err(|e| ExportError::write(format!("`{}`", dir.display()), e))?;
    }
    Ok(())
}

/// BuildKit's platform directory: mode 0755, mtime the epoch or 0, whatever the image's root has.
fn split_dir_metadata(dir: &Path, source_date_epoch: Option<i64>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let secs = u64::try_from(source_date_epoch.unwrap_or(0)).unwrap_or(0);
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    std::fs::File::open(dir)?.set_times(
        std::fs::FileTimes::new()
            .set_modified(mtime)
            .set_accessed(mtime),
    )
}
