//! `kiln debug parse` and `kiln debug llb`: show what the frontend makes of a Dockerfile without
//! building anything (no store is opened, nothing is pulled, unless `debug llb --resolve` asks
//! for base images to be resolved as a build resolves them).

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub(crate) enum DebugCommand {
    /// Print the parsed Dockerfile, one instruction a line, in BuildKit's parser dump format.
    Parse {
        /// The Dockerfile (default: ./Dockerfile).
        #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
        file: PathBuf,
    },
    /// Print the compiled build graph (LLB) and image config as JSON. Image names are normalised
    /// but not resolved, so the output is the same on any machine (see `--resolve`).
    Llb(Box<LlbArgs>),
}

#[derive(clap::Args)]
pub(crate) struct LlbArgs {
    /// Resolve base images as `kiln build` does (the kiln store, the registry with `--pull`), so
    /// their digests, inherited config and ONBUILD triggers show.
    #[arg(long)]
    resolve: bool,
    #[command(flatten)]
    build: crate::BuildArgs,
}

impl DebugCommand {
    /// Whether the command needs the store (and so its lock): only `debug llb --resolve`.
    pub(crate) fn needs_store(&self) -> bool {
        matches!(self, DebugCommand::Llb(a) if a.resolve)
    }
}

/// Runs a debug command; `engine` is the open store when [`DebugCommand::needs_store`].
pub(crate) async fn run(cmd: DebugCommand, engine: Option<&kiln_engine::Engine>) -> Result<i32> {
    match cmd {
        DebugCommand::Parse { file } => {
            let (dump, warnings) = kiln_engine::debug_parse(&file)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            out!("{dump}");
        }
        DebugCommand::Llb(a) => {
            let req = crate::build_request(&a.build)?;
            let doc = if a.resolve {
                let engine = engine.context("`kiln debug llb --resolve` needs the store")?;
                kiln_engine::debug_llb_resolved(engine, &req).await?
            } else {
                kiln_engine::debug_llb(&req)?
            };
            print_llb(&doc)?;
        }
    }
    Ok(0)
}

/// `kiln --host ADDR debug llb --resolve`: resolved by the daemon, from its store.
pub(crate) async fn run_remote(
    cmd: DebugCommand,
    host: &str,
    tls: &kiln_client::TlsFiles,
) -> Result<i32> {
    let DebugCommand::Llb(a) = cmd else {
        return run(cmd, None).await;
    };
    let doc = crate::remote::debug_llb(host, tls, &a.build).await?;
    print_llb(&doc)?;
    Ok(0)
}

/// Prints a `debug llb` document: its warnings on stderr, the JSON on stdout.
fn print_llb(doc: &serde_json::Value) -> Result<()> {
    if let Some(warnings) = doc.get("warnings").and_then(|w| w.as_array()) {
        for w in warnings.iter().filter_map(|w| w.as_str()) {
            eprintln!("warning: {w}");
        }
    }
    outln!("{}", serde_json::to_string_pretty(doc)?);
    Ok(())
}
