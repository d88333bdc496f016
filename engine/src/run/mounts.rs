//! `kiln run`'s `-v`, `--mount` and `--tmpfs`: parsed as Docker reads them, checked against the
//! image (a directory is not mounted over a file), volumes created and seeded from the image's
//! content at their path, and turned into the OCI mounts the sandbox makes.

pub use crate::containers::{MountKind, MountRecord};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn check_destination(flag: &str, dst: &str) -> Result<()> {
    if !dst.starts_with('/') {
        bail!("invalid `{flag}`: the container path `{dst}` is not absolute; start it with `/`");
    }
    if Path::new(dst).components().count() <= 1 {
        bail!("invalid `{flag}`: the container path cannot be `/`");
    }
    Ok(())
}

/// `-v [SRC:]DST[:OPTS]`: SRC an absolute host path (a bind) or a volume name; without SRC an
/// anonymous volume. OPTS: `ro`, `rw`, `nocopy` (others Docker takes, such as `z`, are
/// accepted and have no effect here).
pub fn parse_volume_flag(spec: &str) -> Result<MountRecord> {
    let flag = format!("-v {spec}");
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [a, b] if b.starts_with('/') => (*a, *b, ""),
        [dst, opts] => ("", *dst, *opts),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => bail!("invalid `{flag}`: write SRC:DST[:ro] or DST"),
    };
    if dst.is_empty() {
        bail!("invalid `{flag}`: the container path is empty");
    }
    check_destination(&flag, dst)?;
    let mut m = if src.is_empty() {
        let mut m = MountRecord::new(MountKind::Volume, "", dst);
        m.anonymous = true;
        m
    } else if src.starts_with('/') {
        MountRecord::new(MountKind::Bind, src, dst)
    } else {
        if !crate::volumes::valid_name(src) {
            bail!(
                "invalid `{flag}`: `{src}` includes invalid characters for a local volume name, only `[a-zA-Z0-9][a-zA-Z0-9_.-]` are allowed; to mount a host directory, give its absolute path"
            );
        }
        MountRecord::new(MountKind::Volume, src, dst)
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "nocopy" if m.kind == MountKind::Volume => m.nocopy = true,
            "z" | "Z" | "private" | "rprivate" | "consistent" | "cached" | "delegated" => {}
            other => {
                bail!("invalid `{flag}`: unknown option `{other}`: use `ro`, `rw` or `nocopy`")
            }
        }
    }
    Ok(m)
}

/// `--mount type=bind|volume|tmpfs,source=..,target=..[,readonly][,volume-nocopy]
/// [,tmpfs-size=..][,tmpfs-mode=..]`.
pub fn parse_mount_flag(spec: &str) -> Result<MountRecord> {
    let flag = format!("--mount {spec}");
    let mut kind = MountKind::Volume;
    let (mut src, mut dst) = (String::new(), String::new());
    let (mut read_only, mut nocopy) = (false, false);
    let mut options = Vec::new();
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        let truth = || match value {
            None | Some("1") | Some("true") => Ok(true),
            Some("0") | Some("false") => Ok(false),
            Some(v) => bail!("invalid `{flag}`: `{key}={v}` is not `true` or `false`"),
        };
        let given = || value.with_context(|| format!("invalid `{flag}`: `{key}` needs a value"));
        match key {
            "type" => {
                kind = match given()? {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    other => bail!(
                        "invalid `{flag}`: unknown mount type `{other}`: use `bind`, `volume` or `tmpfs`"
                    ),
                }
            }
            "source" | "src" => src = given()?.to_string(),
            "destination" | "dst" | "target" => dst = given()?.to_string(),
            "readonly" | "ro" => read_only = truth()?,
            "volume-nocopy" => nocopy = truth()?,
            "tmpfs-size" => {
                let size = kiln_exec::parse_size("--mount tmpfs-size", given()?)?;
                options.push(format!("size={size}"));
            }
            "tmpfs-mode" => {
                let mode = given()?;
                u32::from_str_radix(mode, 8).map_err(|_| {
                    anyhow::anyhow!("invalid `{flag}`: `tmpfs-mode={mode}` is not an octal mode such as `1777`")
                })?;
                options.push(format!("mode={mode}"));
            }
            "bind-propagation" | "consistency" | "volume-driver" => {}
            other => bail!("invalid `{flag}`: unknown field `{other}`"),
        }
    }
    if dst.is_empty() {
        bail!("invalid `{flag}`: `target` is missing: add `target=/path/in/container`");
    }
    check_destination(&flag, &dst)?;
    let mut m = MountRecord::new(kind, &src, &dst);
    m.read_only = read_only;
    match kind {
        MountKind::Bind => {
            if src.is_empty() {
                bail!("invalid `{flag}`: a bind mount needs `source=/host/path`");
            }
            if !src.starts_with('/') {
                bail!("invalid `{flag}`: the bind source `{src}` is not an absolute path");
            }
        }
        MountKind::Volume => {
            m.nocopy = nocopy;
            if src.is_empty() {
                m.anonymous = true;
            } else if !crate::volumes::valid_name(&src) {
                bail!(
                    "invalid `{flag}`: `{src}` is not a volume name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`); for a host directory use `type=bind`"
                );
            }
        }
        MountKind::Tmpfs => {
            if !src.is_empty() {
                bail!("invalid `{flag}`: a tmpfs mount takes no `source`");
            }
            m.options = options;
        }
    }
    if kind != MountKind::Tmpfs && !m.options.is_empty() {
        bail!("invalid `{flag}`: `tmpfs-*` fields are for `type=tmpfs`");
    }
    Ok(m)
}

/// `--tmpfs /path[:size=..,mode=..]`.
pub fn parse_tmpfs_flag(spec: &str) -> Result<MountRecord> {
    let flag = format!("--tmpfs {spec}");
    let (dst, opts) = spec.split_once(':').unwrap_or((spec, ""));
    check_destination(&flag, dst)?;
    let mut m = MountRecord::new(MountKind::Tmpfs, "", dst);
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => {
                let size = kiln_exec::parse_size("--tmpfs size", v)?;
                m.options.push(format!("size={size}"));
            }
            Some(("mode", v)) if u32::from_str_radix(v, 8).is_ok() => {
                m.options.push(format!("mode={v}"))
            }
            None if o == "ro" => m.read_only = true,
            None if matches!(o, "rw" | "exec" | "noexec" | "nosuid" | "nodev") => {}
            _ => bail!("invalid `{flag}`: unknown option `{o}`: use `size=`, `mode=` or `ro`"),
        }
    }
    Ok(m)
}

/// Makes the volumes `mounts` name (anonymous ones get their names), seeds new empty ones from
/// the image (whose root is at `image_root`, `None` for an empty image), checks every path
/// against the image, and returns the OCI mounts, parents before children. The caller holds
/// the volumes lock until the container's config is written.
pub(crate) fn prepare(
    lock: &crate::volumes::VolumesLock,
    root: &Path,
    image: &str,
    image_root: Option<&Path>,
    mounts: &mut [MountRecord],
) -> Result<Vec<oci_spec::runtime::Mount>> {
    let mut seen: Vec<&str> = Vec::new();
    for m in mounts.iter() {
        let d = m.destination.trim_end_matches('/');
        if seen.contains(&d) {
            bail!("duplicate mount point `{}`", m.destination);
        }
        seen.push(d);
    }
    let mut out = Vec::new();
    for m in mounts.iter_mut() {
        let in_image = match image_root {
            Some(r) => {
                let p = kiln_solver::resolve_in_root(r, &m.destination, true)
                    .with_context(|| format!("cannot resolve `{}` in `{image}`", m.destination))?;
                std::fs::metadata(&p).ok().map(|md| (p, md))
            }
            None => None,
        };
        let source: PathBuf = match m.kind {
            MountKind::Bind => {
                let src = PathBuf::from(&m.source);
                let md = std::fs::metadata(&src).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => anyhow::anyhow!(
                        "the bind mount source `{}` does not exist: create it first, or give a path that exists",
                        m.source
                    ),
                    _ => anyhow::anyhow!("cannot read the bind mount source `{}`: {e}", m.source),
                })?;
                if let Some((_, img)) = &in_image {
                    if md.is_dir() != img.is_dir() {
                        let (what, over) = if md.is_dir() {
                            ("the directory", "a file")
                        } else {
                            ("the file", "a directory")
                        };
                        bail!(
                            "cannot mount {what} `{}` at `{}`: that is {over} in `{image}`; mount a {} there, or choose another path",
                            m.source,
                            m.destination,
                            if md.is_dir() { "file" } else { "directory" }
                        );
                    }
                }
                src
            }
            MountKind::Volume => {
                if let Some((_, img)) = &in_image {
                    if !img.is_dir() {
                        bail!(
                            "cannot mount a volume at `{}`: that is a file in `{image}`; a volume is a directory, choose a directory path",
                            m.destination
                        );
                    }
                }
                let v = crate::volumes::create(
                    lock,
                    root,
                    (!m.source.is_empty()).then_some(m.source.as_str()),
                )?;
                m.source = v.name.clone();
                if let Some((from, md)) = &in_image {
                    if !m.nocopy && is_empty_dir(&v.mountpoint)? {
                        seed(from, md, &v.mountpoint).with_context(|| {
                            format!(
                                "cannot copy `{}` of `{image}` into the volume `{}`",
                                m.destination, v.name
                            )
                        })?;
                    }
                }
                v.mountpoint
            }
            MountKind::Tmpfs => PathBuf::from("tmpfs"),
        };
        let mut options: Vec<String> = match m.kind {
            MountKind::Tmpfs => ["nosuid", "nodev", "noexec"]
                .iter()
                .map(|s| s.to_string())
                .chain(m.options.iter().cloned())
                .collect(),
            _ => vec!["rbind".into(), "rprivate".into()],
        };
        if m.read_only {
            options.push("ro".into());
        }
        out.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(PathBuf::from(&m.destination))
                .typ(
                    if m.kind == MountKind::Tmpfs {
                        "tmpfs"
                    } else {
                        "bind"
                    }
                    .to_string(),
                )
                .source(source)
                .options(options)
                .build()?,
        );
    }
    Ok(out)
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read `{}`", dir.display()))?
        .next()
        .is_none())
}

/// Copies the image's directory `from` (its owner and mode too) into the empty volume `to`, as
/// Docker seeds a new volume.
fn seed(from: &Path, from_md: &std::fs::Metadata, to: &Path) -> Result<()> {
    copy_children(from, to)?;
    set_meta(to, from_md)
}

fn copy_children(from: &Path, to: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read `{}`", from.display()))?
    {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let md = std::fs::symlink_metadata(&src)
            .with_context(|| format!("cannot stat `{}`", src.display()))?;
        let ft = md.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid()))?;
            continue;
        }
        if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_children(&src, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy `{}`", src.display()))?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() || ft.is_socket() {
            let kind = nix::sys::stat::SFlag::from_bits_truncate(
                md.mode() & nix::sys::stat::SFlag::S_IFMT.bits(),
            );
            nix::sys::stat::mknod(
                &dst,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777),
                md.rdev(),
            )
            .with_context(|| format!("cannot make `{}`", dst.display()))?;
        }
        set_meta(&dst, &md)?;
    }
    Ok(())
}

fn set_meta(path: &Path, md: &std::fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(md.uid()), Some(md.gid()))
        .with_context(|| format!("cannot change the owner of `{}`", path.display()))?;
    // After chown, which clears set-id bits.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .with_context(|| format!("cannot change the mode of `{}`", path.display()))?;
    let times = [
        nix::sys::time::TimeSpec::new(md.atime(), md.atime_nsec()),
        nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec()),
    ];
    nix::sys::stat::utimensat(
        None,
        path,
        &times[0],
        &times[1],
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .with_context(|| format!("cannot set the times of `{}`", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_read_as_docker_reads_them() {
        let m = parse_volume_flag("data:/var/lib/db").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.read_only),
            (MountKind::Volume, "data", false)
        );
        let m = parse_volume_flag("/srv/site:/usr/share/html:ro").unwrap();
        assert_eq!((m.kind, m.read_only), (MountKind::Bind, true));
        let m = parse_volume_flag("/cache").unwrap();
        assert!(m.anonymous && m.source.is_empty());
        let m = parse_volume_flag("/cache:ro").unwrap();
        assert!(m.anonymous && m.read_only);
        assert!(parse_volume_flag("./data:/x").is_err());
        assert!(parse_volume_flag("data:x").is_err());
        assert!(parse_volume_flag("data:/").is_err());
        assert!(parse_volume_flag("data:/x:bogus").is_err());
    }

    #[test]
    fn mount_flags_read_as_docker_reads_them() {
        let m = parse_mount_flag("type=bind,src=/srv,dst=/srv,readonly").unwrap();
        assert_eq!((m.kind, m.read_only), (MountKind::Bind, true));
        let m = parse_mount_flag("target=/data").unwrap();
        assert!(m.kind == MountKind::Volume && m.anonymous);
        let m = parse_mount_flag("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770").unwrap();
        assert_eq!(m.options, vec!["size=1048576", "mode=1770"]);
        assert!(parse_mount_flag("type=bind,target=/x").is_err());
        assert!(parse_mount_flag("type=nfs,target=/x").is_err());
        assert!(parse_mount_flag("type=volume,src=v,target=/x,tmpfs-size=1m").is_err());
        assert!(parse_mount_flag("type=volume,src=v").is_err());
    }

    #[test]
    fn a_new_volume_is_seeded_with_owner_mode_and_links() {
        let img = tempfile::tempdir().unwrap();
        let d = img.path().join("data");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("sub/f", d.join("link")).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::chown(d.join("sub/f"), Some(123), Some(456)).unwrap();
        let vol = tempfile::tempdir().unwrap();
        seed(&d, &std::fs::metadata(&d).unwrap(), vol.path()).unwrap();
        assert_eq!(std::fs::read(vol.path().join("link")).unwrap(), b"hello");
        let f = std::fs::metadata(vol.path().join("sub/f")).unwrap();
        assert_eq!((f.uid(), f.gid()), (123, 456));
        let top = std::fs::metadata(vol.path()).unwrap();
        assert_eq!(top.mode() & 0o7777, 0o750);
    }
}
