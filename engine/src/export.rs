//! From a solved build (or an imported rootfs) to an image in the store: layers for each snapshot
//! of the result's chain, the config with its history and diff IDs, and the manifest.

use crate::ImportRequest;
use anyhow::{bail, Context, Result};
use kiln_cache::{LayerInfo, SnapshotId, Store};
use kiln_exporter::{Compression, LayerBlob, LayerOptions};
use kiln_solver::Output;
use oci_spec::image::{ConfigBuilder, History, HistoryBuilder, ImageConfiguration, RootFsBuilder};
use std::io::Read;

/// An image written to the content store (layers uncompressed), with what it takes to write it
/// as a file system too.
#[derive(Clone)]
pub(crate) struct ExportedImage {
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub media_type: String,
    pub created: Option<String>,
    /// The result's snapshots, bottom first.
    pub chain: Vec<SnapshotId>,
    pub epoch: Option<i64>,
}

impl ExportedImage {
    pub(crate) fn descriptor(&self) -> kiln_exporter::ImageDescriptor {
        kiln_exporter::ImageDescriptor {
            manifest_digest: self.manifest_digest.clone(),
            manifest_size: self.manifest_size,
            config_digest: self.config_digest.clone(),
            media_type: self.media_type.clone(),
        }
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, when set (`kiln import`; builds also read it from
/// `--build-arg`).
fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

pub(crate) fn rfc3339(unix: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm): no date crate needed for one format.
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// The diff ID of the empty tar (a step that changed nothing).
const EMPTY_TAR_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// The layer of one snapshot. An image layer (pulled or imported) keeps its original blob; a
/// built one is exported uncompressed (once: the exporter records the blob per snapshot).
fn layer_of(store: &Store, snap: SnapshotId, epoch: Option<i64>) -> Result<LayerBlob> {
    if let Some(l) = kiln_solver::lazy::lazy_layer(store, snap)? {
        // A lazily imported cache layer not filled yet: the image names its blob as it is (an
        // image's config needs only the diff ID), and a push mounts it from where it is.
        return Ok(LayerBlob {
            empty: l.diff_id == EMPTY_TAR_DIFF_ID,
            diff_id: l.diff_id,
            digest: l.digest,
            size: l.size,
            media_type: l.media_type,
        });
    }
    if kiln_solver::images::is_image_layer(store, snap)? {
        // The blob the image came with: recorded under a plain media type (re-compressed
        // variants carry `;kiln.` parameters).
        let original = store
            .snapshots()
            .layers(snap)?
            .into_iter()
            .find(|l| !l.media_type.contains(';'));
        if let Some(l) = original {
            return Ok(LayerBlob {
                diff_id: l.diff_id,
                digest: l.digest,
                size: l.size,
                media_type: l.media_type,
                empty: false,
            });
        }
    }
    // Uncompressed in the local store, as Docker's and Buildah's stores keep layers: pushes and
    // image archives compress them (once per layer and compression, see `image_variant`).
    let opts = LayerOptions {
        compression: Compression::Uncompressed,
        source_date_epoch: epoch,
        level: None,
    };
    kiln_exporter::export_layer(store, snap, &opts)
        .with_context(|| format!("cannot export the layer of snapshot {snap}"))
}

/// Exports the solve's result as an image: layers bottom-up, paired with the history entries the
/// frontend marked as creating a layer.
pub(crate) async fn export_image(
    store: &Store,
    root: &Output,
    root_created_unix: u64,
    mut config: ImageConfiguration,
    extras: &serde_json::Map<String, serde_json::Value>,
    top: &serde_json::Map<String, serde_json::Value>,
    epoch: Option<i64>,
) -> Result<ExportedImage> {
    let chain: Vec<SnapshotId> = match root {
        Output::Scratch => vec![],
        Output::Snapshot(s) => {
            let mut c = store.snapshots().chain(*s)?;
            c.reverse();
            c
        }
        Output::Local(_) => bail!("the build's result is a local directory, not an image"),
    };
    let store2 = store.clone();
    let chain2 = chain.clone();
    // Layers compress in parallel across layers (and gzip/zstd in parallel within each).
    let layers: Vec<LayerBlob> = tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        chain2
            .par_iter()
            .map(|s| layer_of(&store2, *s, epoch))
            .collect::<Result<Vec<_>>>()
    })
    .await??;
    let created_unix = epoch.unwrap_or(root_created_unix as i64);
    let created = rfc3339(created_unix);

    // Every snapshot of the chain is a layer, even one whose step changed nothing: BuildKit
    // keeps such an empty layer (the empty tar), where Docker's legacy builder dropped it and
    // marked its history entry `empty_layer`. Steps that change only the config already have
    // entries marked `empty_layer` by the frontend, and no snapshot.
    let mut history: Vec<History> = config.history().clone().unwrap_or_default();
    let described = history
        .iter()
        .filter(|h| !h.empty_layer().unwrap_or(false))
        .count();
    for _ in described..layers.len() {
        // More layers than history: describe them rather than leave the image inconsistent.
        history.push(
            HistoryBuilder::default()
                .created_by("kiln build".to_string())
                .build()
                .context("cannot build a history entry")?,
        );
    }
    for h in history.iter_mut() {
        if h.created().is_none() {
            h.set_created(Some(created.clone()));
        }
    }
    config.set_history(Some(history));
    config.set_created(Some(created.clone()));
    let rootfs = RootFsBuilder::default()
        .typ("layers".to_string())
        .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
        .build()
        .context("cannot build the image rootfs")?;
    config.set_rootfs(rootfs);
    // Top-level fields (an inline build cache) only when asked for: every other image keeps
    // the config, and so the ID, it always had.
    let desc = if top.is_empty() {
        kiln_exporter::write_image_with_extras(store, &config, extras, &layers)?
    } else {
        kiln_exporter::write_image_with_fields(store, &config, extras, top, &layers)?
    };
    Ok(ExportedImage {
        manifest_digest: desc.manifest_digest,
        manifest_size: desc.manifest_size,
        config_digest: desc.config_digest,
        media_type: desc.media_type,
        created: Some(created),
        chain,
        epoch,
    })
}

/// `kiln import`: the source (directory or tar, possibly compressed) becomes one layer.
pub(crate) fn import(store: &Store, req: &ImportRequest) -> Result<ExportedImage> {
    let platform = match &req.platform {
        Some(p) => kiln_registry::Platform::parse(p).context("`kiln import --platform`")?,
        None => kiln_registry::Platform::host(),
    };
    let src = &req.source;
    let meta = std::fs::metadata(src).with_context(|| {
        format!(
            "cannot read `{}`: pass a root filesystem directory or tar file",
            src.display()
        )
    })?;
    let snap = if meta.is_dir() {
        // Tar the directory through a pipe into the extractor: one code path for both forms.
        let (reader, writer) = std::io::pipe().context("cannot make a pipe")?;
        let dir = src.clone();
        let tarrer = std::thread::spawn(move || {
            kiln_exporter::write_layer_tar(
                &dir,
                writer,
                &LayerOptions {
                    compression: Compression::Uncompressed,
                    source_date_epoch: None,
                    level: None,
                },
            )
        });
        let snap = store.snapshots().unpack_layer(None, reader);
        tarrer
            .join()
            .map_err(|_| anyhow::anyhow!("the tar writer panicked"))?
            .with_context(|| format!("cannot read `{}`", src.display()))?;
        snap?
    } else {
        let file =
            std::fs::File::open(src).with_context(|| format!("cannot open `{}`", src.display()))?;
        let mut r = std::io::BufReader::new(file);
        let mut magic = [0u8; 4];
        let n = r.read(&mut magic)?;
        let head = std::io::Cursor::new(magic[..n].to_vec()).chain(r);
        let reader: Box<dyn Read> = if magic[..2] == [0x1f, 0x8b] {
            Box::new(flate2::read::GzDecoder::new(head))
        } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
            Box::new(zstd::stream::read::Decoder::new(head)?)
        } else {
            Box::new(head)
        };
        store
            .snapshots()
            .unpack_layer(None, reader)
            .with_context(|| format!("`{}` is not a valid tar archive", src.display()))?
    };
    let epoch = source_date_epoch();
    let blob = layer_of(store, snap, epoch)?;
    // The exporter's records carry its own parameters; this blob is the image's own from
    // now on, recorded under its plain media type as a pulled layer's is.
    store.snapshots().set_layer(
        snap,
        LayerInfo {
            diff_id: blob.diff_id.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
        },
    )?;
    kiln_solver::images::mark_image_layer(store, snap)?;
    let created = rfc3339(epoch.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }));
    let mut cfg = ConfigBuilder::default()
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ])
        .build()
        .context("cannot build the image config")?;
    crate::changes::apply_changes(&mut cfg, &req.changes)?;
    let mut config = ImageConfiguration::default();
    config.set_config(Some(cfg));
    config.set_os(platform.os.as_str().into());
    config.set_architecture(platform.architecture.as_str().into());
    config.set_variant(platform.variant.clone());
    config.set_history(Some(vec![HistoryBuilder::default()
        .created(created.clone())
        .created_by(format!(
            "kiln import {}",
            src.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ))
        .comment("Imported from rootfs".to_string())
        .build()
        .context("cannot build a history entry")?]));
    config.set_created(Some(created.clone()));
    let rootfs = RootFsBuilder::default()
        .typ("layers".to_string())
        .diff_ids(vec![blob.diff_id.clone()])
        .build()
        .context("cannot build the image rootfs")?;
    config.set_rootfs(rootfs);
    let desc = kiln_exporter::write_image(store, &config, std::slice::from_ref(&blob))?;
    Ok(ExportedImage {
        manifest_digest: desc.manifest_digest,
        manifest_size: desc.manifest_size,
        config_digest: desc.config_digest,
        media_type: desc.media_type,
        created: Some(created),
        chain: vec![snap],
        epoch,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
