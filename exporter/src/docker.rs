//! `docker save` format (docker-archive): `manifest.json`, the config as `<hex>.json` and each
//! layer as an uncompressed `<diffID hex>/layer.tar`, which `docker load` and
//! `skopeo docker-archive:` read.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::error::ExportError;
use crate::image::{parse_manifest, ImageDescriptor};
use crate::layer::{Compression, HashingWriter};
use crate::layout::BlobPath;
use crate::tarw::{Entry, Kind, TarError, TarWriter};

/// `docker.io/library/app:1` → `app:1`, `docker.io/me/app:1` → `me/app:1`, as `docker save`
/// writes `RepoTags`. Digest references cannot be tags and are left out.
pub(crate) fn familiar_tag(name: &str) -> Option<String> {
    if name.contains('@') {
        return None;
    }
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let last = short.rsplit('/').next().unwrap_or(short);
    Some(if last.contains(':') {
        short.to_string()
    } else {
        format!("{short}:latest")
    })
}

fn tar_err<'a>(what: &str, path: &'a Path) -> impl Fn(TarError) -> ExportError + 'a {
    let what = what.to_string();
    move |e| match e {
        TarError::Source(source) => ExportError::read("read", path, source),
        TarError::ShortRead { expected, got } => ExportError::FileChanged {
            path: path.to_path_buf(),
            expected,
            got,
        },
        TarError::Io(source) => ExportError::write(what.clone(), source),
        TarError::DeviceNumber { .. } => {
            ExportError::write(what.clone(), io::Error::other("unexpected device entry"))
        }
    }
}

/// Checks that a small blob read whole is still the one its digest names.
fn verify_bytes(bytes: &[u8], digest: &str) -> Result<(), ExportError> {
    let mut r = kiln_cache::VerifyingReader::new(bytes, digest);
    io::copy(&mut r, &mut io::sink()).map_err(|e| ExportError::read("read", digest, e))?;
    Ok(r.finish()?)
}

/// Writes the docker-archive of `images`, each with its names (its `RepoTags`), to `out`.
/// Compressed layers are decompressed into a temporary file in `tmp_dir` first (a tar entry
/// needs its size up front), one at a time, so memory stays flat and disk use is bounded by the
/// largest layer.
pub(crate) fn docker_archive_to<W: Write>(
    lookup: BlobPath<'_>,
    images: &[(ImageDescriptor, Vec<String>)],
    tmp_dir: &Path,
    out: W,
) -> Result<W, ExportError> {
    let what = "the docker archive";
    let here = Path::new("-");
    let mut tar = TarWriter::new(out);
    // Written once each, however many images share them, as `docker save` does.
    let mut written: std::collections::HashSet<String> = Default::default();
    let mut entries: Vec<serde_json::Value> = Vec::new();
    for (image, tags) in images {
        let manifest_path = lookup(&image.manifest_digest)?;
        let bytes = std::fs::read(&manifest_path)
            .map_err(|e| ExportError::read("read", &manifest_path, e))?;
        verify_bytes(&bytes, &image.manifest_digest)?;
        let descs = parse_manifest(&bytes, &image.manifest_digest)?;
        let Some(((_, config_digest, _), layers)) = descs.split_first() else {
            return Err(ExportError::Oci {
                what: format!("manifest `{}`", image.manifest_digest),
                detail: "it has no config".into(),
            });
        };
        let config_path = lookup(config_digest)?;
        let config_bytes =
            std::fs::read(&config_path).map_err(|e| ExportError::read("read", &config_path, e))?;
        verify_bytes(&config_bytes, config_digest)?;
        let config: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|e| ExportError::OciData {
                what: format!("config `{config_digest}`"),
                cause: Box::new(e),
            })?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(ExportError::LayerCount {
                config: diff_ids.len(),
                layers: layers.len(),
            });
        }
        let config_name = format!("{}.json", hex_part(config_digest));
        if written.insert(config_name.clone()) {
            let mut e = Entry::new(config_name.as_bytes(), Kind::Regular);
            e.size = config_bytes.len() as u64;
            tar.append(&e, Some(&mut &config_bytes[..]))
                .map_err(tar_err(what, here))?;
        }

        let mut layer_names = Vec::new();
        for ((media_type, digest, _), diff_id) in layers.iter().zip(&diff_ids) {
            let dir = format!("{}/", hex_part(diff_id));
            let name = format!("{dir}layer.tar");
            if !written.insert(name.clone()) {
                // The same layer twice in one archive: `docker save` stores it once.
                layer_names.push(name);
                continue;
            }
            append_layer(
                &mut tar,
                lookup,
                (media_type, digest, diff_id),
                &dir,
                &name,
                layer_names.len(),
                tmp_dir,
            )?;
            layer_names.push(name);
        }
        let repo_tags: Vec<String> = tags.iter().filter_map(|t| familiar_tag(t)).collect();
        // Two names of one image are one entry with both tags.
        match entries
            .iter_mut()
            .find(|e| e["Config"].as_str() == Some(config_name.as_str()))
        {
            Some(e) => {
                if let Some(t) = e["RepoTags"].as_array_mut() {
                    t.extend(repo_tags.into_iter().map(serde_json::Value::from));
                }
            }
            None => entries.push(serde_json::json!({
                "Config": config_name,
                "RepoTags": repo_tags,
                "Layers": layer_names,
            })),
        }
    }

    let manifest = serde_json::to_vec(&entries).map_err(|source| ExportError::Json {
        what: "the docker archive manifest",
        cause: source,
    })?;
    let mut e = Entry::new(b"manifest.json", Kind::Regular);
    e.size = manifest.len() as u64;
    tar.append(&e, Some(&mut &manifest[..]))
        .map_err(tar_err(what, here))?;
    tar.finish().map_err(|e| ExportError::write(what, e))
}

/// Appends one layer as `DIR/layer.tar`, uncompressed; `index` is its place in its image.
fn append_layer<W: Write>(
    tar: &mut TarWriter<W>,
    lookup: BlobPath<'_>,
    (media_type, digest, diff_id): (&str, &str, &str),
    dir: &str,
    name: &str,
    index: usize,
    tmp_dir: &Path,
) -> Result<(), ExportError> {
    let what = "the docker archive";
    let here = Path::new("-");
    let mut d = Entry::new(dir.as_bytes(), Kind::Dir);
    d.mode = 0o755;
    tar.append(&d, None).map_err(tar_err(what, here))?;
    let blob = lookup(digest)?;
    let compression = Compression::from_media_type(media_type).ok_or_else(|| ExportError::Oci {
        what: format!("layer `{digest}`"),
        detail: format!("unknown layer media type `{media_type}`"),
    })?;
    let mut staged;
    let (mut file, path) = if compression == Compression::Uncompressed {
        let f = File::open(&blob).map_err(|e| ExportError::read("open", &blob, e))?;
        (f, blob.clone())
    } else {
        staged = tempfile::Builder::new()
            .prefix(".kiln-docker-")
            .tempfile_in(tmp_dir)
            .map_err(|e| ExportError::write(format!("`{}`", tmp_dir.display()), e))?;
        let f = File::open(&blob).map_err(|e| ExportError::read("open", &blob, e))?;
        let mut r = decompressor(compression, BufReader::new(f))
            .map_err(|e| ExportError::read("decompress", &blob, e))?;
        let mut w = HashingWriter::new(BufWriter::new(staged.as_file_mut()));
        io::copy(&mut r, &mut w).map_err(|e| ExportError::read("decompress", &blob, e))?;
        let (got, _, mut w) = w.finish();
        w.flush()
            .map_err(|e| ExportError::write("a staged layer", e))?;
        drop(w);
        if got != diff_id {
            return Err(ExportError::DiffIdMismatch {
                index,
                config: diff_id.to_string(),
                layer: got,
            });
        }
        let f = staged
            .reopen()
            .map_err(|e| ExportError::read("reopen", staged.path(), e))?;
        (f, staged.path().to_path_buf())
    };
    let size = file
        .metadata()
        .map_err(|e| ExportError::read("stat", &path, e))?
        .len();
    let mut e = Entry::new(name.as_bytes(), Kind::Regular);
    e.size = size;
    if compression == Compression::Uncompressed {
        // The stored blob goes in as it is: hash it on the way (a compressed one was checked
        // against its diffID while it was decompressed).
        let mut verifying = kiln_cache::VerifyingReader::new(&mut file, digest);
        tar.append(&e, Some(&mut verifying))
            .map_err(tar_err(what, &path))?;
        verifying.finish()?;
    } else {
        tar.append(&e, Some(&mut file))
            .map_err(tar_err(what, &path))?;
    }
    Ok(())
}

fn hex_part(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

pub(crate) fn decompressor<'a, R: Read + 'a>(
    c: Compression,
    r: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Compression::Uncompressed => Box::new(r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_written_as_docker_save_does() {
        assert_eq!(
            familiar_tag("docker.io/library/app:1").as_deref(),
            Some("app:1")
        );
        assert_eq!(
            familiar_tag("docker.io/me/app").as_deref(),
            Some("me/app:latest")
        );
        assert_eq!(
            familiar_tag("127.0.0.1:5000/x").as_deref(),
            Some("127.0.0.1:5000/x:latest")
        );
        assert_eq!(familiar_tag("a/b@sha256:00"), None);
    }
}
