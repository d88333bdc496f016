//! `kiln debug parse` and `kiln debug llb`: show what the frontend makes of a Dockerfile without
//! building anything (no store is opened, nothing is pulled).

use anyhow::Result;
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
    /// but not resolved, so the output is the same on any machine.
    Llb(Box<crate::BuildArgs>),
}

pub(crate) fn run(cmd: DebugCommand) -> Result<i32> {
    match cmd {
        DebugCommand::Parse { file } => {
            let (dump, warnings) = kiln_daemon::debug_parse(&file)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{dump}");
        }
        DebugCommand::Llb(b) => {
            let req = crate::build_request(&b)?;
            let doc = kiln_daemon::debug_llb(&req)?;
            if let Some(warnings) = doc.get("warnings").and_then(|w| w.as_array()) {
                for w in warnings.iter().filter_map(|w| w.as_str()) {
                    eprintln!("warning: {w}");
                }
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(0)
}
