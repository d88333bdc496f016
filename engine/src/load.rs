//! `kiln load`: images from a docker-archive (`docker save`, `kiln save`) or an OCI archive
//! (`-o type=oci`, `skopeo copy oci-archive:`) into the local store, in one streaming pass over
//! the tar: blobs go straight to the content store, verified, and only the small JSON documents
//! are kept in memory.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path};

use anyhow::{bail, Context, Result};
use kiln_cache::{ImageRecord, Store};
use serde_json::{json, Value};

use crate::normalize_name;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The JSON documents of an archive kept in memory, at most.
const MAX_METADATA: usize = 64 << 20;

/// What one `kiln load` put in the store, in Docker's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// `Loaded image: NAME` (full name).
    Named(String),
    /// `Loaded image ID: ID`: an image the archive gives no name.
    Unnamed(String),
}

/// A file of the archive: small JSON in memory, anything else already in the content store.
enum Member {
    Bytes(Vec<u8>),
    /// The blob's digest in the content store: an OCI `blobs/` entry as it is, any other file
    /// decompressed.
    Blob {
        digest: String,
    },
}

struct Archive {
    files: HashMap<String, Member>,
    links: HashMap<String, String>,
}

/// `./a/../b` style paths are refused; `./a/b` → `a/b`.
fn clean(path: &Path) -> Result<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => bail!(
                "the archive holds the path `{}`, which leaves the archive",
                path.display()
            ),
        }
    }
    Ok(parts.join("/"))
}

/// A symlink's target as an archive path, relative to the link's directory.
fn link_target(link: &str, target: &Path) -> Result<String> {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    let target_s = target.to_string_lossy();
    if target_s.starts_with('/') {
        bail!("the archive's link `{link}` points outside it, to `{target_s}`");
    }
    let mut out: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
    for c in target_s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    bail!("the archive's link `{link}` points outside it, to `{target_s}`");
                }
            }
            p => out.push(p.to_string()),
        }
    }
    Ok(out.join("/"))
}

fn is_metadata(path: &str) -> bool {
    !path.starts_with("blobs/")
        && (path.ends_with(".json") || path == "repositories" || path == "oci-layout")
}

/// A reader whose first bytes were already read to tell its compression.
fn sniffed<'a, R: Read + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        let got = r.read(&mut head[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let chained = io::Cursor::new(head[..n].to_vec()).chain(r);
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else if head[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(chained)?)
    } else {
        Box::new(chained)
    })
}

fn store_blob(store: &Store, r: &mut dyn Read, expected: Option<&str>) -> Result<(String, u64)> {
    let mut w = store.content().writer()?;
    io::copy(r, &mut w).context("cannot read the archive")?;
    w.flush()?;
    Ok(w.commit(expected)?)
}

fn read_archive(store: &Store, input: &mut dyn Read) -> Result<Archive> {
    let mut archive = tar::Archive::new(sniffed(input)?);
    let mut files = HashMap::new();
    let mut links = HashMap::new();
    let mut metadata = 0usize;
    for entry in archive
        .entries()
        .context("cannot read the archive as a tar")?
    {
        let mut entry = entry.context("cannot read the archive as a tar")?;
        let path = clean(&entry.path().context("an archive entry has a bad path")?)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .with_context(|| format!("the archive's link `{path}` has no target"))?;
            let target = if kind.is_hard_link() {
                clean(&target)?
            } else {
                link_target(&path, &target)?
            };
            links.insert(path, target);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if is_metadata(&path) {
            metadata += entry.size() as usize;
            if metadata > MAX_METADATA {
                bail!("the archive's JSON documents exceed {MAX_METADATA} bytes: it is not an image archive");
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .context("cannot read the archive")?;
            files.insert(path, Member::Bytes(bytes));
        } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            kiln_cache::validate_digest(&digest)
                .with_context(|| format!("the archive's blob `{path}` is not named by a digest"))?;
            store_blob(store, &mut entry, Some(&digest))
                .with_context(|| format!("the archive's blob `{path}`"))?;
            files.insert(path, Member::Blob { digest });
        } else {
            // A docker-archive layer: kept uncompressed, as the store keeps built layers.
            let mut r = sniffed(&mut entry)?;
            let (digest, _) = store_blob(store, &mut r, None)
                .with_context(|| format!("the archive's layer `{path}`"))?;
            files.insert(path, Member::Blob { digest });
        }
    }
    Ok(Archive { files, links })
}

impl Archive {
    fn get(&self, path: &str) -> Result<&Member> {
        let mut p = path.trim_start_matches("./").to_string();
        for _ in 0..16 {
            if let Some(m) = self.files.get(&p) {
                return Ok(m);
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        bail!("the archive lacks `{path}`")
    }

    fn json(&self, store: &Store, path: &str) -> Result<(Vec<u8>, Value)> {
        let bytes = match self.get(path)? {
            Member::Bytes(b) => b.clone(),
            Member::Blob { digest } => store.content().read_verified(digest)?,
        };
        let v = serde_json::from_slice(&bytes)
            .with_context(|| format!("the archive's `{path}` is not valid JSON"))?;
        Ok((bytes, v))
    }
}

/// Reads an image archive and names its images in the store. `input` is a file, or stdin.
pub(crate) fn load(store: &Store, input: &mut dyn Read) -> Result<Vec<Loaded>> {
    let archive = read_archive(store, &mut BufReader::with_capacity(1 << 20, input))?;
    if archive.get("manifest.json").is_ok() {
        load_docker(store, &archive)
    } else if archive.get("index.json").is_ok() {
        load_oci(store, &archive)
    } else {
        bail!("this is neither a docker-archive (no `manifest.json`) nor an OCI archive (no `index.json`)")
    }
}

fn name_or_dangling(
    store: &Store,
    names: &[String],
    record: ImageRecord,
    id: &str,
    out: &mut Vec<Loaded>,
) -> Result<()> {
    if names.is_empty() {
        store.images().put_dangling(&record)?;
        out.push(Loaded::Unnamed(id.to_string()));
    }
    for n in names {
        store.images().put(&ImageRecord {
            name: n.clone(),
            ..record.clone()
        })?;
        out.push(Loaded::Named(n.clone()));
    }
    Ok(())
}

fn load_docker(store: &Store, archive: &Archive) -> Result<Vec<Loaded>> {
    let (_, manifest) = archive.json(store, "manifest.json")?;
    let entries = manifest
        .as_array()
        .context("the archive's `manifest.json` is not a list")?;
    let mut out = Vec::new();
    for e in entries {
        let config_path = e
            .get("Config")
            .and_then(Value::as_str)
            .context("an entry of `manifest.json` has no `Config`")?;
        let (config_bytes, config) = archive.json(store, config_path)?;
        let diff_ids: Vec<&str> = config
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let layer_paths: Vec<&str> = e
            .get("Layers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if layer_paths.len() != diff_ids.len() {
            bail!(
                "`{config_path}` lists {} layers but `manifest.json` {}",
                diff_ids.len(),
                layer_paths.len()
            );
        }
        let mut layers = Vec::new();
        for (path, diff_id) in layer_paths.iter().zip(&diff_ids) {
            let digest = match archive.get(path)? {
                Member::Blob { digest } => digest.clone(),
                Member::Bytes(_) => bail!("the archive's layer `{path}` is not a layer tar"),
            };
            let digest = if digest == *diff_id {
                digest
            } else {
                // A compressed `blobs/` layer (Docker 25+ archives): stored again uncompressed.
                let f = store.content().open(&digest)?;
                let mut r = sniffed(BufReader::new(f))?;
                store_blob(store, &mut r, Some(diff_id)).with_context(|| {
                    format!("the archive's layer `{path}` is not the layer `{diff_id}` its config lists")
                })?
                .0
            };
            let size = store
                .content()
                .open(&digest)?
                .metadata()
                .context("cannot stat a loaded layer")?
                .len();
            layers.push(json!({"mediaType": OCI_LAYER, "digest": digest, "size": size}));
        }
        let (config_digest, config_size) = store.content().put_bytes(&config_bytes)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers,
        });
        let (digest, size) = store.content().put_bytes(&serde_json::to_vec(&manifest)?)?;
        let names = e
            .get("RepoTags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(normalize_name)
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        let record = ImageRecord {
            name: String::new(),
            digest,
            size,
            media_type: OCI_MANIFEST.into(),
            created: config
                .get("created")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        name_or_dangling(store, &names, record, &config_digest, &mut out)?;
    }
    Ok(out)
}

fn load_oci(store: &Store, archive: &Archive) -> Result<Vec<Loaded>> {
    let (_, index) = archive.json(store, "index.json")?;
    let descs = index
        .get("manifests")
        .and_then(Value::as_array)
        .context("the archive's `index.json` has no `manifests`")?;
    let mut out = Vec::new();
    for d in descs {
        let digest = d
            .get("digest")
            .and_then(Value::as_str)
            .context("an entry of `index.json` has no digest")?;
        let media_type = d
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(OCI_MANIFEST);
        check_blobs(store, digest, 0)?;
        let ann = |k: &str| {
            d.pointer(&format!("/annotations/{}", k.replace('/', "~1")))
                .and_then(Value::as_str)
        };
        // BuildKit writes the full name in containerd's annotation and the tag in `ref.name`;
        // skopeo writes the name in `ref.name`. A bare tag there names nothing.
        let name = ann("io.containerd.image.name").or_else(|| {
            ann(kiln_cache::REF_NAME_ANNOTATION).filter(|n| n.contains(':') || n.contains('/'))
        });
        let names = name
            .map(normalize_name)
            .transpose()?
            .into_iter()
            .collect::<Vec<_>>();
        let size = match d.get("size").and_then(Value::as_u64) {
            Some(s) => s,
            None => store.content().read(digest)?.len() as u64,
        };
        let (id, created) = image_id(store, digest)?;
        let record = ImageRecord {
            name: String::new(),
            digest: digest.to_string(),
            size,
            media_type: media_type.to_string(),
            created,
        };
        name_or_dangling(store, &names, record, &id, &mut out)?;
    }
    Ok(out)
}

/// Every blob a manifest or index reaches must have come with the archive.
fn check_blobs(store: &Store, digest: &str, depth: usize) -> Result<()> {
    if depth > 4 {
        bail!("the archive's indexes nest too deep at `{digest}`");
    }
    if !store.content().has(digest) {
        bail!("the archive lacks the blob `{digest}`");
    }
    let v: Value = serde_json::from_slice(&store.content().read_verified(digest)?)
        .with_context(|| format!("the archive's manifest `{digest}` is not valid JSON"))?;
    if let Some(children) = v.get("manifests").and_then(Value::as_array) {
        for c in children {
            if let Some(d) = c.get("digest").and_then(Value::as_str) {
                check_blobs(store, d, depth + 1)?;
            }
        }
        return Ok(());
    }
    let config = v.get("config").into_iter();
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for desc in config.chain(layers) {
        let d = desc
            .get("digest")
            .and_then(Value::as_str)
            .with_context(|| format!("manifest `{digest}` has a descriptor without a digest"))?;
        if !store.content().has(d) {
            bail!("the archive lacks the blob `{d}` that manifest `{digest}` needs");
        }
    }
    Ok(())
}

/// The config digest (image ID) and creation time of a manifest, or of an index's first image.
fn image_id(store: &Store, digest: &str) -> Result<(String, Option<String>)> {
    let v: Value = serde_json::from_slice(&store.content().read_verified(digest)?)?;
    if let Some(first) = v
        .get("manifests")
        .and_then(Value::as_array)
        .and_then(|m| m.first())
        .and_then(|m| m.get("digest"))
        .and_then(Value::as_str)
    {
        return image_id(store, first);
    }
    let id = v
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .with_context(|| format!("manifest `{digest}` has no config"))?
        .to_string();
    let config: Value = serde_json::from_slice(&store.content().read_verified(&id)?)?;
    let created = config
        .get("created")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((id, created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_stay_inside() {
        assert_eq!(clean(Path::new("./a/b.json")).unwrap(), "a/b.json");
        assert!(clean(Path::new("../x")).is_err());
        assert!(clean(Path::new("/etc/passwd")).is_err());
        assert_eq!(
            link_target("a/layer.tar", Path::new("../b/layer.tar")).unwrap(),
            "b/layer.tar"
        );
        assert!(link_target("a/layer.tar", Path::new("../../x")).is_err());
        assert!(link_target("a/layer.tar", Path::new("/x")).is_err());
    }
}
