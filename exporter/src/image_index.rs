//! Multi-platform images: an image index over one manifest per platform, as BuildKit's image
//! writer makes one for `--platform a,b` (each entry names its platform, read from its config).

use kiln_cache::Store;
use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType, Platform};

use crate::error::ExportError;
use crate::image::{
    canonical_json, config_platform, is_index, parse_manifest, ImageDescriptor,
    DOCKER_MANIFEST_LIST, MEDIA_INDEX,
};
use crate::store::ManifestFormat;

/// The platform an image's config names, read through the store.
fn platform_of(store: &Store, image: &ImageDescriptor) -> Result<Platform, ExportError> {
    let manifest = store.content().read_verified(&image.manifest_digest)?;
    let descs = parse_manifest(&manifest, &image.manifest_digest)?;
    let config = descs.first().map(|(_, d, _)| d.clone()).unwrap_or_default();
    let bytes = store.content().read_verified(&config)?;
    config_platform(&bytes).ok_or_else(|| ExportError::Oci {
        what: format!("config `{config}`"),
        detail: "it names no `architecture` and `os`, which an index entry needs".into(),
    })
}

fn platform_name(p: &Platform) -> String {
    let mut s = format!("{}/{}", p.os(), p.architecture());
    if let Some(v) = p.variant() {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// Stores an index over `images` (one per platform, each a manifest already in the store, in
/// the media types of `format`) and returns it: an OCI image index, or a Docker manifest list
/// with `ManifestFormat::Docker`. Entries keep the order given; each names the platform its
/// config gives.
pub fn write_image_index(
    store: &Store,
    images: &[ImageDescriptor],
    format: ManifestFormat,
) -> Result<ImageDescriptor, ExportError> {
    if images.is_empty() {
        return Err(ExportError::Oci {
            what: "the image index".into(),
            detail: "it has no platform image".into(),
        });
    }
    let mut seen: Vec<String> = Vec::new();
    let mut manifests = Vec::with_capacity(images.len());
    for image in images {
        if is_index(&image.media_type) {
            return Err(ExportError::Oci {
                what: "the image index".into(),
                detail: format!("`{}` is an index itself", image.manifest_digest),
            });
        }
        let platform = platform_of(store, image)?;
        let name = platform_name(&platform);
        if seen.contains(&name) {
            return Err(ExportError::Oci {
                what: "the image index".into(),
                detail: format!("two images for platform `{name}`: build each platform once"),
            });
        }
        seen.push(name);
        let digest: oci_spec::image::Digest =
            image
                .manifest_digest
                .parse()
                .map_err(|_| ExportError::BadDigest {
                    digest: image.manifest_digest.clone(),
                })?;
        let mut d = Descriptor::new(
            MediaType::from(image.media_type.as_str()),
            image.manifest_size,
            digest,
        );
        d.set_platform(Some(platform));
        manifests.push(d);
    }
    let media_type = match format {
        ManifestFormat::Oci => MEDIA_INDEX,
        ManifestFormat::Docker => DOCKER_MANIFEST_LIST,
    };
    let index: ImageIndex = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(media_type))
        .manifests(manifests)
        .build()
        .map_err(|e| ExportError::OciData {
            what: "the image index".into(),
            cause: Box::new(e),
        })?;
    let bytes = canonical_json(&index, "the image index")?;
    let (manifest_digest, manifest_size) = store.content().put_bytes(&bytes)?;
    Ok(ImageDescriptor {
        manifest_digest,
        manifest_size,
        config_digest: String::new(),
        media_type: media_type.to_string(),
    })
}
