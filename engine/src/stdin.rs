//! `kiln build -` and `kiln build -f - CONTEXT`: the build input read from stdin, as `docker
//! build` reads it: a context tar (plain, gzip or zstd), or a lone Dockerfile with an empty
//! context, written to a directory under the store's `tmp/` that lives as long as the build.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::Engine;

/// A build input made from stdin; its directory is removed when this is dropped.
pub struct StdinInput {
    dir: tempfile::TempDir,
    /// The Dockerfile when stdin held one alone (`-f -`, or `-` with a Dockerfile).
    pub dockerfile: Option<PathBuf>,
}

impl StdinInput {
    /// The build context: the unpacked tar, or an empty directory.
    pub fn context(&self) -> PathBuf {
        self.dir.path().join("context")
    }
}

/// What stdin holds for the build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdinKind {
    /// `kiln build -`: a context tar or a Dockerfile.
    ContextOrDockerfile,
    /// `kiln build -f - CONTEXT`: a Dockerfile.
    Dockerfile,
}

/// A tar starts with a header whose `ustar` magic sits at byte 257; compressed ones are told by
/// their own magic.
fn looks_like_archive(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.get(257..262) == Some(b"ustar")
}

impl Engine {
    /// Reads `input` (stdin) as `kind` says into a directory under the store's `tmp/`.
    pub fn stdin_input(&self, kind: StdinKind, input: &mut dyn Read) -> Result<StdinInput> {
        read_stdin_input(&self.store().tmp_dir(), kind, input)
    }
}

/// Reads `input` (stdin) as `kind` says into a new directory under `tmp` (a `--host` client
/// reads it so, then sends it as any context).
pub fn read_stdin_input(tmp: &Path, kind: StdinKind, input: &mut dyn Read) -> Result<StdinInput> {
    std::fs::create_dir_all(tmp).with_context(|| format!("cannot create `{}`", tmp.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("stdin-")
        .tempdir_in(tmp)
        .with_context(|| format!("cannot create a directory in `{}`", tmp.display()))?;
    let context = dir.path().join("context");
    std::fs::create_dir(&context)
        .with_context(|| format!("cannot create `{}`", context.display()))?;
    let mut head = Vec::with_capacity(512);
    input
        .take(512)
        .read_to_end(&mut head)
        .context("cannot read the build input from stdin")?;
    let mut rest = io::Cursor::new(head.clone()).chain(input);
    if kind == StdinKind::ContextOrDockerfile && looks_like_archive(&head) {
        unpack(&mut rest, &context)?;
        return Ok(StdinInput {
            dir,
            dockerfile: None,
        });
    }
    if head.is_empty() {
        bail!("stdin is empty: pipe a Dockerfile or a context tar into `kiln build -`");
    }
    let path = dir.path().join("Dockerfile");
    let mut text = Vec::new();
    // A Dockerfile is text: 16 MiB is far beyond any real one.
    rest.take(16 << 20)
        .read_to_end(&mut text)
        .context("cannot read the Dockerfile from stdin")?;
    std::fs::write(&path, &text).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(StdinInput {
        dir,
        dockerfile: Some(path),
    })
}

/// Unpacks a context tar into `dest`. The tar crate refuses entries that would land outside
/// `dest` (`..`, absolute paths, writes through links that lead out).
fn unpack(input: &mut dyn Read, dest: &Path) -> Result<()> {
    let mut head = [0u8; 4];
    let mut reader = io::BufReader::new(input);
    let got = {
        use std::io::BufRead;
        let buf = reader.fill_buf().context("cannot read the context tar")?;
        let n = buf.len().min(4);
        head[..n].copy_from_slice(&buf[..n]);
        n
    };
    let r: Box<dyn Read + '_> = if head[..got].starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head[..got] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(reader).context("cannot read the context tar")?)
    } else {
        Box::new(reader)
    };
    let mut archive = tar::Archive::new(r);
    archive.set_preserve_ownerships(false);
    archive
        .unpack(dest)
        .context("cannot unpack the context tar from stdin")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_told_from_dockerfiles() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(looks_like_archive(&tar));
        assert!(looks_like_archive(&[0x1f, 0x8b, 8, 0]));
        assert!(!looks_like_archive(b"FROM busybox\nRUN true\n"));
    }
}
