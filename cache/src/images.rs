//! The local image store: an OCI image layout in `root/images` whose `blobs` is a symlink to the
//! content store, so skopeo and umoci read it as it is. `index.json` is rewritten atomically.
//!
//! An image that lost its last name (its tag moved to another image, or it was built or loaded
//! without one) stays as a *dangling* entry, a descriptor without the ref-name annotation, as
//! Docker keeps `<none>` images until `image prune` or `rmi` removes them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::content::{write_atomic, ContentStore};
use crate::digest::{validate_digest, Digest};
use crate::CacheError;

/// The annotation that names an image in an OCI layout.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The annotation holding the image's creation time.
pub const CREATED_ANNOTATION: &str = "org.opencontainers.image.created";

/// The annotation that marks a dangling entry (an image without a name) as kiln's own.
pub const DANGLING_ANNOTATION: &str = "io.kiln.image.dangling";

/// One named image in the local store; a dangling image's `name` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Full name, e.g. `docker.io/library/app:latest`.
    pub name: String,
    /// Digest of the manifest (or index) blob.
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub created: Option<String>,
}

/// The image store. Obtained from [`crate::Store::images`].
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    tmp: PathBuf,
    content: ContentStore,
    /// Serialises read-modify-write of `index.json` between threads of the owning process.
    write: Mutex<()>,
}

fn empty_index() -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": []
    })
}

impl ImageStore {
    /// Creates the layout files that are missing.
    pub(crate) fn init(root: &Path) -> Result<ImageStore, CacheError> {
        let dir = root.join("images");
        let tmp = root.join("tmp");
        fs::create_dir_all(&dir).map_err(CacheError::io("create directory", &dir))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            write_atomic(&tmp, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            write_atomic(&tmp, &index, empty_index().to_string().as_bytes())?;
        }
        let blobs = dir.join("blobs");
        match fs::symlink_metadata(&blobs) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink("../blobs", &blobs)
                    .map_err(CacheError::io("create symlink", &blobs))?;
            }
            Err(e) => return Err(CacheError::io("inspect", &blobs)(e)),
        }
        Ok(ImageStore {
            dir,
            tmp,
            content: ContentStore::new(root),
            write: Mutex::new(()),
        })
    }

    /// The OCI layout directory (`skopeo inspect oci:<this>:<name>` reads it).
    pub fn layout_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn load(&self) -> Result<Value, CacheError> {
        load_index(&self.index_path())
    }

    fn manifests(index: &Value) -> &[Value] {
        index
            .get("manifests")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn record(desc: &Value, dangling: bool) -> Option<ImageRecord> {
        let ann = desc.get("annotations")?;
        let name = match ann.get(REF_NAME_ANNOTATION) {
            Some(n) => n.as_str()?.to_string(),
            None if dangling && ann.get(DANGLING_ANNOTATION).is_some() => String::new(),
            None => return None,
        };
        Some(ImageRecord {
            name,
            digest: desc.get("digest")?.as_str()?.to_string(),
            size: desc.get("size")?.as_u64()?,
            media_type: desc.get("mediaType")?.as_str()?.to_string(),
            created: ann
                .get(CREATED_ANNOTATION)
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// All named images, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageRecord>, CacheError> {
        Self::records(&self.load()?, false)
    }

    /// The named images and then the dangling ones (empty `name`), which also keep their blobs.
    pub fn list_all(&self) -> Result<Vec<ImageRecord>, CacheError> {
        Self::records(&self.load()?, true)
    }

    fn records(index: &Value, dangling: bool) -> Result<Vec<ImageRecord>, CacheError> {
        let mut out: Vec<ImageRecord> = Self::manifests(index)
            .iter()
            .filter_map(|d| Self::record(d, dangling))
            .collect();
        // Dangling images (empty names) sort last.
        out.sort_by(|a, b| {
            (a.name.is_empty(), &a.name, &a.digest).cmp(&(b.name.is_empty(), &b.name, &b.digest))
        });
        Ok(out)
    }

    /// The image of that exact name.
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, CacheError> {
        Ok(self.list()?.into_iter().find(|r| r.name == name))
    }

    /// Names an image, replacing any image of the same name. The manifest blob must already be
    /// in the content store, so the layout is always readable.
    /// An image the name named before stays as a dangling image when no other name has it.
    pub fn put(&self, record: &ImageRecord) -> Result<(), CacheError> {
        self.check_manifest(record)?;
        if record.name.is_empty() {
            return Err(CacheError::BadImage {
                name: record.name.clone(),
                reason:
                    "the name is empty; give a full reference like `docker.io/library/app:latest`"
                        .into(),
            });
        }
        let desc = descriptor(record, Some(&record.name));
        self.modify(|manifests| {
            let replaced: Vec<Value> = manifests
                .iter()
                .filter(|d| has_name(d, &record.name))
                .cloned()
                .collect();
            manifests.retain(|d| !has_name(d, &record.name));
            // A name given to a dangling image takes the place of its dangling entry.
            manifests.retain(|d| !(is_dangling(d) && digest_of(d) == Some(&record.digest)));
            manifests.push(desc);
            for old in replaced {
                let Some(digest) = digest_of(&old).map(str::to_string) else {
                    continue;
                };
                if !manifests.iter().any(|d| digest_of(d) == Some(&digest)) {
                    manifests.push(dangling_descriptor(&old));
                }
            }
            true
        })
        .map(|_| ())
    }

    /// Keeps an image that has no name (a build without `-t`, a loaded archive without tags) as
    /// a dangling image, unless an entry already holds its manifest.
    pub fn put_dangling(&self, record: &ImageRecord) -> Result<(), CacheError> {
        self.check_manifest(record)?;
        let desc = descriptor(record, None);
        self.modify(|manifests| {
            if manifests
                .iter()
                .any(|d| digest_of(d) == Some(&record.digest))
            {
                return false;
            }
            manifests.push(desc);
            true
        })
        .map(|_| ())
    }

    /// Forgets a dangling image; `Ok(false)` when there was none with that manifest.
    pub fn remove_dangling(&self, digest: &str) -> Result<bool, CacheError> {
        self.modify(|manifests| {
            let before = manifests.len();
            manifests.retain(|d| !(is_dangling(d) && digest_of(d) == Some(digest)));
            manifests.len() != before
        })
    }

    fn check_manifest(&self, record: &ImageRecord) -> Result<(), CacheError> {
        validate_digest(&record.digest)?;
        if !self.content.has(&record.digest) {
            return Err(CacheError::BadImage {
                name: record.name.clone(),
                reason: format!(
                    "manifest `{}` is not in the content store; store the manifest blob before naming it",
                    record.digest
                ),
            });
        }
        Ok(())
    }

    /// Removes the name; `Ok(false)` when no image had it. Blobs are left for GC.
    pub fn remove(&self, name: &str) -> Result<bool, CacheError> {
        self.modify(|manifests| {
            let before = manifests.len();
            manifests.retain(|d| !has_name(d, name));
            manifests.len() != before
        })
    }

    fn modify(&self, f: impl FnOnce(&mut Vec<Value>) -> bool) -> Result<bool, CacheError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.load()?;
        let changed = match index.get_mut("manifests").and_then(Value::as_array_mut) {
            Some(m) => f(m),
            None => false,
        };
        if changed {
            let bytes = serde_json::to_vec_pretty(&index).map_err(|e| CacheError::CorruptJson {
                what: "image index",
                location: self.index_path().display().to_string(),
                cause: e,
            })?;
            write_atomic(&self.tmp, &self.index_path(), &bytes)?;
        }
        Ok(changed)
    }
}

/// The images of the OCI layout in `dir`, read without the store's lock (`kiln images`).
pub(crate) fn list_layout(dir: &Path) -> Result<Vec<ImageRecord>, CacheError> {
    ImageStore::records(&load_index(&dir.join("index.json"))?, false)
}

/// [`list_layout`] with the dangling images (empty names) last.
pub(crate) fn list_layout_all(dir: &Path) -> Result<Vec<ImageRecord>, CacheError> {
    ImageStore::records(&load_index(&dir.join("index.json"))?, true)
}

/// The index entry of an image: named by `name`, or dangling without one.
fn descriptor(record: &ImageRecord, name: Option<&str>) -> Value {
    let mut ann = Map::new();
    match name {
        Some(n) => ann.insert(REF_NAME_ANNOTATION.into(), Value::from(n)),
        None => ann.insert(DANGLING_ANNOTATION.into(), Value::from("true")),
    };
    if let Some(c) = &record.created {
        ann.insert(CREATED_ANNOTATION.into(), Value::from(c.clone()));
    }
    json!({
        "mediaType": record.media_type,
        "digest": record.digest,
        "size": record.size,
        "annotations": ann,
    })
}

/// A named entry made dangling: the same descriptor without its name.
fn dangling_descriptor(named: &Value) -> Value {
    let mut d = named.clone();
    if let Some(ann) = d.get_mut("annotations").and_then(Value::as_object_mut) {
        ann.remove(REF_NAME_ANNOTATION);
        ann.insert(DANGLING_ANNOTATION.into(), Value::from("true"));
    }
    d
}

fn is_dangling(desc: &Value) -> bool {
    desc.get("annotations")
        .and_then(|a| a.get(DANGLING_ANNOTATION))
        .is_some()
}

fn digest_of(desc: &Value) -> Option<&str> {
    desc.get("digest").and_then(Value::as_str)
}

/// Reads an `index.json`; a missing one is empty.
fn load_index(path: &Path) -> Result<Value, CacheError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(empty_index()),
        Err(e) => return Err(CacheError::io("read", path)(e)),
    };
    let corrupt = |detail: String| CacheError::Corrupt {
        what: "image index",
        location: path.display().to_string(),
        detail,
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|cause| CacheError::CorruptJson {
        what: "image index",
        location: path.display().to_string(),
        cause,
    })?;
    if !v.get("manifests").map(Value::is_array).unwrap_or(false) || !v.is_object() {
        return Err(corrupt("no `manifests` array".into()));
    }
    Ok(v)
}

fn has_name(desc: &Value, name: &str) -> bool {
    desc.get("annotations")
        .and_then(|a| a.get(REF_NAME_ANNOTATION))
        .and_then(Value::as_str)
        == Some(name)
}
