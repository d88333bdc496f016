//! A running step's output as whole lines: programs write a line in pieces (`npm` writes
//! `npm`, ` WARN`, ` old lockfile\n`) and redraw progress bars with `\r`, so the chunks a pipe
//! delivers are no lines. [`LineAssembler`] joins the pieces of each stream until a newline,
//! keeps the last state of a `\r`-redrawn line, shows a line left unfinished after a pause as it
//! is, and cuts a line at [`MAX_LINE`] bytes so hostile output costs bounded memory.
//! [`StepLog`] sends those lines to the progress sink and keeps the last ones for the error.

use super::{Event, ProgressSink, Stream};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest line kept whole; a longer one comes in pieces of this size.
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// A line unfinished for this long without new bytes is shown as it is (`Downloading...` before
/// a long download), and what follows as a new line.
pub(crate) const PARTIAL_LINE_PAUSE: Duration = Duration::from_millis(1000);

/// Output lines of a failed step kept for its error message.
const TAIL_LINES: usize = 10;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// Its bytes, without the newline.
    pub text: Vec<u8>,
    /// It ended with a newline (not flushed after a pause, cut at [`MAX_LINE`] or at the end).
    pub ended: bool,
    /// When its first byte arrived.
    pub at: Instant,
}

/// Assembles the lines of one stream.
#[derive(Default)]
pub(crate) struct LineAssembler {
    buf: Vec<u8>,
    /// The last byte was `\r`: the next one redraws the line, unless it ends it (`\r\n`).
    cr: bool,
    /// When the pending line's first byte arrived.
    first: Option<Instant>,
    /// When the last byte arrived.
    last: Option<Instant>,
    /// The pending line was shown unfinished and nothing came since: a bare newline ends what
    /// was shown already and makes no empty line.
    shown: bool,
}

impl LineAssembler {
    /// Takes a chunk that arrived at `now`; calls `emit` for each line it completes.
    pub(crate) fn push(&mut self, data: &[u8], now: Instant, emit: &mut impl FnMut(Line)) {
        for &b in data {
            self.first.get_or_insert(now);
            match b {
                b'\n' => {
                    self.cr = false;
                    if std::mem::take(&mut self.shown) && self.buf.is_empty() {
                        self.first = None;
                        continue;
                    }
                    self.emit(true, emit);
                }
                b'\r' => self.cr = true,
                _ => {
                    self.shown = false;
                    if std::mem::take(&mut self.cr) {
                        // A redraw: the terminal would show what follows over what was there.
                        self.buf.clear();
                    }
                    if self.buf.len() >= MAX_LINE {
                        self.cut(now, emit);
                    }
                    self.buf.push(b);
                }
            }
        }
        if !data.is_empty() {
            self.last = Some(now);
        }
    }

    /// Shows the pending line if nothing came for [`PARTIAL_LINE_PAUSE`].
    pub(crate) fn flush_stale(&mut self, now: Instant, emit: &mut impl FnMut(Line)) {
        let stale = self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) >= PARTIAL_LINE_PAUSE);
        if stale && !self.buf.is_empty() {
            self.emit(false, emit);
            self.shown = true;
        }
    }

    /// The stream ended: shows the pending line.
    pub(crate) fn finish(&mut self, emit: &mut impl FnMut(Line)) {
        if !self.buf.is_empty() {
            self.emit(false, emit);
        }
    }

    fn emit(&mut self, ended: bool, emit: &mut impl FnMut(Line)) {
        let at = self.first.take().unwrap_or_else(Instant::now);
        self.cr = false;
        emit(Line {
            text: std::mem::take(&mut self.buf),
            ended,
            at,
        });
    }

    /// The line reached [`MAX_LINE`]: emits it up to a character boundary (an incomplete UTF-8
    /// sequence at its end stays for the next piece), the rest starts the next piece.
    fn cut(&mut self, now: Instant, emit: &mut impl FnMut(Line)) {
        let keep = utf8_tail(&self.buf);
        let rest = self.buf.split_off(self.buf.len() - keep);
        self.emit(false, emit);
        self.buf = rest;
        self.first = Some(now);
    }
}

/// How many bytes at the end of `b` begin a UTF-8 sequence that is not complete yet.
fn utf8_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let len = match c {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if len > back { back } else { 0 };
    }
    0
}

/// The output of one running step: whole lines to the progress sink as [`Event::Log`], the
/// last ones kept for the step's error message.
#[derive(Clone)]
pub(crate) struct StepLog {
    vertex: usize,
    started: Instant,
    progress: Arc<dyn ProgressSink>,
    state: Arc<Mutex<StepLogState>>,
}

#[derive(Default)]
struct StepLogState {
    stdout: LineAssembler,
    stderr: LineAssembler,
    tail: VecDeque<String>,
}

impl StepLog {
    /// `started`: when the step started running, where line times count from.
    pub(crate) fn new(vertex: usize, started: Instant, progress: Arc<dyn ProgressSink>) -> Self {
        StepLog {
            vertex,
            started,
            progress,
            state: Arc::default(),
        }
    }

    fn with_state(&self, f: impl FnOnce(&mut StepLogState, &mut dyn FnMut(Stream, Line))) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = Vec::new();
        f(&mut st, &mut |s, l| lines.push((s, l)));
        for (stream, line) in lines {
            let text = String::from_utf8_lossy(&line.text).into_owned();
            st.tail.push_back(text.clone());
            if st.tail.len() > TAIL_LINES {
                st.tail.pop_front();
            }
            let mut data = text.into_bytes();
            if line.ended {
                data.push(b'\n');
            }
            // Under the lock, so the lines of a step reach the sink in their order.
            self.progress.event(Event::Log {
                vertex: self.vertex,
                stream,
                data,
                time: line.at.saturating_duration_since(self.started),
            });
        }
    }

    /// A chunk of the step's output.
    pub(crate) fn output(&self, stream: Stream, data: &[u8]) {
        let now = Instant::now();
        self.with_state(|st, emit| {
            let a = match stream {
                Stream::Stdout => &mut st.stdout,
                Stream::Stderr => &mut st.stderr,
            };
            a.push(data, now, &mut |l| emit(stream, l));
        });
    }

    /// Shows lines left unfinished for a pause; call it every so often while the step runs.
    pub(crate) fn flush_stale(&self) {
        let now = Instant::now();
        self.with_state(|st, emit| {
            st.stdout.flush_stale(now, &mut |l| emit(Stream::Stdout, l));
            st.stderr.flush_stale(now, &mut |l| emit(Stream::Stderr, l));
        });
    }

    /// The step ended: shows what is pending.
    pub(crate) fn finish(&self) {
        self.with_state(|st, emit| {
            st.stdout.finish(&mut |l| emit(Stream::Stdout, l));
            st.stderr.finish(&mut |l| emit(Stream::Stderr, l));
        });
    }

    /// The last output lines, each as `\n  > line`, for the step's error message.
    pub(crate) fn tail(&self) -> String {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.tail.iter().map(|l| format!("\n  > {l}")).collect()
    }
}

impl kiln_exec::OutputSink for StepLog {
    fn output(&mut self, stream: kiln_exec::OutputStream, data: &[u8]) {
        let stream = match stream {
            kiln_exec::OutputStream::Stdout => Stream::Stdout,
            kiln_exec::OutputStream::Stderr => Stream::Stderr,
        };
        StepLog::output(self, stream, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut a = LineAssembler::default();
        let mut out = vec![];
        let now = Instant::now();
        let mut emit = |l: Line| out.push((String::from_utf8_lossy(&l.text).into_owned(), l.ended));
        for c in chunks {
            a.push(c, now, &mut emit);
        }
        a.finish(&mut emit);
        out
    }

    fn ended(ls: &[&str]) -> Vec<(String, bool)> {
        ls.iter().map(|l| (l.to_string(), true)).collect()
    }

    #[test]
    fn npm_warn_written_in_three_pieces_is_one_line() {
        assert_eq!(
            lines(&[b"npm", b" WARN", b" old lockfile\n"]),
            ended(&["npm WARN old lockfile"])
        );
    }

    #[test]
    fn several_lines_in_one_chunk_and_a_line_over_chunks() {
        assert_eq!(
            lines(&[b"a\nb\nc", b"d\n\ne\n"]),
            ended(&["a", "b", "cd", "", "e"])
        );
    }

    #[test]
    fn a_progress_bar_redrawn_with_cr_keeps_its_last_state() {
        assert_eq!(lines(&[b"a\rb\rc\n"]), ended(&["c"]));
        // pip: the bar in pieces, the redraw and the newline in separate writes.
        assert_eq!(
            lines(&[b" 10%", b"\r", b" 50%", b"\r 100%", b"\r", b"\n", b"done\n"]),
            ended(&[" 100%", "done"])
        );
    }

    #[test]
    fn crlf_ends_a_line_without_erasing_it() {
        assert_eq!(lines(&[b"one\r\ntwo\r", b"\n"]), ended(&["one", "two"]));
        assert_eq!(lines(&[b"\r\n"]), ended(&[""]));
    }

    #[test]
    fn an_unfinished_last_line_is_shown_at_the_end() {
        assert_eq!(
            lines(&[b"x\npartial"]),
            vec![("x".into(), true), ("partial".into(), false)]
        );
    }

    #[test]
    fn a_partial_line_is_shown_after_a_pause_and_the_rest_is_a_new_line() {
        let mut a = LineAssembler::default();
        let mut out = vec![];
        let t0 = Instant::now();
        let mut emit = |l: Line| out.push((String::from_utf8_lossy(&l.text).into_owned(), l.ended));
        a.push(b"Downloading...", t0, &mut emit);
        a.flush_stale(t0 + PARTIAL_LINE_PAUSE / 2, &mut emit);
        a.push(b" flask", t0 + PARTIAL_LINE_PAUSE / 2, &mut emit);
        // Not yet: the last bytes came half a pause ago.
        a.flush_stale(t0 + PARTIAL_LINE_PAUSE, &mut emit);
        a.flush_stale(t0 + PARTIAL_LINE_PAUSE * 2, &mut emit);
        // Nothing more to show.
        a.flush_stale(t0 + PARTIAL_LINE_PAUSE * 4, &mut emit);
        a.push(b" done\n", t0 + PARTIAL_LINE_PAUSE * 5, &mut emit);
        a.push(b"Saving", t0 + PARTIAL_LINE_PAUSE * 5, &mut emit);
        a.flush_stale(t0 + PARTIAL_LINE_PAUSE * 7, &mut emit);
        // The newline that ends a line already shown makes no empty line.
        a.push(b"\n", t0 + PARTIAL_LINE_PAUSE * 8, &mut emit);
        a.push(b"\n", t0 + PARTIAL_LINE_PAUSE * 8, &mut emit);
        a.finish(&mut emit);
        assert_eq!(
            out,
            vec![
                ("Downloading... flask".into(), false),
                (" done".into(), true),
                ("Saving".into(), false),
                ("".into(), true),
            ]
        );
    }

    #[test]
    fn a_line_time_is_when_its_first_byte_came() {
        let mut a = LineAssembler::default();
        let mut out = vec![];
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(300);
        a.push(b"np", t0, &mut |l| out.push(l));
        a.push(b"m\nnext", t1, &mut |l| out.push(l));
        a.finish(&mut |l| out.push(l));
        assert_eq!(out[0].at, t0);
        assert_eq!(out[1].at, t1);
    }

    #[test]
    fn hostile_output_without_newlines_is_cut_so_memory_stays_bounded() {
        let mut a = LineAssembler::default();
        let mut out: Vec<Line> = vec![];
        let now = Instant::now();
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..64 {
            a.push(&chunk, now, &mut |l| out.push(l));
            assert!(a.buf.len() <= MAX_LINE, "{} bytes pending", a.buf.len());
        }
        a.finish(&mut |l| out.push(l));
        assert!(out.iter().all(|l| l.text.len() <= MAX_LINE && !l.ended));
        assert_eq!(
            out.iter().map(|l| l.text.len()).sum::<usize>(),
            64 * 32 * 1024
        );
        // A redrawn bar that never ends its line keeps only its last state.
        let mut a = LineAssembler::default();
        for i in 0..100_000 {
            a.push(format!("\r{i:>6}%").as_bytes(), now, &mut |l| out.push(l));
        }
        assert_eq!(a.buf, b" 99999%");
    }

    #[test]
    fn a_cut_keeps_utf8_characters_whole() {
        let mut a = LineAssembler::default();
        let mut out: Vec<Line> = vec![];
        let now = Instant::now();
        let mut data = vec![b'a'; MAX_LINE - 1];
        data.extend("é€😀\n".as_bytes());
        a.push(&data, now, &mut |l| out.push(l));
        let text: Vec<String> = out
            .iter()
            .map(|l| String::from_utf8(l.text.clone()).expect("valid UTF-8 in each piece"))
            .collect();
        assert_eq!(
            text.concat(),
            String::from_utf8(data[..data.len() - 1].to_vec()).unwrap()
        );
        assert_eq!(utf8_tail(b"a\xF0\x9F\x98"), 3);
        assert_eq!(utf8_tail(b"a\xF0\x9F\x98\x80"), 0);
        assert_eq!(utf8_tail(b"\xC3"), 1);
        assert_eq!(utf8_tail(b"\x80\x80\x80\x80"), 0);
    }

    #[test]
    fn invalid_utf8_is_shown_lossily() {
        assert_eq!(
            lines(&[b"bad \xFF\xFE", b" bytes\n"]),
            ended(&["bad \u{FFFD}\u{FFFD} bytes"])
        );
    }

    struct Collect(Mutex<Vec<Event>>);

    impl ProgressSink for Collect {
        fn event(&self, e: Event) {
            self.0.lock().unwrap().push(e);
        }
    }

    #[test]
    fn step_log_sends_lines_with_their_time_and_keeps_the_last_ten() {
        let sink = Arc::new(Collect(Mutex::new(vec![])));
        let started = Instant::now() - Duration::from_secs(2);
        let log = StepLog::new(4, started, sink.clone());
        log.output(Stream::Stdout, b"npm");
        log.output(Stream::Stderr, b"err\n");
        log.output(Stream::Stdout, b" WARN\n");
        for i in 0..12 {
            log.output(Stream::Stdout, format!("l{i}\n").as_bytes());
        }
        log.output(Stream::Stdout, b"end");
        log.finish();
        let events = sink.0.lock().unwrap();
        let logs: Vec<(Stream, String, Duration)> = events
            .iter()
            .map(|e| match e {
                Event::Log {
                    vertex: 4,
                    stream,
                    data,
                    time,
                } => (*stream, String::from_utf8_lossy(data).into_owned(), *time),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(logs[0].0, Stream::Stderr);
        assert_eq!(logs[0].1, "err\n");
        assert_eq!(logs[1].1, "npm WARN\n");
        assert!(logs[1].2 >= Duration::from_secs(2), "{:?}", logs[1].2);
        assert_eq!(logs.last().unwrap().1, "end");
        let tail = log.tail();
        assert!(tail.starts_with("\n  > l3\n"), "{tail}");
        assert!(tail.ends_with("\n  > l11\n  > end"), "{tail}");
    }
}
