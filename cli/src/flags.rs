//! Flags kiln does not have: clap's `unexpected argument` (and its tip about `--`) replaced by
//! one line saying what kiln has instead, with Docker's exit code for a flag error (125).

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;

/// What kiln offers for a Docker flag it does not take; `None` for flags Docker does not have.
pub(crate) fn instead(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "--load" => {
            "a build with `-t NAME` is in kiln's store already (`kiln images`); `kiln save` writes a `docker load` archive"
        }
        "--squash" => "kiln does not squash layers: copy the result of a stage with `COPY --from` for a small image",
        "--rm" | "--force-rm" => "kiln never leaves intermediate containers behind",
        "--memory-swap" => "`--memory` limits memory with no swap",
        "--cpu-shares" | "--cpu-quota" | "--cpu-period" | "--cpuset-cpus" | "--cpuset-mems" => {
            "`--cpus N` limits the CPU time of each RUN step"
        }
        "--cgroup-parent" | "--isolation" => {
            "kiln makes a cgroup of its own for each RUN step: `--memory`, `--cpus`, `--pids-limit`"
        }
        "--builder" => "kiln is its own builder; `--runtime runc|crun` picks what runs RUN steps",
        "--attest" | "--sbom" | "--provenance" => "kiln writes no attestations",
        "--compress" | "--stream" => "kiln sends no context anywhere: it reads the directory in place",
        "--disable-content-trust" => "kiln does not check image signatures",
        "--allow" | "--security-opt" => "RUN steps always run in kiln's sandbox, with Docker's default profile",
        "--annotation" => "`--label KEY=VALUE` sets a label on the image",
        "--detach" => "kiln builds in the foreground; `--progress json` gives events a program can read",
        _ => return None,
    })
}

/// The subcommand the arguments name (for the message), as typed.
fn subcommand() -> Option<String> {
    let names: Vec<String> = crate::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    std::env::args().skip(1).find(|a| names.contains(a))
}

/// Prints clap's error, or for an unknown flag kiln's own line, and exits.
pub(crate) fn exit_on_parse_error(e: clap::Error) -> ! {
    if e.kind() != ErrorKind::UnknownArgument {
        e.exit();
    }
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => e.exit(),
    };
    let name = flag.split('=').next().unwrap_or(&flag);
    let command = match subcommand() {
        Some(c) => format!("kiln {c}"),
        None => "kiln".to_string(),
    };
    match instead(name) {
        Some(hint) => eprintln!("error: `{command}` has no `{name}` flag: {hint}"),
        None => eprintln!(
            "error: `{command}` has no `{name}` flag: see `{command} --help` for the flags it has"
        ),
    }
    std::process::exit(125);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_flags_name_what_kiln_has() {
        assert!(instead("--squash").unwrap().contains("COPY --from"));
        assert!(instead("--memory-swap").unwrap().contains("--memory"));
        assert_eq!(instead("--frobnicate"), None);
    }
}
