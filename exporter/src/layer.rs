//! Snapshot directory (overlayfs upper-dir form) → deterministic layer tar → compressed blob,
//! in one streaming pass that also computes the diffID and the blob digest.
//!
//! Given the snapshot's lower layers, the walk is BuildKit's overlay differ
//! (`util/overlay.Changes`): an upper entry that overlayfs copied up but that equals the lower
//! one (a directory with the same mode, owner and xattrs, whatever its mtime; a file with the
//! same metadata, mtime to the nanosecond, and content) is left out, a directory only as long as
//! nothing below it is written (then it comes first, as containerd's change writer adds
//! parents); whiteouts of names no lower layer has, and opaque markers on directories no lower
//! layer has, are left out too.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::ExportError;
use crate::pargz::ParGzEncoder;
use crate::stage::Staged;
use crate::tarw::{Entry, Kind, TarError, TarWriter};

pub(crate) const MEDIA_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MEDIA_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MEDIA_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

impl Compression {
    /// The OCI layer media type of a blob compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MEDIA_TAR_GZIP,
            Compression::Zstd => MEDIA_TAR_ZSTD,
            Compression::Uncompressed => MEDIA_TAR,
        }
    }

    /// The compression of an OCI (or Docker) layer media type, if it is one.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            MEDIA_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
                Some(Compression::Uncompressed)
            }
            MEDIA_TAR_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            MEDIA_TAR_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// How to build a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: mtimes later than this are clamped to it.
    pub source_date_epoch: Option<i64>,
    /// Compression level; `None` is gzip 6 / zstd 3. Out-of-range values are clamped.
    pub level: Option<i32>,
}

/// A layer blob as written: what a manifest and a config need to reference it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:` of the blob as stored.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// The snapshot had no entries (the tar is only its end-of-archive blocks).
    pub empty: bool,
}

/// Deterministic layer tar of a snapshot dir (its own changes only), uncompressed.
///
/// Entries are walked sorted by name bytes, parents before children. Overlayfs whiteouts (0/0
/// character devices) become empty `.wh.NAME` files and opaque directories get a
/// `DIR/.wh..wh..opq` entry right after the directory itself.
pub fn write_layer_tar(
    dir: &Path,
    out: impl Write,
    opts: &LayerOptions,
) -> Result<(), ExportError> {
    tar_dir(dir, None, TarWriter::new(out), opts.source_date_epoch).map(|_| ())
}

/// [`write_layer_tar`] of the snapshot dir `dir` as a diff over `lowers` (the snapshot dirs
/// below it, top first): what `lowers` already has is left out (see the module docs).
pub fn write_layer_diff_tar(
    dir: &Path,
    lowers: &[PathBuf],
    out: impl Write,
    opts: &LayerOptions,
) -> Result<(), ExportError> {
    tar_dir(
        dir,
        Some(lowers),
        TarWriter::new(out),
        opts.source_date_epoch,
    )
    .map(|_| ())
}

/// Tar, hash, compress and hash again in one pass into `out`; returns the blob's description
/// and the sink (so a caller can commit it).
pub fn write_layer_blob<W: Write + Send>(
    dir: &Path,
    out: W,
    opts: &LayerOptions,
) -> Result<(LayerBlob, W), ExportError> {
    let piped = pipe_layer(dir, None, out, opts, true)?;
    let (digest, size) = piped.digest.unwrap_or_default();
    Ok((
        LayerBlob {
            diff_id: piped.diff_id.unwrap_or_else(|| digest.clone()),
            digest,
            size,
            media_type: opts.compression.media_type().to_string(),
            empty: piped.empty,
        },
        piped.out,
    ))
}

/// What [`pipe_layer`] wrote.
pub(crate) struct Piped<W> {
    /// `None` when it is the blob's digest (an uncompressed layer) and the blob was not hashed
    /// here: the sink's digest is then the diffID.
    pub diff_id: Option<String>,
    pub empty: bool,
    /// (`sha256:` digest, size) of the blob, when asked for.
    pub digest: Option<(String, u64)>,
    pub out: W,
}

/// How much of an uncompressed layer's tar is gathered before it is written.
const TAR_BUFFER: usize = 256 * 1024;

/// The one streaming pass. This thread walks, reads and tars the snapshot, feeds the
/// compressor (whose own workers compress) and writes the blob to `out`, hashing it unless
/// `hash_out` is false (a sink that hashes as it stores, such as a store blob writer, makes that
/// pass redundant); a helper thread hashes the tar for the diffID from the same buffers, so the
/// two sha256 passes run side by side. The blob is written on this thread on purpose: handing
/// it to another thread as well measured slower (more kernel time copying into the page cache).
pub(crate) fn pipe_layer<W: Write + Send>(
    dir: &Path,
    lowers: Option<&[PathBuf]>,
    out: W,
    opts: &LayerOptions,
    hash_out: bool,
) -> Result<Piped<W>, ExportError> {
    let werr = |e| ExportError::write("the layer blob", e);
    if opts.compression == Compression::Uncompressed {
        // The blob is the tar: its digest is the diffID, one sha256 pass is enough. Buffered,
        // since a small file is three writes (header, data, padding): one syscall each cost
        // more than the copy does.
        let sink = io::BufWriter::with_capacity(TAR_BUFFER, OutputSink::new(out, hash_out));
        let (empty, sink) = tar_dir(dir, lowers, TarWriter::new(sink), opts.source_date_epoch)?;
        let sink = sink.into_inner().map_err(|e| werr(e.into_error()))?;
        let (digest, mut out) = sink.finish();
        out.flush().map_err(werr)?;
        return Ok(Piped {
            diff_id: digest.as_ref().map(|(d, _)| d.clone()),
            empty,
            digest,
            out,
        });
    }
    std::thread::scope(|s| {
        let comp = Compressor::new(opts, OutputSink::new(out, hash_out)).map_err(werr)?;
        let tee = Staged::spawn(s, comp, HashingWriter::new(io::sink()));
        let (empty, tee) = tar_dir(
            dir,
            lowers,
            TarWriter::new_direct(tee),
            opts.source_date_epoch,
        )?;
        let (comp, diff) = tee.finish().map_err(werr)?;
        let (diff_id, _, _) = diff.finish();
        let sink = comp.finish().map_err(werr)?;
        let (digest, mut out) = sink.finish();
        out.flush().map_err(werr)?;
        Ok(Piped {
            diff_id: Some(diff_id),
            empty,
            digest,
            out,
        })
    })
}

/// The end of the pipe: `out`, hashed on the way when asked.
struct OutputSink<W> {
    out: W,
    hasher: Option<Sha256>,
    count: u64,
}

impl<W: Write> OutputSink<W> {
    fn new(out: W, hash: bool) -> Self {
        OutputSink {
            out,
            hasher: hash.then(Sha256::new),
            count: 0,
        }
    }

    fn finish(self) -> (Option<(String, u64)>, W) {
        let digest = self
            .hasher
            .map(|h| (format!("sha256:{}", hex::encode(h.finalize())), self.count));
        (digest, self.out)
    }
}

impl<W: Write> Write for OutputSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes the tar; returns whether the directory had no entries, and the sink.
fn tar_dir<W: Write>(
    dir: &Path,
    lowers: Option<&[PathBuf]>,
    tar: TarWriter<W>,
    epoch: Option<i64>,
) -> Result<(bool, W), ExportError> {
    let md = fs::symlink_metadata(dir).map_err(|source| ExportError::SnapshotDir {
        path: dir.to_path_buf(),
        cause: source,
    })?;
    if !md.is_dir() {
        return Err(ExportError::SnapshotDir {
            path: dir.to_path_buf(),
            cause: io::Error::other("not a directory"),
        });
    }
    let mut w = Walker {
        root: dir,
        diff: lowers.is_some(),
        lowers: lowers.unwrap_or_default(),
        tar,
        links: HashMap::new(),
        epoch,
        entries: 0,
        pending: 0,
        cmp_bufs: (Vec::new(), Vec::new()),
    };
    w.walk()?;
    let empty = w.entries == 0;
    let out = w
        .tar
        .finish()
        .map_err(|e| ExportError::write("the layer tar", e))?;
    Ok((empty, out))
}

struct Walker<'a, W: Write> {
    root: &'a Path,
    /// Whether the snapshot is written as a diff over `lowers` (else as it is, whiteouts and
    /// opaque markers included).
    diff: bool,
    /// The snapshot dirs below this one, top first.
    lowers: &'a [PathBuf],
    tar: TarWriter<W>,
    /// First tar path of each multiply-linked inode, so later paths become hard links to it.
    links: HashMap<(u64, u64), Vec<u8>>,
    epoch: Option<i64>,
    entries: u64,
    /// How many frames of the walk hold back their directory's entry.
    pending: usize,
    /// Buffers for content comparisons, allocated at the first one.
    cmp_bufs: CmpBufs,
}

type CmpBufs = (Vec<u8>, Vec<u8>);

/// A directory being walked.
struct Frame {
    /// Its tar path with a trailing `/` (empty for the root).
    prefix: Vec<u8>,
    /// Its entries by name, with `true` for a name the lowers show that an opaque directory
    /// (this one or one above) no longer holds: deleted, so written as a whiteout.
    children: std::vec::IntoIter<(OsString, bool)>,
    /// Indices into `lowers` of the layers in which this directory is visible as a directory,
    /// top first: where its children's lower versions are looked up.
    below: Vec<usize>,
    /// Its entry, held back while it equals the lower directory: written before the first
    /// entry below it, if any.
    held: Option<HeldDir>,
    /// Whether the upper holds its whole contents (it, or a directory above it, is opaque), so
    /// that a name only the lowers show was deleted.
    whole: bool,
}

struct HeldDir {
    full: PathBuf,
    rel: Vec<u8>,
    md: Metadata,
    xattrs: Xattrs,
}

/// The version of a path that the lower layers show.
struct Lower {
    /// Position in the parent's `below` of the layer it was found in.
    at: usize,
    path: PathBuf,
    md: Metadata,
}

impl<W: Write> Walker<'_, W> {
    fn walk(&mut self) -> Result<(), ExportError> {
        // An explicit stack, not recursion: snapshot trees can be arbitrarily deep.
        let mut stack = vec![Frame {
            prefix: Vec::new(),
            children: unmarked(sorted_children(self.root)?).into_iter(),
            below: (0..self.lowers.len()).collect(),
            held: None,
            whole: false,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some((name, deleted)) = frame.children.next() else {
                if stack.pop().is_some_and(|f| f.held.is_some()) {
                    self.pending -= 1;
                }
                continue;
            };
            let mut rel = frame.prefix.clone();
            rel.extend_from_slice(name.as_bytes());
            let full = self.root.join(OsStr::from_bytes(&rel));
            let in_whole = frame.whole;
            if deleted {
                self.release(&mut stack)?;
                self.write_deleted(&rel)?;
                continue;
            }
            let md = fs::symlink_metadata(&full)
                .map_err(|e| ExportError::read("stat", full.clone(), e))?;
            let ft = md.file_type();
            // Only a path whose parent a lower layer has can exist below: a new directory's
            // contents cost no lookups.
            let lower = if frame.below.is_empty() {
                None
            } else {
                self.lookup(&rel, &frame.below)?
            };
            if ft.is_char_device() && md.rdev() == 0 {
                // Checked before hard links: the kernel may link all whiteouts to one shared
                // inode. A whiteout of a name no lower layer has deletes nothing.
                if lower.is_some() || !self.diff {
                    self.release(&mut stack)?;
                    self.write_whiteout(&full, &rel, &md)?;
                }
                continue;
            }
            if ft.is_socket() {
                // Sockets cannot be stored in a tar and are meaningless in an image.
                continue;
            }
            if ft.is_dir() {
                let (xattrs, opaque) = read_xattrs(&full)?;
                let lower_dir = lower.filter(|l| l.md.is_dir());
                // Over a directory a lower layer has, an opaque one (`rm -rf /d && mkdir /d`)
                // is written as BuildKit's overlay differ writes it: a diff of its whole
                // contents against the lower directory, with a whiteout per name it no longer
                // holds, and no opaque marker. Below it, the upper holds every name.
                let whole = in_whole || (opaque && self.diff);
                let below = match &lower_dir {
                    Some(l) => {
                        let parent_below = stack.last().map_or(&[][..], |f| &f.below[..]);
                        self.dir_below(&rel, l, parent_below)?
                    }
                    None => Vec::new(),
                };
                // Verbatim (not a diff), the marker is the layer's own.
                let marker = opaque && !self.diff;
                let same = match &lower_dir {
                    Some(l) => same_dir(&md, &xattrs, l)?,
                    None => false,
                };
                let mut prefix = rel.clone();
                prefix.push(b'/');
                let upper = sorted_children(&full)?;
                let children = if whole && !below.is_empty() {
                    self.with_deleted(&prefix, upper, &below)?
                } else {
                    unmarked(upper)
                }
                .into_iter();
                let held = if same && !marker {
                    self.pending += 1;
                    Some(HeldDir {
                        full,
                        rel,
                        md,
                        xattrs,
                    })
                } else {
                    self.release(&mut stack)?;
                    self.write_dir(&full, &rel, &md, &xattrs, marker)?;
                    None
                };
                stack.push(Frame {
                    prefix,
                    children,
                    below,
                    held,
                    whole,
                });
                continue;
            }
            if let Some(l) = &lower {
                if same_file(&full, &md, l, &mut self.cmp_bufs)? {
                    continue;
                }
            }
            self.release(&mut stack)?;
            self.write_other(&full, &rel, &md)?;
        }
        Ok(())
    }

    /// The version of `rel` the layers `below` (where its parent is a visible directory) show.
    fn lookup(&self, rel: &[u8], below: &[usize]) -> Result<Option<Lower>, ExportError> {
        for (at, &i) in below.iter().enumerate() {
            match self.stat_in(i, rel)? {
                Some((_, md)) if md.file_type().is_char_device() && md.rdev() == 0 => {
                    return Ok(None)
                }
                Some((path, md)) => return Ok(Some(Lower { at, path, md })),
                None => continue,
            }
        }
        Ok(None)
    }

    /// `rel` in the lower layer `i`, or `None` where that layer has no such path.
    fn stat_in(
        &self,
        i: usize,
        rel: &[u8],
    ) -> Result<Option<(PathBuf, fs::Metadata)>, ExportError> {
        let path = self.lowers[i].join(OsStr::from_bytes(rel));
        match fs::symlink_metadata(&path) {
            Ok(md) => Ok(Some((path, md))),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(ExportError::read("stat", path, e)),
        }
    }

    /// The layers in which the directory `rel`, found as `found` in the parent's layers
    /// `parent_below`, is visible as a directory: down to the first layer where it is opaque,
    /// or something else hides it.
    fn dir_below(
        &self,
        rel: &[u8],
        found: &Lower,
        parent_below: &[usize],
    ) -> Result<Vec<usize>, ExportError> {
        let mut below = vec![parent_below[found.at]];
        if is_opaque_dir(&found.path)? {
            return Ok(below);
        }
        for &i in &parent_below[found.at + 1..] {
            match self.stat_in(i, rel)? {
                Some((path, md)) if md.is_dir() => {
                    below.push(i);
                    if is_opaque_dir(&path)? {
                        break;
                    }
                }
                // A whiteout or another kind of file hides the layers below it.
                Some(_) => break,
                None => continue,
            }
        }
        Ok(below)
    }

    /// The names of the directory `prefix` (its upper's `upper`, sorted), merged with the names
    /// the lower layers `below` show there that `upper` lacks, marked deleted.
    fn with_deleted(
        &self,
        prefix: &[u8],
        upper: Vec<OsString>,
        below: &[usize],
    ) -> Result<Vec<(OsString, bool)>, ExportError> {
        let mut lower_names: Vec<OsString> = Vec::new();
        for &i in below {
            let dir = self.lowers[i].join(OsStr::from_bytes(prefix));
            match fs::read_dir(&dir) {
                Ok(rd) => {
                    for e in rd {
                        lower_names.push(
                            e.map_err(|e| ExportError::read("list", &dir, e))?
                                .file_name(),
                        );
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) => {}
                Err(e) => return Err(ExportError::read("list", dir, e)),
            }
        }
        lower_names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        lower_names.dedup();
        let mut deleted = Vec::new();
        for name in lower_names {
            if upper
                .binary_search_by(|u| u.as_bytes().cmp(name.as_bytes()))
                .is_ok()
            {
                continue;
            }
            // A name a higher lower layer deleted (or hid) is not there to delete.
            let rel = [prefix, name.as_bytes()].concat();
            if self.lookup(&rel, below)?.is_some() {
                deleted.push(name);
            }
        }
        let mut all: Vec<(OsString, bool)> = unmarked(upper);
        all.extend(deleted.into_iter().map(|n| (n, true)));
        all.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        Ok(all)
    }

    /// The whiteout of a name an opaque directory no longer holds, as containerd's change
    /// writer (BuildKit's) writes a deletion: an empty file owned by root.
    fn write_deleted(&mut self, rel: &[u8]) -> Result<(), ExportError> {
        let (parent, name) = split_parent(rel);
        let path = [parent, WHITEOUT_PREFIX, name].concat();
        let mut e = Entry::new(&path, Kind::Regular);
        e.mode = 0o600;
        e.mtime = self.epoch.unwrap_or(0).max(0);
        self.append(self.root, &e, None)
    }

    /// Writes the held-back entries of the directories above the next entry.
    fn release(&mut self, stack: &mut [Frame]) -> Result<(), ExportError> {
        if self.pending == 0 {
            return Ok(());
        }
        for f in stack.iter_mut() {
            if let Some(h) = f.held.take() {
                self.pending -= 1;
                self.write_dir(&h.full, &h.rel, &h.md, &h.xattrs, false)?;
            }
        }
        Ok(())
    }

    fn mtime(&self, md: &Metadata) -> i64 {
        match self.epoch {
            Some(e) if md.mtime() > e => e,
            _ => md.mtime(),
        }
    }

    fn base<'p>(&self, path: &'p [u8], kind: Kind, md: &Metadata) -> Entry<'p> {
        let mut e = Entry::new(path, kind);
        e.mode = md.mode() & 0o7777;
        e.uid = u64::from(md.uid());
        e.gid = u64::from(md.gid());
        e.mtime = self.mtime(md);
        e
    }

    /// Overlayfs whiteouts (0/0 character devices) become empty `.wh.NAME` files.
    fn write_whiteout(
        &mut self,
        full: &Path,
        rel: &[u8],
        md: &Metadata,
    ) -> Result<(), ExportError> {
        let (parent, name) = split_parent(rel);
        let path = [parent, WHITEOUT_PREFIX, name].concat();
        let mut e = self.base(&path, Kind::Regular, md);
        e.mode = 0o600;
        self.append(full, &e, None)
    }

    /// A directory's entry, and its opaque marker right after it when `marker`.
    fn write_dir(
        &mut self,
        full: &Path,
        rel: &[u8],
        md: &Metadata,
        xattrs: &Xattrs,
        marker: bool,
    ) -> Result<(), ExportError> {
        let path = [rel, b"/"].concat();
        let mut e = self.base(&path, Kind::Dir, md);
        e.xattrs = xattrs;
        self.append(full, &e, None)?;
        if marker {
            let path = [rel, b"/", OPAQUE_MARKER].concat();
            let mut e = self.base(&path, Kind::Regular, md);
            e.mode = md.mode() & 0o777;
            self.append(full, &e, None)?;
        }
        Ok(())
    }

    /// The entry of anything but a directory, a whiteout or a socket.
    fn write_other(&mut self, full: &Path, rel: &[u8], md: &Metadata) -> Result<(), ExportError> {
        let ft = md.file_type();
        if md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                let mut e = self.base(rel, Kind::HardLink, md);
                e.link = &first;
                return self.append(full, &e, None);
            }
            self.links.insert(key, rel.to_vec());
        }
        let (xattrs, _) = read_xattrs(full)?;
        if ft.is_file() {
            let mut e = self.base(rel, Kind::Regular, md);
            e.size = md.len();
            e.xattrs = &xattrs;
            let mut f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(full)
                .map_err(|err| ExportError::read("open", full, err))?;
            self.append(full, &e, Some(&mut f))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(full)
                .map_err(|err| ExportError::read("read the symlink", full, err))?
                .into_os_string()
                .into_vec();
            let mut e = self.base(rel, Kind::Symlink, md);
            e.link = &target;
            e.xattrs = &xattrs;
            self.append(full, &e, None)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                Kind::Char
            } else {
                Kind::Block
            };
            let mut e = self.base(rel, kind, md);
            e.dev_major = u64::from(libc::major(md.rdev()));
            e.dev_minor = u64::from(libc::minor(md.rdev()));
            e.xattrs = &xattrs;
            self.append(full, &e, None)?;
        } else if ft.is_fifo() {
            let mut e = self.base(rel, Kind::Fifo, md);
            e.xattrs = &xattrs;
            self.append(full, &e, None)?;
        }
        Ok(())
    }

    fn append(
        &mut self,
        full: &Path,
        e: &Entry<'_>,
        data: Option<&mut File>,
    ) -> Result<(), ExportError> {
        self.entries += 1;
        let data = data.map(|f| f as &mut dyn io::Read);
        self.tar.append(e, data).map_err(|err| match err {
            TarError::Io(source) => ExportError::write("the layer tar", source),
            TarError::Source(source) => ExportError::read("read", full, source),
            TarError::DeviceNumber { major, minor } => ExportError::DeviceNumber {
                path: full.to_path_buf(),
                major,
                minor,
            },
            TarError::ShortRead { expected, got } => ExportError::FileChanged {
                path: full.to_path_buf(),
                expected,
                got,
            },
        })
    }
}

fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..=i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// Whether a copied-up directory equals the lower one as BuildKit's `sameDirent` has it: same
/// mode, owner and xattrs (its mtime, which any change of its entries moves, does not count).
fn same_dir(md: &Metadata, xattrs: &Xattrs, lower: &Lower) -> Result<bool, ExportError> {
    if !same_stat(md, &lower.md) {
        return Ok(false);
    }
    Ok(read_xattrs(&lower.path)?.0 == *xattrs)
}

/// Whether a copied-up non-directory equals the lower one: the metadata BuildKit's
/// `sameDirent` compares (mode, owner, device, size, mtime to the nanosecond, xattrs), then, only
/// when all of it matches, the symlink target or the content. Unlike BuildKit, a file with equal
/// nanosecond mtimes is still compared by content: a tool that restores mtimes must not make a
/// changed file vanish from its layer.
fn same_file(
    full: &Path,
    md: &Metadata,
    lower: &Lower,
    bufs: &mut CmpBufs,
) -> Result<bool, ExportError> {
    let l = &lower.md;
    if (md.dev(), md.ino()) == (l.dev(), l.ino()) {
        return Ok(true);
    }
    if !same_stat(md, l)
        || md.len() != l.len()
        || md.mtime() != l.mtime()
        || md.mtime_nsec() != l.mtime_nsec()
    {
        return Ok(false);
    }
    if read_xattrs(full)?.0 != read_xattrs(&lower.path)?.0 {
        return Ok(false);
    }
    let ft = md.file_type();
    if ft.is_symlink() {
        let read =
            |p: &Path| fs::read_link(p).map_err(|e| ExportError::read("read the symlink", p, e));
        return Ok(read(full)? == read(&lower.path)?);
    }
    if ft.is_file() && md.len() > 0 {
        return same_content(full, &lower.path, bufs);
    }
    Ok(true)
}

fn same_stat(a: &Metadata, b: &Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid() && a.rdev() == b.rdev()
}

fn same_content(a: &Path, b: &Path, bufs: &mut CmpBufs) -> Result<bool, ExportError> {
    use std::io::Read;
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .map_err(|e| ExportError::read("open", p, e))
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    if bufs.0.is_empty() {
        *bufs = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    }
    let (ba, bb) = (&mut bufs.0, &mut bufs.1);
    loop {
        let na = read_full(&mut fa, ba).map_err(|e| ExportError::read("read", a, e))?;
        let nb = read_full(&mut fb, bb).map_err(|e| ExportError::read("read", b, e))?;
        if ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na < ba.len() {
            return Ok(true);
        }
    }

    fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// Names that are all present in the upper.
fn unmarked(names: Vec<OsString>) -> Vec<(OsString, bool)> {
    names.into_iter().map(|n| (n, false)).collect()
}

fn is_opaque_dir(path: &Path) -> Result<bool, ExportError> {
    Ok(read_xattrs(path)?.1)
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>, ExportError> {
    let rd = fs::read_dir(dir).map_err(|e| ExportError::read("list", dir, e))?;
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| ExportError::read("list", dir, e))?;
        names.push(ent.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// (name, value) pairs, sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The xattrs that belong in a layer (sorted), and whether the dir is overlay-opaque.
fn read_xattrs(path: &Path) -> Result<(Xattrs, bool), ExportError> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok((Vec::new(), false)),
        Err(e) => return Err(ExportError::read("list the xattrs of", path, e)),
    };
    let mut keep = Vec::new();
    let mut opaque = false;
    for name in names {
        let n = name.as_bytes();
        let is_opaque_attr = n == b"trusted.overlay.opaque" || n == b"user.overlay.opaque";
        // `user.overlay.*` is overlayfs's own metadata when it runs with `userxattr`.
        let wanted = n == b"security.capability"
            || (n.starts_with(b"user.") && !n.starts_with(b"user.overlay."));
        if !is_opaque_attr && !wanted {
            continue;
        }
        let value = match xattr::get(path, &name) {
            Ok(Some(v)) => v,
            // Removed between list and get: it is not part of the snapshot any more.
            Ok(None) => continue,
            Err(e) if is_unsupported(&e) => continue,
            Err(e) => return Err(ExportError::read("read the xattrs of", path, e)),
        };
        if is_opaque_attr {
            opaque |= value == b"y";
        } else {
            keep.push((n.to_vec(), value));
        }
    }
    keep.sort();
    Ok((keep, opaque))
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// Passes bytes through while computing their sha256 and count.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// (`sha256:hex`, byte count, sink)
    pub(crate) fn finish(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (digest, self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) enum Compressor<W: Write> {
    Gzip(ParGzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Compressor<W> {
    pub(crate) fn new(opts: &LayerOptions, out: W) -> io::Result<Self> {
        Ok(match opts.compression {
            Compression::Gzip => {
                let level = opts.level.unwrap_or(6).clamp(0, 9) as u32;
                Compressor::Gzip(ParGzEncoder::new(out, level))
            }
            Compression::Zstd => {
                let range = zstd::compression_level_range();
                let level = opts.level.unwrap_or(3).clamp(*range.start(), *range.end());
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                // Always at least one worker: zstd's output is the same for any worker count
                // >= 1 but differs from single-threaded mode, and digests must not depend on
                // the machine.
                let workers = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .max(1) as u32;
                enc.multithread(workers)?;
                Compressor::Zstd(enc)
            }
            Compression::Uncompressed => Compressor::Plain(out),
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
            Compressor::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
            Compressor::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
            Compressor::Plain(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer file hard-linked to a file outside the layer (a `COPY` that reused an earlier
    /// snapshot's unchanged file) is a regular entry with its data, byte for byte what a plain
    /// copy gives: a hard-link entry is made only for an inode met twice in one layer's walk,
    /// never because `nlink` is above 1.
    #[test]
    fn a_file_linked_from_outside_the_layer_became_a_hard_link_entry() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::write(&outside, "shared data").unwrap();
        let (linked, copied) = (t.path().join("linked"), t.path().join("copied"));
        let when = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(&outside, when).unwrap();
        for d in [&linked, &copied] {
            fs::create_dir_all(d.join("data")).unwrap();
            fs::write(d.join("data/other"), "other").unwrap();
            filetime::set_file_mtime(d.join("data/other"), when).unwrap();
        }
        fs::hard_link(&outside, linked.join("data/f")).unwrap();
        fs::write(copied.join("data/f"), "shared data").unwrap();
        filetime::set_file_mtime(copied.join("data/f"), when).unwrap();
        for d in [&linked, &copied] {
            filetime::set_file_mtime(d.join("data"), when).unwrap();
        }
        let tar_of = |dir: &Path| {
            let mut out = Vec::new();
            write_layer_tar(dir, &mut out, &LayerOptions::default()).unwrap();
            out
        };
        let (l, c) = (tar_of(&linked), tar_of(&copied));
        let mut ar = tar::Archive::new(&l[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_ne!(
                e.header().entry_type(),
                tar::EntryType::Link,
                "`{}` became a hard link to a file outside the layer",
                e.path().unwrap().display()
            );
        }
        assert!(l == c, "the linked layer differs from the copied one");

        // Two links inside the layer (and one outside) are one file and one hard-link entry.
        fs::hard_link(&outside, linked.join("data/g")).unwrap();
        let l = tar_of(&linked);
        let mut ar = tar::Archive::new(&l[..]);
        let kinds: Vec<(String, tar::EntryType)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect();
        assert!(kinds.contains(&("data/f".into(), tar::EntryType::Regular)));
        assert!(kinds.contains(&("data/g".into(), tar::EntryType::Link)));
    }

    fn names_of(tar: &[u8]) -> Vec<String> {
        let mut ar = tar::Archive::new(tar);
        ar.entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect()
    }

    fn whiteout(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mknod keeps no pointer (the suite runs as root).
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
    }

    /// The differ walks the lower layers as overlayfs stacks them: a name a higher lower layer
    /// deleted is not there, an opaque lower directory hides the ones below it, and a held-back
    /// directory is written (once, before them) only when something below it is.
    #[test]
    fn diff_over_lowers_follows_overlay_rules() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, up) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("up"),
        );
        let when = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        for d in [&l1, &l2, &up] {
            fs::create_dir_all(d.join("a/b")).unwrap();
        }
        // l1: a/b/old, a/gone, o/x; l2 (above): deletes a/gone, makes o opaque with o/y.
        fs::write(l1.join("a/b/old"), "old").unwrap();
        fs::write(l1.join("a/gone"), "g").unwrap();
        fs::create_dir_all(l1.join("o")).unwrap();
        fs::write(l1.join("o/x"), "x").unwrap();
        whiteout(&l2.join("a/gone"));
        fs::create_dir_all(l2.join("o")).unwrap();
        xattr::set(l2.join("o"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(l2.join("o/y"), "y").unwrap();
        // The upper: a/b/old rewritten the same; a/gone deleted again (nothing to delete);
        // o/x deleted (hidden already by l2's opaque o); a/b/new added; o/y changed.
        fs::write(up.join("a/b/old"), "old").unwrap();
        whiteout(&up.join("a/gone"));
        fs::create_dir_all(up.join("o")).unwrap();
        whiteout(&up.join("o/x"));
        fs::write(up.join("o/y"), "Y").unwrap();
        for p in [
            l1.join("a/b/old"),
            l2.join("o/y"),
            up.join("a/b/old"),
            up.join("o/y"),
        ] {
            filetime::set_file_mtime(p, when).unwrap();
        }
        let tar_over = |lowers: &[PathBuf]| {
            let mut out = Vec::new();
            write_layer_diff_tar(&up, lowers, &mut out, &LayerOptions::default()).unwrap();
            names_of(&out)
        };
        let lowers = [l2.clone(), l1.clone()];
        assert_eq!(tar_over(&lowers), ["o/", "o/y"]);
        fs::write(up.join("a/b/new"), "n").unwrap();
        assert_eq!(tar_over(&lowers), ["a/", "a/b/", "a/b/new", "o/", "o/y"]);
        // Verbatim without lowers: every entry, whiteouts and all.
        let mut out = Vec::new();
        write_layer_tar(&up, &mut out, &LayerOptions::default()).unwrap();
        assert!(names_of(&out).contains(&"a/.wh.gone".to_string()));
        // Over nothing (a bottom layer), a whiteout deletes nothing.
        assert!(!tar_over(&[]).contains(&"a/.wh.gone".to_string()));
    }

    /// `rm -rf /d && mkdir /d` leaves `d` opaque in the upper. Its layer carried the opaque
    /// marker; BuildKit's overlay differ writes a whiteout per name the lowers show that `d` no
    /// longer holds (a removed subdirectory once, not its contents) and no marker.
    #[test]
    fn whiteout_dir_recreate_wrote_an_opaque_marker_instead_of_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, up) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("up"),
        );
        let when = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        // Lowers: d/b, d/keep, d/sub/x, d/gone (deleted again by l2), d/new2 (from l2).
        fs::create_dir_all(l1.join("d/sub")).unwrap();
        fs::write(l1.join("d/b"), "b").unwrap();
        fs::write(l1.join("d/keep"), "k").unwrap();
        fs::write(l1.join("d/sub/x"), "x").unwrap();
        fs::write(l1.join("d/gone"), "g").unwrap();
        fs::create_dir_all(l2.join("d")).unwrap();
        whiteout(&l2.join("d/gone"));
        fs::write(l2.join("d/new2"), "n").unwrap();
        // The upper: d re-created (opaque), with keep written back the same and sub re-made
        // empty.
        fs::create_dir_all(up.join("d/sub")).unwrap();
        xattr::set(up.join("d"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(up.join("d/keep"), "k").unwrap();
        for p in [l1.join("d/keep"), up.join("d/keep")] {
            filetime::set_file_mtime(p, when).unwrap();
        }
        let mut out = Vec::new();
        write_layer_diff_tar(
            &up,
            &[l2.clone(), l1.clone()],
            &mut out,
            &LayerOptions::default(),
        )
        .unwrap();
        assert_eq!(
            names_of(&out),
            ["d/", "d/.wh.b", "d/.wh.new2", "d/sub/", "d/sub/.wh.x"]
        );
        // Verbatim, the marker stays: it is the layer's own.
        let mut out = Vec::new();
        write_layer_tar(&up, &mut out, &LayerOptions::default()).unwrap();
        assert!(names_of(&out).contains(&"d/.wh..wh..opq".to_string()));
    }

    /// The pipe once flushed the compressor before finishing it, which ends a zstd block early:
    /// the same tar gave a different blob (and digest) than compressing it in one go.
    #[test]
    fn zstd_blob_changed_when_the_pipe_flushed_the_compressor() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let input: Vec<u8> = (0..3 * crate::stage::STAGE + 12_345)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 8192) % 3 == 0 {
                    b"layer"[i % 5]
                } else {
                    x as u8
                }
            })
            .collect();
        let opts = LayerOptions {
            compression: Compression::Zstd,
            ..LayerOptions::default()
        };
        let piped = |write_size: usize| {
            std::thread::scope(|s| {
                let comp = Compressor::new(&opts, Vec::new()).unwrap();
                let mut w = Staged::spawn(s, comp, io::sink());
                for piece in input.chunks(write_size) {
                    w.write_all(piece).unwrap();
                }
                let (comp, _) = w.finish().unwrap();
                comp.finish().unwrap()
            })
        };
        let mut direct = Compressor::new(&opts, Vec::new()).unwrap();
        direct.write_all(&input).unwrap();
        let direct = direct.finish().unwrap();
        assert_eq!(piped(512), direct);
        assert_eq!(piped(7 * 1024 * 1024), direct);
        assert_eq!(zstd::decode_all(&direct[..]).unwrap(), input);
    }
}
