//! Measures a real export through the store: `cargo run --release -p kiln-exporter --example
//! export_bigfile -- DIR MiB gzip|zstd|uncompressed [lazy]`. Makes a snapshot in a store at
//! `DIR` holding one file of `MiB` random bytes (the issue's `bigfile`: incompressible, the worst
//! case), then times `export_layer` (tar + diffID + compression + digest + fsync'd blob) and the
//! OCI archive written from it. With `lazy`, the layer is stored uncompressed first and then
//! compressed from that blob, as a build with an image output does. Run under
//! `/usr/bin/time -f %M` for the peak memory.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use kiln_exporter::{export_layer, fill_rootfs, write_image, Compression, LayerOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(
        args.next()
            .ok_or("usage: export_bigfile DIR MiB COMPRESSION")?,
    );
    let mib: usize = args.next().ok_or("missing MiB")?.parse()?;
    let compression = match args.next().as_deref() {
        Some("zstd") => Compression::Zstd,
        Some("uncompressed") => Compression::Uncompressed,
        _ => Compression::Gzip,
    };
    let store = kiln_cache::Store::open(&root)?;
    let snap = store.snapshots().create(None)?;
    let file = store.snapshots().fs_dir(snap).join("bigfile");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut f = io::BufWriter::new(std::fs::File::create(&file)?);
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
    let lazy = args.next().as_deref() == Some("lazy");
    let t = Instant::now();
    let blob = if lazy {
        // What a build does now: the layer goes to the store uncompressed, and the output's
        // variant compresses that blob.
        let plain = LayerOptions {
            compression: Compression::Uncompressed,
            ..LayerOptions::default()
        };
        let stored = export_layer(&store, snap, &plain)?;
        let stored_secs = t.elapsed().as_secs_f64();
        let v = kiln_exporter::layer_variant(
            &store,
            &stored,
            &kiln_exporter::VariantOptions {
                compression,
                ..Default::default()
            },
        )?;
        println!(
            "  uncompressed store layer in {stored_secs:.2} s, {compression:?} variant in {:.2} s",
            t.elapsed().as_secs_f64() - stored_secs
        );
        v
    } else {
        let opts = LayerOptions {
            compression,
            source_date_epoch: None,
            level: None,
        };
        export_layer(&store, snap, &opts)?
    };
    let layer_secs = t.elapsed().as_secs_f64();
    let mut config = oci_spec::image::ImageConfiguration::default();
    fill_rootfs(&mut config, std::slice::from_ref(&blob))?;
    let image = write_image(&store, &config, std::slice::from_ref(&blob))?;
    let dest = root.join("out.tar");
    let t2 = Instant::now();
    kiln_exporter::write_oci_archive(&store, &image, &["docker.io/library/big:latest"], &dest)?;
    let archive_secs = t2.elapsed().as_secs_f64();
    let mb = mib as f64 * 1048576.0 / 1e6;
    println!(
        "{compression:?}: layer {mib} MiB in {layer_secs:.2} s = {:.0} MB/s; OCI archive in {archive_secs:.2} s; total {:.2} s = {:.0} MB/s (blob {} bytes)",
        mb / layer_secs,
        layer_secs + archive_secs,
        mb / (layer_secs + archive_secs),
        blob.size
    );
    Ok(())
}
