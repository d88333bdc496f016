//! `kiln pull` and `kiln push`: arguments, and byte progress per blob (a bar each on a
//! terminal; one line per finished blob otherwise).

use crate::source::StoreSource;
use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_engine::{BlobProgress, PullOptions};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

#[derive(clap::Args)]
pub(crate) struct PullArgs {
    /// The platform to pull from a multi-platform image, os/arch[/variant] (default: this host's).
    #[arg(long)]
    platform: Option<String>,
    /// Pull every platform of a multi-platform image and keep its index (so a push copies it all).
    #[arg(long)]
    all_platforms: bool,
    /// Progress output: auto, plain or tty.
    #[arg(long, env = "KILN_PROGRESS", default_value = "auto")]
    progress: String,
    /// The image, e.g. `alpine:3.20` or `127.0.0.1:5000/app@sha256:...`.
    reference: String,
}

#[derive(clap::Args)]
pub(crate) struct PushArgs {
    /// Progress output: auto, plain or tty.
    #[arg(long, env = "KILN_PROGRESS", default_value = "auto")]
    progress: String,
    /// The local image.
    name: String,
    /// Where to push it (default: NAME).
    reference: Option<String>,
}

pub(crate) async fn pull(source: &StoreSource<'_>, a: PullArgs) -> Result<i32> {
    let bars = Bars::new(&a.progress, "pulled")?;
    let digest = source
        .pull(
            &a.reference,
            PullOptions {
                platform: a.platform,
                progress: Some(bars.callback()),
                all_platforms: a.all_platforms,
            },
        )
        .await;
    bars.finish();
    outln!("{}", digest?);
    Ok(0)
}

pub(crate) async fn push(source: &StoreSource<'_>, a: PushArgs) -> Result<i32> {
    let bars = Bars::new(&a.progress, "pushed")?;
    let report = source
        .push(&a.name, a.reference.as_deref(), Some(bars.callback()))
        .await;
    bars.finish();
    let report = report?;
    if report.platform_manifests > 0 {
        eprintln!(
            "index: {} platform manifests pushed by digest, then the index",
            report.platform_manifests
        );
    }
    eprintln!(
        "blobs: {} uploaded, {} already there, {} mounted from another repository",
        report.uploaded, report.already_present, report.mounted
    );
    outln!("{}", report.digest);
    Ok(0)
}

struct Bars {
    state: Arc<Mutex<State>>,
}

struct State {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    finished: HashSet<String>,
    verb: &'static str,
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

impl Bars {
    fn new(mode: &str, verb: &'static str) -> Result<Self> {
        let tty = match mode {
            "plain" => false,
            "tty" => true,
            "auto" => std::io::stderr().is_terminal(),
            other => anyhow::bail!("unknown `--progress {other}`: use `auto`, `plain` or `tty`"),
        };
        Ok(Bars {
            state: Arc::new(Mutex::new(State {
                multi: tty.then(MultiProgress::new),
                bars: HashMap::new(),
                finished: HashSet::new(),
                verb,
            })),
        })
    }

    fn callback(&self) -> BlobProgress {
        let state = self.state.clone();
        Arc::new(move |digest: &str, done: u64, total: u64| {
            let Ok(mut s) = state.lock() else { return };
            let s = &mut *s;
            if let Some(multi) = &s.multi {
                let bar = s.bars.entry(digest.to_string()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(total));
                    if let Ok(style) = ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    ) {
                        b.set_style(style.progress_chars("=> "));
                    }
                    b.set_prefix(short(digest).to_string());
                    b
                });
                bar.set_position(done);
            } else if done >= total && s.finished.insert(digest.to_string()) {
                eprintln!(
                    "{} {} ({:.1} MiB)",
                    s.verb,
                    short(digest),
                    total as f64 / (1 << 20) as f64
                );
            }
        })
    }

    fn finish(&self) {
        if let Ok(s) = self.state.lock() {
            for b in s.bars.values() {
                b.finish();
            }
            if let Some(m) = &s.multi {
                let _ = m.clear();
            }
        }
    }
}
