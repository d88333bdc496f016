//! Turns an `ExecOp`'s non-root mounts (`RUN --mount=type=bind|cache|tmpfs|secret|ssh`) into
//! OCI mounts for the sandbox, and holds what backs them (snapshot mounts, cache-mount locks,
//! the secrets' tmpfs) until the step is over.
//!
//! Nothing here lands in the step's layer: every mount is a mount point over the rootfs, and the
//! mount points the sandbox had to create are removed by the caller afterwards. Secrets live only
//! on a tmpfs that is unmounted when the step ends, and never enter the cache key (the op's
//! digest names the secret's id, not its bytes).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_cache::{MountGuard, MutableSnapshot, Store};
use kiln_llb::MountType;
use oci_spec::runtime::{Mount, MountBuilder};

use crate::{Output, SolveError};

mod context_view;
mod ssh_proxy;

/// Where cache mounts live under the store root.
const CACHE_MOUNTS_DIR: &str = "cache-mounts";

/// BuildKit's `SSH_AUTH_SOCK` for the first ssh mount of a step.
const SSH_ENV: &str = "SSH_AUTH_SOCK";

/// What a build brings besides its graph: secrets, ssh agents and the default network.
#[derive(Default)]
pub(crate) struct Session {
    /// `--secret id=...`: id → bytes.
    pub secrets: HashMap<String, Vec<u8>>,
    /// `--ssh id=path`: id → agent socket on the host.
    pub ssh: HashMap<String, PathBuf>,
    /// `kiln build --network none`: no step gets the host network.
    pub network_none: bool,
    /// `kiln build --runtime`: what runs the steps.
    pub runtime: kiln_exec::Runtime,
    /// `kiln build --memory --cpus --pids-limit`: every step's limits.
    pub limits: kiln_exec::Limits,
}

/// One input of the exec op, as the mounts see it.
pub(crate) struct MountInput {
    pub output: Output,
    /// The input's cache key (keys a cache mount seeded `from` it).
    pub key: String,
}

/// The sandbox mounts of one step and what keeps them valid. Drop it after the step: it
/// unmounts, unlocks and removes its scratch space.
pub(crate) struct Prepared {
    /// Extra OCI mounts, in the order to apply them (parents before children).
    pub mounts: Vec<Mount>,
    /// Extra `KEY=value` environment (secret `env=`, `SSH_AUTH_SOCK`).
    pub env: Vec<String>,
    guards: Vec<MountGuard>,
    /// Host mounts we made ourselves (the secrets' tmpfs), unmounted on drop.
    host_mounts: Vec<PathBuf>,
    /// Held `flock`s of cache mounts (`locked`, `private`).
    locks: Vec<File>,
    /// Throwaway snapshots that receive the writes of `rw` binds, never committed: they remove
    /// themselves when dropped.
    temp_snapshots: Vec<MutableSnapshot>,
    scratch: Option<tempfile::TempDir>,
    /// Forwarders of `type=ssh` mounts, stopped on drop.
    ssh_proxies: Vec<ssh_proxy::SshProxy>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Unmount before the directories under them are removed.
        self.guards.clear();
        for p in self.host_mounts.drain(..).rev() {
            let _ = umount_detach(&p);
        }
        self.temp_snapshots.clear();
        self.locks.clear();
        self.ssh_proxies.clear();
        self.scratch.take();
    }
}

/// Appends the prepared mounts and environment to a step's spec.
pub(crate) fn add_to_spec(
    spec: &mut oci_spec::runtime::Spec,
    p: &Prepared,
) -> Result<(), SolveError> {
    if !p.mounts.is_empty() {
        let mut all = spec.mounts().clone().unwrap_or_default();
        all.extend(p.mounts.iter().cloned());
        spec.set_mounts(Some(all));
    }
    if !p.env.is_empty() {
        let Some(process) = spec.process_mut() else {
            return Err(SolveError::Op("the step's spec has no process".into()));
        };
        let mut env = process.env().clone().unwrap_or_default();
        for e in &p.env {
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        process.set_env(Some(env));
    }
    Ok(())
}

fn oci_mount(
    dest: &str,
    typ: &str,
    source: &Path,
    options: &[String],
) -> Result<Mount, SolveError> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ.to_string())
        .source(source.to_path_buf())
        .options(options.to_vec())
        .build()
        .map_err(|source| SolveError::Spec {
            what: format!("cannot describe the mount at `{dest}`"),
            source,
        })
}

fn option<'a>(m: &'a kiln_llb::Mount, key: &str) -> Option<&'a str> {
    m.options
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

fn flag(m: &kiln_llb::Mount, key: &str) -> Result<Option<bool>, SolveError> {
    match option(m, key) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" || v.is_empty() => Ok(Some(false)),
        Some(v) => Err(SolveError::Op(format!(
            "mount at `{}`: `{key}={v}` is not a boolean; write `{key}=true` or `{key}=false`",
            m.dest
        ))),
    }
}

/// `mode=0755` (octal, as BuildKit reads it).
fn mode_opt(m: &kiln_llb::Mount, default: u32) -> Result<u32, SolveError> {
    match option(m, "mode") {
        None => Ok(default),
        Some(v) => u32::from_str_radix(v.trim_start_matches("0o"), 8)
            .ok()
            .filter(|n| *n <= 0o7777)
            .ok_or_else(|| {
                SolveError::Op(format!(
                    "mount at `{}`: `mode={v}` is not an octal file mode; write e.g. `mode=0755`",
                    m.dest
                ))
            }),
    }
}

fn id_opt(m: &kiln_llb::Mount, key: &str) -> Result<u32, SolveError> {
    match option(m, key) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            SolveError::Op(format!(
                "mount at `{}`: `{key}={v}` is not a numeric id; write e.g. `{key}=1000`",
                m.dest
            ))
        }),
    }
}

/// `size=64m` → bytes, with BuildKit's units (b, k, m, g, t; optional `b`/`ib`; base 1024).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let num: f64 = num.parse().ok()?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(unit);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let bytes = num * mult as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn depth(dest: &str) -> usize {
    dest.split('/').filter(|c| !c.is_empty()).count()
}

/// Prepares every mount of `mounts` except the root. Blocking (mounts, locks, copies): call it
/// from a blocking thread.
pub(crate) fn prepare(
    store: &Store,
    session: &Session,
    mounts: &[kiln_llb::Mount],
    inputs: &[MountInput],
) -> Result<Prepared, SolveError> {
    let mut p = Prepared {
        mounts: Vec::new(),
        env: Vec::new(),
        guards: Vec::new(),
        host_mounts: Vec::new(),
        locks: Vec::new(),
        temp_snapshots: Vec::new(),
        scratch: None,
        ssh_proxies: Vec::new(),
    };
    let mut others: Vec<&kiln_llb::Mount> = mounts
        .iter()
        .filter(|m| !(m.dest == "/" && m.mount_type == MountType::Bind as i32))
        .collect();
    if others.is_empty() {
        return Ok(p);
    }
    // Parents first, so that a mount at `/a` never hides one at `/a/b`.
    others.sort_by_key(|m| depth(&m.dest));
    let scratch = tempfile::Builder::new()
        .prefix("mounts-")
        .tempdir_in(store.tmp_dir())
        .map_err(SolveError::io(
            "cannot make a temp dir for the step's mounts",
        ))?;
    let dir = scratch.path().to_path_buf();
    p.scratch = Some(scratch);
    let mut ssh_count = 0;
    for (n, m) in others.into_iter().enumerate() {
        let work = dir.join(n.to_string());
        std::fs::create_dir_all(&work).map_err(SolveError::io(format!(
            "cannot create `{}`",
            work.display()
        )))?;
        match MountType::try_from(m.mount_type) {
            Ok(MountType::Bind) => bind(&mut p, store, m, inputs, &work)?,
            Ok(MountType::Cache) => cache(&mut p, store, m, inputs, &work)?,
            Ok(MountType::Tmpfs) => tmpfs(&mut p, m)?,
            Ok(MountType::Secret) => secret(&mut p, session, m, &dir)?,
            Ok(MountType::Ssh) => {
                if ssh(&mut p, session, m)? {
                    if ssh_count == 0 {
                        p.env.push(format!("{SSH_ENV}={}", m.dest));
                    }
                    ssh_count += 1;
                }
            }
            Err(_) => {
                return Err(SolveError::Op(format!(
                    "mount at `{}` has unknown type {}; rebuild with a matching frontend",
                    m.dest, m.mount_type
                )))
            }
        }
    }
    Ok(p)
}

fn input<'a>(
    inputs: &'a [MountInput],
    m: &kiln_llb::Mount,
) -> Result<Option<&'a MountInput>, SolveError> {
    if m.input < 0 {
        return Ok(None);
    }
    usize::try_from(m.input)
        .ok()
        .and_then(|i| inputs.get(i))
        .map(Some)
        .ok_or_else(|| SolveError::Graph(format!("mount input {} out of range", m.input)))
}

/// Resolves `selector` inside `root` and checks it exists.
fn source_in(root: &Path, selector: &str, dest: &str) -> Result<PathBuf, SolveError> {
    let sel = if selector.is_empty() { "/" } else { selector };
    let path = crate::inroot::resolve_in_root(root, sel, true)
        .map_err(SolveError::io(format!("mount at `{dest}`: source `{sel}`")))?;
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(SolveError::Op(format!(
            "mount at `{dest}`: source `{sel}` does not exist in the mount's `from`; check `source=`"
        )));
    }
    Ok(path)
}

/// `type=bind`: read-only by default; `rw` writes go to a throwaway layer.
fn bind(
    p: &mut Prepared,
    store: &Store,
    m: &kiln_llb::Mount,
    inputs: &[MountInput],
    work: &Path,
) -> Result<(), SolveError> {
    let mut opts = vec!["rbind".to_string()];
    if m.readonly {
        opts.push("ro".into());
    }
    let output = input(inputs, m)?.map(|i| i.output.clone());
    let source = match output {
        None | Some(Output::Scratch) => {
            let empty = work.join("empty");
            std::fs::create_dir_all(&empty).map_err(SolveError::io(format!(
                "cannot create `{}`",
                empty.display()
            )))?;
            source_in(&empty, &m.selector, &m.dest)?
        }
        Some(Output::Snapshot(s)) => {
            let snaps = store.snapshots();
            let chain = snaps.chain(s).map_err(SolveError::from)?;
            let upper = if m.readonly {
                None
            } else {
                let t = snaps.create_mutable(Some(s)).map_err(SolveError::from)?;
                let id = t.id();
                p.temp_snapshots.push(t);
                Some(id)
            };
            let mnt = work.join("mnt");
            std::fs::create_dir_all(&mnt)
                .map_err(SolveError::io(format!("cannot create `{}`", mnt.display())))?;
            let guard = snaps.mount(&chain, upper, &mnt).map_err(SolveError::from)?;
            let root = guard.path().to_path_buf();
            p.guards.push(guard);
            source_in(&root, &m.selector, &m.dest)?
        }
        Some(Output::Local(ctx)) => {
            let src = source_in(ctx.root(), &m.selector, &m.dest)?;
            // `.dockerignore`d entries are hidden under whiteouts, as if never sent.
            let hidden = context_view::whiteout_layer(ctx.as_ref(), &src, &work.join("hidden"))?;
            if !m.readonly || hidden.is_some() {
                return local_overlay(p, m, &src, hidden.as_deref(), work);
            }
            src
        }
    };
    p.mounts.push(oci_mount(&m.dest, "bind", &source, &opts)?);
    Ok(())
}

/// A bind of the build context through an overlay: writable binds get an upper layer that is
/// thrown away, so the context itself is never written; `hidden` (whiteouts of the
/// `.dockerignore`d entries) goes above the context.
fn local_overlay(
    p: &mut Prepared,
    m: &kiln_llb::Mount,
    src: &Path,
    hidden: Option<&Path>,
    work: &Path,
) -> Result<(), SolveError> {
    let md = std::fs::metadata(src)
        .map_err(SolveError::io(format!("cannot read `{}`", src.display())))?;
    if !md.is_dir() {
        let copy = work.join("file");
        std::fs::copy(src, &copy)
            .map_err(SolveError::io(format!("cannot copy `{}`", src.display())))?;
        let mut opts = vec!["rbind".to_string()];
        if m.readonly {
            opts.push("ro".into());
        }
        p.mounts.push(oci_mount(&m.dest, "bind", &copy, &opts)?);
        return Ok(());
    }
    let mut lowers = Vec::new();
    for dir in hidden.into_iter().chain(std::iter::once(src)) {
        let s = dir.to_string_lossy().into_owned();
        if s.contains([',', ':', '\\']) {
            return Err(SolveError::Op(format!(
                "mount at `{}`: the path `{s}` contains `,`, `:` or `\\`, which overlayfs cannot take; move the context or the kiln store",
                m.dest
            )));
        }
        lowers.push(s);
    }
    let mut opts = vec![format!("lowerdir={}", lowers.join(":"))];
    if m.readonly {
        // Two lower layers and no upper: a read-only overlay.
        opts.push("ro".into());
    } else {
        let (upper, wdir) = (work.join("upper"), work.join("work"));
        for d in [&upper, &wdir] {
            std::fs::create_dir_all(d)
                .map_err(SolveError::io(format!("cannot create `{}`", d.display())))?;
        }
        opts.push(format!("upperdir={}", upper.display()));
        opts.push(format!("workdir={}", wdir.display()));
    }
    p.mounts
        .push(oci_mount(&m.dest, "overlay", Path::new("overlay"), &opts)?);
    Ok(())
}

/// The directory of a cache mount: `cache-mounts/<blake3(id, from)>`.
fn cache_root(store: &Store, id: &str, from_key: &str) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-cache-mount-v1\0");
    h.update(id.as_bytes());
    h.update(b"\0");
    h.update(from_key.as_bytes());
    let hex = h.finalize().to_hex();
    store.root().join(CACHE_MOUNTS_DIR).join(&hex[..32])
}

/// Removes every cache mount of the store; returns how many there were.
pub fn prune_cache_mounts(store: &Store) -> std::io::Result<usize> {
    let dir = store.root().join(CACHE_MOUNTS_DIR);
    let n = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(Result::ok).count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    std::fs::remove_dir_all(&dir)?;
    Ok(n)
}

fn lock_file(path: &Path) -> Result<File, SolveError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(SolveError::io(format!(
            "cannot open the lock `{}`",
            path.display()
        )))
}

/// `flock`; `Ok(false)` when `nonblocking` and someone else holds it.
fn flock(f: &File, nonblocking: bool) -> Result<bool, SolveError> {
    let op = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    loop {
        // SAFETY: flock on a descriptor we own, integer arguments only.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblocking => return Ok(false),
            _ => return Err(SolveError::io("cannot lock a cache mount")(e)),
        }
    }
}

/// `type=cache`: a directory under the store that outlives builds (and `--no-cache`).
fn cache(
    p: &mut Prepared,
    store: &Store,
    m: &kiln_llb::Mount,
    inputs: &[MountInput],
    work: &Path,
) -> Result<(), SolveError> {
    let id = option(m, "id").filter(|s| !s.is_empty()).unwrap_or(&m.dest);
    let sharing = option(m, "sharing").unwrap_or("shared");
    let mode = mode_opt(m, 0o755)?;
    let (uid, gid) = (id_opt(m, "uid")?, id_opt(m, "gid")?);
    let from = input(inputs, m)?;
    let root = cache_root(store, id, from.map_or("", |f| f.key.as_str()));
    std::fs::create_dir_all(&root).map_err(SolveError::io(format!(
        "cannot create `{}`",
        root.display()
    )))?;
    let _ = std::fs::write(root.join("id"), id);
    let data = match sharing {
        "shared" => root.join("data"),
        "locked" => {
            let f = lock_file(&root.join("lock"))?;
            flock(&f, false)?;
            p.locks.push(f);
            root.join("data")
        }
        "private" => {
            // The shared directory when free, else the first free private instance.
            let mut n = 0usize;
            loop {
                let (lock, dir) = if n == 0 {
                    (root.join("lock"), root.join("data"))
                } else {
                    (
                        root.join(format!("private-{n}.lock")),
                        root.join(format!("private-{n}")),
                    )
                };
                let f = lock_file(&lock)?;
                if flock(&f, true)? {
                    p.locks.push(f);
                    break dir;
                }
                n += 1;
            }
        }
        other => {
            return Err(SolveError::Op(format!(
            "cache mount at `{}`: unknown sharing `{other}`; use `shared`, `private` or `locked`",
            m.dest
        )))
        }
    };
    if !data.is_dir() {
        init_cache_dir(store, m, from, &data, work, (mode, uid, gid))?;
    }
    let mut opts = vec!["rbind".to_string()];
    if m.readonly {
        opts.push("ro".into());
    }
    p.mounts.push(oci_mount(&m.dest, "bind", &data, &opts)?);
    Ok(())
}

/// Creates a cache directory atomically (build beside it, then rename), seeded from `from`.
fn init_cache_dir(
    store: &Store,
    m: &kiln_llb::Mount,
    from: Option<&MountInput>,
    data: &Path,
    work: &Path,
    (mode, uid, gid): (u32, u32, u32),
) -> Result<(), SolveError> {
    let parent = data.parent().unwrap_or(data);
    let fresh = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(parent)
        .map_err(SolveError::io(format!(
            "cannot create a cache directory in `{}`",
            parent.display()
        )))?;
    match from.map(|f| &f.output) {
        Some(Output::Snapshot(s)) => {
            let snaps = store.snapshots();
            let chain = snaps.chain(*s).map_err(SolveError::from)?;
            let mnt = work.join("from");
            std::fs::create_dir_all(&mnt)
                .map_err(SolveError::io(format!("cannot create `{}`", mnt.display())))?;
            let guard = snaps.mount(&chain, None, &mnt).map_err(SolveError::from)?;
            let src = source_in(guard.path(), &m.selector, &m.dest)?;
            copy_tree(&src, fresh.path())?;
            drop(guard);
        }
        Some(Output::Local(ctx)) => {
            let src = source_in(ctx.root(), &m.selector, &m.dest)?;
            copy_tree(&src, fresh.path())?;
        }
        Some(Output::Scratch) | None => {
            std::os::unix::fs::chown(fresh.path(), Some(uid), Some(gid)).map_err(
                SolveError::io(format!("cannot chown `{}`", fresh.path().display())),
            )?;
            std::fs::set_permissions(fresh.path(), std::fs::Permissions::from_mode(mode)).map_err(
                SolveError::io(format!("cannot chmod `{}`", fresh.path().display())),
            )?;
        }
    }
    let tmp = fresh.keep();
    if let Err(e) = std::fs::rename(&tmp, data) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another step made it first: use theirs.
        if !data.is_dir() {
            return Err(SolveError::io(format!(
                "cannot create the cache directory `{}`",
                data.display()
            ))(e));
        }
    }
    Ok(())
}

/// Copies a directory's contents (or a file) keeping modes, owners and symlinks.
fn copy_tree(src: &Path, dest: &Path) -> Result<(), SolveError> {
    let md = std::fs::symlink_metadata(src)
        .map_err(SolveError::io(format!("cannot read `{}`", src.display())))?;
    if !md.is_dir() {
        let name = src.file_name().unwrap_or(src.as_os_str());
        return copy_entry(src, &md, &dest.join(name));
    }
    for entry in std::fs::read_dir(src)
        .map_err(SolveError::io(format!("cannot list `{}`", src.display())))?
    {
        let entry = entry.map_err(SolveError::io(format!("cannot list `{}`", src.display())))?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let md = std::fs::symlink_metadata(&from)
            .map_err(SolveError::io(format!("cannot read `{}`", from.display())))?;
        if md.is_dir() {
            std::fs::create_dir(&to)
                .map_err(SolveError::io(format!("cannot create `{}`", to.display())))?;
            copy_tree(&from, &to)?;
            set_owner_mode(&to, &md)?;
        } else {
            copy_entry(&from, &md, &to)?;
        }
    }
    set_owner_mode(dest, &md)
}

fn copy_entry(from: &Path, md: &std::fs::Metadata, to: &Path) -> Result<(), SolveError> {
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(from)
            .map_err(SolveError::io(format!("cannot read `{}`", from.display())))?;
        std::os::unix::fs::symlink(&target, to)
            .map_err(SolveError::io(format!("cannot create `{}`", to.display())))?;
        use std::os::unix::fs::MetadataExt;
        return std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))
            .map_err(SolveError::io(format!("cannot chown `{}`", to.display())));
    }
    if ft.is_file() {
        std::fs::copy(from, to)
            .map_err(SolveError::io(format!("cannot copy `{}`", from.display())))?;
        return set_owner_mode(to, md);
    }
    // Devices, fifos and sockets have no place in a cache seed.
    Ok(())
}

fn set_owner_mode(path: &Path, md: &std::fs::Metadata) -> Result<(), SolveError> {
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::lchown(path, Some(md.uid()), Some(md.gid()))
        .map_err(SolveError::io(format!("cannot chown `{}`", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(SolveError::io(format!("cannot chmod `{}`", path.display())))
}

/// `type=tmpfs`: a fresh tmpfs, `nosuid` as BuildKit mounts it.
fn tmpfs(p: &mut Prepared, m: &kiln_llb::Mount) -> Result<(), SolveError> {
    let mut opts = vec!["nosuid".to_string(), "nodev".to_string()];
    if let Some(size) = option(m, "size") {
        let bytes = parse_size(size).ok_or_else(|| {
            SolveError::Op(format!(
                "tmpfs mount at `{}`: `size={size}` is not a size; write e.g. `size=64m`",
                m.dest
            ))
        })?;
        if bytes > 0 {
            opts.push(format!("size={bytes}"));
        }
    }
    p.mounts
        .push(oci_mount(&m.dest, "tmpfs", Path::new("tmpfs"), &opts)?);
    Ok(())
}

/// `type=secret`: the bytes on a private tmpfs, bound read-only; or an environment variable.
fn secret(
    p: &mut Prepared,
    session: &Session,
    m: &kiln_llb::Mount,
    dir: &Path,
) -> Result<(), SolveError> {
    let id = option(m, "id").unwrap_or_default();
    let required = flag(m, "required")?.unwrap_or(false);
    let Some(value) = session.secrets.get(id) else {
        if required {
            return Err(SolveError::Op(format!(
                "secret `{id}` is required but was not given; pass `--secret id={id},src=FILE` (or `env=VAR`) to `kiln build`"
            )));
        }
        return Ok(());
    };
    if let Some(var) = option(m, "env").filter(|v| !v.is_empty()) {
        let text = std::str::from_utf8(value)
            .ok()
            .filter(|t| !t.contains('\0'))
            .ok_or_else(|| {
                SolveError::Op(format!(
                    "secret `{id}` cannot go in the environment variable `{var}`: it is not text without NUL bytes; mount it as a file instead"
                ))
            })?;
        p.env.push(format!("{var}={text}"));
    }
    // `env=` without a target (the frontend leaves the destination empty): no file, as BuildKit.
    if m.dest.is_empty() {
        return Ok(());
    }
    let mode = mode_opt(m, 0o400)?;
    let (uid, gid) = (id_opt(m, "uid")?, id_opt(m, "gid")?);
    let secrets = dir.join("secrets");
    if !p.host_mounts.contains(&secrets) {
        std::fs::create_dir_all(&secrets).map_err(SolveError::io(format!(
            "cannot create `{}`",
            secrets.display()
        )))?;
        // A tmpfs, so that the bytes never reach the store's disk.
        mount_tmpfs(&secrets)?;
        p.host_mounts.push(secrets.clone());
    }
    let file = secrets.join(format!("{}", p.mounts.len()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(SolveError::io(format!(
            "cannot write the secret file `{}`",
            file.display()
        )))?;
    f.write_all(value).map_err(SolveError::io(format!(
        "cannot write the secret file `{}`",
        file.display()
    )))?;
    drop(f);
    std::os::unix::fs::chown(&file, Some(uid), Some(gid))
        .map_err(SolveError::io(format!("cannot chown `{}`", file.display())))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
        .map_err(SolveError::io(format!("cannot chmod `{}`", file.display())))?;
    let opts: Vec<String> = ["rbind", "ro", "nosuid", "nodev", "noexec"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    p.mounts.push(oci_mount(&m.dest, "bind", &file, &opts)?);
    Ok(())
}

/// `type=ssh`: a forwarder of the agent socket bound in, with the mount's `mode`, `uid` and
/// `gid`. Returns whether a socket was mounted.
fn ssh(p: &mut Prepared, session: &Session, m: &kiln_llb::Mount) -> Result<bool, SolveError> {
    let id = option(m, "id").unwrap_or("default");
    let required = flag(m, "required")?.unwrap_or(false);
    let Some(sock) = session.ssh.get(id) else {
        if required {
            return Err(SolveError::Op(format!(
                "ssh agent `{id}` is required but was not given; pass `--ssh {id}` (uses `$SSH_AUTH_SOCK`) or `--ssh {id}=SOCKET` to `kiln build`"
            )));
        }
        return Ok(false);
    };
    let md = std::fs::metadata(sock).map_err(|e| {
        SolveError::hinted(
            format!("ssh agent `{id}`: `{}`", sock.display()),
            e,
            "start an agent (`eval $(ssh-agent)`) or pass its socket",
        )
    })?;
    if !md.file_type().is_socket() {
        return Err(SolveError::Op(format!(
            "ssh agent `{id}`: `{}` is not a socket; pass an ssh agent's socket (key files are not supported)",
            sock.display()
        )));
    }
    // BuildKit's defaults: the socket is root's alone unless the mount says otherwise.
    let mode = mode_opt(m, 0o600)?;
    let (uid, gid) = (id_opt(m, "uid")?, id_opt(m, "gid")?);
    let proxy = ssh_proxy::start(sock, uid, gid, mode)?;
    p.mounts.push(oci_mount(
        &m.dest,
        "bind",
        proxy.socket(),
        &["rbind".to_string()],
    )?);
    p.ssh_proxies.push(proxy);
    Ok(true)
}

fn cstr(p: &Path) -> Result<std::ffi::CString, SolveError> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| SolveError::Op(format!("path `{}` contains a NUL byte", p.display())))
}

fn mount_tmpfs(target: &Path) -> Result<(), SolveError> {
    let t = cstr(target)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            c"mode=0700,size=16m".as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(SolveError::Op(format!(
            "cannot mount a tmpfs for secrets at `{}`: {}; kiln needs to run as root for secrets",
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn umount_detach(target: &Path) -> Result<(), SolveError> {
    let t = cstr(target)?;
    // SAFETY: umount2(2) with a NUL-terminated string that outlives the call.
    let r = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        return Err(SolveError::io(format!(
            "cannot unmount `{}`",
            target.display()
        ))(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("10kb"), Some(10 << 10));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5x"), None);
    }

    #[test]
    fn cache_dirs_depend_on_id_and_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = cache_root(&store, "go", "");
        assert_eq!(a, cache_root(&store, "go", ""));
        assert_ne!(a, cache_root(&store, "npm", ""));
        assert_ne!(a, cache_root(&store, "go", "key"));
        assert!(a.starts_with(store.root().join(CACHE_MOUNTS_DIR)));
    }
}
