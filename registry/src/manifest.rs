//! Manifest and index documents (OCI and Docker schema 2): just the fields a pull needs.

use serde::Deserialize;

use crate::{digest, Platform, Reference, RegistryError};

/// The media types kiln reads and writes.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// A content descriptor: what a manifest says about one blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// One entry of an image index: a manifest and the platform it is for (none for entries such
/// as attestations that name no platform).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    pub platform: Option<Platform>,
}

/// Whether a media type names an image index (OCI) or a manifest list (Docker).
pub fn is_index(media_type: &str) -> bool {
    media_type == media_type::OCI_INDEX || media_type == media_type::DOCKER_MANIFEST_LIST
}

/// The entries of an image index or manifest list, each digest checked for its form;
/// `reference` names the image in errors.
pub fn parse_index(reference: &Reference, bytes: &[u8]) -> Result<Vec<IndexEntry>, RegistryError> {
    let index: RawIndex =
        serde_json::from_slice(bytes).map_err(|e| invalid(reference, "image index", e))?;
    index
        .manifests
        .iter()
        .map(|m| {
            Ok(IndexEntry {
                descriptor: descriptor(reference, "image index", m)?,
                platform: m.platform.clone(),
            })
        })
        .collect()
}

/// A manifest or index as the registry sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedManifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// One platform's image manifest, as fetched and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedManifest {
    /// Digest of the platform manifest (not of the index it was picked from).
    pub digest: String,
    pub media_type: String,
    /// The manifest exactly as the registry sent it (its digest is `digest`).
    pub bytes: Vec<u8>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// The index (or manifest list) it was picked from, as the registry sent it; `None` when
    /// the reference named the manifest itself.
    pub index: Option<FetchedManifest>,
}

pub(crate) const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawIndex {
    manifests: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawManifest {
    config: RawDescriptor,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

pub(crate) enum Kind {
    Index,
    Manifest,
}

/// Decides what a fetched document is, from its Content-Type when that is specific, else from
/// its own `mediaType` field, else from its shape (old registries send `application/json`).
pub(crate) fn classify(
    reference: &Reference,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<(Kind, String), RegistryError> {
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| invalid(reference, "manifest", e))?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| c.starts_with("application/vnd."));
    let mt = header.or(probe.media_type.clone()).unwrap_or_else(|| {
        if probe.manifests.is_some() {
            media_type::OCI_INDEX.to_string()
        } else {
            media_type::OCI_MANIFEST.to_string()
        }
    });
    match mt.as_str() {
        media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => Ok((Kind::Index, mt)),
        media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => Ok((Kind::Manifest, mt)),
        _ if probe.schema_version == Some(1) => Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: format!("{mt} (Docker schema 1)"),
        }),
        _ => Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: mt,
        }),
    }
}

/// Picks the index entry that serves `platform`: the best match, the first among equals; the
/// error lists the platforms the index has.
pub fn select_platform(
    reference: &Reference,
    bytes: &[u8],
    platform: &Platform,
) -> Result<Descriptor, RegistryError> {
    let index: RawIndex =
        serde_json::from_slice(bytes).map_err(|e| invalid(reference, "image index", e))?;
    let mut best: Option<(u8, &RawDescriptor)> = None;
    for entry in &index.manifests {
        let Some(p) = &entry.platform else { continue };
        if let Some(score) = platform.match_score(p) {
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, entry));
            }
        }
    }
    match best {
        Some((_, e)) => descriptor(reference, "image index", e),
        None => Err(RegistryError::NoMatchingPlatform {
            reference: reference.to_string(),
            wanted: platform.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                // Attestation manifests are listed as unknown/unknown: not a choice.
                .filter(|p| p.os != "unknown")
                .map(|p| p.to_string())
                .collect(),
        }),
    }
}

pub(crate) fn parse_manifest(
    reference: &Reference,
    bytes: &[u8],
) -> Result<(Descriptor, Vec<Descriptor>), RegistryError> {
    let m: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| invalid(reference, "image manifest", e))?;
    let config = descriptor(reference, "image manifest", &m.config)?;
    let layers = m
        .layers
        .iter()
        .map(|l| descriptor(reference, "image manifest", l))
        .collect::<Result<_, _>>()?;
    Ok((config, layers))
}

fn descriptor(
    reference: &Reference,
    what: &str,
    d: &RawDescriptor,
) -> Result<Descriptor, RegistryError> {
    digest::validate(&d.digest).map_err(|e| invalid(reference, what, e))?;
    Ok(Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
    })
}

fn invalid(reference: &Reference, what: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::InvalidManifest {
        reference: reference.to_string(),
        what: what.to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        Reference::parse("127.0.0.1:5000/t").unwrap()
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index() -> Vec<u8> {
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": media_type::OCI_MANIFEST, "digest": D1, "size": 10,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
                {"mediaType": media_type::OCI_MANIFEST, "digest": D2, "size": 10,
                 "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": media_type::OCI_MANIFEST, "digest": D2, "size": 10,
                 "platform": {"os": "unknown", "architecture": "unknown"}}
            ]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn classifies_by_header_field_or_shape() {
        let r = reference();
        let idx = index();
        assert!(matches!(classify(&r, None, &idx), Ok((Kind::Index, _))));
        let m = br#"{"schemaVersion":2,"config":{"digest":"x","size":1},"layers":[]}"#;
        assert!(matches!(
            classify(&r, Some("application/json"), m),
            Ok((Kind::Manifest, _))
        ));
        let (k, mt) = classify(
            &r,
            Some(&format!("{}; charset=utf-8", media_type::DOCKER_MANIFEST)),
            m,
        )
        .unwrap();
        assert!(matches!(k, Kind::Manifest));
        assert_eq!(mt, media_type::DOCKER_MANIFEST);
        let s1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        let e = classify(&r, None, s1).err().unwrap().to_string();
        assert!(e.contains("schema 1"), "{e}");
        assert!(classify(&r, None, b"not json").is_err());
    }

    #[test]
    fn selects_variants_and_lists_choices() {
        let r = reference();
        let got = select_platform(&r, &index(), &Platform::parse("linux/arm/v7").unwrap()).unwrap();
        assert_eq!(got.digest, D2);
        let any = select_platform(&r, &index(), &Platform::parse("linux/arm").unwrap()).unwrap();
        assert_eq!(any.digest, D1);
        let e = select_platform(&r, &index(), &Platform::parse("linux/amd64").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux/arm/v6, linux/arm/v7;"), "{e}");
        assert!(!e.contains("unknown"), "{e}");
    }

    #[test]
    fn rejects_bad_descriptor_digests() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1},"layers":[]}"#;
        let e = parse_manifest(&reference(), m).unwrap_err().to_string();
        assert!(e.contains("invalid image manifest"), "{e}");
    }
}
