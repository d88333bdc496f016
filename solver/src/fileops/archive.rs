//! `ADD`'s archive auto-extraction, as Docker does it: a local source file whose content is a tar
//! archive (plain, gzip, bzip2, xz or zstd compressed) is unpacked into the destination directory instead of
//! copied. A file that only looks like one (a `.gz` of plain text) is copied as it is. Entries
//! are written through `resolve_in_root`, so an archive can never write outside the root.

use super::{resolve_in_root, Owner};
use crate::SolveError;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// How an archive's bytes are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

fn compression_of(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if magic.starts_with(b"BZh") {
        Compression::Bzip2
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

fn decoder(file: std::fs::File, c: Compression) -> io::Result<Box<dyn Read>> {
    let mut r = BufReader::new(file);
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Compression::Xz => {
            // lzma-rs decodes into a writer: the tar is staged in an unnamed temp file.
            let mut out = tempfile::tempfile()?;
            lzma_rs::xz_decompress(&mut r, &mut out).map_err(|e| match e {
                // A failed read or write of the temp file stays what it is (a full disk too).
                lzma_rs::error::Error::IoError(e) => e,
                // lzma-rs prints its source in its own text: as text, it is printed once.
                e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            })?;
            out.seek(io::SeekFrom::Start(0))?;
            Box::new(BufReader::new(out))
        }
    })
}

/// The first bytes of an xz stream's content, without decompressing the rest: the writer
/// refuses more once it has them, which stops the decoder.
fn xz_head(file: std::fs::File, len: usize) -> Vec<u8> {
    struct Head(Vec<u8>, usize);
    impl io::Write for Head {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.1 - self.0.len();
            if room == 0 {
                return Err(io::Error::other("enough"));
            }
            let n = room.min(buf.len());
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut head = Head(Vec::new(), len);
    let _ = lzma_rs::xz_decompress(&mut BufReader::new(file), &mut head);
    head.0
}

/// Whether 512 bytes are a tar header: the checksum field matches the header's bytes.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let Ok(want) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == want
}

/// The archive's compression when `path` is a tar archive kiln should unpack, `None` when it is
/// to be copied as a plain file.
pub(crate) fn detect(path: &Path) -> Result<Option<Compression>, SolveError> {
    let err = SolveError::io(format!("`{}`", path.display()));
    let mut magic = [0u8; 6];
    let mut f = std::fs::File::open(path).map_err(&err)?;
    let n = read_up_to(&mut f, &mut magic).map_err(&err)?;
    let c = compression_of(&magic[..n]);
    if c == Compression::Xz {
        let f = std::fs::File::open(path).map_err(&err)?;
        let head = xz_head(f, 512);
        return Ok(is_tar_header(&head).then_some(c));
    }
    let f = std::fs::File::open(path).map_err(&err)?;
    let Ok(mut r) = decoder(f, c) else {
        return Ok(None);
    };
    let mut block = vec![0u8; 512];
    // A stream that fails to decompress is not an archive: copy it as it is.
    let Ok(n) = read_up_to(&mut r, &mut block) else {
        return Ok(None);
    };
    Ok(is_tar_header(&block[..n]).then_some(c))
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Unpacks the archive at `path` into `dest` (a directory inside `root`, created if missing).
/// `owner` replaces the archive's owners when `--chown` was given.
pub(crate) fn unpack(
    root: &Path,
    dest: &Path,
    path: &Path,
    compression: Compression,
    owner: Option<Owner>,
) -> Result<(), SolveError> {
    let name = path.display().to_string();
    let err = SolveError::io(format!("`{}`", name));
    let f = std::fs::File::open(path).map_err(&err)?;
    let mut archive = tar::Archive::new(decoder(f, compression).map_err(&err)?);
    std::fs::create_dir_all(dest).map_err(SolveError::io(format!("`{}`", dest.display())))?;
    let dest_rel = dest
        .strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    // Directory times are set last: writing into a directory changes its mtime.
    let mut dir_times: Vec<(PathBuf, filetime::FileTime)> = Vec::new();
    for entry in archive.entries().map_err(&err)? {
        let mut entry = entry.map_err(&err)?;
        let raw = entry.path().map_err(&err)?.into_owned();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::ParentDir => {
                    return Err(SolveError::Op(format!(
                        "`{name}`: entry `{}` climbs out with `..`: the archive is broken or hostile, it was not unpacked",
                        raw.display()
                    )))
                }
                _ => {}
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let in_root = dest_rel.join(&rel);
        let in_root_s = in_root.to_string_lossy().into_owned();
        let parent = in_root.parent().unwrap_or(Path::new(""));
        let parent_abs = resolve_in_root(root, parent, true).map_err(&err)?;
        std::fs::create_dir_all(&parent_abs).map_err(&err)?;
        let file_name = rel.file_name().unwrap_or_default();
        let target = parent_abs.join(file_name);
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = filetime::FileTime::from_unix_time(header.mtime().unwrap_or(0) as i64, 0);
        let (uid, gid) = match owner {
            Some(o) => (o.uid, o.gid),
            None => (
                header.uid().unwrap_or(0) as u32,
                header.gid().unwrap_or(0) as u32,
            ),
        };
        let kind = header.entry_type();
        if !kind.is_dir() {
            if let Ok(m) = std::fs::symlink_metadata(&target) {
                if m.is_dir() {
                    std::fs::remove_dir_all(&target).map_err(&err)?;
                } else {
                    std::fs::remove_file(&target).map_err(&err)?;
                }
            }
        }
        if kind.is_dir() {
            if !target.is_dir() {
                let _ = std::fs::remove_file(&target);
                std::fs::create_dir(&target).map_err(&err)?;
            }
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(&err)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                .map_err(&err)?;
            dir_times.push((target, mtime));
            continue;
        } else if kind.is_symlink() {
            let link = entry.link_name().map_err(&err)?.ok_or_else(|| {
                SolveError::Op(format!("`{name}`: symlink `{in_root_s}` has no target"))
            })?;
            std::os::unix::fs::symlink(&link, &target).map_err(&err)?;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(&err)?;
            filetime::set_symlink_file_times(&target, mtime, mtime).map_err(&err)?;
            continue;
        } else if kind.is_hard_link() {
            let link = entry.link_name().map_err(&err)?.ok_or_else(|| {
                SolveError::Op(format!("`{name}`: hard link `{in_root_s}` has no target"))
            })?;
            let src = dest_rel.join(link.as_ref());
            let src = resolve_in_root(root, &src, false).map_err(&err)?;
            std::fs::hard_link(&src, &target).map_err(&err)?;
            // The link entry's own header applies to the shared inode, as Docker's
            // `createTarFile` (BuildKit's ADD) does: owner always, mode and times unless the
            // inode is a symlink.
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(&err)?;
            if std::fs::symlink_metadata(&target)
                .map_err(&err)?
                .file_type()
                .is_symlink()
            {
                continue;
            }
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let mut out = std::fs::File::create(&target).map_err(&err)?;
            io::copy(&mut entry, &mut out).map_err(&err)?;
        } else {
            // Devices, fifos and GNU/PAX metadata entries: Docker's ADD needs privileges for
            // devices and builds almost never ship them; leave them out.
            continue;
        }
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(&err)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(&err)?;
        filetime::set_file_times(&target, mtime, mtime).map_err(&err)?;
    }
    for (dir, t) in dir_times.into_iter().rev() {
        filetime::set_file_times(&dir, t, t)
            .map_err(SolveError::io(format!("`{}`", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "pkg/", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_size(5);
        h.set_uid(1000);
        b.append_data(&mut h, "pkg/file.txt", &b"hello"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "pkg/link", "/etc/passwd").unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn gzip_bzip2_xz_zstd_and_plain_tars_unpack_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let plain = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 1).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        io::Write::write_all(&mut bz, &plain).unwrap();
        let bz = bz.finish().unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &plain[..], &mut xz).unwrap();
        for (name, bytes, want) in [
            ("a.tar", &plain, Compression::None),
            ("a.tgz", &gz, Compression::Gzip),
            ("a.tar.zst", &zst, Compression::Zstd),
            ("a.tar.bz2", &bz, Compression::Bzip2),
            ("a.tar.xz", &xz, Compression::Xz),
        ] {
            let p = t.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(detect(&p).unwrap(), Some(want), "{name}");
            let dest = root.join(format!("out-{name}"));
            unpack(&root, &dest, &p, want, None).unwrap();
            assert_eq!(
                std::fs::read_to_string(dest.join("pkg/file.txt")).unwrap(),
                "hello"
            );
            let m = std::fs::metadata(dest.join("pkg/file.txt")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o600);
            assert_eq!(
                std::fs::read_link(dest.join("pkg/link")).unwrap(),
                Path::new("/etc/passwd")
            );
        }
    }

    #[test]
    fn non_archives_are_copied_and_breakouts_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("notes.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, b"just text, not a tar").unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        assert_eq!(detect(&p).unwrap(), None);
        let p2 = t.path().join("plain.txt");
        std::fs::write(&p2, "hello").unwrap();
        assert_eq!(detect(&p2).unwrap(), None);
        let bz = t.path().join("x.tar.bz2");
        std::fs::write(&bz, b"BZh91AY&SY").unwrap();
        assert_eq!(
            detect(&bz).unwrap(),
            None,
            "a broken bzip2 stream is copied"
        );
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &b"not a tar at all"[..], &mut xz).unwrap();
        let xzp = t.path().join("notes.xz");
        std::fs::write(&xzp, xz).unwrap();
        assert_eq!(detect(&xzp).unwrap(), None);

        // A hand-made header naming `../evil`.
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        {
            let name = &mut h.as_old_mut().name;
            name[..7].copy_from_slice(b"../evil");
        }
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(b"x");
        bytes.resize(512 * 2, 0);
        bytes.resize(512 * 4, 0);
        let evil = t.path().join("evil.tar");
        std::fs::write(&evil, &bytes).unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(detect(&evil).unwrap(), Some(Compression::None));
        let e = unpack(&root, &root.join("d"), &evil, Compression::None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`..`"), "{e}");
        assert!(!t.path().join("evil").exists());
    }

    #[test]
    fn tar_hard_link_header_was_ignored_for_the_shared_inode() {
        use std::os::unix::fs::MetadataExt;
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(2);
        h.set_uid(1);
        h.set_gid(1);
        h.set_mtime(100);
        b.append_data(&mut h, "file", &b"hi"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(200);
        b.append_link(&mut h, "sym", "file").unwrap();
        for (name, target) in [("link", "file"), ("symlink-link", "sym")] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            h.set_mode(0o4750);
            h.set_uid(1000);
            h.set_gid(2000);
            h.set_mtime(5000);
            b.append_link(&mut h, name, target).unwrap();
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("links.tar");
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        unpack(&root, &root.join("d"), &p, Compression::None, None).unwrap();

        let file = std::fs::symlink_metadata(root.join("d/file")).unwrap();
        let link = std::fs::symlink_metadata(root.join("d/link")).unwrap();
        assert_eq!((file.ino(), file.nlink()), (link.ino(), 2));
        assert_eq!(file.mode() & 0o7777, 0o4750);
        assert_eq!((file.uid(), file.gid()), (1000, 2000));
        assert_eq!(file.mtime(), 5000);
        // A link to a symlink takes the owner only: a symlink has no mode and its times stay.
        let sym = std::fs::symlink_metadata(root.join("d/sym")).unwrap();
        assert!(sym.file_type().is_symlink());
        assert_eq!((sym.uid(), sym.gid(), sym.mtime()), (1000, 2000, 200));
    }
}
