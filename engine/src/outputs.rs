//! Build outputs (`--output`/`-o`, BuildKit's syntax): parsing the specs, and delivering an
//! exported image to each of them: the local store, a registry, OCI and Docker archives, or the
//! final file system as a directory or a tar.

mod index;

pub(crate) use index::{check_multi_platform, deliver_platforms};

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_exporter::{Compression, ImageDescriptor, ManifestFormat, VariantOptions};

use crate::export::ExportedImage;
use crate::{normalize_name, Engine, ImageRecord};

/// How an output's image is encoded: layer compression and manifest media types.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ImageFormat {
    /// Layer compression where the image leaves the store (push, OCI archive or layout).
    pub compression: Compression,
    /// `compression=` was given: the local store keeps this compression too, instead of the
    /// uncompressed layers it keeps by default.
    pub explicit_compression: bool,
    /// `compression-level=N` (gzip 0-9, zstd 1-22); `None`: gzip 6, zstd 3.
    pub level: Option<i32>,
    /// `force-compression=true`: re-compress base-image layers too.
    pub force: bool,
    /// `oci-mediatypes=false` gives Docker schema2 media types.
    pub docker_mediatypes: bool,
}

/// Where one output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// `type=image`: the local store under `names` (the `-t` tags when empty); `push=true` also
    /// pushes to each name's registry.
    Image { names: Vec<String>, push: bool },
    /// `type=oci,dest=FILE` (`-` for stdout): an OCI image layout as a tar, its manifest listed
    /// under each of `names` (the `-t` tags when empty).
    OciArchive { dest: PathBuf, names: Vec<String> },
    /// `type=oci,dest=DIR,tar=false`: an OCI image layout directory.
    OciDir { dest: PathBuf, names: Vec<String> },
    /// `type=docker,dest=FILE` (`-` for stdout): a `docker load` archive.
    DockerArchive { dest: PathBuf, names: Vec<String> },
    /// `type=local,dest=DIR`: the final file system.
    Local { dest: PathBuf },
    /// `type=tar,dest=FILE` (`-` for stdout): the final file system as a tar.
    Tar { dest: PathBuf },
}

/// One `--output`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    pub format: ImageFormat,
}

impl OutputSpec {
    /// An output of `kind` with the default format (gzip, OCI media types).
    pub fn new(kind: OutputKind) -> OutputSpec {
        OutputSpec {
            kind,
            format: ImageFormat::default(),
        }
    }

    /// Parses `type=...,key=value,...` as `docker buildx build --output` does; a field holding
    /// commas is quoted: `type=image,"name=a:1,a:2"`. A bare path is `type=local,dest=PATH`.
    pub fn parse(spec: &str) -> Result<OutputSpec> {
        let fields = split_csv(spec).with_context(|| format!("`--output {spec}`"))?;
        if fields.len() == 1 && !fields[0].contains('=') {
            return Ok(OutputSpec::new(OutputKind::Local {
                dest: PathBuf::from(&fields[0]),
            }));
        }
        let mut kv: BTreeMap<String, String> = BTreeMap::new();
        for f in &fields {
            let (k, v) = f.split_once('=').with_context(|| {
                format!(
                    "`--output {spec}`: `{f}` is not key=value; write e.g. `type=oci,dest=out.tar`"
                )
            })?;
            kv.insert(k.trim().to_ascii_lowercase(), v.to_string());
        }
        let mut take = |k: &str| kv.remove(k);
        let bool_of = |k: &str, v: Option<String>| -> Result<Option<bool>> {
            match v.as_deref() {
                None => Ok(None),
                Some("true") | Some("1") | Some("") => Ok(Some(true)),
                Some("false") | Some("0") => Ok(Some(false)),
                Some(other) => bail!("`--output {spec}`: `{k}={other}` must be `true` or `false`"),
            }
        };
        let kind = take("type").with_context(|| {
            format!("`--output {spec}`: `type=` is required (image, registry, oci, docker, local or tar)")
        })?;
        let mut format = ImageFormat::default();
        if let Some(c) = take("compression") {
            format.explicit_compression = true;
            format.compression = match c.as_str() {
                "gzip" => Compression::Gzip,
                "zstd" => Compression::Zstd,
                "uncompressed" => Compression::Uncompressed,
                other => bail!(
                    "`--output {spec}`: unknown `compression={other}`: use gzip, zstd or uncompressed"
                ),
            };
        }
        if let Some(l) = take("compression-level") {
            let level: i32 = l.parse().map_err(|_| {
                anyhow::anyhow!("`--output {spec}`: `compression-level={l}` is not a number")
            })?;
            let ok = match format.compression {
                Compression::Gzip => (0..=9).contains(&level),
                Compression::Zstd => (1..=22).contains(&level),
                Compression::Uncompressed => true,
            };
            if !ok {
                bail!("`--output {spec}`: `compression-level={level}` is out of range: gzip takes 0-9, zstd 1-22");
            }
            format.level = Some(level);
        }
        format.force = bool_of("force-compression", take("force-compression"))?.unwrap_or(false);
        format.docker_mediatypes =
            !bool_of("oci-mediatypes", take("oci-mediatypes"))?.unwrap_or(true);
        if format.docker_mediatypes && format.compression == Compression::Zstd {
            bail!("`--output {spec}`: zstd layers need OCI media types: drop `oci-mediatypes=false` or use `compression=gzip`");
        }
        let names = |v: Option<String>| -> Vec<String> {
            v.map(|n| {
                n.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
        };
        let dest = |v: Option<String>| -> Result<PathBuf> {
            v.filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .with_context(|| {
                    format!("`--output {spec}`: `dest=` is required for `type={kind}`")
                })
        };
        let out_kind = match kind.as_str() {
            "image" => {
                let push = bool_of("push", take("push"))?.unwrap_or(false);
                OutputKind::Image {
                    names: names(take("name")),
                    push,
                }
            }
            "registry" => OutputKind::Image {
                names: names(take("name")),
                push: true,
            },
            "oci" => {
                let tar = bool_of("tar", take("tar"))?.unwrap_or(true);
                let d = dest(take("dest"))?;
                let names = names(take("name"));
                if tar {
                    OutputKind::OciArchive { dest: d, names }
                } else if d.as_os_str() == "-" {
                    bail!("`--output {spec}`: an OCI layout directory cannot go to stdout; drop `tar=false`");
                } else {
                    OutputKind::OciDir { dest: d, names }
                }
            }
            "docker" => OutputKind::DockerArchive {
                dest: dest(take("dest"))?,
                names: names(take("name")),
            },
            "local" => {
                let d = dest(take("dest"))?;
                if d.as_os_str() == "-" {
                    bail!("`--output {spec}`: a directory cannot go to stdout; use `type=tar,dest=-`");
                }
                OutputKind::Local { dest: d }
            }
            "tar" => OutputKind::Tar {
                dest: dest(take("dest"))?,
            },
            other => bail!(
                "`--output {spec}`: unknown `type={other}`: use image, registry, oci, docker, local or tar"
            ),
        };
        // Accepted for compatibility with buildx; they change nothing here.
        for k in [
            "unpack",
            "store",
            "annotation",
            "buildinfo",
            "dangling-name-prefix",
        ] {
            kv.retain(|key, _| key != k && !key.starts_with(&format!("{k}.")));
        }
        if let Some(k) = kv.keys().next() {
            bail!("`--output {spec}`: unknown key `{k}` for `type={kind}`");
        }
        Ok(OutputSpec {
            kind: out_kind,
            format,
        })
    }
}

/// Splits on commas outside double quotes, as Go's csv reader does for buildx; quotes are removed.
fn split_csv(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        bail!("unterminated `\"`");
    }
    out.push(cur);
    Ok(out.into_iter().filter(|f| !f.is_empty()).collect())
}

/// `SOURCE_DATE_EPOCH` from `--build-arg`, else from the caller's environment (`from_env`).
pub(crate) fn source_date_epoch(
    build_args: &BTreeMap<String, String>,
    from_env: Option<&str>,
) -> Result<Option<i64>> {
    let raw = match build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) => Some(v.clone()),
        None => from_env.map(str::to_string),
    };
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            anyhow::anyhow!("`SOURCE_DATE_EPOCH={v}` is not a number of seconds since 1970; set it to e.g. `$(git log -1 --format=%ct)`")
        }),
    }
}

/// Where an image variant goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Destination {
    /// The local store: new layers stay uncompressed unless the output names a compression.
    Store,
    /// A registry or an OCI archive or layout: layers compressed as `fmt` says (gzip by default).
    Transport,
}

fn variant_options(fmt: &ImageFormat, dest: Destination) -> VariantOptions {
    let format = if fmt.docker_mediatypes {
        ManifestFormat::Docker
    } else {
        ManifestFormat::Oci
    };
    let (compression, force) = match dest {
        Destination::Store if !fmt.explicit_compression => (Compression::Uncompressed, false),
        _ => (fmt.compression, fmt.force),
    };
    VariantOptions {
        compression,
        level: fmt.level,
        force,
        format,
    }
}

/// The image as `opts` wants it; each compressed layer is made once per (diffID, compression,
/// level) and reused by later builds and pushes, see [`kiln_exporter::image_variant`].
async fn image_variant(
    store: &kiln_cache::Store,
    image: &ExportedImage,
    opts: VariantOptions,
    made: &mut Vec<(VariantOptions, ImageDescriptor)>,
) -> Result<ImageDescriptor> {
    if let Some((_, d)) = made.iter().find(|(o, _)| *o == opts) {
        return Ok(d.clone());
    }
    let (s, base) = (store.clone(), image.descriptor());
    let d = tokio::task::spawn_blocking(move || kiln_exporter::image_variant(&s, &base, &opts))
        .await?
        .context("cannot write the image")?;
    made.push((opts, d.clone()));
    Ok(d)
}

/// Each name in its full form (`docker.io/library/app:latest`).
fn normalized(names: &[String]) -> Result<Vec<String>> {
    names.iter().map(|n| normalize_name(n)).collect()
}

/// How `type=oci` writes: a tar (the default) or a layout directory (`tar=false`).
#[derive(Clone, Copy)]
pub(crate) enum OciForm {
    Archive,
    Layout,
}

/// Writes an image or an index as `type=oci` does, its manifest named by the output's `names`
/// or else the build's `tags`, normalised as BuildKit names them (`ref.name`: the tag).
pub(crate) async fn write_oci(
    store: &kiln_cache::Store,
    desc: ImageDescriptor,
    names: &[String],
    tags: &[String],
    dest: &std::path::Path,
    form: OciForm,
) -> Result<()> {
    let names = normalized(if names.is_empty() { tags } else { names })?;
    let (s, d) = (store.clone(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        match form {
            OciForm::Archive => kiln_exporter::write_oci_archive(&s, &desc, &names, &d)
                .with_context(|| format!("cannot write the OCI archive `{}`", d.display())),
            OciForm::Layout => kiln_exporter::write_oci_dir(&s, &desc, &names, &d)
                .with_context(|| format!("cannot write the OCI layout `{}`", d.display())),
        }
    })
    .await?
}

/// What the outputs made: the image (descriptor) a build reports, and the names it was given.
pub(crate) struct Delivered {
    pub image: ImageDescriptor,
}

/// Delivers `image` to `tags` (the local store) and to every output, in order.
pub(crate) async fn deliver(
    engine: &Engine,
    image: &ExportedImage,
    tags: &[String],
    outputs: &[OutputSpec],
) -> Result<Delivered> {
    let store = engine.store().clone();
    let mut reported: Option<ImageDescriptor> = None;
    let mut variants: Vec<(VariantOptions, ImageDescriptor)> = Vec::new();
    let mut all: Vec<OutputSpec> = Vec::new();
    if !tags.is_empty() {
        all.push(OutputSpec::new(OutputKind::Image {
            names: tags.to_vec(),
            push: false,
        }));
    }
    all.extend(outputs.iter().cloned());
    if all.is_empty() {
        // As `docker build` without `-t`: the image stays in the store without a name (a
        // dangling image), so the ID the build prints names something.
        let d = image.descriptor();
        store.images().put_dangling(&ImageRecord {
            name: String::new(),
            digest: d.manifest_digest,
            size: d.manifest_size,
            media_type: d.media_type,
            created: image.created.clone(),
        })?;
    }
    for out in &all {
        let fmt = &out.format;
        let desc = match &out.kind {
            OutputKind::Local { .. } | OutputKind::Tar { .. } => None,
            // A docker-archive holds uncompressed layer tars whatever the manifest says: the
            // store's variant spares compressing layers only to decompress them again.
            OutputKind::Image { push: false, .. } | OutputKind::DockerArchive { .. } => Some(
                image_variant(
                    &store,
                    image,
                    variant_options(fmt, Destination::Store),
                    &mut variants,
                )
                .await?,
            ),
            OutputKind::Image { push: true, .. }
            | OutputKind::OciArchive { .. }
            | OutputKind::OciDir { .. } => Some(
                image_variant(
                    &store,
                    image,
                    variant_options(fmt, Destination::Transport),
                    &mut variants,
                )
                .await?,
            ),
        };
        if reported.is_none() {
            reported = desc.clone();
        }
        match (&out.kind, desc) {
            (OutputKind::Image { names, push }, Some(desc)) => {
                let names = if names.is_empty() { tags } else { names };
                if names.is_empty() {
                    bail!("`--output type=image` needs a name: add `name=NAME` or `-t NAME`");
                }
                // A pushed image is named in the store too, in the store's own variant; the
                // registry gets `desc`, the compressed one.
                let stored = if *push {
                    image_variant(
                        &store,
                        image,
                        variant_options(fmt, Destination::Store),
                        &mut variants,
                    )
                    .await?
                } else {
                    desc.clone()
                };
                for n in names {
                    let full = normalize_name(n)?;
                    store.images().put(&ImageRecord {
                        name: full.clone(),
                        digest: stored.manifest_digest.clone(),
                        size: stored.manifest_size,
                        media_type: stored.media_type.clone(),
                        created: image.created.clone(),
                    })?;
                    if *push {
                        engine
                            .push_manifest_of(
                                &full,
                                &desc.manifest_digest,
                                &desc.media_type,
                                n,
                                None,
                            )
                            .await
                            .with_context(|| format!("cannot push `{n}`"))?;
                    }
                }
            }
            (OutputKind::OciArchive { dest, names }, Some(desc)) => {
                write_oci(&store, desc, names, tags, dest, OciForm::Archive).await?;
            }
            (OutputKind::OciDir { dest, names }, Some(desc)) => {
                write_oci(&store, desc, names, tags, dest, OciForm::Layout).await?;
            }
            (OutputKind::DockerArchive { dest, names }, Some(desc)) => {
                let names = normalized(if names.is_empty() { tags } else { names })?;
                let (s, d) = (store.clone(), dest.clone());
                tokio::task::spawn_blocking(move || {
                    kiln_exporter::write_docker_archive(&s, &desc, &names, &d).with_context(|| {
                        format!("cannot write the docker archive `{}`", d.display())
                    })
                })
                .await??;
            }
            (OutputKind::Local { dest }, _) => {
                let (s, d, chain) = (store.clone(), dest.clone(), image.chain.clone());
                tokio::task::spawn_blocking(move || {
                    kiln_exporter::write_rootfs(&s, &chain, &d).with_context(|| {
                        format!("cannot write the file system to `{}`", d.display())
                    })
                })
                .await??;
            }
            (OutputKind::Tar { dest }, _) => {
                let (s, d, chain, epoch) = (
                    store.clone(),
                    dest.clone(),
                    image.chain.clone(),
                    image.epoch,
                );
                tokio::task::spawn_blocking(move || {
                    kiln_exporter::write_rootfs_tar(&s, &chain, &d, epoch).with_context(|| {
                        format!("cannot write the file system tar `{}`", d.display())
                    })
                })
                .await??;
            }
            (_, None) => unreachable_output()?,
        }
    }
    Ok(Delivered {
        image: reported.unwrap_or_else(|| image.descriptor()),
    })
}

/// Image outputs always get a descriptor above; this keeps the match total without a panic.
fn unreachable_output() -> Result<()> {
    bail!("internal error: an image output without an image")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> OutputSpec {
        OutputSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e:#}"))
    }

    fn err(s: &str) -> String {
        format!("{:#}", OutputSpec::parse(s).unwrap_err())
    }

    #[test]
    fn parses_buildkit_output_specs() {
        assert_eq!(
            p("type=oci,dest=o.tar").kind,
            OutputKind::OciArchive {
                dest: "o.tar".into(),
                names: vec![]
            }
        );
        assert_eq!(
            p("type=oci,dest=o,tar=false,name=x").kind,
            OutputKind::OciDir {
                dest: "o".into(),
                names: vec!["x".into()]
            }
        );
        assert_eq!(
            p(r#"type=image,"name=a:1,b:2",push=true"#).kind,
            OutputKind::Image {
                names: vec!["a:1".into(), "b:2".into()],
                push: true
            }
        );
        assert_eq!(
            p("type=registry,name=r/x").kind,
            OutputKind::Image {
                names: vec!["r/x".into()],
                push: true
            }
        );
        assert_eq!(
            p("./out").kind,
            OutputKind::Local {
                dest: "./out".into()
            }
        );
        assert_eq!(
            p("type=tar,dest=-").kind,
            OutputKind::Tar { dest: "-".into() }
        );
        let o = p("type=docker,dest=d.tar,compression=uncompressed,oci-mediatypes=false");
        assert!(o.format.docker_mediatypes);
        assert_eq!(o.format.compression, Compression::Uncompressed);
        let o = p("type=oci,dest=-,compression=zstd,compression-level=9,force-compression=true");
        assert_eq!(
            o.format,
            ImageFormat {
                compression: Compression::Zstd,
                explicit_compression: true,
                level: Some(9),
                force: true,
                docker_mediatypes: false
            }
        );
    }

    #[test]
    fn bad_output_specs_say_what_to_do() {
        assert!(err("dest=x").contains("`type=` is required"));
        assert!(err("type=oci").contains("`dest=` is required"));
        assert!(err("type=floppy,dest=x").contains("unknown `type=floppy`"));
        assert!(err("type=oci,dest=x,colour=red").contains("unknown key `colour`"));
        assert!(err("type=oci,dest=x,compression=lz4").contains("gzip, zstd or uncompressed"));
        assert!(err("type=oci,dest=x,compression-level=99").contains("out of range"));
        assert!(err("type=oci,dest=x,compression=zstd,oci-mediatypes=false")
            .contains("OCI media types"));
        assert!(err("type=local,dest=-").contains("type=tar,dest=-"));
        assert!(err(r#"type=image,"name=a"#).contains("unterminated"));
    }

    #[test]
    fn epoch_comes_from_build_args_first() {
        let mut args = BTreeMap::new();
        args.insert("SOURCE_DATE_EPOCH".to_string(), "1700000000".to_string());
        assert_eq!(source_date_epoch(&args, None).unwrap(), Some(1_700_000_000));
        args.insert("SOURCE_DATE_EPOCH".to_string(), "yesterday".to_string());
        assert!(source_date_epoch(&args, None).is_err());
    }
}
