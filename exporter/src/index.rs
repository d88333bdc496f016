//! Multi-platform images: one OCI image index (or Docker manifest list) over one manifest per
//! platform, stored canonically so the same manifests always give the same index digest.

use kiln_cache::Store;
use serde_json::{json, Map, Value};

use crate::error::ExportError;
use crate::image::{canonical_json, ImageDescriptor, DOCKER_MANIFEST, MEDIA_MANIFEST};
use crate::store::ManifestFormat;

use crate::image::{DOCKER_MANIFEST_LIST, MEDIA_INDEX};

/// One platform's image of a multi-platform build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformImage {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub image: ImageDescriptor,
}

/// The index document over `images`, in their order, as BuildKit writes one (no annotations).
fn index_bytes(images: &[PlatformImage], format: ManifestFormat) -> Result<Vec<u8>, ExportError> {
    let (index_type, manifest_type) = match format {
        ManifestFormat::Oci => (MEDIA_INDEX, MEDIA_MANIFEST),
        ManifestFormat::Docker => (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST),
    };
    let mut manifests = Vec::with_capacity(images.len());
    for p in images {
        // An index lists manifests of its own kind: Docker clients reject OCI manifests in a
        // manifest list, and the reverse.
        if !p.image.media_type.is_empty() && p.image.media_type != manifest_type {
            return Err(ExportError::Oci {
                what: "the image index".into(),
                detail: format!(
                    "the {}/{} manifest is `{}`, not `{manifest_type}`",
                    p.os, p.architecture, p.image.media_type
                ),
            });
        }
        let mut platform = Map::new();
        platform.insert("architecture".into(), json!(p.architecture));
        platform.insert("os".into(), json!(p.os));
        if let Some(v) = &p.variant {
            platform.insert("variant".into(), json!(v));
        }
        manifests.push(json!({
            "mediaType": manifest_type,
            "digest": p.image.manifest_digest,
            "size": p.image.manifest_size,
            "platform": Value::Object(platform),
        }));
    }
    canonical_json(
        &json!({
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": manifests,
        }),
        "the image index",
    )
}

/// Stores the index (OCI) or manifest list (Docker) over one image per platform; the images'
/// manifests must be stored already. The descriptor's `config_digest` is the index's own
/// digest: an index has no config, and its digest is what names the image.
pub fn write_index(
    store: &Store,
    images: &[PlatformImage],
    format: ManifestFormat,
) -> Result<ImageDescriptor, ExportError> {
    for p in images {
        if !store.content().has(&p.image.manifest_digest) {
            return Err(ExportError::MissingBlob {
                digest: p.image.manifest_digest.clone(),
            });
        }
    }
    let bytes = index_bytes(images, format)?;
    let (digest, size) = store.content().put_bytes(&bytes)?;
    Ok(ImageDescriptor {
        manifest_digest: digest.clone(),
        manifest_size: size,
        config_digest: digest,
        media_type: match format {
            ManifestFormat::Oci => MEDIA_INDEX,
            ManifestFormat::Docker => DOCKER_MANIFEST_LIST,
        }
        .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(media_type: &str, n: char) -> ImageDescriptor {
        ImageDescriptor {
            manifest_digest: format!("sha256:{}", n.to_string().repeat(64)),
            manifest_size: 100,
            config_digest: String::new(),
            media_type: media_type.into(),
        }
    }

    fn two(media_type: &str) -> Vec<PlatformImage> {
        vec![
            PlatformImage {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
                image: image(media_type, 'a'),
            },
            PlatformImage {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into()),
                image: image(media_type, 'b'),
            },
        ]
    }

    #[test]
    fn index_lists_each_platform_in_order() {
        let bytes = index_bytes(&two(MEDIA_MANIFEST), ManifestFormat::Oci).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"manifests":[{"digest":"sha256:aaaa"#),
            "{text}"
        );
        assert!(text.contains(r#""platform":{"architecture":"arm64","os":"linux","variant":"v8"}"#));
        assert!(text.ends_with(
            r#""mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#
        ));
        let back = crate::image::index_entries(&bytes, "x").unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[1].manifest_digest,
            image(MEDIA_MANIFEST, 'b').manifest_digest
        );
    }

    #[test]
    fn docker_manifest_list_needs_docker_manifests() {
        let text =
            String::from_utf8(index_bytes(&two(DOCKER_MANIFEST), ManifestFormat::Docker).unwrap())
                .unwrap();
        assert!(text.contains(DOCKER_MANIFEST_LIST));
        let err = index_bytes(&two(MEDIA_MANIFEST), ManifestFormat::Docker).unwrap_err();
        assert!(
            err.to_string().contains("not `application/vnd.docker"),
            "{err}"
        );
    }
}
