//! Disk usage as `du` measures it: allocated blocks, each inode counted once (snapshots share
//! files through hard links), directories included, symlinks never followed. `kiln system df`
//! and the size-keeping GC both count with it, so what kiln reports is what the disk holds.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Inodes already counted: `(device, inode)`.
pub(crate) type Seen = HashSet<(u64, u64)>;

/// Bytes allocated to `path` and everything below it, skipping inodes in `seen` (and adding
/// the new ones to it). A path that vanishes while it is walked counts as empty: a walk races
/// nothing in kiln (the store is locked), but it must not fail on a half-removed directory
/// left by a crash.
pub(crate) fn disk_usage(path: &Path, seen: &mut Seen) -> io::Result<u64> {
    let mut total = 0;
    // An explicit stack: a hostile image can nest directories deeper than the thread's stack.
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            let entries = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                match entry {
                    Ok(entry) => stack.push(entry.path()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(total)
}

/// Bytes allocated to the directory tree at `path`, as `du -s` counts them (each inode once).
pub fn dir_usage(path: &Path) -> io::Result<u64> {
    disk_usage(path, &mut Seen::new())
}

/// Parses a size as `--keep-storage` and `gc.keep-storage` take it: a number of bytes with an
/// optional unit, `b`, `k`/`kb`/`kib`, `m`/`mb`/`mib`, `g`/`gb`/`gib`, `t`/`tb`/`tib` (powers of
/// 1024, as Docker's `--keep-storage` reads them), e.g. `512m`, `10GB`, `1.5g`.
pub fn parse_size(text: &str) -> Option<u64> {
    let s = text.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return None;
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut bytes = whole.checked_mul(1u64 << shift)?;
    if !frac.is_empty() {
        // At most 9 digits of fraction: enough for any unit and no overflow below.
        let digits = &frac[..frac.len().min(9)];
        let f: u64 = digits.parse().ok()?;
        let scale = 10u64.pow(digits.len() as u32);
        bytes = bytes.checked_add(((f as u128 * (1u128 << shift)) / scale as u128) as u64)?;
    }
    Some(bytes)
}

/// Shows a byte count as Docker does: `0B`, `512B`, `1.5kB`, `23.4MB`, `1.2GB` (powers of 1000).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("10GB"), Some(10 << 30));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size(" 4 kib "), Some(4096));
        for bad in [
            "",
            "m",
            "1..2g",
            "-1",
            "12 parsecs",
            "99999999999999999999t",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_show_as_docker_shows_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1500), "1.5kB");
        assert_eq!(human_size(23_400_000), "23.4MB");
    }

    #[test]
    fn hard_links_count_once_and_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), vec![7u8; 64 << 10]).unwrap();
        fs::hard_link(a.join("f"), b.join("f")).unwrap();
        std::os::unix::fs::symlink("/usr", b.join("usr")).unwrap();
        let mut seen = Seen::new();
        let first = disk_usage(&a, &mut seen).unwrap();
        assert!(first >= 64 << 10, "{first}");
        let second = disk_usage(&b, &mut seen).unwrap();
        // b's own directory block and the symlink, not the file again nor /usr.
        assert!(second < 16 << 10, "{second}");
        assert_eq!(disk_usage(&dir.path().join("gone"), &mut seen).unwrap(), 0);
    }
}
