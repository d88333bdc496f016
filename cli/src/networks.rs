//! `kiln network create|ls|rm|inspect`, without the store's lock (networks have their own).

use anyhow::Result;
use kiln_engine::networks;
use std::path::Path;

#[derive(clap::Subcommand)]
pub(crate) enum NetworkCommand {
    /// Create a bridge network whose containers reach each other by name.
    Create {
        /// The network's addresses in CIDR form, e.g. 10.231.0.0/24 (default: a free one of
        /// Docker's pools).
        #[arg(long)]
        subnet: Option<String>,
        /// The bridge's address in the subnet (default: its first).
        #[arg(long)]
        gateway: Option<String>,
        /// Only `bridge` is known (accepted for Docker's scripts).
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove networks no container is attached to.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every user network no container is attached to.
    Prune {
        /// Accepted for Docker's sake: kiln does not ask.
        #[arg(short, long)]
        force: bool,
    },
    /// Show networks as JSON, as `docker network inspect` does.
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

pub(crate) fn network(root: &Path, c: NetworkCommand) -> Result<i32> {
    match c {
        NetworkCommand::Create {
            subnet,
            gateway,
            driver,
            name,
        } => {
            if driver != "bridge" {
                anyhow::bail!("network driver `{driver}` is not supported: kiln has `bridge`");
            }
            let lock = networks::lock(root)?;
            let n = networks::create(&lock, root, &name, subnet.as_deref(), gateway.as_deref())?;
            outln!("{}", n.id);
            Ok(0)
        }
        NetworkCommand::Ls { quiet } => {
            let all = networks::list(root)?;
            if !quiet {
                outln!(
                    "{:<14}{:<20}{:<10}{:<10}SUBNET",
                    "NETWORK ID",
                    "NAME",
                    "DRIVER",
                    "SCOPE"
                );
            }
            for n in &all {
                if quiet {
                    outln!("{}", &n.id[..12]);
                } else {
                    outln!(
                        "{:<14}{:<20}{:<10}{:<10}{}",
                        &n.id[..12],
                        n.name,
                        "bridge",
                        "local",
                        n.subnet
                    );
                }
            }
            if !quiet {
                // Docker lists these two as well; they are no records of the store.
                for name in ["host", "none"] {
                    outln!(
                        "{:<14}{:<20}{:<10}{:<10}",
                        "-",
                        name,
                        name.replace("none", "null"),
                        "local"
                    );
                }
            }
            Ok(0)
        }
        NetworkCommand::Rm { networks: names } => {
            let lock = networks::lock(root)?;
            let mut code = 0;
            for n in &names {
                match networks::remove(&lock, root, n) {
                    Ok(_) => outln!("{n}"),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        NetworkCommand::Prune { force: _ } => {
            let lock = networks::lock(root)?;
            let removed = networks::prune(&lock, root)?;
            if !removed.is_empty() {
                outln!("Deleted Networks:");
                for n in &removed {
                    outln!("{n}");
                }
            }
            Ok(0)
        }
        NetworkCommand::Inspect { networks: names } => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in &names {
                match networks::find(root, n) {
                    Ok(net) => out.push(networks::inspect(root, &net)),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        code = 1;
                    }
                }
            }
            outln!("{}", serde_json::to_string_pretty(&out)?);
            Ok(code)
        }
    }
}
