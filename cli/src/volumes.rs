//! `kiln volume create|ls|rm|inspect|prune`, without the store's lock (volumes have their own).

use anyhow::Result;
use kiln_engine::{containers, volumes};
use std::path::Path;

#[derive(clap::Subcommand)]
pub(crate) enum VolumeCommand {
    /// Create a volume (a random name when none is given); an existing one is kept as it is.
    Create { name: Option<String> },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only the names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove volumes no container uses.
    #[command(alias = "remove")]
    Rm {
        /// No error for a volume that does not exist (a volume in use is still kept).
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Show volumes as JSON, as `docker volume inspect` does.
    Inspect {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove the anonymous volumes no container uses (all unused ones with `-a`).
    Prune {
        /// Named volumes too.
        #[arg(short, long)]
        all: bool,
        /// Do not ask (kiln never asks; accepted for Docker's scripts).
        #[arg(short, long)]
        force: bool,
    },
}

pub(crate) fn volume(root: &Path, c: VolumeCommand) -> Result<i32> {
    match c {
        VolumeCommand::Create { name } => {
            let lock = volumes::lock(root)?;
            let v = volumes::create(&lock, root, name.as_deref())?;
            outln!("{}", v.name);
            Ok(0)
        }
        VolumeCommand::Ls { quiet } => {
            let all = volumes::list(root)?;
            if !quiet {
                outln!("DRIVER    VOLUME NAME");
            }
            for v in all {
                if quiet {
                    outln!("{}", v.name);
                } else {
                    outln!("{:<10}{}", "local", v.name);
                }
            }
            Ok(0)
        }
        VolumeCommand::Rm {
            force,
            volumes: names,
        } => {
            let lock = volumes::lock(root)?;
            let mut code = 0;
            for n in &names {
                if force && volumes::find(root, n).is_err() {
                    continue;
                }
                match containers::remove_volume(&lock, root, n) {
                    Ok(()) => outln!("{n}"),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        VolumeCommand::Inspect { volumes: names } => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in &names {
                match volumes::find(root, n) {
                    Ok(v) => out.push(volumes::inspect(&v)),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        code = 1;
                    }
                }
            }
            outln!("{}", serde_json::to_string_pretty(&out)?);
            Ok(code)
        }
        VolumeCommand::Prune { all, force: _ } => {
            let lock = volumes::lock(root)?;
            let removed = containers::prune_volumes(&lock, root, all)?;
            outln!("Deleted Volumes:");
            for n in &removed {
                outln!("{n}");
            }
            Ok(0)
        }
    }
}
