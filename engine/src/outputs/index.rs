//! Delivering a multi-platform build: one image per platform, tied together by an OCI image
//! index (or a Docker manifest list with `oci-mediatypes=false`) for the store, registries and
//! OCI layouts, and one directory per platform for `type=local` and `type=tar` (BuildKit's
//! platform split).

use anyhow::{bail, Context, Result};
use kiln_exporter::{ImageDescriptor, PlatformImage, VariantOptions};
use kiln_registry::Platform;

use super::{
    image_variant, variant_options, write_oci, Delivered, Destination, OciForm, OutputKind,
    OutputSpec,
};
use crate::export::ExportedImage;
use crate::{normalize_name, Engine, ImageRecord};

/// Refuses, before anything runs, the outputs that cannot hold several platforms.
pub(crate) fn check_multi_platform(outputs: &[OutputSpec], platforms: &[Platform]) -> Result<()> {
    let list = platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if outputs
        .iter()
        .any(|o| matches!(o.kind, OutputKind::DockerArchive { .. }))
    {
        bail!(
            "`--output type=docker` holds one platform's image, but this build is for \
             {list}: build one platform (e.g. `--platform {}`), or use `type=oci` or \
             `type=registry`, which keep every platform in one image index",
            platforms[0]
        );
    }
    Ok(())
}

/// Each platform's directory name in a split output (`linux_amd64`) and its snapshot chain.
fn split_parts(images: &[(Platform, ExportedImage)]) -> Vec<(String, Vec<kiln_cache::SnapshotId>)> {
    images
        .iter()
        .map(|(p, i)| (crate::platforms::split_dir_name(p), i.chain.clone()))
        .collect()
}

/// The variants made so far, per platform (see [`image_variant`]).
type Made = Vec<Vec<(VariantOptions, ImageDescriptor)>>;

/// The index over each platform's image as `opts` wants it.
async fn index_of(
    engine: &Engine,
    images: &[(Platform, ExportedImage)],
    opts: VariantOptions,
    made: &mut Made,
) -> Result<ImageDescriptor> {
    let store = engine.store();
    let mut entries = Vec::with_capacity(images.len());
    for ((platform, image), made) in images.iter().zip(made.iter_mut()) {
        let desc = image_variant(store, image, opts, made).await?;
        entries.push(PlatformImage {
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            variant: platform.variant.clone(),
            image: desc,
        });
    }
    kiln_exporter::write_index(store, &entries, opts.format).context("cannot write the image index")
}

/// Delivers a multi-platform build to `tags` (the local store) and to every output, in order.
pub(crate) async fn deliver_platforms(
    engine: &Engine,
    images: &[(Platform, ExportedImage)],
    tags: &[String],
    outputs: &[OutputSpec],
) -> Result<Delivered> {
    let platforms: Vec<Platform> = images.iter().map(|(p, _)| p.clone()).collect();
    check_multi_platform(outputs, &platforms)?;
    let store = engine.store().clone();
    let created = images.first().and_then(|(_, i)| i.created.clone());
    let mut made: Made = vec![Vec::new(); images.len()];
    let mut reported: Option<ImageDescriptor> = None;
    let mut all: Vec<OutputSpec> = Vec::new();
    if !tags.is_empty() {
        all.push(OutputSpec::new(OutputKind::Image {
            names: tags.to_vec(),
            push: false,
        }));
    }
    all.extend(outputs.iter().cloned());
    for out in &all {
        let fmt = &out.format;
        let index = match &out.kind {
            OutputKind::Image { push: false, .. } => Some(
                index_of(
                    engine,
                    images,
                    variant_options(fmt, Destination::Store),
                    &mut made,
                )
                .await?,
            ),
            OutputKind::Image { push: true, .. }
            | OutputKind::OciArchive { .. }
            | OutputKind::OciDir { .. } => Some(
                index_of(
                    engine,
                    images,
                    variant_options(fmt, Destination::Transport),
                    &mut made,
                )
                .await?,
            ),
            _ => None,
        };
        if reported.is_none() {
            reported = index.clone();
        }
        match (&out.kind, index) {
            (OutputKind::Image { names, push }, Some(index)) => {
                let names = if names.is_empty() { tags } else { names };
                if names.is_empty() {
                    bail!("`--output type=image` needs a name: add `name=NAME` or `-t NAME`");
                }
                // The store names the index of its own variants; the registry gets `index`.
                let stored = if *push {
                    index_of(
                        engine,
                        images,
                        variant_options(fmt, Destination::Store),
                        &mut made,
                    )
                    .await?
                } else {
                    index.clone()
                };
                for n in names {
                    let full = normalize_name(n)?;
                    store.images().put(&ImageRecord {
                        name: full.clone(),
                        digest: stored.manifest_digest.clone(),
                        size: stored.manifest_size,
                        media_type: stored.media_type.clone(),
                        created: created.clone(),
                    })?;
                    if *push {
                        // The index's own manifests, not the stored name's: the push names
                        // exactly what was built.
                        engine
                            .push_manifest_of(
                                &full,
                                &index.manifest_digest,
                                &index.media_type,
                                n,
                                None,
                            )
                            .await
                            .with_context(|| format!("cannot push `{n}`"))?;
                    }
                }
            }
            (OutputKind::OciArchive { dest, names }, Some(index)) => {
                write_oci(&store, index, names, tags, dest, OciForm::Archive).await?;
            }
            (OutputKind::OciDir { dest, names }, Some(index)) => {
                write_oci(&store, index, names, tags, dest, OciForm::Layout).await?;
            }
            (OutputKind::Local { dest }, _) => {
                let parts = split_parts(images);
                let epoch = images.first().and_then(|(_, i)| i.epoch);
                let (s, d) = (store.clone(), dest.clone());
                tokio::task::spawn_blocking(move || {
                    kiln_exporter::write_split_rootfs(&s, &parts, &d, epoch).with_context(|| {
                        format!("cannot write the file system to `{}`", d.display())
                    })
                })
                .await??;
            }
            (OutputKind::Tar { dest }, _) => {
                let parts = split_parts(images);
                let epoch = images.first().and_then(|(_, i)| i.epoch);
                let (s, d) = (store.clone(), dest.clone());
                tokio::task::spawn_blocking(move || {
                    kiln_exporter::write_split_rootfs_tar(&s, &parts, &d, epoch).with_context(
                        || format!("cannot write the file system tar `{}`", d.display()),
                    )
                })
                .await??;
            }
            _ => bail!("internal error: an output kind a multi-platform build does not deliver"),
        }
    }
    let image = match reported {
        Some(r) => r,
        // Only file-system outputs: the build still reports what its index would be.
        None => {
            index_of(
                engine,
                images,
                variant_options(&Default::default(), Destination::Store),
                &mut made,
            )
            .await?
        }
    };
    Ok(Delivered { image })
}
