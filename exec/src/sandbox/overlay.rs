//! Mounts the overlay root: mount(2) when the options fit in a page, else the new mount API
//! (`fsconfig` `lowerdir+`, one layer per call), which has no length or character limits.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Options that keep the upper directory a plain layer diff (whiteouts and opaque xattrs only):
/// no index, no redirect or metacopy xattrs that an exporter would have to understand.
const PLAIN_DIFF: [(&str, &str); 3] = [
    ("index", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
];

/// [`PLAIN_DIFF`] as a user namespace may have it: there `redirect_dir=off` means `follow`
/// (on kernels built to always follow redirects), which `userxattr` refuses; `nofollow` is
/// the same for a plain diff (no redirects made or read).
fn plain_diff(userxattr: bool) -> [(&'static str, &'static str); 3] {
    PLAIN_DIFF.map(|(k, v)| match (k, userxattr) {
        ("redirect_dir", true) => (k, "nofollow"),
        _ => (k, v),
    })
}

/// The root is `nodev`: a node a step creates (`mknod`), or one an image ships, may exist in the
/// layer but never opens the device it names. Standard devices come from binds in `/dev`.
const ROOT_FLAGS: MsFlags = MsFlags::MS_NODEV;

/// mount(2) copies at most one page of options.
const MAX_LEGACY_DATA: usize = 4095;

pub(crate) struct Layers<'a> {
    pub lower: &'a [PathBuf],
    pub upper: &'a Path,
    pub work: &'a Path,
    /// Keep overlayfs's metadata in `user.overlay.*` xattrs: the only kind a user namespace
    /// (rootless mode) may set.
    pub userxattr: bool,
}

/// Legacy option string, or `None` when some path cannot be written in it or it is too long.
pub(crate) fn legacy_data(l: &Layers<'_>) -> Option<String> {
    let plain = |p: &Path| {
        let s = p.to_str()?;
        (p.is_absolute() && !s.contains([',', ':', '\\', '\n'])).then(|| s.to_string())
    };
    let lowers = l
        .lower
        .iter()
        .map(|p| plain(p))
        .collect::<Option<Vec<_>>>()?;
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        plain(l.upper)?,
        plain(l.work)?
    );
    for (k, v) in plain_diff(l.userxattr) {
        data.push_str(&format!(",{k}={v}"));
    }
    if l.userxattr {
        data.push_str(",userxattr");
    }
    (data.len() <= MAX_LEGACY_DATA).then_some(data)
}

pub(crate) fn mount_overlay(l: &Layers<'_>, target: &Path) -> Result<(), String> {
    if let Some(data) = legacy_data(l) {
        return mount(
            Some("overlay"),
            target,
            Some("overlay"),
            ROOT_FLAGS,
            Some(data.as_str()),
        )
        .map_err(|e| {
            format!(
                "cannot mount the overlay root at `{}`: {e} ({data})",
                target.display()
            )
        });
    }
    mount_with_fsconfig(l, target).map_err(|e| {
        format!(
            "cannot mount the overlay root ({} layers) at `{}`: {e}",
            l.lower.len(),
            target.display()
        )
    })
}

/// The new mount API through kiln-sys (shared with the cache's deep stacks), with the sandbox's
/// own options and wording.
fn mount_with_fsconfig(l: &Layers<'_>, target: &Path) -> Result<(), String> {
    use kiln_sys::{OverlayError, OverlayParam, OverlayStep};
    let mut params: Vec<OverlayParam<'_>> = plain_diff(l.userxattr)
        .iter()
        .map(|(k, v)| OverlayParam::String(k, v))
        .collect();
    if l.userxattr {
        params.push(OverlayParam::Flag("userxattr"));
    }
    kiln_sys::mount_overlay_layers(l.lower, Some((l.upper, l.work)), &params, target).map_err(|e| {
        match e {
            OverlayError::NulInPath(p) => format!("path `{}` contains a NUL byte", p.display()),
            OverlayError::Syscall { step, source } => {
                let what = match step {
                    OverlayStep::Open => "fsopen(overlay)".to_string(),
                    OverlayStep::Config { key, value: None } => format!("fsconfig `{key}`"),
                    OverlayStep::Config {
                        key,
                        value: Some(v),
                    } => format!("fsconfig `{key}={v}`"),
                    OverlayStep::Create => "creating the overlay (fsconfig)".to_string(),
                    OverlayStep::Mount => "fsmount".to_string(),
                    OverlayStep::Move => "move_mount".to_string(),
                };
                format!("{what}: {source}")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_data_only_when_it_fits() {
        let lower = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        let l = Layers {
            lower: &lower,
            upper: Path::new("/u"),
            work: Path::new("/w"),
            userxattr: false,
        };
        assert_eq!(
            legacy_data(&l).as_deref(),
            Some("lowerdir=/a:/b,upperdir=/u,workdir=/w,index=off,redirect_dir=off,metacopy=off")
        );
        let odd = vec![PathBuf::from("/a:b")];
        let l2 = Layers { lower: &odd, ..l };
        assert_eq!(legacy_data(&l2), None);
        let many: Vec<PathBuf> = (0..300)
            .map(|i| PathBuf::from(format!("/layer/{i:020}")))
            .collect();
        let l3 = Layers {
            lower: &many,
            upper: Path::new("/u"),
            work: Path::new("/w"),
            userxattr: false,
        };
        let l4 = Layers {
            lower: &lower,
            upper: Path::new("/u"),
            work: Path::new("/w"),
            userxattr: true,
        };
        assert!(legacy_data(&l4)
            .unwrap()
            .ends_with(",metacopy=off,userxattr"));
        assert_eq!(legacy_data(&l3), None);
    }
}
