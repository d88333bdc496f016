//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`) as a tar archive (with the
//! `manifest.json` that `docker load` reads, as BuildKit's) or a directory, from blobs found
//! through a digest → path lookup.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType, Platform};

use crate::error::ExportError;
use crate::image::{
    canonical_json, config_platform, parse_manifest, ImageDescriptor, MEDIA_MANIFEST,
};
use crate::tarw::{Entry, Kind, TarError, TarWriter};

pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation holding the full image name (`ref.name` holds only the tag).
pub(crate) const IMAGE_NAME: &str = "io.containerd.image.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Finds the file of a stored blob, or says it is missing.
pub(crate) type BlobPath<'a> = &'a dyn Fn(&str) -> Result<PathBuf, ExportError>;

struct Blob {
    digest: String,
    size: u64,
    path: PathBuf,
}

fn hex_of(digest: &str) -> Result<&str, ExportError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(ExportError::BadDigest {
            digest: digest.chars().take(100).collect(),
        }),
    }
}

fn checked_blob(lookup: BlobPath<'_>, digest: &str, size: u64) -> Result<Blob, ExportError> {
    hex_of(digest)?;
    let path = lookup(digest)?;
    let actual = match fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExportError::MissingBlob {
                digest: digest.to_string(),
            })
        }
        Err(e) => return Err(ExportError::read("stat", path, e)),
    };
    if actual != size {
        return Err(ExportError::BlobSize {
            digest: digest.to_string(),
            expected: size,
            actual,
        });
    }
    Ok(Blob {
        digest: digest.to_string(),
        size,
        path,
    })
}

/// An image's blobs as a layout holds them, and what its index entry and `manifest.json` say.
struct ImageParts {
    /// The manifest (or index, and each of its manifests), config and layer blobs, sorted by
    /// digest, each once.
    blobs: Vec<Blob>,
    /// A single image's config and layers (in manifest order, repeats kept), for
    /// `manifest.json`; none for an index, as BuildKit writes none for one.
    single: Option<(String, Vec<String>)>,
    /// From the config, as BuildKit puts the build's platform on the manifest's descriptor.
    platform: Option<Platform>,
}

fn image_parts(lookup: BlobPath<'_>, image: &ImageDescriptor) -> Result<ImageParts, ExportError> {
    let manifest = checked_blob(lookup, &image.manifest_digest, image.manifest_size)?;
    let bytes =
        fs::read(&manifest.path).map_err(|e| ExportError::read("read", &manifest.path, e))?;
    if crate::image::is_index(&image.media_type) {
        let mut blobs = vec![manifest];
        for entry in crate::image::index_entries(&bytes, &image.manifest_digest)? {
            if crate::image::is_index(&entry.media_type) {
                return Err(ExportError::Oci {
                    what: format!("index `{}`", image.manifest_digest),
                    detail: "it holds another index, which kiln does not export".into(),
                });
            }
            blobs.extend(image_parts(lookup, &entry)?.blobs);
        }
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        blobs.dedup_by(|a, b| a.digest == b.digest);
        return Ok(ImageParts {
            blobs,
            single: None,
            platform: None,
        });
    }
    let descs = parse_manifest(&bytes, &image.manifest_digest)?;
    let mut blobs = vec![manifest];
    for (_, digest, size) in &descs {
        blobs.push(checked_blob(lookup, digest, *size)?);
    }
    let (config, layers) = match descs.split_first() {
        Some(((_, config, _), layers)) => (
            config.clone(),
            layers.iter().map(|(_, d, _)| d.clone()).collect(),
        ),
        None => {
            return Err(ExportError::Oci {
                what: format!("manifest `{}`", image.manifest_digest),
                detail: "it has no config".into(),
            })
        }
    };
    // `blobs[1]` is the config, checked above.
    let config_path = &blobs[1].path;
    let config_bytes =
        fs::read(config_path).map_err(|e| ExportError::read("read", config_path, e))?;
    let platform = config_platform(&config_bytes);
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    blobs.dedup_by(|a, b| a.digest == b.digest);
    Ok(ImageParts {
        blobs,
        single: Some((config, layers)),
        platform,
    })
}

/// One image of a `manifest.json`, Docker's `docker save` index, with the fields in the order
/// containerd's archive writer (BuildKit's) gives them.
#[derive(serde::Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    /// Left empty (`null`), as BuildKit's OCI archives leave it: their names are in
    /// `index.json`.
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The `manifest.json` BuildKit's OCI archives of a single image carry beside `index.json`, so
/// that `docker load` reads them too.
fn docker_manifest_json(config: &str, layers: &[String]) -> Result<Vec<u8>, ExportError> {
    let path = |d: &str| hex_of(d).map(|h| format!("blobs/sha256/{h}"));
    let entry = DockerManifestEntry {
        config: path(config)?,
        repo_tags: None,
        layers: layers.iter().map(|d| path(d)).collect::<Result<_, _>>()?,
    };
    serde_json::to_vec(&[entry]).map_err(|source| ExportError::Json {
        what: "the archive's manifest.json",
        cause: source,
    })
}

fn check_name(name: &str) -> Result<(), ExportError> {
    let bad = |reason| ExportError::BadName {
        name: name.chars().take(200).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:@/+".contains(&b))
    {
        return Err(bad("use only letters, digits and `-._:@/+`"));
    }
    Ok(())
}

/// The OCI `ref.name` of a full image name, as containerd's archive exporter (which BuildKit
/// uses) derives it: the tag, or `@digest`, after the repository (`reference.Parse` → `Object`).
fn oci_ref_name(full: &str) -> &str {
    let Some((host, path)) = full.split_once('/') else {
        return full;
    };
    if host.is_empty() || full.contains("://") {
        return full;
    }
    match path.find([':', '@']) {
        Some(i) => {
            let object = &path[i..];
            object.strip_prefix(':').unwrap_or(object)
        }
        // Never from the engine, which passes names with a tag or digest.
        None => full,
    }
}

/// The index entry of `image` under the full name `name`: `ref.name` is the tag and
/// `io.containerd.image.name` the whole name, as in BuildKit's `type=oci` archives.
fn manifest_entry(
    image: &ImageDescriptor,
    platform: Option<&Platform>,
    name: Option<&str>,
) -> Result<Descriptor, ExportError> {
    let digest: oci_spec::image::Digest =
        image
            .manifest_digest
            .parse()
            .map_err(|_| ExportError::BadDigest {
                digest: image.manifest_digest.clone(),
            })?;
    let media = if image.media_type.is_empty() {
        MEDIA_MANIFEST
    } else {
        &image.media_type
    };
    let mut d = Descriptor::new(MediaType::from(media), image.manifest_size, digest);
    d.set_platform(platform.cloned());
    if let Some(n) = name {
        d.set_annotations(Some(HashMap::from([
            (REF_NAME.to_string(), oci_ref_name(n).to_string()),
            (IMAGE_NAME.to_string(), n.to_string()),
        ])));
    }
    Ok(d)
}

fn index_bytes(manifests: Vec<Descriptor>) -> Result<Vec<u8>, ExportError> {
    let index: ImageIndex = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| ExportError::OciData {
            what: "the layout index".into(),
            cause: Box::new(e),
        })?;
    canonical_json(&index, "the layout index")
}

/// The index entries of `image`: one per name (full names), or one without a name.
fn manifest_entries(
    image: &ImageDescriptor,
    platform: Option<&Platform>,
    names: &[&str],
) -> Result<Vec<Descriptor>, ExportError> {
    if names.is_empty() {
        return Ok(vec![manifest_entry(image, platform, None)?]);
    }
    names
        .iter()
        .map(|n| {
            check_name(n)?;
            manifest_entry(image, platform, Some(n))
        })
        .collect()
}

/// Writes the layout of one image, listed under each of `names` (full names), as a tar to
/// `out`; returns the sink.
pub(crate) fn archive_to<W: Write>(
    lookup: BlobPath<'_>,
    image: &ImageDescriptor,
    names: &[&str],
    out: W,
) -> Result<W, ExportError> {
    // A bad name is the caller's mistake: named before any blob is looked at.
    names.iter().try_for_each(|n| check_name(n))?;
    let parts = image_parts(lookup, image)?;
    let entries = manifest_entries(image, parts.platform.as_ref(), names)?;
    let index = index_bytes(entries)?;
    let docker_manifest = match &parts.single {
        Some((config, layers)) => Some(docker_manifest_json(config, layers)?),
        None => None,
    };
    let mut tar = TarWriter::new(out);
    let werr = |e: TarError, path: &Path| match e {
        TarError::Source(source) => ExportError::read("read", path, source),
        TarError::ShortRead { expected, got } => ExportError::FileChanged {
            path: path.to_path_buf(),
            expected,
            got,
        },
        TarError::Io(source) => ExportError::write("the OCI archive", source),
        TarError::DeviceNumber { .. } => ExportError::write(
            "the OCI archive",
            io::Error::other("unexpected device entry"),
        ),
    };
    let here = Path::new("-");
    let mut files: Vec<(&[u8], &[u8])> = vec![(b"oci-layout", OCI_LAYOUT), (b"index.json", &index)];
    if let Some(m) = &docker_manifest {
        files.push((b"manifest.json", m));
    }
    for (path, data) in files {
        let mut e = Entry::new(path, Kind::Regular);
        e.size = data.len() as u64;
        let mut r = data;
        tar.append(&e, Some(&mut r)).map_err(|e| werr(e, here))?;
    }
    for dir in [&b"blobs/"[..], b"blobs/sha256/"] {
        let mut e = Entry::new(dir, Kind::Dir);
        e.mode = 0o755;
        tar.append(&e, None).map_err(|e| werr(e, here))?;
    }
    for b in &parts.blobs {
        let path = format!("blobs/sha256/{}", hex_of(&b.digest)?);
        let mut e = Entry::new(path.as_bytes(), Kind::Regular);
        e.size = b.size;
        let f = File::open(&b.path).map_err(|err| ExportError::read("open", &b.path, err))?;
        // Hashed as it is copied: a corrupt blob fails the export instead of spreading.
        let mut f = kiln_cache::VerifyingReader::new(f, &b.digest);
        tar.append(&e, Some(&mut f)).map_err(|e| werr(e, &b.path))?;
        f.finish()?;
    }
    tar.finish()
        .map_err(|e| ExportError::write("the OCI archive", e))
}

/// Writes the archive to `dest` atomically, or to stdout when `dest` is `-`.
pub(crate) fn write_archive(
    lookup: BlobPath<'_>,
    image: &ImageDescriptor,
    names: &[&str],
    dest: &Path,
) -> Result<(), ExportError> {
    if dest == Path::new("-") {
        let stdout = io::stdout().lock();
        let mut out = archive_to(lookup, image, names, BufWriter::new(stdout))?;
        return out
            .flush()
            .map_err(|e| ExportError::write("the OCI archive to stdout", e));
    }
    let what = || format!("`{}`", dest.display());
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-oci-")
        .tempfile_in(parent)
        .map_err(|e| ExportError::write(what(), e))?;
    let out = archive_to(lookup, image, names, BufWriter::new(tmp))?;
    let tmp = out
        .into_inner()
        .map_err(|e| ExportError::write(what(), e.into_error()))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| ExportError::write(what(), e))?;
    tmp.persist(dest)
        .map_err(|e| ExportError::write(what(), e.error))?;
    Ok(())
}

/// Adds the image under each of `names` (full names) to the layout directory `dest` (created
/// if needed). An entry of the same name is replaced; other images already in the layout are
/// kept.
pub(crate) fn write_dir(
    lookup: BlobPath<'_>,
    image: &ImageDescriptor,
    names: &[&str],
    dest: &Path,
) -> Result<(), ExportError> {
    names.iter().try_for_each(|n| check_name(n))?;
    let parts = image_parts(lookup, image)?;
    let new = manifest_entries(image, parts.platform.as_ref(), names)?;
    let blobs = parts.blobs;
    let blob_dir = dest.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir)
        .map_err(|e| ExportError::write(format!("`{}`", blob_dir.display()), e))?;
    for b in &blobs {
        let target = blob_dir.join(hex_of(&b.digest)?);
        if fs::metadata(&target)
            .map(|m| m.len() == b.size)
            .unwrap_or(false)
        {
            continue;
        }
        let tmp = blob_dir.join(format!(".tmp-{}", hex_of(&b.digest)?));
        let werr = |e| ExportError::write(format!("`{}`", target.display()), e);
        let src = File::open(&b.path).map_err(|err| ExportError::read("open", &b.path, err))?;
        let mut src = kiln_cache::VerifyingReader::new(io::BufReader::new(src), &b.digest);
        let copied = File::create(&tmp)
            .and_then(|mut out| io::copy(&mut src, &mut out))
            .map_err(werr)
            .and_then(|_| src.finish().map_err(ExportError::from));
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &target).map_err(werr)?;
    }
    let layout = dest.join("oci-layout");
    if !layout.exists() {
        atomic_write(&layout, OCI_LAYOUT)?;
    }
    let index_path = dest.join("index.json");
    let mut manifests = match fs::read(&index_path) {
        Ok(bytes) => {
            let idx: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| ExportError::BadLayoutIndex {
                    path: index_path.clone(),
                    cause: e,
                })?;
            idx.manifests().clone()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ExportError::read("read", &index_path, e)),
    };
    let annotation =
        |d: &Descriptor, key: &str| d.annotations().as_ref().and_then(|a| a.get(key).cloned());
    // An entry another tool wrote with only a `ref.name` is the same name when that matches.
    let same = |old: &Descriptor, new: &Descriptor| match annotation(new, IMAGE_NAME) {
        Some(n) => match annotation(old, IMAGE_NAME) {
            Some(o) => o == n,
            None => annotation(old, REF_NAME) == annotation(new, REF_NAME),
        },
        None => annotation(old, REF_NAME).is_none() && old.digest() == new.digest(),
    };
    manifests.retain(|old| !new.iter().any(|n| same(old, n)));
    manifests.extend(new);
    atomic_write(&index_path, &index_bytes(manifests)?)
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let werr = |e| ExportError::write(format!("`{}`", path.display()), e);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-")
        .tempfile_in(dir)
        .map_err(werr)?;
    tmp.write_all(bytes).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("example.com/a/b:1.0").is_ok());
        assert!(check_name("latest").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("x\n").is_err());
    }

    #[test]
    fn oci_archive_ref_name_held_the_whole_name_instead_of_the_tag() {
        assert_eq!(oci_ref_name("docker.io/reg/app:1"), "1");
        assert_eq!(oci_ref_name("localhost:5000/a/b:v2.0"), "v2.0");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            oci_ref_name(&format!("docker.io/library/x@{digest}")),
            format!("@{digest}")
        );
        // Not a full name: kept whole rather than emptied.
        assert_eq!(oci_ref_name("latest"), "latest");
        assert_eq!(oci_ref_name("example.com/app"), "example.com/app");
    }

    #[test]
    fn digests_are_checked_before_use_as_paths() {
        assert!(hex_of(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(hex_of("sha256:../../etc/passwd").is_err());
        assert!(hex_of(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(hex_of(&format!("sha512:{}", "a".repeat(64))).is_err());
    }
}
