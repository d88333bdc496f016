//! The image commands as Docker spells them: `images`, `tag`, `rmi`, `history`, `save`, `load`
//! and the `image` group (`ls`, `inspect`, `rm`, `tag`, `history`, `save`, `load`, `prune`).

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::source::StoreSource;
use anyhow::{bail, Result};
use kiln_engine::{Engine, Loaded, Removed};

#[derive(clap::Args)]
pub(crate) struct ImagesArgs {
    /// Only print image IDs, one line per listed image (as `docker images -q`).
    #[arg(short, long)]
    quiet: bool,
    /// Print whole image IDs (`sha256:...`), not their first 12 hex digits.
    #[arg(long)]
    no_trunc: bool,
    /// Only images that pass: `dangling=true|false`, `reference=PATTERN` (`app`, `app:1.*`).
    #[arg(short = 'f', long = "filter")]
    filters: Vec<String>,
    /// Accepted for Docker's sake: kiln lists every image anyway.
    #[arg(short = 'a', long)]
    all: bool,
}

#[derive(clap::Args)]
pub(crate) struct TagArgs {
    /// The image: a name, an ID or an ID prefix.
    source: String,
    /// The new name, NAME[:TAG].
    target: String,
}

#[derive(clap::Args)]
pub(crate) struct RmiArgs {
    /// Remove every name of an image named by ID, and images containers were made from.
    #[arg(short, long)]
    force: bool,
    /// Images: names, IDs or ID prefixes.
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub(crate) struct HistoryArgs {
    /// Only print the image ID of each step that has one.
    #[arg(short, long)]
    quiet: bool,
    /// Do not cut the `CREATED BY` column.
    #[arg(long)]
    no_trunc: bool,
    image: String,
}

#[derive(clap::Args)]
pub(crate) struct SaveArgs {
    /// The archive to write (default: stdout, unless it is a terminal).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Images: names, IDs or ID prefixes.
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    /// The archive to read (default: stdin): a docker-archive or an OCI archive, plain, gzip or
    /// zstd.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Print nothing.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub(crate) struct InspectArgs {
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub(crate) struct PruneArgs {
    /// Remove every image no container was made from, not only the dangling ones.
    #[arg(short, long)]
    all: bool,
    /// Accepted for Docker's sake: kiln does not ask.
    #[arg(short, long)]
    force: bool,
}

#[derive(clap::Subcommand)]
pub(crate) enum ImageCommand {
    /// List images.
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Show images as JSON.
    Inspect(InspectArgs),
    /// Remove images.
    #[command(alias = "remove", alias = "rmi")]
    Rm(RmiArgs),
    /// Give an image another name.
    Tag(TagArgs),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Write images to a docker-archive.
    Save(SaveArgs),
    /// Load images from an archive.
    Load(LoadArgs),
    /// Remove dangling images (`-a`: every image no container uses).
    Prune(PruneArgs),
}

impl ImageCommand {
    /// What the command calls itself in the store's lock file.
    pub(crate) fn store_writer(&self) -> Option<&'static str> {
        Some(match self {
            ImageCommand::Ls(_) => return None,
            ImageCommand::Inspect(_) => "kiln image inspect",
            ImageCommand::Rm(_) => "kiln image rm",
            ImageCommand::Tag(_) => "kiln image tag",
            ImageCommand::History(_) => "kiln image history",
            ImageCommand::Save(_) => "kiln image save",
            ImageCommand::Load(_) => "kiln image load",
            ImageCommand::Prune(_) => "kiln image prune",
        })
    }
}

pub(crate) async fn image(engine: &Engine, c: ImageCommand) -> Result<i32> {
    match c {
        // Listed without the store (see main.rs).
        ImageCommand::Ls(_) => Ok(0),
        ImageCommand::Inspect(a) => inspect(engine, a),
        ImageCommand::Rm(a) => rmi(engine, a),
        ImageCommand::Tag(a) => tag(engine, a),
        ImageCommand::History(a) => history(engine, a),
        ImageCommand::Save(a) => save(engine, a).await,
        ImageCommand::Load(a) => load(engine, a).await,
        ImageCommand::Prune(a) => prune(engine, a),
    }
}

/// `kiln images`: embedded, reads the image layout without the store's lock, so it answers
/// while a build runs.
pub(crate) async fn list(source: &StoreSource<'_>, a: &ImagesArgs) -> Result<i32> {
    let images = source.images(&a.filters).await?;
    let id = |id: &str| {
        if a.no_trunc {
            id.to_string()
        } else {
            kiln_engine::short_id(id).to_string()
        }
    };
    if a.quiet {
        for i in images {
            outln!("{}", id(&i.id));
        }
        return Ok(0);
    }
    outln!(
        "{:<50} {:<14} {:<14} {:<25} {:<10} PLATFORMS",
        "NAME",
        "IMAGE ID",
        "DIGEST",
        "CREATED",
        "SIZE"
    );
    for i in images {
        // An index's ID and size are those of the image for this host (else its first).
        outln!(
            "{:<50} {:<14} {:<14} {:<25} {:<10} {}",
            i.name.as_deref().unwrap_or("<none>"),
            id(&i.id),
            kiln_engine::short_id(&i.manifest_digest),
            i.created.as_deref().unwrap_or(""),
            human_size(i.size),
            i.platforms.join(",")
        );
    }
    Ok(0)
}

pub(crate) fn tag(engine: &Engine, a: TagArgs) -> Result<i32> {
    engine.tag(&a.source, &a.target)?;
    Ok(0)
}

/// Each image in turn, as `docker rmi`: one that cannot be removed is reported and the others
/// still are; the exit code is 1 if any failed.
pub(crate) fn rmi(engine: &Engine, a: RmiArgs) -> Result<i32> {
    let mut code = 0;
    for spec in &a.images {
        match engine.remove_image(spec, a.force) {
            Ok(done) => {
                for d in done {
                    match d {
                        Removed::Untagged(n) => outln!("Untagged: {n}"),
                        Removed::Deleted(id) => outln!("Deleted: {id}"),
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

fn inspect(engine: &Engine, a: InspectArgs) -> Result<i32> {
    let mut out = Vec::new();
    let mut code = 0;
    for spec in &a.images {
        match engine.inspect_image(spec) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("error: {e:#}");
                code = 1;
            }
        }
    }
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

pub(crate) fn history(engine: &Engine, a: HistoryArgs) -> Result<i32> {
    let entries = engine.image_history(&a.image)?;
    let id = engine.inspect_image(&a.image)?["Id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if a.quiet {
        outln!("{}", kiln_engine::short_id(&id));
        return Ok(0);
    }
    outln!(
        "{:<14} {:<22} {:<46} {:<10} COMMENT",
        "IMAGE",
        "CREATED",
        "CREATED BY",
        "SIZE"
    );
    for (n, e) in entries.iter().enumerate() {
        // As Docker's: only the top step is an image of its own.
        let image = if n == 0 {
            kiln_engine::short_id(&id)
        } else {
            "<missing>"
        };
        let by = e.created_by.replace('\n', " ");
        let by = if a.no_trunc || by.chars().count() <= 45 {
            by
        } else {
            format!("{}…", by.chars().take(44).collect::<String>())
        };
        outln!(
            "{:<14} {:<22} {:<46} {:<10} {}",
            image,
            e.created,
            by,
            human_size(e.size),
            e.comment
        );
    }
    Ok(0)
}

pub(crate) async fn save(engine: &Engine, a: SaveArgs) -> Result<i32> {
    let dest = match a.output {
        Some(o) => o,
        None if std::io::stdout().is_terminal() => bail!(
            "refusing to write an archive to a terminal: give a file with `-o FILE` or redirect stdout"
        ),
        None => PathBuf::from("-"),
    };
    engine.save_images(&a.images, &dest).await?;
    Ok(0)
}

pub(crate) async fn load(engine: &Engine, a: LoadArgs) -> Result<i32> {
    let input = match a.input {
        Some(i) => i,
        None if std::io::stdin().is_terminal() => bail!(
            "no archive to load: give one with `-i FILE` or on stdin (`kiln load < FILE.tar`)"
        ),
        None => PathBuf::from("-"),
    };
    let loaded = engine.load_images(&input).await?;
    if !a.quiet {
        for l in loaded {
            match l {
                Loaded::Named(n) => {
                    let (repo, tag) = kiln_engine::familiar_parts(&n);
                    outln!("Loaded image: {repo}:{tag}");
                }
                Loaded::Unnamed(id) => outln!("Loaded image ID: {id}"),
            }
        }
    }
    Ok(0)
}

fn prune(engine: &Engine, a: PruneArgs) -> Result<i32> {
    let _ = a.force;
    let removed = engine.prune_images(a.all)?;
    if !removed.is_empty() {
        outln!("Deleted Images:");
        for id in &removed {
            outln!("deleted: {id}");
        }
    }
    outln!(
        "{} images removed; `kiln prune` frees the layers no other image or build uses",
        removed.len()
    );
    Ok(0)
}

/// Docker's sizes: `1.2MB`, decimal units.
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[u]
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_are_written_as_docker_writes_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }
}
