//! End-to-end test of sparse files: a file with a little data and a large hole keeps its content
//! and stays small on disk through `-o type=local` and through `kiln import` of a layer tar
//! (kiln's own extractor, which also unpacks pulled layers).

mod common;

use common::{assert_ok, temp_context, Kiln};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// 128 MiB, its last 4 KiB random: dd seeks over the rest, leaving a hole.
const DOCKERFILE: &str = "FROM busybox:latest\n\
RUN dd if=/dev/urandom of=/sparse bs=4096 count=1 seek=32767 2>/dev/null\n";
const LEN: u64 = 128 << 20;

fn check_sparse(path: &Path, what: &str) -> Vec<u8> {
    let md = std::fs::metadata(path).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(md.len(), LEN, "{what}: length");
    let on_disk = md.blocks() * 512;
    assert!(
        on_disk <= 1 << 20,
        "{what}: {on_disk} bytes on disk for 4 KiB of data"
    );
    let bytes = std::fs::read(path).unwrap();
    let (zeros, data) = bytes.split_at(bytes.len() - 4096);
    assert!(zeros.iter().all(|&b| b == 0), "{what}: the hole has data");
    assert!(data.iter().any(|&b| b != 0), "{what}: the data is gone");
    data.to_vec()
}

#[test]
fn a_sparse_file_was_written_in_full() {
    let k = Kiln::with_busybox();
    let ctx = temp_context("kiln-sparse-", &[("Dockerfile", DOCKERFILE)]);
    let rootfs = ctx.path().join("rootfs");
    let tar = ctx.path().join("rootfs.tar");
    let out = k.run(&[
        "build",
        "-o",
        &format!("type=local,dest={}", rootfs.display()),
        "-o",
        &format!("type=tar,dest={}", tar.display()),
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "build of a sparse file");
    let data = check_sparse(&rootfs.join("sparse"), "type=local");

    // The layer extractor: import the file system tar as an image's one layer.
    let out = k.run(&["import", tar.to_str().unwrap(), "sparse:latest"]);
    assert_ok(&out, "kiln import of the tar");
    let snapshots = k.root.path().join("snapshots");
    let mut found = 0;
    for e in std::fs::read_dir(&snapshots).unwrap() {
        let f = e.unwrap().path().join("fs/sparse");
        if f.exists() {
            assert_eq!(check_sparse(&f, &f.display().to_string()), data);
            found += 1;
        }
    }
    // The RUN's snapshot and the imported one.
    assert_eq!(
        found,
        2,
        "snapshots holding /sparse under {}",
        snapshots.display()
    );
}
