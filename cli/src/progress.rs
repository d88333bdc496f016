//! Build progress on the terminal, in one of three forms (`--progress` or `KILN_PROGRESS`):
//! - `plain` (the default when stderr is not a terminal): BuildKit-style numbered lines, each
//!   output line prefixed by the step number and the seconds since the step started
//!   (`#5 1.234 Collecting flask`), the tail of a failed step's output, and a summary;
//! - `tty`: a live view with one spinner and timer per running step showing its last output
//!   line, CACHED/DONE/ERROR lines above, and a summary line (steps, cached, elapsed);
//! - `json`: one JSON object per event and output line, for tools.
//!
//! The solver delivers a step's output as whole lines (see `Event::Log`).
//!
//! Everything goes to stderr: stdout stays free for what the command prints.

use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_engine::{Event, ProgressSink, Stream};
use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Output lines of a failed step shown under its error.
const TAIL_LINES: usize = 10;

/// An output line's time as BuildKit's plain view prints it: three decimals under 10 s, two
/// under 100 s, one above.
fn line_time(t: Duration) -> String {
    let secs = t.as_secs_f64();
    let prec = if secs < 10.0 {
        3
    } else if secs < 100.0 {
        2
    } else {
        1
    };
    format!("{secs:.prec$}")
}

pub(crate) struct Renderer {
    started: Instant,
    state: Mutex<State>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    Tty,
    Json,
}

struct State {
    mode: Mode,
    counts: Counts,
    /// Names of the vertices seen, for the lines that only carry a number.
    names: HashMap<usize, String>,
    /// The last output lines of each running step, for its error block.
    tails: HashMap<usize, Tail>,
    tty: Option<Tty>,
}

#[derive(Default)]
struct Counts {
    steps: usize,
    cached: usize,
    done: usize,
    failed: usize,
    canceled: usize,
}

struct Tty {
    multi: MultiProgress,
    summary: ProgressBar,
    bars: HashMap<usize, ProgressBar>,
}

/// The last output lines of a step, with their times.
#[derive(Default)]
struct Tail {
    lines: VecDeque<(Duration, String)>,
}

impl Tail {
    fn push(&mut self, time: Duration, line: String) {
        self.lines.push_back((time, line));
        if self.lines.len() > TAIL_LINES {
            self.lines.pop_front();
        }
    }

    fn lines(&self) -> impl Iterator<Item = &(Duration, String)> {
        self.lines.iter()
    }
}

/// The text of an output line: without its newline, lossily decoded.
fn line_text(data: &[u8]) -> String {
    String::from_utf8_lossy(data.strip_suffix(b"\n").unwrap_or(data)).into_owned()
}

/// Chooses the mode: `auto` is `tty` on a terminal and `plain` elsewhere (CI, pipes).
fn parse_mode(mode: &str, stderr_is_terminal: bool) -> Result<Mode> {
    Ok(match mode {
        "plain" => Mode::Plain,
        // The live view draws nothing where stderr is no terminal: say so instead of going quiet.
        "tty" if !stderr_is_terminal => bail!(
            "`--progress tty` needs a terminal on stderr: use `--progress plain` (or `auto`, which \
             picks `plain` here)"
        ),
        "tty" => Mode::Tty,
        "json" => Mode::Json,
        "auto" | "" => {
            if stderr_is_terminal {
                Mode::Tty
            } else {
                Mode::Plain
            }
        }
        other => {
            bail!("unknown `--progress {other}` (or KILN_PROGRESS): use `auto`, `plain`, `tty` or `json`")
        }
    })
}

impl Renderer {
    pub(crate) fn new(mode: &str) -> Result<Self> {
        let mode = parse_mode(mode, std::io::stderr().is_terminal())?;
        let tty = (mode == Mode::Tty).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let summary = multi.add(ProgressBar::new_spinner());
            summary.set_style(
                ProgressStyle::with_template("[+] Building {elapsed_precise} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            summary.enable_steady_tick(Duration::from_millis(100));
            Tty {
                multi,
                summary,
                bars: HashMap::new(),
            }
        });
        Ok(Renderer {
            started: Instant::now(),
            state: Mutex::new(State {
                mode,
                counts: Counts::default(),
                names: HashMap::new(),
                tails: HashMap::new(),
                tty,
            }),
        })
    }

    /// Ends the view with the summary line (or, for `json`, a summary event).
    pub(crate) fn finish(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        let c = &st.counts;
        let summary = format!(
            "{} steps: {} cached, {} run{}{} in {elapsed:.1}s",
            c.steps,
            c.cached,
            c.done,
            if c.failed > 0 {
                format!(", {} failed", c.failed)
            } else {
                String::new()
            },
            if c.canceled > 0 {
                format!(", {} canceled", c.canceled)
            } else {
                String::new()
            },
        );
        let json = serde_json::json!({
            "event": "summary",
            "time": round3(elapsed),
            "steps": c.steps,
            "cached": c.cached,
            "done": c.done,
            "failed": c.failed,
            "canceled": c.canceled,
        });
        let mode = st.mode;
        if let Some(t) = st.tty.take() {
            for (_, b) in t.bars {
                b.finish_and_clear();
            }
            t.summary.finish_and_clear();
            let _ = t.multi.clear();
        }
        let mut err = std::io::stderr().lock();
        let _ = match mode {
            Mode::Json => writeln!(err, "{json}"),
            Mode::Plain | Mode::Tty => writeln!(err, "{summary}"),
        };
    }
}

fn round3(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

impl ProgressSink for Renderer {
    fn event(&self, event: Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let st = &mut *st;
        match &event {
            Event::Started { vertex, name } => {
                st.counts.steps += 1;
                st.names.insert(*vertex, name.clone());
                st.tails.insert(*vertex, Tail::default());
            }
            Event::Cached { vertex, name } => {
                st.counts.steps += 1;
                st.counts.cached += 1;
                st.names.insert(*vertex, name.clone());
            }
            Event::Done { .. } => st.counts.done += 1,
            Event::Failed { .. } => st.counts.failed += 1,
            Event::Canceled { .. } => st.counts.canceled += 1,
            Event::Log {
                vertex, data, time, ..
            } => {
                st.tails
                    .entry(*vertex)
                    .or_default()
                    .push(*time, line_text(data));
            }
            // Not a step: the context is checked on every build.
            Event::Context { .. } => {}
        }
        match st.mode {
            Mode::Plain => plain(st, &event),
            Mode::Json => json(self.started.elapsed(), &event),
            Mode::Tty => tty(st, &event),
        }
        // A finished step's tail is no longer needed.
        if let Event::Done { vertex, .. }
        | Event::Failed { vertex, .. }
        | Event::Canceled { vertex, .. } = &event
        {
            st.tails.remove(vertex);
        }
    }
}

fn plain(st: &State, event: &Event) {
    let mut err = std::io::stderr().lock();
    let _ = match event {
        Event::Started { vertex, name } => writeln!(err, "#{vertex} {name}"),
        Event::Cached { vertex, name } => {
            writeln!(err, "#{vertex} {name}").and_then(|_| writeln!(err, "#{vertex} CACHED"))
        }
        Event::Done {
            vertex, elapsed, ..
        } => writeln!(err, "#{vertex} DONE {:.1}s", elapsed.as_secs_f64()),
        Event::Failed {
            vertex,
            name,
            error,
        } => {
            // BuildKit's error block: the step and the last lines of its output.
            // The message's first line: the output tail follows in the block.
            let first = error.lines().next().unwrap_or_default();
            let mut block = format!("#{vertex} ERROR: {first}\n------\n > {name}:\n");
            if let Some(t) = st.tails.get(vertex) {
                for (time, l) in t.lines() {
                    block.push_str(&format!("#{vertex} {} {l}\n", line_time(*time)));
                }
            }
            block.push_str("------\n");
            err.write_all(block.as_bytes())
        }
        Event::Canceled { vertex, .. } => writeln!(err, "#{vertex} CANCELED"),
        Event::Context { vertex, name, .. } => {
            writeln!(err, "#{vertex} {name}: {}", context_summary(event))
        }
        Event::Log {
            vertex, data, time, ..
        } => writeln!(err, "#{vertex} {} {}", line_time(*time), line_text(data)),
    };
}

fn json(elapsed: Duration, event: &Event) {
    let time = round3(elapsed.as_secs_f64());
    let v = match event {
        Event::Started { vertex, name } => {
            serde_json::json!({"event": "started", "time": time, "vertex": vertex, "name": name})
        }
        Event::Cached { vertex, name } => {
            serde_json::json!({"event": "cached", "time": time, "vertex": vertex, "name": name})
        }
        Event::Done {
            vertex,
            name,
            elapsed,
        } => serde_json::json!({
            "event": "done", "time": time, "vertex": vertex, "name": name,
            "elapsed": round3(elapsed.as_secs_f64()),
        }),
        Event::Failed {
            vertex,
            name,
            error,
        } => serde_json::json!({
            "event": "failed", "time": time, "vertex": vertex, "name": name, "error": error,
        }),
        Event::Canceled { vertex, name } => {
            serde_json::json!({"event": "canceled", "time": time, "vertex": vertex, "name": name})
        }
        Event::Log {
            vertex,
            stream,
            data,
            time: since_start,
        } => serde_json::json!({
            "event": "log", "time": time, "vertex": vertex,
            "stream": match stream { Stream::Stdout => "stdout", Stream::Stderr => "stderr" },
            "data": String::from_utf8_lossy(data),
            "step_time": round3(since_start.as_secs_f64()),
        }),
        Event::Context {
            vertex,
            name,
            files,
            hashed,
            bytes,
            elapsed,
        } => serde_json::json!({
            "event": "context", "time": time, "vertex": vertex, "name": name, "files": files,
            "hashed": hashed, "bytes": bytes, "elapsed": round3(elapsed.as_secs_f64()),
        }),
    };
    let _ = writeln!(std::io::stderr().lock(), "{v}");
}

/// The terminal's width in columns (80 when it cannot be told).
fn term_width() -> usize {
    let (_, cols) = console::Term::stderr().size();
    if cols == 0 {
        80
    } else {
        usize::from(cols)
    }
}

/// Columns a running step's line spends before its text: spinner, `[ 12s]`, spaces.
const RUNNING_LEAD: usize = 10;
/// The least of a step's name kept when its output needs the room.
const MIN_NAME: usize = 16;

/// A line cut to `width` columns with `…`, instead of wrapping.
fn cut(line: &str, width: usize) -> String {
    if console::measure_text_width(line) <= width {
        return line.to_string();
    }
    console::truncate_str(line, width, "…").into_owned()
}

/// A running step's line, `name  output`, in `width` columns: the name (the command) is cut
/// first, down to [`MIN_NAME`] columns, so the last output line stays readable; only then is
/// the output cut.
fn running_line(name: &str, output: &str, width: usize) -> String {
    let avail = width.saturating_sub(RUNNING_LEAD).max(MIN_NAME + 2);
    let (nw, ow) = (
        console::measure_text_width(name),
        console::measure_text_width(output),
    );
    if output.is_empty() {
        return cut(name, avail);
    }
    if nw + 2 + ow <= avail {
        return format!("{name}  {output}");
    }
    let name_room = avail.saturating_sub(ow + 2).max(MIN_NAME.min(nw));
    let name = cut(name, name_room);
    let out_room = avail.saturating_sub(console::measure_text_width(&name) + 2);
    format!("{name}  {}", cut(output, out_room))
}

fn tty(st: &mut State, event: &Event) {
    let summary = format!(
        "({} steps, {} cached, {} done{})",
        st.counts.steps,
        st.counts.cached,
        st.counts.done,
        if st.counts.failed > 0 {
            format!(", {} failed", st.counts.failed)
        } else {
            String::new()
        }
    );
    let Some(t) = st.tty.as_mut() else {
        return;
    };
    t.summary.set_message(summary);
    match event {
        Event::Started { vertex, name } => {
            let bar = t
                .multi
                .insert_before(&t.summary, ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            let prefix = format!("#{vertex} {name}");
            bar.set_message(running_line(&prefix, "", term_width()));
            bar.set_prefix(prefix);
            bar.enable_steady_tick(Duration::from_millis(100));
            t.bars.insert(*vertex, bar);
        }
        Event::Cached { vertex, name } => {
            let _ = t
                .multi
                .println(cut(&format!("CACHED #{vertex} {name}"), term_width()));
        }
        Event::Done {
            vertex,
            name,
            elapsed,
        } => {
            if let Some(b) = t.bars.remove(vertex) {
                b.finish_and_clear();
            }
            let _ = t.multi.println(cut(
                &format!("DONE {:>5.1}s #{vertex} {name}", elapsed.as_secs_f64()),
                term_width(),
            ));
        }
        Event::Failed { vertex, name, .. } => {
            if let Some(b) = t.bars.remove(vertex) {
                b.finish_and_clear();
            }
            let width = term_width();
            let mut block = cut(&format!("ERROR #{vertex} {name}"), width);
            if let Some(tail) = st.tails.get(vertex) {
                for (_, l) in tail.lines() {
                    block.push('\n');
                    block.push_str(&cut(&format!("  > {l}"), width));
                }
            }
            let _ = t.multi.println(block);
        }
        Event::Canceled { vertex, name } => {
            if let Some(b) = t.bars.remove(vertex) {
                b.finish_and_clear();
            }
            let _ = t
                .multi
                .println(cut(&format!("CANCELED #{vertex} {name}"), term_width()));
        }
        Event::Context { vertex, name, .. } => {
            let _ = t.multi.println(cut(
                &format!("CONTEXT #{vertex} {name}: {}", context_summary(event)),
                term_width(),
            ));
        }
        Event::Log { vertex, .. } => {
            if let (Some(b), Some(tail)) = (t.bars.get(vertex), st.tails.get(vertex)) {
                if let Some((_, last)) = tail.lines().filter(|(_, l)| !l.trim().is_empty()).last() {
                    b.set_message(running_line(&b.prefix(), last, term_width()));
                }
            }
        }
    }
}

/// `20000 files checked, 1 read (4.9 KiB) in 0.08s` for an [`Event::Context`].
fn context_summary(event: &Event) -> String {
    let Event::Context {
        files,
        hashed,
        bytes,
        elapsed,
        ..
    } = event
    else {
        return String::new();
    };
    format!(
        "{files} files checked, {hashed} read ({}) in {:.2}s",
        human_bytes(*bytes),
        elapsed.as_secs_f64()
    )
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_tty_only_on_a_terminal() {
        assert_eq!(parse_mode("auto", true).unwrap(), Mode::Tty);
        assert_eq!(parse_mode("auto", false).unwrap(), Mode::Plain);
        assert_eq!(parse_mode("json", true).unwrap(), Mode::Json);
        assert_eq!(parse_mode("tty", true).unwrap(), Mode::Tty);
        let e = parse_mode("tty", false).unwrap_err().to_string();
        assert!(e.contains("needs a terminal"), "{e}");
        let e = parse_mode("fancy", false).unwrap_err().to_string();
        assert!(e.contains("`--progress fancy`"), "{e}");
    }

    #[test]
    fn context_summary_says_what_was_checked_and_read() {
        let e = Event::Context {
            vertex: 2,
            name: "[internal] load build context".into(),
            files: 20000,
            hashed: 1,
            bytes: 5000,
            elapsed: Duration::from_millis(80),
        };
        assert_eq!(
            context_summary(&e),
            "20000 files checked, 1 read (4.9 KiB) in 0.08s"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(100 * 1024 * 1024), "100.0 MiB");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        for i in 0..15 {
            t.push(
                Duration::from_millis(i),
                line_text(format!("line {i}\n").as_bytes()),
            );
        }
        t.push(Duration::from_secs(1), line_text(b"partial"));
        let lines: Vec<&str> = t.lines().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 6");
        assert_eq!(lines[TAIL_LINES - 1], "partial");
    }

    #[test]
    fn a_narrow_terminal_cuts_the_command_and_keeps_the_output() {
        let name = "#7 RUN apt-get update && apt-get install -y build-essential python3";
        let out = "Unpacking libc6 (2.36-9)";
        // Wide: both whole.
        assert_eq!(running_line(name, out, 200), format!("{name}  {out}"));
        // Narrow: the command is cut, the output stays whole.
        let line = running_line(name, out, 60);
        assert!(line.ends_with(&format!("  {out}")), "{line}");
        assert!(line.starts_with("#7 RUN apt-get"), "{line}");
        assert!(line.contains('…'), "{line}");
        assert!(
            console::measure_text_width(&line) <= 60 - RUNNING_LEAD,
            "{line}"
        );
        // Very narrow: the command keeps its first columns, then the output is cut too.
        let line = running_line(name, out, 30);
        assert!(line.starts_with("#7 RUN apt-get"), "{line}");
        assert!(
            console::measure_text_width(&line) <= 30 - RUNNING_LEAD,
            "{line}"
        );
        // Finished lines are cut, never wrapped.
        assert_eq!(cut("DONE 1.0s #3 RUN make all", 12), "DONE 1.0s #…");
        assert_eq!(cut("short", 12), "short");
    }

    #[test]
    fn line_times_are_printed_as_buildkit_does() {
        assert_eq!(line_time(Duration::from_millis(1234)), "1.234");
        assert_eq!(line_time(Duration::ZERO), "0.000");
        assert_eq!(line_time(Duration::from_millis(12_346)), "12.35");
        assert_eq!(line_time(Duration::from_millis(123_456)), "123.5");
    }
}
