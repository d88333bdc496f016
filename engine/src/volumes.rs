//! Named volumes: directories under `volumes/<name>/_data` that outlive the containers using
//! them (`kiln volume create|ls|rm|inspect|prune`, `-v NAME:/path`). None of this takes the
//! store's lock; `volumes/.lock` orders creating, removing and a `kiln run` that is about to
//! record a container using one. Which containers use a volume is theirs to say: removing one
//! goes through `containers::remove_volume`.

use anyhow::{bail, Context, Result};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const DATA_DIR: &str = "_data";
const META_FILE: &str = "volume.json";

/// What `volume.json` records about a volume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// Unix seconds.
    pub created: i64,
    /// Made by `-v /path` (or `--mount type=volume` without a source), with a random name:
    /// `kiln rm -v`, `--rm` and `kiln volume prune` remove it.
    pub anonymous: bool,
}

/// One volume as `kiln volume ls` sees it.
#[derive(Clone, Debug)]
pub struct Volume {
    pub name: String,
    /// The directory containers see (`volumes/<name>/_data`).
    pub mountpoint: PathBuf,
    pub meta: VolumeMeta,
}

/// Held while volumes are created or removed, and while a `kiln run` records the volumes its
/// container uses, so `kiln volume rm` never removes one a container is about to use.
pub struct VolumesLock(#[allow(dead_code)] Flock<std::fs::File>);

fn volumes_dir(root: &Path) -> PathBuf {
    root.join("volumes")
}

/// Takes `volumes/.lock` (waiting for another holder).
pub fn lock(root: &Path) -> Result<VolumesLock> {
    crate::dir_lock::lock(&volumes_dir(root)).map(VolumesLock)
}

/// Docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn check_name(name: &str) -> Result<()> {
    if !valid_name(name) {
        bail!(
            "`{name}` includes invalid characters for a local volume name, only `[a-zA-Z0-9][a-zA-Z0-9_.-]` are allowed; to mount a host directory, give its absolute path"
        );
    }
    Ok(())
}

fn load(dir: &Path) -> Option<Volume> {
    let name = dir.file_name()?.to_str()?.to_string();
    if name.starts_with('.') || !dir.join(DATA_DIR).is_dir() {
        return None;
    }
    let meta = std::fs::read(dir.join(META_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Some(Volume {
        name,
        mountpoint: dir.join(DATA_DIR),
        meta,
    })
}

/// Creates volume `name` (a random anonymous one when `None`) or returns the one of that name,
/// as `docker volume create` does. The caller holds the lock.
pub fn create(_lock: &VolumesLock, root: &Path, name: Option<&str>) -> Result<Volume> {
    let (name, anonymous) = match name {
        Some(n) => {
            check_name(n)?;
            (n.to_string(), false)
        }
        None => (random_name(), true),
    };
    let dir = volumes_dir(root).join(&name);
    if let Some(v) = load(&dir) {
        return Ok(v);
    }
    // Built under a hidden name and renamed, so a listing never sees a volume half made.
    let tmp = volumes_dir(root).join(format!(".new-{name}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let made = (|| -> Result<()> {
        std::fs::create_dir_all(tmp.join(DATA_DIR))?;
        let meta = VolumeMeta {
            created: now(),
            anonymous,
        };
        std::fs::write(tmp.join(META_FILE), serde_json::to_vec_pretty(&meta)?)?;
        std::fs::rename(&tmp, &dir)?;
        Ok(())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e).with_context(|| format!("cannot create the volume `{name}`"));
    }
    load(&dir).with_context(|| format!("the volume `{name}` vanished as it was made"))
}

/// Every volume of the store at `root`, by name.
pub fn list(root: &Path) -> Result<Vec<Volume>> {
    let dir = volumes_dir(root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list `{}`", dir.display())),
    };
    let mut all: Vec<Volume> = entries.flatten().filter_map(|e| load(&e.path())).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// The volume called `name`.
pub fn find(root: &Path, name: &str) -> Result<Volume> {
    if !valid_name(name) {
        bail!("no volume `{name}`: `kiln volume ls` lists them");
    }
    load(&volumes_dir(root).join(name))
        .with_context(|| format!("no volume `{name}`: `kiln volume ls` lists them"))
}

/// Removes volume `v`. The caller holds the lock and has checked that no container uses it
/// (`containers::remove_volume`).
pub(crate) fn delete(_lock: &VolumesLock, root: &Path, v: &Volume) -> Result<()> {
    let dir = volumes_dir(root).join(&v.name);
    let hidden = volumes_dir(root).join(format!(".removing-{}", v.name));
    std::fs::rename(&dir, &hidden)
        .with_context(|| format!("cannot remove the volume `{}`", v.name))?;
    std::fs::remove_dir_all(&hidden)
        .with_context(|| format!("cannot remove `{}`", hidden.display()))
}

/// `kiln volume inspect`: as `docker volume inspect` shows one.
pub fn inspect(v: &Volume) -> serde_json::Value {
    serde_json::json!({
        "CreatedAt": crate::export::rfc3339(v.meta.created),
        "Driver": "local",
        "Labels": if v.meta.anonymous {
            serde_json::json!({"com.docker.volume.anonymous": ""})
        } else {
            serde_json::json!({})
        },
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": null,
        "Scope": "local",
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_name() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["ab", "data", "my_vol.1-x", "0a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["a", "", "-x", ".x", "a/b", "..", "a b", "./data"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn create_is_idempotent_and_delete_removes() {
        let root = tempfile::tempdir().unwrap();
        let l = lock(root.path()).unwrap();
        let v = create(&l, root.path(), Some("data")).unwrap();
        std::fs::write(v.mountpoint.join("f"), b"x").unwrap();
        let again = create(&l, root.path(), Some("data")).unwrap();
        assert!(
            again.mountpoint.join("f").exists(),
            "create keeps the content"
        );
        assert!(!again.meta.anonymous);
        let anon = create(&l, root.path(), None).unwrap();
        assert!(anon.meta.anonymous);
        assert_eq!(anon.name.len(), 64);
        let names: Vec<String> = list(root.path())
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names.len(), 2);
        delete(&l, root.path(), &anon).unwrap();
        delete(&l, root.path(), &again).unwrap();
        assert!(list(root.path()).unwrap().is_empty());
        assert!(find(root.path(), "data").is_err());
        assert!(create(&l, root.path(), Some("../x")).is_err());
    }
}
