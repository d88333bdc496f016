//! Deterministic tar writing: ustar headers, PAX records and GNU long names only where needed.
//!
//! Our own writer rather than the `tar` crate's builder, because the bytes must be exactly the
//! same for the same tree everywhere: no user/group names, no atime/ctime, fixed PAX header
//! names, sorted PAX records, and names passed through as raw bytes.

use std::io::{self, Read, Write};

pub(crate) const BLOCK: usize = 512;

/// Largest value an octal field of `width` bytes (with its terminating NUL) can hold.
const fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::Regular => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One entry's metadata. `path` is relative, without `./`, and ends in `/` for directories.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    pub path: &'a [u8],
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub link: &'a [u8],
    pub dev_major: u64,
    pub dev_minor: u64,
    /// Already filtered and sorted by name; written as `SCHILY.xattr.NAME` PAX records.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<'a> Entry<'a> {
    pub(crate) fn new(path: &'a [u8], kind: Kind) -> Self {
        Entry {
            path,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: b"",
            dev_major: 0,
            dev_minor: 0,
            xattrs: &[],
        }
    }
}

/// Why an entry cannot be represented; the caller adds the path for the user.
#[derive(Debug)]
pub(crate) enum TarError {
    /// Writing to the sink failed.
    Io(io::Error),
    /// Reading the entry's data failed.
    Source(io::Error),
    DeviceNumber {
        major: u64,
        minor: u64,
    },
    ShortRead {
        expected: u64,
        got: u64,
    },
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

/// A sink that can read an entry's data from its source straight into its own buffer, which
/// saves the tar writer's copy of every byte.
pub(crate) trait ReadInto: Write {
    /// Reads at most `max` bytes (at least one when `max > 0`, unless at the end) from `src`.
    fn read_into(&mut self, src: &mut dyn Read, max: usize) -> io::Result<usize>;
}

type DirectRead<W> = fn(&mut W, &mut dyn Read, usize) -> io::Result<usize>;

pub(crate) struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    /// Set when `W` reads entry data itself ([`TarWriter::new_direct`]).
    direct: Option<DirectRead<W>>,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter {
            out,
            buf: vec![0u8; 256 * 1024],
            direct: None,
        }
    }

    /// Writes the header(s) for `e`, then exactly `e.size` bytes from `data` and the padding.
    pub(crate) fn append(
        &mut self,
        e: &Entry<'_>,
        data: Option<&mut dyn Read>,
    ) -> Result<(), TarError> {
        self.write_headers(e)?;
        if e.size == 0 {
            return Ok(());
        }
        let Some(data) = data else {
            return Err(TarError::ShortRead {
                expected: e.size,
                got: 0,
            });
        };
        let mut left = e.size;
        while left > 0 {
            if let Some(read_into) = self.direct {
                let want = left.min(1 << 30) as usize;
                let n = match read_into(&mut self.out, data, want) {
                    Ok(0) => {
                        return Err(TarError::ShortRead {
                            expected: e.size,
                            got: e.size - left,
                        })
                    }
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(direct_error(err)),
                };
                left -= n as u64;
                continue;
            }
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(TarError::ShortRead {
                        expected: e.size,
                        got: e.size - left,
                    })
                }
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(TarError::Source(err)),
            };
            self.out.write_all(&self.buf[..n])?;
            left -= n as u64;
        }
        self.pad(e.size)?;
        Ok(())
    }

    /// Writes the two zero blocks that end an archive and returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn write_headers(&mut self, e: &Entry<'_>) -> Result<(), TarError> {
        let dev_max = octal_max(8);
        if e.dev_major > dev_max || e.dev_minor > dev_max {
            return Err(TarError::DeviceNumber {
                major: e.dev_major,
                minor: e.dev_minor,
            });
        }
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let split = split_ustar_path(e.path);
        if split.is_none() {
            if std::str::from_utf8(e.path).is_ok() {
                pax.push((b"path".to_vec(), e.path.to_vec()));
            } else {
                self.gnu_long(b'L', e.path)?;
            }
        }
        if e.link.len() > 100 {
            if std::str::from_utf8(e.link).is_ok() {
                pax.push((b"linkpath".to_vec(), e.link.to_vec()));
            } else {
                self.gnu_long(b'K', e.link)?;
            }
        }
        if e.uid > octal_max(8) {
            pax.push((b"uid".to_vec(), e.uid.to_string().into_bytes()));
        }
        if e.gid > octal_max(8) {
            pax.push((b"gid".to_vec(), e.gid.to_string().into_bytes()));
        }
        if e.size > octal_max(12) {
            pax.push((b"size".to_vec(), e.size.to_string().into_bytes()));
        }
        if e.mtime < 0 || e.mtime as u64 > octal_max(12) {
            pax.push((b"mtime".to_vec(), e.mtime.to_string().into_bytes()));
        }
        for (k, v) in e.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            pax.push((key, v.clone()));
        }
        if !pax.is_empty() {
            pax.sort();
            let body = pax_body(&pax);
            let mut h = [0u8; BLOCK];
            let name = pax_header_name(e.path);
            h[..name.len()].copy_from_slice(&name);
            fill_meta(&mut h, 0o644, 0, 0, body.len() as u64, 0, b'x');
            set_ustar_magic(&mut h);
            set_checksum(&mut h);
            self.out.write_all(&h)?;
            self.out.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }

        let mut h = [0u8; BLOCK];
        match split {
            Some((prefix, name)) => {
                h[..name.len()].copy_from_slice(name);
                h[345..345 + prefix.len()].copy_from_slice(prefix);
            }
            // The full name is in a PAX or GNU record; keep a recognisable truncated name here.
            None => {
                let n = e.path.len().min(100);
                h[..n].copy_from_slice(&e.path[..n]);
            }
        }
        let clamp = |v: u64, w: usize| if v > octal_max(w) { 0 } else { v };
        let mtime = if e.mtime < 0 {
            0
        } else {
            clamp(e.mtime as u64, 12)
        };
        fill_meta(
            &mut h,
            e.mode & 0o7777,
            clamp(e.uid, 8),
            clamp(e.gid, 8),
            clamp(e.size, 12),
            mtime,
            e.kind.flag(),
        );
        let ln = e.link.len().min(100);
        h[157..157 + ln].copy_from_slice(&e.link[..ln]);
        set_ustar_magic(&mut h);
        write_octal(&mut h[329..337], e.dev_major);
        write_octal(&mut h[337..345], e.dev_minor);
        set_checksum(&mut h);
        self.out.write_all(&h)?;
        Ok(())
    }

    fn gnu_long(&mut self, flag: u8, value: &[u8]) -> io::Result<()> {
        let mut h = [0u8; BLOCK];
        let name = b"././@LongLink";
        h[..name.len()].copy_from_slice(name);
        let size = value.len() as u64 + 1;
        fill_meta(&mut h, 0o644, 0, 0, size, 0, flag);
        h[257..265].copy_from_slice(b"ustar  \0");
        set_checksum(&mut h);
        self.out.write_all(&h)?;
        self.out.write_all(value)?;
        self.out.write_all(&[0])?;
        self.pad(size)
    }
}

impl<W: ReadInto> TarWriter<W> {
    /// A tar writer whose sink reads entry data itself (see [`ReadInto`]).
    pub(crate) fn new_direct(out: W) -> Self {
        TarWriter {
            out,
            buf: Vec::new(),
            direct: Some(<W as ReadInto>::read_into),
        }
    }
}

/// A [`ReadInto`] error is the source's (reading) unless it is marked as the sink's.
fn direct_error(err: io::Error) -> TarError {
    match err.get_ref().and_then(|e| e.downcast_ref::<SinkError>()) {
        Some(_) => TarError::Io(err),
        None => TarError::Source(err),
    }
}

/// Marks an error of a [`ReadInto`] sink as a write error (the others are read errors). It
/// reads as the sink's own error, whose kind the wrapping `io::Error` keeps (a full disk stays
/// one).
#[derive(Debug)]
pub(crate) struct SinkError(pub io::Error);

impl SinkError {
    /// `e`, marked as the sink's.
    pub(crate) fn wrap(e: io::Error) -> io::Error {
        io::Error::new(e.kind(), SinkError(e))
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SinkError {
    /// The sink error's own cause: its text is this error's, so it is not a cause again.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Splits a path into ustar (prefix, name), or `None` when it needs a PAX/GNU record.
fn split_ustar_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.contains(&0) {
        return None;
    }
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 256 {
        return None;
    }
    // Rightmost `/` that leaves a non-empty name of at most 100 bytes and a prefix of at most 155.
    let mut best = None;
    for (i, &b) in path.iter().enumerate() {
        if b == b'/' && i <= 155 && i + 1 < path.len() && path.len() - i - 1 <= 100 {
            best = Some(i);
        }
    }
    best.map(|i| (&path[..i], &path[i + 1..]))
}

fn pax_header_name(path: &[u8]) -> Vec<u8> {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let (dir, base) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..i + 1], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    let mut name = dir.to_vec();
    name.extend_from_slice(b"PaxHeaders.0/");
    name.extend_from_slice(base);
    name.truncate(100);
    name
}

fn pax_body(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        // The length prefix counts itself, so find the digit count that is self-consistent.
        let base = k.len() + v.len() + 3;
        let mut len = base + 1;
        while len != base + len.to_string().len() {
            len = base + len.to_string().len();
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(k);
        body.push(b'=');
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

fn fill_meta(h: &mut [u8; BLOCK], mode: u32, uid: u64, gid: u64, size: u64, mtime: u64, flag: u8) {
    write_octal(&mut h[100..108], u64::from(mode));
    write_octal(&mut h[108..116], uid);
    write_octal(&mut h[116..124], gid);
    write_octal(&mut h[124..136], size);
    write_octal(&mut h[136..148], mtime);
    h[156] = flag;
    // Zeros rather than empty fields: some readers reject an empty numeric field.
    write_octal(&mut h[329..337], 0);
    write_octal(&mut h[337..345], 0);
}

fn set_ustar_magic(h: &mut [u8; BLOCK]) {
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
}

/// Zero-padded octal with a trailing NUL; callers make sure the value fits.
fn write_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    let s = s.as_bytes();
    let s = &s[s.len().saturating_sub(digits)..];
    field[..s.len()].copy_from_slice(s);
    field[digits] = 0;
}

fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_under_a_sink_stays_a_full_disk_said_once() {
        let e = SinkError::wrap(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(matches!(
            crate::ExportError::write("the layer", e),
            crate::ExportError::DiskFull { .. }
        ));
        let e = SinkError::wrap(io::Error::new(io::ErrorKind::BrokenPipe, "the reader left"));
        assert_eq!(e.to_string(), "the reader left");
        assert!(std::error::Error::source(&e).is_none_or(|s| s.to_string() != "the reader left"));
    }

    fn one(e: &Entry<'_>, data: &[u8]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        let mut r = data;
        w.append(e, Some(&mut r))
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn octal_fields_and_checksum_match_tar_crate() {
        let mut e = Entry::new(b"dir/file.txt", Kind::Regular);
        e.mode = 0o4755;
        e.uid = 1000;
        e.gid = 100;
        e.size = 5;
        e.mtime = 1_700_000_000;
        let bytes = one(&e, b"hello");
        assert_eq!(bytes.len(), 512 + 512 + 1024);
        let mut a = tar::Archive::new(&bytes[..]);
        let mut entries = a.entries().unwrap();
        let ent = entries.next().unwrap().unwrap();
        let h = ent.header();
        assert_eq!(h.mode().unwrap(), 0o4755);
        assert_eq!(h.uid().unwrap(), 1000);
        assert_eq!(h.gid().unwrap(), 100);
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        assert_eq!(h.cksum().unwrap(), {
            let mut c = [0u8; 512];
            c.copy_from_slice(&bytes[..512]);
            c[148..156].copy_from_slice(b"        ");
            c.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(&*ent.path_bytes(), b"dir/file.txt");
    }

    #[test]
    fn ustar_split_and_limits() {
        let long = [b"a".repeat(150), b"b".repeat(99)].join(&b'/');
        let (p, n) = split_ustar_path(&long).unwrap();
        assert_eq!(p.len(), 150);
        assert_eq!(n.len(), 99);
        assert!(split_ustar_path(&b"x".repeat(101)).is_none());
        assert!(split_ustar_path(&[b"a".repeat(10), b"b".repeat(101)].join(&b'/')).is_none());
        // A dir's trailing slash cannot be the split point.
        let d = [b"a".repeat(100), b"/".to_vec()].concat();
        assert_eq!(split_ustar_path(&d), None);
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let body = pax_body(&[(b"path".to_vec(), b"x".repeat(93))]);
        let text = String::from_utf8(body.clone()).unwrap();
        let (n, _) = text.split_once(' ').unwrap();
        assert_eq!(n.parse::<usize>().unwrap(), body.len());
        for v in [0usize, 1, 5, 6, 7, 90, 91, 92, 93, 94, 995, 996, 997] {
            let body = pax_body(&[(b"k".to_vec(), b"v".repeat(v))]);
            let text = String::from_utf8(body.clone()).unwrap();
            let (n, _) = text.split_once(' ').unwrap();
            assert_eq!(n.parse::<usize>().unwrap(), body.len(), "value length {v}");
        }
    }

    #[test]
    fn big_numbers_go_to_pax() {
        let mut e = Entry::new(b"f", Kind::Regular);
        e.uid = 1 << 30;
        e.mtime = -5;
        let bytes = one(&e, b"");
        assert_eq!(bytes[156], b'x');
        let text = String::from_utf8_lossy(&bytes[512..1024]).to_string();
        assert!(text.contains("mtime=-5\n"), "{text}");
        assert!(text.contains(&format!("uid={}\n", 1u64 << 30)), "{text}");
    }

    #[test]
    fn device_number_too_large_is_an_error() {
        let mut e = Entry::new(b"dev", Kind::Char);
        e.dev_major = 1 << 40;
        let mut w = TarWriter::new(Vec::new());
        assert!(matches!(
            w.append(&e, None),
            Err(TarError::DeviceNumber { .. })
        ));
    }

    #[test]
    fn short_data_is_an_error() {
        let mut e = Entry::new(b"f", Kind::Regular);
        e.size = 10;
        let mut w = TarWriter::new(Vec::new());
        let mut r: &[u8] = b"abc";
        assert!(matches!(
            w.append(&e, Some(&mut r)),
            Err(TarError::ShortRead {
                expected: 10,
                got: 3
            })
        ));
    }
}
