//! Reduces an OCI image archive (the tar `-o type=oci,dest=` writes, kiln's or BuildKit's) to a
//! text summary two builders can be compared by: the image config without timestamps and
//! history, then every layer beyond the base and the flattened tree of what those layers changed.
//! One line per entry, sorted, so a difference between two builders is a difference of lines.
//! Mtimes are left out (no two builds share them); everything else a user can see is kept.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

/// What the summary of one archive says, with the base image's layers left out.
pub struct Image {
    pub config: Value,
    /// The layers' tars, uncompressed, in order.
    pub layers: Vec<Vec<u8>>,
}

/// Reads an OCI archive: index.json, then the first image manifest it leads to (through nested
/// indexes), its config and its layers.
pub fn read_archive(path: &Path) -> Result<Image> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().context("not a tar archive")? {
        let mut entry = entry.context("bad tar entry")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        blobs.insert(name, data);
    }
    let blob = |digest: &str| -> Result<&Vec<u8>> {
        let name = format!("blobs/{}", digest.replacen(':', "/", 1));
        blobs
            .get(&name)
            .with_context(|| format!("archive has no blob `{digest}`"))
    };
    let index: Value = serde_json::from_slice(
        blobs
            .get("index.json")
            .context("archive has no `index.json`")?,
    )?;
    let mut manifest = None;
    let mut queue: Vec<Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    queue.reverse();
    while let Some(desc) = queue.pop() {
        let digest = desc["digest"]
            .as_str()
            .context("descriptor without digest")?;
        let doc: Value = serde_json::from_slice(blob(digest)?)?;
        if doc.get("manifests").is_some() {
            let mut inner = doc["manifests"].as_array().cloned().unwrap_or_default();
            inner.reverse();
            queue.extend(inner);
            continue;
        }
        // Attestation manifests are annotated unknown/unknown; the image is the other one.
        if desc["platform"]["os"].as_str() == Some("unknown") {
            continue;
        }
        manifest = Some(doc);
        break;
    }
    let manifest = manifest.context("archive holds no image manifest")?;
    let config: Value = serde_json::from_slice(blob(
        manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?,
    )?)?;
    let mut layers = Vec::new();
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let digest = layer["digest"].as_str().context("layer without digest")?;
        layers.push(decompress(blob(digest)?).with_context(|| format!("layer `{digest}`"))?);
    }
    Ok(Image { config, layers })
}

/// Layers are gzip, zstd or plain tar whatever their media type says; the magic decides.
fn decompress(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(data)?.read_to_end(&mut out)?;
    } else {
        out = data.to_vec();
    }
    Ok(out)
}

/// One path of a layer, as the summary prints it.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// `file`, `dir`, `symlink`, `char`, `block`, `fifo`, `whiteout`, `opaque`.
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    sha256: String,
    target: String,
    xattrs: Vec<String>,
    /// Hard-link group: every name in the same layer for this inode (empty when alone).
    group: usize,
}

impl Entry {
    fn line(&self, path: &str, groups: &[BTreeSet<String>]) -> String {
        let mut s = match self.kind {
            "whiteout" | "opaque" | "deleted" => return format!("{path} {}", self.kind),
            _ => format!(
                "{path} {} {:o} {}:{}",
                self.kind, self.mode, self.uid, self.gid
            ),
        };
        match self.kind {
            "file" => s.push_str(&format!(" size={} sha256={}", self.size, self.sha256)),
            "symlink" => s.push_str(&format!(" -> {}", self.target)),
            "char" | "block" => s.push_str(&format!(" dev={}", self.target)),
            _ => {}
        }
        if !self.xattrs.is_empty() {
            s.push_str(&format!(" xattrs={}", self.xattrs.join(",")));
        }
        if self.group > 0 {
            let names: Vec<&str> = groups[self.group].iter().map(String::as_str).collect();
            s.push_str(&format!(" links=[{}]", names.join(" ")));
        }
        s
    }
}

/// A layer's entries by path (no leading `/` or `./`, directories without trailing `/`).
struct Layer {
    entries: BTreeMap<String, Entry>,
    groups: Vec<BTreeSet<String>>,
}

fn clean(path: &str) -> String {
    let p = path
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    if p.is_empty() || p == "." {
        ".".to_string()
    } else {
        p.to_string()
    }
}

fn parse_layer(data: &[u8]) -> Result<Layer> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut archive = tar::Archive::new(data);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = clean(&entry.path()?.to_string_lossy());
        let header = entry.header().clone();
        let name = path.rsplit('/').next().unwrap_or("");
        let parent = path
            .rsplit_once('/')
            .map(|(p, _)| p.to_string())
            .unwrap_or_else(|| ".".into());
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if let Some(key) = ext.key()?.strip_prefix("SCHILY.xattr.") {
                    xattrs.push(key.to_string());
                }
            }
        }
        xattrs.sort();
        let base = Entry {
            kind: "file",
            mode: header.mode()? & 0o7777,
            uid: header.uid()?,
            gid: header.gid()?,
            size: 0,
            sha256: String::new(),
            target: String::new(),
            xattrs,
            group: 0,
        };
        if name == ".wh..wh..opq" {
            entries.insert(
                path,
                Entry {
                    kind: "opaque",
                    ..base
                },
            );
            continue;
        }
        if let Some(gone) = name.strip_prefix(".wh.") {
            let p = if parent == "." {
                gone.to_string()
            } else {
                format!("{parent}/{gone}")
            };
            entries.insert(
                p,
                Entry {
                    kind: "whiteout",
                    ..base
                },
            );
            continue;
        }
        let kind = header.entry_type();
        let e = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut content = Vec::new();
                entry.read_to_end(&mut content)?;
                Entry {
                    size: content.len() as u64,
                    sha256: hex(&Sha256::digest(&content)),
                    ..base
                }
            }
            tar::EntryType::Directory => Entry {
                kind: "dir",
                ..base
            },
            tar::EntryType::Symlink => Entry {
                kind: "symlink",
                target: entry
                    .link_name()?
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                ..base
            },
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .map(|l| clean(&l.to_string_lossy()))
                    .unwrap_or_default();
                links.push((path, target));
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block => Entry {
                kind: if kind == tar::EntryType::Char {
                    "char"
                } else {
                    "block"
                },
                target: format!(
                    "{},{}",
                    header.device_major()?.unwrap_or(0),
                    header.device_minor()?.unwrap_or(0)
                ),
                ..base
            },
            tar::EntryType::Fifo => Entry {
                kind: "fifo",
                ..base
            },
            // pax/GNU long-name headers are consumed by the tar crate; anything else is odd.
            other => bail!("layer entry `{path}` has an unexpected type {other:?}"),
        };
        entries.insert(path, e);
    }
    // Hard links: every name of one inode gets the first name's metadata (one inode, one owner),
    // whichever name a builder happened to write first.
    let mut groups: Vec<BTreeSet<String>> = vec![BTreeSet::new()];
    for (path, target) in links {
        let Some(t) = entries.get(&target).cloned() else {
            bail!(
                "hard link `{path}` points to `{target}`, which the layer does not hold before it"
            );
        };
        let g = if t.group > 0 {
            t.group
        } else {
            groups.push(BTreeSet::from([target.clone()]));
            let g = groups.len() - 1;
            if let Some(e) = entries.get_mut(&target) {
                e.group = g;
            }
            g
        };
        groups[g].insert(path.clone());
        entries.insert(path, Entry { group: g, ..t });
    }
    Ok(Layer { entries, groups })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The config fields a Dockerfile sets, in a fixed order; timestamps, history and diff_ids left
/// out (the layers themselves are compared).
fn config_lines(config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["architecture", "os", "variant"] {
        if let Some(v) = config.get(key) {
            out.push(format!("config {key} {v}"));
        }
    }
    let c = &config["config"];
    for key in [
        "User",
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "Labels",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
        "Healthcheck",
        "Shell",
        "OnBuild",
        "ArgsEscaped",
    ] {
        // Absent and null only: BuildKit's Go writer omits empty values (`omitempty`), so an
        // empty string, list or map that kiln writes is a difference worth seeing.
        match c.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => out.push(format!("config {key} {v}")),
        }
    }
    out
}

/// The summary: config, then each layer after the first `base_layers`, then the flattened tree
/// of what those layers made (base paths they removed as `deleted`).
pub fn summarise(image: &Image, base_layers: usize) -> Result<String> {
    let mut out = config_lines(&image.config);
    let layers: Vec<Layer> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| parse_layer(l).with_context(|| format!("layer {i}")))
        .collect::<Result<_>>()?;
    out.push(format!(
        "layers {} (base {base_layers})",
        layers.len().saturating_sub(base_layers)
    ));
    // Flattened: path -> (layer index, entry); hard-link groups keyed by (layer, group).
    let mut flat: BTreeMap<String, (usize, Entry)> = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate() {
        if i >= base_layers {
            out.push(format!("layer {}", i - base_layers));
            for (path, e) in &layer.entries {
                out.push(format!("  {}", e.line(path, &layer.groups)));
            }
        }
        for (path, e) in &layer.entries {
            match e.kind {
                "opaque" => {
                    // `dir/.wh..wh..opq`: what earlier layers held under `dir/` is gone.
                    let dir = path.trim_end_matches(".wh..wh..opq");
                    flat.retain(|k, (li, _)| !(k.starts_with(dir) && *li < i));
                }
                "whiteout" => {
                    let prefix = format!("{path}/");
                    flat.retain(|k, _| !(k == path || k.starts_with(&prefix)));
                    flat.insert(
                        path.clone(),
                        (
                            i,
                            Entry {
                                kind: "deleted",
                                ..e.clone()
                            },
                        ),
                    );
                }
                _ => {
                    if e.kind != "dir" {
                        let prefix = format!("{path}/");
                        flat.retain(|k, _| !k.starts_with(&prefix));
                    }
                    flat.insert(path.clone(), (i, e.clone()));
                }
            }
        }
    }
    out.push("flattened".to_string());
    // Groups as they survive flattening: names still holding that (layer, group).
    let mut survivors: BTreeMap<(usize, usize), BTreeSet<String>> = BTreeMap::new();
    for (path, (li, e)) in &flat {
        if e.group > 0 {
            survivors
                .entry((*li, e.group))
                .or_default()
                .insert(path.clone());
        }
    }
    // Base paths that the layers removed, whatever way each builder wrote the removal.
    let mut base_paths: BTreeSet<&String> = BTreeSet::new();
    for layer in &layers[..base_layers.min(layers.len())] {
        base_paths.extend(
            layer
                .entries
                .keys()
                .filter(|k| !k.ends_with(".wh..wh..opq")),
        );
    }
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    for path in base_paths {
        if flat.get(path).is_none_or(|(_, e)| e.kind == "deleted") {
            lines.insert(path.clone(), format!("  {path} deleted"));
        }
    }
    for (path, (li, e)) in &flat {
        if *li < base_layers || e.kind == "deleted" {
            continue;
        }
        let mut e = e.clone();
        let groups;
        if e.group > 0 {
            let names = survivors.get(&(*li, e.group)).cloned().unwrap_or_default();
            if names.len() < 2 {
                e.group = 0;
                groups = vec![];
            } else {
                groups = vec![BTreeSet::new(), names];
                e.group = 1;
            }
        } else {
            groups = vec![];
        }
        lines.insert(path.clone(), format!("  {}", e.line(path, &groups)));
    }
    out.extend(lines.into_values());
    let mut text = out.join("\n");
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer tar from (path, kind, link or content) triples; kind `f`, `d`, `l` (hard), `s`.
    fn layer(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_path(path).unwrap();
            h.set_mode(if *kind == 'd' { 0o755 } else { 0o644 });
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match kind {
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).unwrap();
                    continue;
                }
                'd' => h.set_entry_type(tar::EntryType::Directory),
                'l' => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_link_name(data).unwrap();
                }
                _ => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_link_name(data).unwrap();
                }
            }
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn image(layers: Vec<Vec<u8>>) -> Image {
        Image {
            config: serde_json::json!({"config": {"Cmd": ["sh"], "Env": [], "User": ""}}),
            layers,
        }
    }

    #[test]
    fn hard_link_groups_do_not_depend_on_which_name_comes_first() {
        let a = layer(&[("h/", 'd', ""), ("h/a", 'f', "x"), ("h/b", 'l', "h/a")]);
        let b = layer(&[("h/", 'd', ""), ("h/b", 'f', "x"), ("h/a", 'l', "h/b")]);
        let sa = summarise(&image(vec![a]), 0).unwrap();
        assert_eq!(sa, summarise(&image(vec![b]), 0).unwrap());
        assert!(sa.contains("h/a file 644 0:0 size=1"), "{sa}");
        assert!(sa.contains("links=[h/a h/b]"), "{sa}");
    }

    #[test]
    fn removals_of_base_paths_read_the_same_as_whiteouts_or_as_an_opaque_directory() {
        let base = layer(&[("d/", 'd', ""), ("d/a", 'f', "1"), ("d/b", 'f', "2")]);
        let whiteouts = layer(&[
            ("d/", 'd', ""),
            ("d/.wh.a", 'f', ""),
            ("d/.wh.b", 'f', ""),
            ("d/c", 'f', "3"),
        ]);
        let opaque = layer(&[
            ("d/", 'd', ""),
            ("d/.wh..wh..opq", 'f', ""),
            ("d/c", 'f', "3"),
        ]);
        let flat = |s: String| s.split("flattened\n").nth(1).unwrap().to_string();
        let w = flat(summarise(&image(vec![base.clone(), whiteouts]), 1).unwrap());
        let o = flat(summarise(&image(vec![base, opaque]), 1).unwrap());
        assert_eq!(w, o);
        assert!(
            w.contains("  d/a deleted\n") && w.contains("  d/c file"),
            "{w}"
        );
    }

    #[test]
    fn config_keeps_empty_values_and_leaves_out_history() {
        let mut img = image(vec![]);
        img.config["history"] = serde_json::json!([{"created": "now"}]);
        img.config["config"]["Labels"] = Value::Null;
        let s = summarise(&img, 0).unwrap();
        let want = "config User \"\"\nconfig Env []\nconfig Cmd [\"sh\"]\nlayers 0 (base 0)\n";
        assert!(s.starts_with(want), "{s}");
    }

    #[test]
    fn a_hard_link_to_nothing_is_an_error_not_a_panic() {
        let bad = layer(&[("b", 'l', "missing")]);
        assert!(summarise(&image(vec![bad]), 0).is_err());
    }
}
