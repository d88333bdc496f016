//! `kiln info`: this client's version, then what the engine (embedded, or the daemon of
//! `--host`), its host and its store are, laid out as `docker info` or as one JSON object.

use crate::source::StoreSource;
use anyhow::Result;
use kiln_engine::SystemInfo;

#[derive(clap::Args)]
pub(crate) struct InfoArgs {
    /// `json`: every fact as one JSON object (`client`, `server`); `text` (the default): a
    /// `docker info`-like block.
    #[arg(short, long, value_name = "FORMAT", value_parser = parse_format, default_value = "text")]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
}

fn parse_format(s: &str) -> std::result::Result<Format, String> {
    match s {
        "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        other => Err(format!(
            "`{other}` is not a format of `kiln info`: write `--format json`, or leave `--format` out for text"
        )),
    }
}

/// Prints the facts of `source`'s engine.
pub(crate) async fn run(source: &StoreSource<'_>, a: InfoArgs) -> Result<i32> {
    let server = source.info().await?;
    match a.format {
        Format::Text => out!("{}", text(&server)),
        Format::Json => outln!("{}", json(&server)),
    }
    Ok(0)
}

/// The facts as one JSON object: the client's version under `client`, the engine's facts
/// under `server` (its `daemon` is `null` for the embedded engine).
fn json(server: &SystemInfo) -> serde_json::Value {
    serde_json::json!({
        "client": {
            "version": env!("CARGO_PKG_VERSION"),
            "api_version": kiln_client::API_VERSION,
        },
        "server": server,
    })
}

/// The facts laid out as `docker info` lays out its own: `Key: value`, details indented.
fn text(s: &SystemInfo) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_text(&mut out, s);
    out
}

/// An empty fact as `unknown`.
fn known(v: &str) -> &str {
    if v.is_empty() {
        "unknown"
    } else {
        v
    }
}

/// A list of facts joined by `sep`, `none` when empty.
fn list(v: &[String], sep: &str) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(sep)
    }
}

fn write_text(out: &mut String, s: &SystemInfo) -> std::fmt::Result {
    use std::fmt::Write;
    writeln!(out, "Client:")?;
    writeln!(out, " Version: {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, " API Version: {}", kiln_client::API_VERSION)?;
    writeln!(out)?;
    writeln!(out, "Server:")?;
    match &s.daemon {
        None => writeln!(out, " Engine: embedded (this process)")?,
        Some(d) => {
            writeln!(out, " Engine: daemon")?;
            writeln!(out, "  PID: {}", d.pid)?;
            writeln!(out, "  API Version: {}", d.api_version)?;
            writeln!(out, "  Addresses: {}", list(&d.addresses, " "))?;
            writeln!(out, "  Builds Running: {}", d.builds_running)?;
        }
    }
    writeln!(out, " Containers: {}", s.containers)?;
    writeln!(out, "  Running: {}", s.containers_running)?;
    writeln!(
        out,
        "  Stopped: {}",
        s.containers.saturating_sub(s.containers_running)
    )?;
    writeln!(out, " Images: {}", s.images)?;
    writeln!(out, "  Names: {}", s.image_names)?;
    writeln!(out, "  Dangling: {}", s.dangling_images)?;
    writeln!(out, " Server Version: {}", s.version)?;
    writeln!(out, " Store Root: {}", s.store_root)?;
    writeln!(out, " Runtimes: {}", list(&s.runtimes, " "))?;
    writeln!(out, " Rootless: {}", s.rootless)?;
    writeln!(out, " Platform: {}", s.platform)?;
    writeln!(
        out,
        " Emulated Platforms: {}",
        list(&s.emulated_platforms, ", ")
    )?;
    writeln!(out, " Kernel Version: {}", known(&s.kernel_release))?;
    writeln!(out, " Operating System: {}", known(&s.operating_system))?;
    writeln!(out, " CPUs: {}", s.cpus)?;
    let memory = match s.memory_bytes {
        0 => "unknown".to_string(),
        n => kiln_engine::human_size(n),
    };
    writeln!(out, " Total Memory: {memory}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SystemInfo {
        SystemInfo {
            version: "1.2.3".into(),
            platform: "linux/amd64".into(),
            emulated_platforms: vec!["linux/arm64".into(), "linux/arm".into()],
            runtimes: vec!["builtin".into(), "runc".into()],
            store_root: "/var/lib/kiln".into(),
            images: 3,
            image_names: 4,
            dangling_images: 1,
            containers: 5,
            containers_running: 2,
            rootless: false,
            kernel_release: "6.1.0".into(),
            operating_system: String::new(),
            cpus: 2,
            memory_bytes: 8_000_000_000,
            daemon: None,
        }
    }

    #[test]
    fn formats_are_text_and_json_and_nothing_else() {
        assert_eq!(parse_format("text"), Ok(Format::Text));
        assert_eq!(parse_format("json"), Ok(Format::Json));
        let err = parse_format("yaml").unwrap_err();
        assert!(
            err.starts_with("`yaml` is not a format of `kiln info`"),
            "{err}"
        );
        assert!(err.contains("`--format json`"), "{err}");
    }

    #[test]
    fn the_embedded_engine_is_laid_out_as_docker_info() {
        let t = text(&facts());
        assert!(t.starts_with("Client:\n Version: "), "{t}");
        let server = t
            .split_once("\nServer:\n")
            .map(|(_, s)| s)
            .unwrap_or_default();
        assert_eq!(
            server,
            " Engine: embedded (this process)\n Containers: 5\n  Running: 2\n  Stopped: 3\n \
             Images: 3\n  Names: 4\n  Dangling: 1\n Server Version: 1.2.3\n \
             Store Root: /var/lib/kiln\n Runtimes: builtin runc\n Rootless: false\n \
             Platform: linux/amd64\n Emulated Platforms: linux/arm64, linux/arm\n \
             Kernel Version: 6.1.0\n Operating System: unknown\n CPUs: 2\n \
             Total Memory: 8.0GB\n"
        );
    }

    #[test]
    fn a_daemon_says_who_it_is() {
        let mut f = facts();
        f.emulated_platforms.clear();
        f.daemon = Some(kiln_engine::DaemonInfo {
            pid: 42,
            api_version: "kiln.v1".into(),
            addresses: vec!["unix:///run/kiln/kiln.sock".into()],
            builds_running: 1,
        });
        let t = text(&f);
        assert!(
            t.contains(
                "\n Engine: daemon\n  PID: 42\n  API Version: kiln.v1\n  \
                 Addresses: unix:///run/kiln/kiln.sock\n  Builds Running: 1\n Containers: 5\n"
            ),
            "{t}"
        );
        assert!(t.contains("\n Emulated Platforms: none\n"), "{t}");
        let j = json(&f);
        assert_eq!(j["server"]["daemon"]["pid"], 42);
        assert_eq!(j["client"]["api_version"], kiln_client::API_VERSION);
        assert!(json(&facts())["server"]["daemon"].is_null());
    }
}
