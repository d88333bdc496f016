//! Measures layer export speed: `cargo run --release -p kiln-exporter --example layer_throughput [MiB]`.
//! Builds a directory with one file of random bytes (incompressible: the worst case) and
//! reports MB/s of tar input for each compression.

use std::io::{self, Write};
use std::time::Instant;

use kiln_exporter::{write_layer_blob, Compression, LayerOptions};

/// Discards bytes; the measurement is of tar + hashing + compression, not of the disk.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(256);
    let dir = tempfile::tempdir()?;
    // xorshift: fast, reproducible and incompressible enough.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut f = io::BufWriter::new(std::fs::File::create(dir.path().join("random.bin"))?);
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    drop(f);
    for c in [
        Compression::Uncompressed,
        Compression::Gzip,
        Compression::Zstd,
    ] {
        let opts = LayerOptions {
            compression: c,
            source_date_epoch: None,
            level: None,
        };
        let t = Instant::now();
        let (blob, _) = write_layer_blob(dir.path(), Sink, &opts)?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{c:?}: {mib} MiB in {secs:.2} s = {:.0} MB/s (blob {} bytes)",
            (mib as f64 * 1048576.0) / secs / 1e6,
            blob.size
        );
    }
    Ok(())
}
