//! Images as they travel: the local store keeps the layers a build makes uncompressed (as
//! Docker's and Buildah's stores do), so a build never waits on a compressor; a push or an image
//! archive asks for a variant with compressed layers. Each compressed layer is made once per
//! (diffID, compression, level) and found again in the store afterwards, so pushing or exporting
//! an unchanged layer a second time costs nothing. The config, and with it the image ID, is the
//! same in every variant: only the manifest's layer descriptors differ.

use std::fs::File;
use std::io::{self, BufReader, Write};

use kiln_cache::Store;

use crate::error::ExportError;
use crate::image::{manifest_bytes, parse_manifest, ImageDescriptor, DOCKER_MANIFEST};
use crate::layer::{Compression, Compressor, HashingWriter, LayerBlob, LayerOptions};
use crate::stage::{Staged, STAGE};
use crate::store::ManifestFormat;
use crate::tarw::{ReadInto, SinkError};

/// What a variant of an image should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VariantOptions {
    /// The compression of layers kept uncompressed in the store.
    pub compression: Compression,
    /// Compression level; `None` is gzip 6 / zstd 3.
    pub level: Option<i32>,
    /// Re-compress layers that are compressed another way too (`force-compression=true`);
    /// otherwise layers pulled compressed stay as they were pulled.
    pub force: bool,
    pub format: ManifestFormat,
}

/// The key under which the compressed form of a layer is recorded in the store's index. Its
/// value is `DIGEST SIZE`, which is not a bare digest, so garbage collection does not keep the
/// blob for the record's sake: a collected variant is made again when next needed.
fn variant_key(diff_id: &str, compression: Compression, level: Option<i32>) -> String {
    let level = level.map_or_else(|| "default".to_string(), |l| l.to_string());
    format!(
        "layer-variant:{diff_id}:{}:{level}",
        compression.media_type()
    )
}

/// `blob` compressed as asked: `blob` itself when it already is (or is compressed otherwise and
/// `force` is off), else the recorded variant, else a new one made from `blob` and recorded.
pub fn layer_variant(
    store: &Store,
    blob: &LayerBlob,
    opts: &VariantOptions,
) -> Result<LayerBlob, ExportError> {
    let from = Compression::from_media_type(&blob.media_type).ok_or_else(|| ExportError::Oci {
        what: format!("layer `{}`", blob.digest),
        detail: format!("unknown layer media type `{}`", blob.media_type),
    })?;
    if from == opts.compression || (from != Compression::Uncompressed && !opts.force) {
        return Ok(blob.clone());
    }
    if let Some(empty) = empty_gzip_layer(store, blob, from, opts)? {
        return Ok(empty);
    }
    let key = variant_key(&blob.diff_id, opts.compression, opts.level);
    if let Some(value) = store.index().meta_get(&key)? {
        let known = value
            .split_once(' ')
            .and_then(|(d, s)| Some((d.to_string(), s.parse::<u64>().ok()?)));
        if let Some((digest, size)) = known {
            if store.content().has(&digest) {
                return Ok(LayerBlob {
                    diff_id: blob.diff_id.clone(),
                    digest,
                    size,
                    media_type: opts.compression.media_type().to_string(),
                    empty: blob.empty,
                });
            }
        }
    }
    let converted = recompress(store, blob, from, opts)?;
    store
        .index()
        .meta_put(&key, &format!("{} {}", converted.digest, converted.size))?;
    Ok(converted)
}

/// The diffID of the empty tar (1024 zero bytes): the layer of a step that changed nothing.
const EMPTY_TAR_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// The empty tar as Go's gzip writer compresses it (default level), the blob
/// `sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1` that BuildKit's and
/// Docker's images share and that registries already hold.
const EMPTY_TAR_GZIP: [u8; 32] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x62, 0x18, 0x05, 0xa3, 0x60, 0x14,
    0x8c, 0x58, 0x00, 0x08, 0x00, 0x00, 0xff, 0xff, 0x2e, 0xaf, 0xb5, 0xef, 0x00, 0x04, 0x00, 0x00,
];

/// An uncompressed empty layer gzipped at the default level gets BuildKit's empty blob rather
/// than our compressor's (valid, but with other bytes), so its digest is the one BuildKit gives.
fn empty_gzip_layer(
    store: &Store,
    blob: &LayerBlob,
    from: Compression,
    opts: &VariantOptions,
) -> Result<Option<LayerBlob>, ExportError> {
    if from != Compression::Uncompressed
        || opts.compression != Compression::Gzip
        || opts.level.is_some()
        || blob.diff_id != EMPTY_TAR_DIFF_ID
        || blob.size != 1024
    {
        return Ok(None);
    }
    // The config says the blob is the empty tar; the blob itself must agree.
    if blob.digest != EMPTY_TAR_DIFF_ID {
        return Ok(None);
    }
    let (digest, size) = store.content().put_bytes(&EMPTY_TAR_GZIP)?;
    Ok(Some(LayerBlob {
        diff_id: blob.diff_id.clone(),
        digest,
        size,
        media_type: Compression::Gzip.media_type().to_string(),
        empty: blob.empty,
    }))
}

/// Decompresses `blob` (when compressed) and compresses it as asked into a new store blob,
/// checking that the tar inside is the one its diffID names.
fn recompress(
    store: &Store,
    blob: &LayerBlob,
    from: Compression,
    opts: &VariantOptions,
) -> Result<LayerBlob, ExportError> {
    if !store.content().has(&blob.digest) {
        return Err(ExportError::MissingBlob {
            digest: blob.digest.clone(),
        });
    }
    let path = store.content().path(&blob.digest)?;
    let file = File::open(&path).map_err(|e| ExportError::read("open", &path, e))?;
    // A small buffer: reads of a whole stage (most of them) bypass it and land in the stage
    // buffer directly.
    // The blob is hashed as it is read: a corrupt one is named as such, in the same pass.
    let mut verifying =
        kiln_cache::VerifyingReader::new(BufReader::with_capacity(64 * 1024, file), &blob.digest);
    let mut src = crate::docker::decompressor(from, &mut verifying)
        .map_err(|e| ExportError::read("decompress", &path, e))?;
    let werr = |e| ExportError::write("the compressed layer blob", e);
    let layer_opts = LayerOptions {
        compression: opts.compression,
        source_date_epoch: None,
        level: opts.level,
    };
    let scoped = std::thread::scope(|s| {
        // The store's blob writer hashes what it stores; the tar's hash (the diffID check) runs
        // on a helper thread.
        let comp = Compressor::new(&layer_opts, store.content().writer()?).map_err(werr)?;
        let mut tee = Staged::spawn(s, comp, HashingWriter::new(io::sink()));
        loop {
            match tee.read_into(&mut src, STAGE) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_sink_error(&e) => return Err(werr(e)),
                Err(e) => return Err(ExportError::read("decompress", &path, e)),
            }
        }
        let (comp, diff) = tee.finish().map_err(werr)?;
        let (diff_id, _, _) = diff.finish();
        let mut writer = comp.finish().map_err(werr)?;
        writer.flush().map_err(werr)?;
        Ok::<_, ExportError>((diff_id, writer))
    });
    drop(src);
    // A corrupt blob explains any error above (a tar or gzip that does not parse) best.
    verifying.finish()?;
    let (diff_id, writer) = scoped?;
    if diff_id != blob.diff_id {
        return Err(ExportError::DiffIdMismatch {
            index: 0,
            config: blob.diff_id.clone(),
            layer: diff_id,
        });
    }
    let (digest, size) = writer.commit(None)?;
    Ok(LayerBlob {
        diff_id,
        digest,
        size,
        media_type: opts.compression.media_type().to_string(),
        empty: blob.empty,
    })
}

fn is_sink_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SinkError>())
}

/// The diffIDs a stored config lists, in order.
fn diff_ids(store: &Store, config_digest: &str) -> Result<Vec<String>, ExportError> {
    let bytes = store.content().read_verified(config_digest)?;
    let config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ExportError::OciData {
            what: format!("config `{config_digest}`"),
            cause: Box::new(e),
        })?;
    Ok(config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// The image with its layers compressed as `opts` asks (see [`layer_variant`]) and the manifest
/// media types of `opts.format`. Returns `image` itself when nothing would change; otherwise the
/// new manifest is stored beside the old one, with the same config.
pub fn image_variant(
    store: &Store,
    image: &ImageDescriptor,
    opts: &VariantOptions,
) -> Result<ImageDescriptor, ExportError> {
    let manifest = store.content().read_verified(&image.manifest_digest)?;
    if crate::image::is_index(&image.media_type) {
        return index_variant(store, image, &manifest, opts);
    }
    let descs = parse_manifest(&manifest, &image.manifest_digest)?;
    let Some(((_, config_digest, config_size), layers)) = descs.split_first() else {
        return Err(ExportError::Oci {
            what: format!("manifest `{}`", image.manifest_digest),
            detail: "it has no config".into(),
        });
    };
    let ids = diff_ids(store, config_digest)?;
    if ids.len() != layers.len() {
        return Err(ExportError::LayerCount {
            config: ids.len(),
            layers: layers.len(),
        });
    }
    let blobs: Vec<LayerBlob> = layers
        .iter()
        .zip(ids)
        .map(|((media_type, digest, size), diff_id)| LayerBlob {
            diff_id,
            digest: digest.clone(),
            size: *size,
            media_type: media_type.clone(),
            empty: false,
        })
        .collect();
    let converted: Vec<LayerBlob> = {
        use rayon::prelude::*;
        blobs
            .par_iter()
            .map(|b| layer_variant(store, b, opts))
            .collect::<Result<_, _>>()?
    };
    let oci = opts.format == ManifestFormat::Oci;
    let media_type = if oci {
        crate::image::MEDIA_MANIFEST
    } else {
        DOCKER_MANIFEST
    };
    let same_type = image.media_type == media_type || (oci && image.media_type.is_empty());
    // A layer recorded under the other kind's media type (a base pulled with Docker types, in
    // an OCI manifest) needs a new manifest even when no blob changes.
    let layer_types_fit = converted
        .iter()
        .map(|b| Ok(crate::image::layer_type_for(&b.media_type, oci)? == b.media_type))
        .collect::<Result<Vec<bool>, ExportError>>()?
        .into_iter()
        .all(|fits| fits);
    if same_type && layer_types_fit && converted == blobs {
        return Ok(image.clone());
    }
    let bytes = manifest_bytes(config_digest, *config_size, &converted, oci)?;
    let (manifest_digest, manifest_size) = store.content().put_bytes(&bytes)?;
    Ok(ImageDescriptor {
        manifest_digest,
        manifest_size,
        config_digest: config_digest.clone(),
        media_type: media_type.to_string(),
    })
}

/// [`image_variant`] of each platform's image of an index, under a new index when any changed
/// (or the index's own media type does not fit `opts.format`).
fn index_variant(
    store: &Store,
    image: &ImageDescriptor,
    bytes: &[u8],
    opts: &VariantOptions,
) -> Result<ImageDescriptor, ExportError> {
    let entries = crate::image::index_entries(bytes, &image.manifest_digest)?;
    if let Some(nested) = entries
        .iter()
        .find(|e| crate::image::is_index(&e.media_type))
    {
        return Err(ExportError::Oci {
            what: format!("index `{}`", image.manifest_digest),
            detail: format!(
                "it holds another index (`{}`), which kiln does not export",
                nested.manifest_digest
            ),
        });
    }
    let converted = entries
        .iter()
        .map(|e| image_variant(store, e, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let wanted = match opts.format {
        ManifestFormat::Oci => crate::image::MEDIA_INDEX,
        ManifestFormat::Docker => crate::image::DOCKER_MANIFEST_LIST,
    };
    let unchanged = converted
        .iter()
        .zip(&entries)
        .all(|(c, e)| c.manifest_digest == e.manifest_digest);
    if unchanged && image.media_type == wanted {
        return Ok(image.clone());
    }
    crate::image_index::write_image_index(store, &converted, opts.format)
}
