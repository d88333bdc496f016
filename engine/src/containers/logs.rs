//! A container's output on disk: Docker's `json-file` format (one `{"log","stream","time"}`
//! object per line), rotated at a size cap with one older file kept.

use kiln_exec::{OutputSink, OutputStream};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub(crate) const LOG_FILE: &str = "container.log";
const OLD_LOG_FILE: &str = "container.log.1";
/// The default size cap of one log file (`--log-opt max-size`).
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 << 20;
/// A line longer than this is recorded in pieces, so that memory stays bounded.
const MAX_LINE: usize = 16 << 10;

/// One recorded piece of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Receives the command's output and appends it to the log, line by line.
pub(crate) struct LogWriter {
    dir: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    pub(crate) fn open(dir: &Path, max: u64) -> LogWriter {
        let path = dir.join(LOG_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        LogWriter {
            dir: dir.to_path_buf(),
            file,
            size,
            max: max.max(1024),
            partial: [Vec::new(), Vec::new()],
        }
    }

    fn record(&mut self, stream: usize, bytes: &[u8]) {
        let line = LogLine {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream: if stream == 0 { "stdout" } else { "stderr" }.into(),
            time: crate::export::rfc3339(super::state::now()),
        };
        let Ok(mut text) = serde_json::to_vec(&line) else {
            return;
        };
        text.push(b'\n');
        if self.size + text.len() as u64 > self.max {
            let _ = std::fs::rename(self.dir.join(LOG_FILE), self.dir.join(OLD_LOG_FILE));
            self.file = File::create(self.dir.join(LOG_FILE)).ok();
            self.size = 0;
        }
        // A full disk costs log lines, never the container.
        if let Some(f) = &mut self.file {
            if f.write_all(&text).is_ok() {
                self.size += text.len() as u64;
            }
        }
    }
}

impl OutputSink for LogWriter {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        let s = match stream {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        };
        let mut pending = std::mem::take(&mut self.partial[s]);
        pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl + 1;
            self.record(s, &pending[start..end]);
            start = end;
        }
        while pending.len() - start > MAX_LINE {
            self.record(s, &pending[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.partial[s] = pending[start..].to_vec();
    }
}

/// A foreground container's output: shown on this process's stdout and stderr as it comes,
/// and logged, so that `kiln logs` of a container run without `-d` has it too (as Docker's).
pub(crate) struct ShownAndLogged(pub(crate) LogWriter);

impl OutputSink for ShownAndLogged {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        // A closed stdout (`kiln run ... | head`) must not stop the container or its log.
        let _ = match stream {
            OutputStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(data).and_then(|()| out.flush())
            }
            OutputStream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(data).and_then(|()| err.flush())
            }
        };
        self.0.output(stream, data);
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        for s in 0..2 {
            let rest = std::mem::take(&mut self.partial[s]);
            if !rest.is_empty() {
                self.record(s, &rest);
            }
        }
    }
}

fn read_lines(path: &Path, out: &mut Vec<LogLine>) -> u64 {
    let Ok(f) = File::open(path) else {
        return 0;
    };
    let mut reader = BufReader::new(f);
    let mut offset = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // A line still being written is read again on the next poll.
                if buf.last() != Some(&b'\n') {
                    break;
                }
                offset += n as u64;
                if let Ok(l) = serde_json::from_slice(&buf) {
                    out.push(l);
                }
            }
        }
    }
    offset
}

/// Everything the log holds now (the rotated file first), and where the current file ends.
pub(crate) fn read_all(dir: &Path) -> (Vec<LogLine>, u64) {
    let mut lines = Vec::new();
    read_lines(&dir.join(OLD_LOG_FILE), &mut lines);
    let end = read_lines(&dir.join(LOG_FILE), &mut lines);
    (lines, end)
}

/// The lines written to the current file past `offset`, and the new offset; starts again from
/// the beginning when the file was rotated (it is then shorter than `offset`).
pub(crate) fn read_from(dir: &Path, offset: u64) -> (Vec<LogLine>, u64) {
    let path = dir.join(LOG_FILE);
    let Ok(mut f) = File::open(&path) else {
        return (Vec::new(), offset);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if len < offset { 0 } else { offset };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return (Vec::new(), offset);
    }
    let mut reader = BufReader::new(f);
    let mut lines = Vec::new();
    let mut pos = from;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf.last() != Some(&b'\n') {
                    break;
                }
                pos += n as u64;
                if let Ok(l) = serde_json::from_slice(&buf) {
                    lines.push(l);
                }
            }
        }
    }
    (lines, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_recorded_by_line_and_stream_and_rotated_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = LogWriter::open(dir.path(), 4096);
            w.output(OutputStream::Stdout, b"hel");
            w.output(OutputStream::Stderr, b"oops\n");
            w.output(OutputStream::Stdout, b"lo\nno newline");
        }
        let (lines, _) = read_all(dir.path());
        let got: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| (l.stream.as_str(), l.log.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("stderr", "oops\n"),
                ("stdout", "hello\n"),
                ("stdout", "no newline")
            ]
        );
        let mut w = LogWriter::open(dir.path(), 4096);
        for i in 0..1000 {
            w.output(OutputStream::Stdout, format!("line {i}\n").as_bytes());
        }
        drop(w);
        let total: u64 = [LOG_FILE, OLD_LOG_FILE]
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len())
            .sum();
        assert!(total <= 2 * 4096, "{total} bytes kept");
        let (lines, _) = read_all(dir.path());
        assert_eq!(lines.last().unwrap().log, "line 999\n");
    }
}
