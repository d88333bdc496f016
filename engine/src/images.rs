//! The image commands over the local store's records: `tag`, `rmi`, `image inspect`, `history`,
//! `save`, `image prune` and the `images` filters, with Docker's rules for naming an image by
//! name, by ID (its config digest) or by a unique prefix of either digest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_cache::{ImageRecord, Store};
use kiln_exporter::ImageDescriptor;
use serde_json::Value;

use crate::{normalize_name, Engine};

/// An image as the image commands show it: one record of the store.
#[derive(Clone, Debug)]
pub struct ImageSummary {
    /// Full name, e.g. `docker.io/library/app:latest`; `None` for a dangling image.
    pub name: Option<String>,
    /// The image ID: the config digest, as Docker's.
    pub id: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub media_type: String,
    pub created: Option<String>,
    /// The layers' sizes as stored, plus the config's.
    pub size: u64,
    /// `os/arch[/variant]` of each image an index lists, in its order; of the image itself for
    /// a single manifest.
    pub platforms: Vec<String>,
}

/// Reads a blob of the store at `root` without its lock: blobs never change once written.
fn read_blob(root: &Path, digest: &str) -> Result<Vec<u8>> {
    kiln_cache::validate_digest(digest)?;
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let path = root.join("blobs/sha256").join(hex);
    std::fs::read(&path).with_context(|| format!("cannot read blob `{digest}`"))
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value> {
    serde_json::from_slice(bytes).with_context(|| format!("{what} is not valid JSON"))
}

/// The image manifest a record names: itself, or for an index the entry for this host's
/// platform (else its first entry).
fn image_manifest(root: &Path, digest: &str) -> Result<(String, Value)> {
    let m = parse_json(&read_blob(root, digest)?, &format!("manifest `{digest}`"))?;
    pick_manifest(root, digest, m)
}

/// [`image_manifest`] of the manifest or index `m`, already read.
fn pick_manifest(root: &Path, digest: &str, m: Value) -> Result<(String, Value)> {
    let Some(entries) = m.get("manifests").and_then(Value::as_array) else {
        return Ok((digest.to_string(), m));
    };
    let host = kiln_registry::Platform::host();
    let pick = entries
        .iter()
        .find(|e| {
            e.pointer("/platform/os").and_then(Value::as_str) == Some(host.os.as_str())
                && e.pointer("/platform/architecture").and_then(Value::as_str)
                    == Some(host.architecture.as_str())
        })
        .or_else(|| entries.first())
        .and_then(|e| e.get("digest").and_then(Value::as_str))
        .with_context(|| format!("index `{digest}` lists no image"))?;
    let m = parse_json(&read_blob(root, pick)?, &format!("manifest `{pick}`"))?;
    Ok((pick.to_string(), m))
}

/// `os/arch[/variant]` of a descriptor's `platform` or of an image config.
fn platform_name(p: &Value) -> Option<String> {
    let s = |k: &str| p.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let mut name = format!("{}/{}", s("os")?, s("architecture")?);
    if let Some(v) = s("variant") {
        name = format!("{name}/{v}");
    }
    Some(name)
}

/// The platforms a record holds: an index's entries (attestations and entries without a
/// platform left out), else its image config's.
fn platforms_of(root: &Path, top: &Value, config_digest: &str) -> Vec<String> {
    if let Some(entries) = top.get("manifests").and_then(Value::as_array) {
        return entries
            .iter()
            .filter_map(|e| e.get("platform").and_then(platform_name))
            .filter(|p| p != "unknown/unknown")
            .collect();
    }
    read_blob(root, config_digest)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|c| platform_name(&c))
        .into_iter()
        .collect()
}

fn summary(root: &Path, r: ImageRecord) -> Result<ImageSummary> {
    let top = parse_json(
        &read_blob(root, &r.digest)?,
        &format!("manifest `{}`", r.digest),
    )?;
    let (_, manifest) = pick_manifest(root, &r.digest, top.clone())?;
    let id = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .with_context(|| format!("manifest `{}` has no config", r.digest))?
        .to_string();
    let platforms = platforms_of(root, &top, &id);
    let size = manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|d| d.get("size").and_then(Value::as_u64))
                .sum::<u64>()
        })
        .unwrap_or(0)
        + manifest
            .pointer("/config/size")
            .and_then(Value::as_u64)
            .unwrap_or(0);
    Ok(ImageSummary {
        name: (!r.name.is_empty()).then_some(r.name),
        id,
        manifest_digest: r.digest,
        manifest_size: r.size,
        media_type: r.media_type,
        created: r.created,
        size,
        platforms,
    })
}

/// Every image of the store at `root`, named ones first, dangling ones last, read without the
/// store's lock. A record whose manifest cannot be read is left out with a warning.
pub fn all_images(root: &Path) -> Result<Vec<ImageSummary>> {
    let records = kiln_cache::read_all_images(root).with_context(|| {
        format!(
            "cannot list the images of the kiln store `{}`",
            root.display()
        )
    })?;
    let mut out = Vec::new();
    for r in records {
        let digest = r.digest.clone();
        match summary(root, r) {
            Ok(s) => out.push(s),
            Err(e) => tracing::warn!("image `{digest}` is left out: {e:#}"),
        }
    }
    Ok(out)
}

/// One `kiln images --filter`: `dangling=true|false` or `reference=PATTERN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageFilter {
    Dangling(bool),
    Reference(String),
}

impl ImageFilter {
    pub fn parse(spec: &str) -> Result<ImageFilter> {
        let (k, v) = spec.split_once('=').with_context(|| {
            format!("`--filter {spec}` is not KEY=VALUE: write e.g. `dangling=true` or `reference=app:*`")
        })?;
        match k {
            "dangling" => match v {
                "true" | "1" => Ok(ImageFilter::Dangling(true)),
                "false" | "0" => Ok(ImageFilter::Dangling(false)),
                _ => bail!("`--filter {spec}`: `dangling` takes `true` or `false`"),
            },
            "reference" => Ok(ImageFilter::Reference(v.to_string())),
            _ => bail!(
                "unknown filter `{k}`: kiln's `images` filters are `dangling=` and `reference=`"
            ),
        }
    }

    /// Keeps the images every filter accepts, except that several `reference=` filters accept
    /// an image when any of them does, as Docker's do.
    pub fn select(filters: &[ImageFilter], images: Vec<ImageSummary>) -> Vec<ImageSummary> {
        let refs: Vec<&str> = filters
            .iter()
            .filter_map(|f| match f {
                ImageFilter::Reference(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        images
            .into_iter()
            .filter(|i| {
                filters.iter().all(|f| match f {
                    ImageFilter::Dangling(d) => i.name.is_none() == *d,
                    ImageFilter::Reference(_) => true,
                })
            })
            .filter(|i| {
                refs.is_empty()
                    || i.name
                        .as_deref()
                        .is_some_and(|n| refs.iter().any(|p| reference_matches(p, n)))
            })
            .collect()
    }
}

/// `docker.io/library/app:1` → (`app`, `1`), as Docker shows names.
pub fn familiar_parts(name: &str) -> (String, String) {
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let short = short.split('@').next().unwrap_or(short);
    let slash = short.rfind('/').map(|i| i + 1).unwrap_or(0);
    match short[slash..].rfind(':') {
        Some(i) => (
            short[..slash + i].to_string(),
            short[slash + i + 1..].to_string(),
        ),
        None => (short.to_string(), "latest".to_string()),
    }
}

/// Docker's `reference=` filter: the pattern matches the familiar `repo:tag`, or the familiar
/// repository alone; `*` does not cross `/`.
fn reference_matches(pattern: &str, name: &str) -> bool {
    let (repo, tag) = familiar_parts(name);
    glob(pattern.as_bytes(), format!("{repo}:{tag}").as_bytes())
        || glob(pattern.as_bytes(), repo.as_bytes())
}

/// `*` (not across `/`) and `?`, backtracking to the last `*` only: at most pattern × name
/// steps, both as short as names are.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' && t[ti] != b'/' || p[pi] == t[ti] && p[pi] != b'*') {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            if t[st] == b'/' {
                return false;
            }
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What `kiln rmi` did with one argument, in Docker's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    /// `Untagged: NAME` (familiar form).
    Untagged(String),
    /// `Deleted: ID`.
    Deleted(String),
}

/// The manifests that containers of this store were made from, by container id.
fn images_of_containers(store: &Store) -> Vec<(String, String)> {
    crate::containers::list(store.root())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            let config = c.config.as_ref()?;
            Some((config.id.clone(), config.image_digest.clone()))
        })
        .collect()
}

/// How an argument named the image: by one of its names, or by its ID or a digest.
enum Named {
    Name(String),
    Id,
}

impl Engine {
    fn image_root(&self) -> PathBuf {
        self.store().root().to_path_buf()
    }

    fn find_image(&self, spec: &str) -> Result<(ImageSummary, Named)> {
        find_image_at(&self.image_root(), spec)
    }

    fn records_of(&self, id: &str) -> Result<Vec<ImageSummary>> {
        records_of_at(&self.image_root(), id)
    }

    /// `kiln tag SOURCE TARGET`: gives the image `SOURCE` names the name `TARGET` too.
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let (image, _) = self.find_image(source)?;
        let full = normalize_name(target)?;
        if full.contains('@') {
            bail!("`{target}` holds a digest: a tag is NAME[:TAG]");
        }
        self.store().images().put(&ImageRecord {
            name: full,
            digest: image.manifest_digest,
            size: image.manifest_size,
            media_type: image.media_type,
            created: image.created,
        })?;
        Ok(())
    }

    /// `kiln rmi [-f] IMAGE`: removes a name, and the image with its last one, as `docker rmi`
    /// does. An image named by its ID loses all its names only with `force`; an image a
    /// container was made from stays unless `force`. The image's blobs and snapshots stay
    /// until `kiln prune` finds nothing needs them.
    pub fn remove_image(&self, spec: &str, force: bool) -> Result<Vec<Removed>> {
        let (image, named) = self.find_image(spec)?;
        let records = self.records_of(&image.id)?;
        let short = short_id(&image.id);
        if !force {
            let manifests: Vec<&str> = records.iter().map(|r| r.manifest_digest.as_str()).collect();
            let last_name = match &named {
                Named::Name(_) => records.iter().filter(|r| r.name.is_some()).count() <= 1,
                Named::Id => true,
            };
            if last_name {
                if let Some((c, _)) = images_of_containers(self.store())
                    .into_iter()
                    .find(|(_, m)| manifests.contains(&m.as_str()))
                {
                    bail!(
                        "cannot remove `{spec}`: container `{}` uses it; remove the container first or use `-f`",
                        &c[..c.len().min(12)]
                    );
                }
            }
            if matches!(named, Named::Id) && records.iter().filter(|r| r.name.is_some()).count() > 1
            {
                bail!(
                    "cannot remove `{spec}`: image `{short}` has several names; remove them one by one or use `-f`"
                );
            }
        }
        let mut out = Vec::new();
        let images = self.store().images();
        let to_untag: Vec<String> = match &named {
            Named::Name(n) => vec![n.clone()],
            Named::Id => records.iter().filter_map(|r| r.name.clone()).collect(),
        };
        for n in &to_untag {
            images.remove(n)?;
            let (repo, tag) = familiar_parts(n);
            out.push(Removed::Untagged(format!("{repo}:{tag}")));
        }
        // The image goes with its last name (and a dangling one named by ID at once).
        let left = self.records_of(&image.id)?;
        if left.iter().all(|r| r.name.is_none()) {
            for r in &left {
                images.remove_dangling(&r.manifest_digest)?;
            }
            out.push(Removed::Deleted(image.id.clone()));
        }
        Ok(out)
    }

    /// `kiln image prune`: removes the dangling images, or with `all` every image no container
    /// was made from. Returns the IDs removed.
    pub fn prune_images(&self, all: bool) -> Result<Vec<String>> {
        let used: Vec<String> = images_of_containers(self.store())
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let images = self.store().images();
        let mut removed: Vec<String> = Vec::new();
        for i in all_images(&self.image_root())? {
            if used.contains(&i.manifest_digest) {
                continue;
            }
            match &i.name {
                None => {
                    images.remove_dangling(&i.manifest_digest)?;
                }
                Some(n) if all => {
                    images.remove(n)?;
                }
                Some(_) => continue,
            }
            if !removed.contains(&i.id) {
                removed.push(i.id.clone());
            }
        }
        Ok(removed)
    }

    /// `kiln image inspect`: Docker's fields for an image (`Id`, `RepoTags`, `Created`,
    /// `Config`, `RootFS`...), plus its manifest's `Descriptor`.
    pub fn inspect_image(&self, spec: &str) -> Result<Value> {
        inspect_image_at(&self.image_root(), spec)
    }

    /// `kiln history`: the config's history, newest first, each entry with the size of the
    /// layer it made (0 for an empty layer), as `docker history` lists it.
    pub fn image_history(&self, spec: &str) -> Result<Vec<HistoryEntry>> {
        let (image, _) = self.find_image(spec)?;
        let root = self.image_root();
        let config = parse_json(
            &read_blob(&root, &image.id)?,
            &format!("config `{}`", image.id),
        )?;
        let (_, manifest) = image_manifest(&root, &image.manifest_digest)?;
        let mut layer_sizes = manifest
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.get("size").and_then(Value::as_u64).unwrap_or(0));
        let mut out = Vec::new();
        for h in config
            .get("history")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let empty = h
                .get("empty_layer")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let s = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            out.push(HistoryEntry {
                created: s("created"),
                created_by: s("created_by"),
                comment: s("comment"),
                size: if empty {
                    0
                } else {
                    layer_sizes.next().unwrap_or(0)
                },
            });
        }
        out.reverse();
        Ok(out)
    }

    /// `kiln save -o FILE IMAGE...`: one docker-archive (`docker load` reads it) holding every
    /// image; an image named by a name keeps it as its `RepoTags`, one named by ID has none.
    pub async fn save_images(&self, specs: &[String], dest: &Path) -> Result<()> {
        if specs.is_empty() {
            bail!("`kiln save` needs at least one image");
        }
        let mut images: Vec<(ImageDescriptor, Vec<String>)> = Vec::new();
        let root = self.image_root();
        for spec in specs {
            let (image, named) = self.find_image(spec)?;
            let (manifest_digest, _) = image_manifest(&root, &image.manifest_digest)?;
            let manifest_size = read_blob(&root, &manifest_digest)?.len() as u64;
            let desc = ImageDescriptor {
                manifest_digest,
                manifest_size,
                config_digest: image.id.clone(),
                media_type: image.media_type.clone(),
            };
            let names = match named {
                Named::Name(n) => vec![n],
                Named::Id => vec![],
            };
            // Layers of a lazily imported build cache (a built image's) are fetched from that
            // cache now that their bytes are needed, as `kiln run` and `kiln push` do.
            let manifest = parse_json(&read_blob(&root, &desc.manifest_digest)?, "the manifest")?;
            for layer in manifest["layers"].as_array().into_iter().flatten() {
                if let Some(d) = layer["digest"].as_str() {
                    kiln_solver::lazy::fetch_if_lazy(self.store(), self.solver.registry(), d)
                        .await?;
                }
            }
            images.push((desc, names));
        }
        let (store, dest) = (self.store().clone(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || {
            kiln_exporter::save_docker_archive(&store, &images, &dest)
                .with_context(|| format!("cannot write `{}`", dest.display()))
        })
        .await?
    }
}

/// One line of `kiln history`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub created: String,
    pub created_by: String,
    pub comment: String,
    pub size: u64,
}

/// `sha256:0123456789abcdef...` → `0123456789ab`, Docker's short ID.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// Finds the image an argument names: a name (`app`, `app:1`, a full name), an image ID
/// (`sha256:HEX`, or at least 4 hex digits of it) or a manifest digest, as Docker accepts them.
fn find_image_at(root: &Path, spec: &str) -> Result<(ImageSummary, Named)> {
    let images = all_images(root)?;
    if let Ok(full) = normalize_name(spec) {
        if let Some(i) = images
            .iter()
            .find(|i| i.name.as_deref() == Some(full.as_str()))
        {
            return Ok((i.clone(), Named::Name(full)));
        }
    }
    let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
    let is_hex = hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let hex = hex.to_ascii_lowercase();
        let mut found: Vec<&ImageSummary> = images
            .iter()
            .filter(|i| {
                i.id.strip_prefix("sha256:")
                    .unwrap_or(&i.id)
                    .starts_with(&hex)
                    || i.manifest_digest
                        .strip_prefix("sha256:")
                        .unwrap_or(&i.manifest_digest)
                        .starts_with(&hex)
            })
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.dedup_by(|a, b| a.id == b.id);
        match found.as_slice() {
            [one] => return Ok(((*one).clone(), Named::Id)),
            [] => {}
            _ => bail!("`{spec}` names more than one image: give more digits of the ID"),
        }
    }
    bail!("no such image: `{spec}` (see `kiln images`)")
}

/// What `kiln run` resolves for `spec`: `spec` itself, unless it names no image of the store
/// but is (the start of) an image's ID, as `docker run sha256:ID` and `docker run 0123abcd`
/// take; then that image's name, or its manifest by digest for a dangling one.
pub(crate) fn run_reference(root: &Path, spec: &str) -> String {
    let named = normalize_name(spec)
        .ok()
        .zip(all_images(root).ok())
        .is_some_and(|(full, all)| all.iter().any(|i| i.name.as_deref() == Some(full.as_str())));
    if named {
        return spec.to_string();
    }
    match find_image_at(root, spec) {
        Ok((image, Named::Id)) => match image.name {
            Some(name) => name,
            None => format!("kiln-image@{}", image.manifest_digest),
        },
        _ => spec.to_string(),
    }
}

/// Every record of the image with ID `id`.
fn records_of_at(root: &Path, id: &str) -> Result<Vec<ImageSummary>> {
    Ok(all_images(root)?
        .into_iter()
        .filter(|i| i.id == id)
        .collect())
}

/// `kiln image inspect` of the store at `root`, read without its lock (as `kiln images`), so
/// `kiln inspect` can show an image without taking the store.
pub fn inspect_image_at(root: &Path, spec: &str) -> Result<Value> {
    let (image, _) = find_image_at(root, spec)?;
    let config = parse_json(
        &read_blob(root, &image.id)?,
        &format!("config `{}`", image.id),
    )?;
    let records = records_of_at(root, &image.id)?;
    let mut tags: Vec<String> = records
        .iter()
        .filter_map(|r| r.name.as_deref())
        .map(|n| {
            let (repo, tag) = familiar_parts(n);
            format!("{repo}:{tag}")
        })
        .collect();
    tags.sort();
    let repo_digests: Vec<String> = records
        .iter()
        .filter_map(|r| {
            r.name
                .as_deref()
                .map(|n| format!("{}@{}", familiar_parts(n).0, r.manifest_digest))
        })
        .collect();
    let get = |k: &str| config.get(k).cloned().unwrap_or(Value::Null);
    let text = |k: &str| config.get(k).cloned().unwrap_or(Value::from(""));
    Ok(serde_json::json!({
        "Id": image.id,
        "RepoTags": tags,
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": text("comment"),
        "Created": get("created"),
        "Author": text("author"),
        "Config": get("config"),
        "Architecture": get("architecture"),
        "Os": get("os"),
        "Size": image.size,
        "RootFS": get("rootfs"),
        "Metadata": { "LastTagTime": image.created },
        "Descriptor": {
            "mediaType": image.media_type,
            "digest": image.manifest_digest,
            "size": image.manifest_size,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names_are_split_as_docker_shows_them() {
        assert_eq!(
            familiar_parts("docker.io/library/app:1"),
            ("app".into(), "1".into())
        );
        assert_eq!(
            familiar_parts("127.0.0.1:5000/me/app:latest"),
            ("127.0.0.1:5000/me/app".into(), "latest".into())
        );
        assert_eq!(
            familiar_parts("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app".into(), "latest".into())
        );
    }

    #[test]
    fn reference_filter_matches_as_docker_does() {
        assert!(reference_matches("app", "docker.io/library/app:1"));
        assert!(reference_matches("app:1", "docker.io/library/app:1"));
        assert!(reference_matches("app:*", "docker.io/library/app:1"));
        assert!(reference_matches("me/*", "docker.io/me/app:1"));
        assert!(!reference_matches("*", "docker.io/me/app:1"));
        assert!(!reference_matches("app:2", "docker.io/library/app:1"));
        assert!(!reference_matches("ap", "docker.io/library/app:1"));
        assert!(reference_matches("a?p", "docker.io/library/app:1"));
    }

    #[test]
    fn filters_are_parsed_with_clear_errors() {
        assert_eq!(
            ImageFilter::parse("dangling=true").unwrap(),
            ImageFilter::Dangling(true)
        );
        let e = ImageFilter::parse("label=a").unwrap_err().to_string();
        assert!(e.contains("unknown filter `label`"), "{e}");
        assert!(ImageFilter::parse("dangling=maybe").is_err());
    }
}
