//! Parallel gzip, pigz-style: the input is cut into fixed-size chunks, each chunk is deflated on
//! a worker (primed with the previous chunk's last 32 KiB as dictionary) and ended with a sync
//! flush, and the raw deflate pieces are concatenated in order into one gzip member.
//!
//! The output depends only on the input, the level and [`CHUNK`], never on the number of
//! threads or how the caller splits its writes, so layer digests stay reproducible. Memory is
//! bounded: at most `2 × workers + 1` chunks are in flight.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::OnceLock;

use flate2::{Compress, Crc, FlushCompress, Status};

/// Input bytes per deflate job. Part of the output format: changing it changes digests.
pub(crate) const CHUNK: usize = 1 << 20;
/// Deflate's window: how much of the previous chunk primes the next one.
const DICT: usize = 32 * 1024;
/// The gzip header: no name, no mtime (0), unknown OS, as for a stream.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The pool that deflates chunks. Its own pool, not rayon's global one: a writer blocks waiting
/// for results, and that must never stall a pool whose threads would run those very jobs (layers
/// themselves are compressed in parallel on the global pool). `None` when no thread could be
/// started: chunks are then deflated on the writer's thread, with the same output.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("kiln-gzip-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

fn in_flight_limit() -> usize {
    2 * pool().map_or(1, |p| p.current_num_threads()) + 1
}

type Piece = Receiver<io::Result<Vec<u8>>>;

/// A `Write` that gzips into `inner` using all cores; call [`ParGzEncoder::finish`] at the end.
pub(crate) struct ParGzEncoder<W: Write> {
    inner: W,
    level: u32,
    buf: Vec<u8>,
    /// The tail of the last dispatched chunk: the next chunk's dictionary.
    dict: Vec<u8>,
    crc: Crc,
    pending: VecDeque<Piece>,
    wrote_header: bool,
}

impl<W: Write> ParGzEncoder<W> {
    pub(crate) fn new(inner: W, level: u32) -> Self {
        ParGzEncoder {
            inner,
            level: level.min(9),
            buf: Vec::with_capacity(CHUNK),
            dict: Vec::new(),
            crc: Crc::new(),
            pending: VecDeque::new(),
            wrote_header: false,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.wrote_header {
            self.inner.write_all(&HEADER)?;
            self.wrote_header = true;
        }
        Ok(())
    }

    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let dict = std::mem::take(&mut self.dict);
        if !last {
            self.dict = chunk[chunk.len().saturating_sub(DICT)..].to_vec();
        }
        let level = self.level;
        let (tx, rx) = sync_channel(1);
        let job = move || {
            // The receiver is gone only when the writer was dropped mid-stream.
            let _ = tx.send(deflate_chunk(&chunk, &dict, level, last));
        };
        match pool() {
            Some(p) => p.spawn(job),
            None => job(),
        }
        self.pending.push_back(rx);
        while self.pending.len() >= in_flight_limit() {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let piece = rx
                .recv()
                .map_err(|_| io::Error::other("a gzip worker stopped without a result"))??;
            self.header()?;
            self.inner.write_all(&piece)?;
        }
        Ok(())
    }

    /// Compresses what is left, writes the trailer and returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.header()?;
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParGzEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.crc.update(&data[..n]);
        if self.buf.len() == CHUNK {
            self.dispatch(false)?;
        }
        Ok(n)
    }

    /// Writes out the chunks already compressed; the current partial chunk stays buffered,
    /// since cutting it here would make the output depend on when flush was called.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.inner.flush()
    }
}

/// Raw deflate of one chunk: sync-flushed (byte-aligned, stream open) or, for the last, finished.
fn deflate_chunk(input: &[u8], dict: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    // Deflate spends most of its time failing to find matches in data that has none (already
    // compressed files, random bytes), so such chunks are stored, as pigz and Go's pgzip do.
    // The choice is made from the chunk's own bytes only: the output stays deterministic.
    let level = if level > 0 && looks_incompressible(input)? {
        0
    } else {
        level
    };
    let mut c = Compress::new(flate2::Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // Incompressible data grows by 5 bytes per 16 KiB stored block; leave room for that.
    let mut out = Vec::with_capacity(input.len() + input.len() / 1024 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(64 * 1024);
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        let done = match status {
            Status::StreamEnd => true,
            // A flush is complete once a call leaves output space unused.
            Status::Ok | Status::BufError => !last && all_in && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
    }
}

/// Whether fast deflate of three samples (start, middle, end) saves under 2% on each.
fn looks_incompressible(input: &[u8]) -> io::Result<bool> {
    const SAMPLE: usize = 16 * 1024;
    if input.len() < 4 * SAMPLE {
        return Ok(false);
    }
    let mid = input.len() / 2 - SAMPLE / 2;
    for start in [0, mid, input.len() - SAMPLE] {
        let sample = &input[start..start + SAMPLE];
        let mut c = Compress::new(flate2::Compression::fast(), false);
        let mut out = Vec::with_capacity(SAMPLE + 1024);
        c.compress_vec(sample, &mut out, FlushCompress::Finish)
            .map_err(io::Error::other)?;
        // Not finished means the output outgrew the input: incompressible.
        let finished = c.total_in() as usize == SAMPLE && out.len() < out.capacity();
        if finished && out.len() * 100 < SAMPLE * 98 {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut d = flate2::read::GzDecoder::new(bytes);
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        out
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half compressible text-like bytes, half noise.
                if (i / 4096) % 2 == 0 {
                    b"kiln layer "[i % 11]
                } else {
                    x as u8
                }
            })
            .collect()
    }

    fn gz(input: &[u8], level: u32, write_size: usize) -> Vec<u8> {
        let mut e = ParGzEncoder::new(Vec::new(), level);
        for piece in input.chunks(write_size.max(1)) {
            e.write_all(piece).unwrap();
        }
        e.finish().unwrap()
    }

    #[test]
    fn round_trips_through_a_standard_decoder() {
        for len in [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345] {
            let input = data(len, len as u64 + 7);
            for level in [0, 1, 6, 9] {
                let out = gz(&input, level, 64 * 1024);
                assert_eq!(gunzip(&out), input, "len {len} level {level}");
                let n = out.len();
                assert_eq!(&out[..3], &[0x1f, 0x8b, 8]);
                assert_eq!(
                    u32::from_le_bytes(out[n - 4..].try_into().unwrap()),
                    len as u32
                );
            }
        }
    }

    #[test]
    fn output_does_not_depend_on_write_sizes() {
        let input = data(2 * CHUNK + 999, 3);
        let a = gz(&input, 6, 1 << 16);
        let b = gz(&input, 6, 4097);
        let c = gz(&input, 6, CHUNK * 3);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn incompressible_chunks_are_stored_and_mixed_ones_compressed() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let noise: Vec<u8> = (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(looks_incompressible(&noise).unwrap());
        let mut mixed = noise.clone();
        mixed[CHUNK / 2 - 8192..CHUNK / 2 + 8192].fill(b'a');
        assert!(!looks_incompressible(&mixed).unwrap());
        let out = gz(&noise, 6, 1 << 16);
        assert_eq!(gunzip(&out), noise);
        // Stored blocks: 5 bytes per 64 KiB at most, plus header and trailer.
        assert!(
            out.len() < CHUNK + CHUNK / 1000 + 100,
            "{} bytes",
            out.len()
        );
    }

    #[test]
    fn compresses_repetitive_data() {
        let input = b"abcdefgh".repeat(CHUNK / 2);
        let out = gz(&input, 6, 1 << 16);
        assert!(out.len() < input.len() / 50, "{} bytes", out.len());
    }

    #[test]
    fn system_gzip_accepts_the_stream() {
        let Ok(path) = which_gzip() else {
            eprintln!("skipped: no `gzip` on PATH");
            return;
        };
        let input = data(CHUNK + 5000, 11);
        let out = gz(&input, 6, 1 << 16);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.gz");
        std::fs::write(&f, &out).unwrap();
        let res = std::process::Command::new(path)
            .arg("-t")
            .arg(&f)
            .status()
            .unwrap();
        assert!(res.success(), "gzip -t rejected the stream");
    }

    fn which_gzip() -> Result<std::path::PathBuf, ()> {
        for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
            let p = std::path::Path::new(dir).join("gzip");
            if p.exists() {
                return Ok(p);
            }
        }
        Err(())
    }
}
