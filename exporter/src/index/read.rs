//! Reading an image index or manifest list: which media types are one, and the manifests one
//! lists (for layouts, which copy every platform's blobs).

use serde_json::Value;

use crate::error::ExportError;
use crate::image::{ImageDescriptor, MEDIA_MANIFEST};

pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether `media_type` is an image index or a manifest list.
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == MEDIA_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The manifests an index lists, as descriptors (their `config_digest` left empty).
pub(crate) fn index_manifests(
    bytes: &[u8],
    digest: &str,
) -> Result<Vec<ImageDescriptor>, ExportError> {
    let bad = |detail: String| ExportError::Oci {
        what: format!("image index `{digest}`"),
        detail,
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let list = v
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("it has no `manifests` list".into()))?;
    list.iter()
        .map(|m| {
            let digest = m.get("digest").and_then(Value::as_str);
            let size = m.get("size").and_then(Value::as_u64);
            match (digest, size) {
                (Some(d), Some(s)) => Ok(ImageDescriptor {
                    manifest_digest: d.to_string(),
                    manifest_size: s,
                    config_digest: String::new(),
                    media_type: m
                        .get("mediaType")
                        .and_then(Value::as_str)
                        .unwrap_or(MEDIA_MANIFEST)
                        .to_string(),
                }),
                _ => Err(bad("an entry lacks its `digest` or `size`".into())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_index_is_an_error_not_a_panic() {
        for bad in [&b"[]"[..], b"{\"manifests\":[{}]}", b"\xff"] {
            assert!(index_manifests(bad, "x").is_err());
        }
    }
}
