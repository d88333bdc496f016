//! `kiln login` and `kiln logout`: read the password without echoing or logging it, check it
//! against the registry, and store it where `docker login` would.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub(crate) struct LoginArgs {
    /// The user name (asked for when not given).
    #[arg(short = 'u', long = "username")]
    username: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The registry, e.g. `ghcr.io` or `127.0.0.1:5000` (`docker.io` for Docker Hub).
    registry: String,
}

#[derive(clap::Args)]
pub(crate) struct LogoutArgs {
    /// The registry to forget the credentials of.
    registry: String,
}

pub(crate) async fn login(a: LoginArgs, insecure_registries: &[String]) -> Result<i32> {
    let stdin_tty = std::io::stdin().is_terminal();
    let username = match a.username {
        Some(u) => u,
        None if a.password_stdin || !stdin_tty => {
            bail!(
                "`kiln login {}`: no user name: pass it with `-u USER`",
                a.registry
            )
        }
        None => {
            eprint!("Username: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the user name from the terminal")?;
            line.trim().to_string()
        }
    };
    if username.is_empty() {
        bail!("`kiln login {}`: the user name is empty", a.registry);
    }
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .context("cannot read the password from standard input")?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if stdin_tty {
        read_hidden("Password: ")?
    } else {
        bail!(
            "`kiln login {}`: standard input is not a terminal: pass the password on it with `--password-stdin`",
            a.registry
        );
    };
    if password.is_empty() {
        bail!("`kiln login {}`: the password is empty", a.registry);
    }
    let (host, stored) =
        kiln_engine::login(&a.registry, &username, &password, insecure_registries).await?;
    eprintln!("credentials for `{host}` stored in {stored}");
    outln!("Login Succeeded");
    Ok(0)
}

pub(crate) async fn logout(a: LogoutArgs) -> Result<i32> {
    let (host, removed) = kiln_engine::logout(&a.registry).await?;
    if removed {
        outln!("Removed login credentials for {host}");
    } else {
        eprintln!("not logged in to `{host}`");
    }
    Ok(0)
}

/// Reads a line from the terminal with echo off (`stty`, so no terminal code lives here).
fn read_hidden(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let stty = |arg: &str| {
        Command::new("stty")
            .arg(arg)
            .stdin(Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    let hidden = stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if hidden {
        stty("echo");
    }
    eprintln!();
    read.context("cannot read the password from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
