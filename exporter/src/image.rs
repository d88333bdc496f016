//! OCI image config and manifest documents, serialized canonically (sorted keys, compact) so
//! the same image always has the same digests.

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder,
    MediaType, Os, Platform, PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;

use crate::error::ExportError;
use crate::layer::LayerBlob;

pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub(crate) const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
const DOCKER_LAYER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_LAYER_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
const OCI_LAYER_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const OCI_LAYER_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

/// The media type a layer has in a manifest of the given kind (OCI or Docker schema2), as
/// BuildKit's `compression.ConvertAllLayerMediaTypes` maps it: a base layer pulled with Docker
/// types gets the OCI ones in an OCI manifest, and the other way round.
pub(crate) fn layer_type_for(media_type: &str, oci: bool) -> Result<&str, ExportError> {
    use crate::layer::{MEDIA_TAR, MEDIA_TAR_GZIP, MEDIA_TAR_ZSTD};
    let converted = if oci {
        match media_type {
            DOCKER_LAYER_TAR => Some(MEDIA_TAR),
            DOCKER_LAYER_GZIP => Some(MEDIA_TAR_GZIP),
            DOCKER_LAYER_FOREIGN => Some(OCI_LAYER_NONDIST),
            DOCKER_LAYER_FOREIGN_GZIP => Some(OCI_LAYER_NONDIST_GZIP),
            // Not a registered type, but what containerd and BuildKit write for zstd.
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(MEDIA_TAR_ZSTD),
            _ => None,
        }
    } else {
        match media_type {
            MEDIA_TAR => Some(DOCKER_LAYER_TAR),
            MEDIA_TAR_GZIP => Some(DOCKER_LAYER_GZIP),
            OCI_LAYER_NONDIST => Some(DOCKER_LAYER_FOREIGN),
            OCI_LAYER_NONDIST_GZIP => Some(DOCKER_LAYER_FOREIGN_GZIP),
            MEDIA_TAR_ZSTD | OCI_LAYER_NONDIST_ZSTD => {
                return Err(ExportError::Oci {
                    what: "the image manifest".into(),
                    detail: format!(
                        "layer media type `{media_type}` has no Docker schema2 equivalent; use `oci-mediatypes=true` or `compression=gzip`"
                    ),
                })
            }
            _ => None,
        }
    };
    // Already of the wanted kind, or a type neither table knows: kept as it is, as BuildKit
    // keeps an unhandled one.
    Ok(converted.unwrap_or(media_type))
}

/// The platform a stored config names (`architecture`, `os` and `variant`), if it names one.
pub(crate) fn config_platform(config: &[u8]) -> Option<Platform> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|x| !x.is_empty());
    let mut p = PlatformBuilder::default()
        .architecture(Arch::from(field("architecture")?))
        .os(Os::from(field("os")?));
    if let Some(variant) = field("variant") {
        p = p.variant(variant.to_string());
    }
    p.build().ok()
}

pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether a top-level media type is an index (OCI) or a manifest list (Docker).
pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// The stored manifest of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDescriptor {
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub media_type: String,
}

/// Sets `config.rootfs` to the layers' diffIDs, in order.
pub fn fill_rootfs(
    config: &mut ImageConfiguration,
    layers: &[LayerBlob],
) -> Result<(), ExportError> {
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
        .build()
        .map_err(|e| ExportError::OciData {
            what: "the image config rootfs".into(),
            cause: Box::new(e),
        })?;
    config.set_rootfs(rootfs);
    Ok(())
}

/// JSON with object keys sorted at every level and no whitespace, whatever serde_json's
/// `preserve_order` feature says and however `HashMap` fields iterate.
pub(crate) fn canonical_json(
    value: &impl Serialize,
    what: &'static str,
) -> Result<Vec<u8>, ExportError> {
    let v = serde_json::to_value(value).map_err(|source| ExportError::Json {
        what,
        cause: source,
    })?;
    serde_json::to_vec(&sort_keys(v)).map_err(|source| ExportError::Json {
        what,
        cause: source,
    })
}

fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// Checks that the config's rootfs matches the layers and returns the config bytes.
#[cfg(test)]
pub(crate) fn config_bytes(
    config: &ImageConfiguration,
    layers: &[LayerBlob],
) -> Result<Vec<u8>, ExportError> {
    config_bytes_with_extras(config, &serde_json::Map::new(), layers)
}

/// Like [`config_bytes`], with fields oci-spec's `Config` cannot hold (`Healthcheck`, `OnBuild`,
/// `Shell`, `ArgsEscaped`, as Docker writes them) merged into the config's `config` object.
pub(crate) fn config_bytes_with_extras(
    config: &ImageConfiguration,
    extras: &serde_json::Map<String, serde_json::Value>,
    layers: &[LayerBlob],
) -> Result<Vec<u8>, ExportError> {
    config_bytes_with_fields(config, extras, &serde_json::Map::new(), layers)
}

/// Like [`config_bytes_with_extras`], with `top` merged into the config's top level (kiln's
/// inline build cache, `kiln.cache.v1`, sits there as BuildKit's `moby.buildkit.cache.v0`
/// does). With both maps empty the bytes are [`config_bytes`]'s.
pub(crate) fn config_bytes_with_fields(
    config: &ImageConfiguration,
    extras: &serde_json::Map<String, serde_json::Value>,
    top: &serde_json::Map<String, serde_json::Value>,
    layers: &[LayerBlob],
) -> Result<Vec<u8>, ExportError> {
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers.len() {
        return Err(ExportError::LayerCount {
            config: ids.len(),
            layers: layers.len(),
        });
    }
    for (index, (id, layer)) in ids.iter().zip(layers).enumerate() {
        if *id != layer.diff_id {
            return Err(ExportError::DiffIdMismatch {
                index,
                config: id.clone(),
                layer: layer.diff_id.clone(),
            });
        }
    }
    if extras.is_empty() && top.is_empty() {
        return canonical_json(config, "the image config");
    }
    let what = "the image config";
    let mut v = serde_json::to_value(config).map_err(|source| ExportError::Json {
        what,
        cause: source,
    })?;
    if let Some(obj) = v.as_object_mut() {
        let inner = obj
            .entry("config")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !inner.is_object() {
            *inner = serde_json::Value::Object(Default::default());
        }
        if let Some(inner) = inner.as_object_mut() {
            for (k, val) in extras {
                inner.insert(k.clone(), val.clone());
            }
        }
        for (k, val) in top {
            obj.insert(k.clone(), val.clone());
        }
    }
    canonical_json(&v, what)
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Result<Descriptor, ExportError> {
    let d: oci_spec::image::Digest = digest.parse().map_err(|_| ExportError::BadDigest {
        digest: digest.to_string(),
    })?;
    Ok(Descriptor::new(MediaType::from(media_type), size, d))
}

/// The manifest bytes for a stored config and layers: OCI media types (layers pulled with Docker
/// types included), or Docker schema2 ones when `oci` is false.
pub(crate) fn manifest_bytes(
    config_digest: &str,
    config_size: u64,
    layers: &[LayerBlob],
    oci: bool,
) -> Result<Vec<u8>, ExportError> {
    let layer_descs = layers
        .iter()
        .map(|l| descriptor(layer_type_for(&l.media_type, oci)?, &l.digest, l.size))
        .collect::<Result<Vec<_>, _>>()?;
    let (manifest_type, config_type) = if oci {
        (MediaType::ImageManifest, MEDIA_CONFIG)
    } else {
        (MediaType::Other(DOCKER_MANIFEST.into()), DOCKER_CONFIG)
    };
    let manifest: ImageManifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(manifest_type)
        .config(descriptor(config_type, config_digest, config_size)?)
        .layers(layer_descs)
        .build()
        .map_err(|e| ExportError::OciData {
            what: "the image manifest".into(),
            cause: Box::new(e),
        })?;
    canonical_json(&manifest, "the image manifest")
}

/// Parses a stored manifest: (config descriptor, layer descriptors) as (media type, digest, size).
pub(crate) fn parse_manifest(
    bytes: &[u8],
    digest: &str,
) -> Result<Vec<(String, String, u64)>, ExportError> {
    let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| ExportError::OciData {
        what: format!("manifest `{digest}`"),
        cause: Box::new(e),
    })?;
    let mut out = vec![(
        m.config().media_type().to_string(),
        m.config().digest().to_string(),
        m.config().size(),
    )];
    for l in m.layers() {
        out.push((l.media_type().to_string(), l.digest().to_string(), l.size()));
    }
    Ok(out)
}

/// The entries of a stored index, as image descriptors (without their config digests).
pub(crate) fn index_entries(
    bytes: &[u8],
    digest: &str,
) -> Result<Vec<ImageDescriptor>, ExportError> {
    let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| ExportError::OciData {
        what: format!("index `{digest}`"),
        cause: Box::new(e),
    })?;
    Ok(index
        .manifests()
        .iter()
        .map(|d| ImageDescriptor {
            manifest_digest: d.digest().to_string(),
            manifest_size: d.size(),
            config_digest: String::new(),
            media_type: d.media_type().to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ImageConfigurationBuilder;

    fn blob(n: u8) -> LayerBlob {
        LayerBlob {
            diff_id: format!("sha256:{}", hex::encode([n; 32])),
            digest: format!("sha256:{}", hex::encode([n + 100; 32])),
            size: 100 + u64::from(n),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            empty: false,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_everywhere() {
        let v = serde_json::json!({"b": {"z": 1, "a": [ {"y": 1, "x": 2} ]}, "a": 0});
        let s = String::from_utf8(canonical_json(&v, "t").unwrap()).unwrap();
        assert_eq!(s, r#"{"a":0,"b":{"a":[{"x":2,"y":1}],"z":1}}"#);
    }

    #[test]
    fn config_with_labels_is_stable_and_checked() {
        let mut cfg = ImageConfigurationBuilder::default()
            .architecture("amd64")
            .os("linux")
            .build()
            .unwrap();
        let mut c = oci_spec::image::Config::default();
        let labels: std::collections::HashMap<String, String> =
            (0..20).map(|i| (format!("l{i}"), format!("{i}"))).collect();
        c.set_labels(Some(labels));
        cfg.set_config(Some(c));
        let layers = [blob(1), blob(2)];
        assert!(matches!(
            config_bytes(&cfg, &layers),
            Err(ExportError::LayerCount {
                config: 0,
                layers: 2
            })
        ));
        fill_rootfs(&mut cfg, &layers).unwrap();
        let a = config_bytes(&cfg, &layers).unwrap();
        let b = config_bytes(&cfg.clone(), &layers).unwrap();
        assert_eq!(a, b);
        let s = String::from_utf8(a).unwrap();
        assert!(s.contains(r#""rootfs":{"diff_ids":["sha256:0101"#), "{s}");
        let mut swapped = layers.clone();
        swapped.swap(0, 1);
        assert!(matches!(
            config_bytes(&cfg, &swapped),
            Err(ExportError::DiffIdMismatch { index: 0, .. })
        ));
    }

    #[test]
    fn manifest_round_trips() {
        let layers = [blob(1), blob(2)];
        let cd = format!("sha256:{}", hex::encode([9u8; 32]));
        let bytes = manifest_bytes(&cd, 42, &layers, true).unwrap();
        let s = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            s.contains(r#""mediaType":"application/vnd.oci.image.manifest.v1+json""#),
            "{s}"
        );
        assert!(s.contains(r#""schemaVersion":2"#), "{s}");
        let parsed = parse_manifest(&bytes, "m").unwrap();
        assert_eq!(parsed[0], (MEDIA_CONFIG.to_string(), cd, 42));
        assert_eq!(parsed[2].1, layers[1].digest);
        assert_eq!(parsed[2].2, layers[1].size);
        assert!(manifest_bytes("sha256:nothex", 1, &layers, true).is_err());
    }

    #[test]
    fn docker_media_types_on_request() {
        let layers = [blob(1)];
        let cd = format!("sha256:{}", hex::encode([9u8; 32]));
        let s = String::from_utf8(manifest_bytes(&cd, 42, &layers, false).unwrap()).unwrap();
        assert!(s.contains(DOCKER_MANIFEST), "{s}");
        assert!(s.contains(DOCKER_CONFIG), "{s}");
        assert!(s.contains(DOCKER_LAYER_GZIP), "{s}");
        assert!(!s.contains("vnd.oci"), "{s}");
        let mut zst = blob(2);
        zst.media_type = crate::layer::MEDIA_TAR_ZSTD.into();
        let err = manifest_bytes(&cd, 42, &[zst], false).unwrap_err();
        assert!(err.to_string().contains("oci-mediatypes=true"), "{err}");
    }
}
