//! Build progress on the terminal: BuildKit-style numbered lines (`plain`, the default when
//! stderr is not a terminal) or a live view with one spinner per running step (`tty`).

use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_daemon::{Event, ProgressSink};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

pub(crate) struct Renderer {
    mode: Mode,
}

enum Mode {
    Plain(Mutex<()>),
    Tty(Mutex<Tty>),
}

struct Tty {
    multi: MultiProgress,
    bars: HashMap<usize, ProgressBar>,
    steps: usize,
    cached: usize,
}

impl Renderer {
    pub(crate) fn new(mode: &str) -> Result<Self> {
        let tty = match mode {
            "plain" => false,
            "tty" => true,
            "auto" => std::io::stderr().is_terminal(),
            other => bail!("unknown `--progress {other}`: use `auto`, `plain` or `tty`"),
        };
        Ok(Renderer {
            mode: if tty {
                Mode::Tty(Mutex::new(Tty {
                    multi: MultiProgress::new(),
                    bars: HashMap::new(),
                    steps: 0,
                    cached: 0,
                }))
            } else {
                Mode::Plain(Mutex::new(()))
            },
        })
    }

    pub(crate) fn finish(&self) {
        if let Mode::Tty(t) = &self.mode {
            if let Ok(t) = t.lock() {
                let _ = t.multi.clear();
                eprintln!("{} steps, {} cached", t.steps, t.cached);
            }
        }
    }
}

impl ProgressSink for Renderer {
    fn event(&self, event: Event) {
        match &self.mode {
            Mode::Plain(lock) => {
                let _guard = lock.lock();
                let mut err = std::io::stderr().lock();
                let _ = match event {
                    Event::Started { vertex, name } => writeln!(err, "#{vertex} {name}"),
                    Event::Cached { vertex, name } => writeln!(err, "#{vertex} {name}")
                        .and_then(|_| writeln!(err, "#{vertex} CACHED")),
                    Event::Done {
                        vertex, elapsed, ..
                    } => {
                        writeln!(err, "#{vertex} DONE {:.1}s", elapsed.as_secs_f64())
                    }
                    Event::Failed { vertex, error, .. } => {
                        writeln!(err, "#{vertex} ERROR: {error}")
                    }
                    Event::Log { vertex, data, .. } => {
                        let text = String::from_utf8_lossy(&data);
                        text.lines()
                            .try_for_each(|l| writeln!(err, "#{vertex} {l}"))
                    }
                };
            }
            Mode::Tty(t) => {
                let Ok(mut t) = t.lock() else { return };
                match event {
                    Event::Started { vertex, name } => {
                        let bar = t.multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{spinner} [{elapsed:>3}] {prefix} {wide_msg}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.set_prefix(name);
                        bar.enable_steady_tick(Duration::from_millis(100));
                        t.bars.insert(vertex, bar);
                        t.steps += 1;
                    }
                    Event::Cached { name, .. } => {
                        let _ = t.multi.println(format!("CACHED {name}"));
                        t.steps += 1;
                        t.cached += 1;
                    }
                    Event::Done {
                        vertex,
                        name,
                        elapsed,
                    } => {
                        if let Some(b) = t.bars.remove(&vertex) {
                            b.finish_and_clear();
                        }
                        let _ = t
                            .multi
                            .println(format!("DONE {:>5.1}s {name}", elapsed.as_secs_f64()));
                    }
                    Event::Failed { vertex, name, .. } => {
                        if let Some(b) = t.bars.remove(&vertex) {
                            b.finish_and_clear();
                        }
                        let _ = t.multi.println(format!("ERROR {name}"));
                    }
                    Event::Log { vertex, data, .. } => {
                        if let Some(b) = t.bars.get(&vertex) {
                            let text = String::from_utf8_lossy(&data);
                            if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                                b.set_message(last.to_string());
                            }
                        }
                    }
                }
            }
        }
    }
}
