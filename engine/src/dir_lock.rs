//! An exclusive `flock` on a store directory's `.lock` file, held while records under it
//! (networks, volumes) are created, taken or removed.

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::path::Path;

/// Takes `<dir>/.lock`, making `dir` first, and waits for another holder.
pub(crate) fn lock(dir: &Path) -> Result<Flock<std::fs::File>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock `{}`: {e}", path.display()))
}
