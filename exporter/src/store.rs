//! The thin layer between this crate's path- and writer-based core and the kiln-cache store.

use std::path::{Path, PathBuf};

use kiln_cache::{ImageRecord, LayerInfo, SnapshotId, Store};
use oci_spec::image::ImageConfiguration;

use crate::error::ExportError;
use crate::image::{config_bytes_with_extras, manifest_bytes, ImageDescriptor, MEDIA_MANIFEST};
use crate::layer::{write_layer_blob, LayerBlob, LayerOptions};
use crate::layout;

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
    // A clamped epoch changes the bytes, so only reuse layers built the same way: the record
    // is keyed by media type alone, and we check the epoch is not in play.
    if opts.source_date_epoch.is_none() {
        let known = store.snapshots().layers(snapshot)?;
        if let Some(l) = known.into_iter().find(|l| l.media_type == media_type) {
            if store.content().has(&l.digest) {
                return Ok(LayerBlob {
                    empty: is_empty_tar_diff_id(&l.diff_id),
                    diff_id: l.diff_id,
                    digest: l.digest,
                    size: l.size,
                    media_type: l.media_type,
                });
            }
        }
    }
    let dir = store.snapshots().fs_dir(snapshot);
    let writer = store.content().writer()?;
    let (blob, writer) = write_layer_blob(&dir, writer, opts)?;
    let (digest, size) = writer.commit(Some(&blob.digest))?;
    let blob = LayerBlob {
        digest,
        size,
        ..blob
    };
    if opts.source_date_epoch.is_none() {
        store.snapshots().set_layer(
            snapshot,
            LayerInfo {
                diff_id: blob.diff_id.clone(),
                digest: blob.digest.clone(),
                size: blob.size,
                media_type: blob.media_type.clone(),
            },
        )?;
    }
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
    let config = config_bytes_with_extras(config, extras, layers)?;
    let (config_digest, config_size) = store.content().put_bytes(&config)?;
    let manifest = manifest_bytes(&config_digest, config_size, layers)?;
    let (manifest_digest, manifest_size) = store.content().put_bytes(&manifest)?;
    Ok(ImageDescriptor {
        manifest_digest,
        manifest_size,
        config_digest,
        media_type: MEDIA_MANIFEST.to_string(),
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

/// Writes the image as an OCI layout tar (`oci-archive:`) to `dest`, or to stdout for `-`.
pub fn write_oci_archive(
    store: &Store,
    image: &ImageDescriptor,
    name: Option<&str>,
    dest: &Path,
) -> Result<(), ExportError> {
    layout::write_archive(&lookup(store), image, name, dest)
}

/// Adds the image to the OCI layout directory `dest` (created when missing).
pub fn write_oci_dir(
    store: &Store,
    image: &ImageDescriptor,
    name: Option<&str>,
    dest: &Path,
) -> Result<(), ExportError> {
    layout::write_dir(&lookup(store), image, name, dest)
}
