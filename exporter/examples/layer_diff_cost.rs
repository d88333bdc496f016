//! What diffing a layer over its lowers costs: `cargo run -p kiln-exporter --example
//! layer_diff_cost [FILES]`. Builds an upper dir of FILES small files (in 100-file dirs) and a
//! lower dir, and times the uncompressed layer tar written as it is (no lowers) and over the
//! lower, for three lowers: one without the files' dirs (a new directory: no lookups), one with
//! the dirs but not the files (one failed `lstat` per file), and one with identical files (the
//! worst case: every file's metadata matches, so every file is compared by content).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_exporter::{write_layer_diff_tar, write_layer_tar, LayerOptions};

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn fill(root: &Path, files: usize, with_files: bool) -> io::Result<()> {
    let when = filetime::FileTime::from_unix_time(1_600_000_000, 123);
    for i in 0..files {
        let d = root.join(format!("app/d{}", i / 100));
        std::fs::create_dir_all(&d)?;
        if with_files {
            let f = d.join(format!("f{i}.py"));
            std::fs::write(&f, format!("x = {i}\n").repeat(100))?;
            filetime::set_file_mtime(&f, when)?;
        }
    }
    Ok(())
}

fn best_of(n: usize, mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f().expect("layer");
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let t = tempfile::tempdir()?;
    let (up, empty, dirs, same) = (
        t.path().join("up"),
        t.path().join("empty"),
        t.path().join("dirs"),
        t.path().join("same"),
    );
    fill(&up, files, true)?;
    std::fs::create_dir_all(&empty)?;
    fill(&dirs, files, false)?;
    fill(&same, files, true)?;
    let opts = LayerOptions::default();
    let plain = best_of(5, || Ok(write_layer_tar(&up, Sink, &opts)?));
    println!("{files} files, as it is:            {plain:.3} s");
    for (name, lower) in [
        ("over a lower without them", &empty),
        ("over a lower with their dirs", &dirs),
        ("over identical files", &same),
    ] {
        let lowers: Vec<PathBuf> = vec![lower.clone()];
        let secs = best_of(5, || Ok(write_layer_diff_tar(&up, &lowers, Sink, &opts)?));
        println!("{files} files, {name:28} {secs:.3} s");
    }
    Ok(())
}
