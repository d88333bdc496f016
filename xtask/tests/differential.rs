//! The differential check in CI: every case of `testdata/differential/` is built with kiln and
//! its image compared with the committed summary of BuildKit v0.11.6's image of the same case
//! (`cargo xtask differential --no-buildkit`). A difference that `testdata/differential/KNOWN.md`
//! does not explain fails the test. With `KILN_CONFORMANCE` set, a case without a committed
//! summary, or no kiln binary to test, is a failure too; without it they are skipped, loudly.

use std::path::Path;
use std::process::Command;

#[test]
fn kiln_builds_the_images_buildkit_builds() {
    let strict = std::env::var_os("KILN_CONFORMANCE").is_some();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // `cargo test --workspace` builds the kiln binary for cli's tests; a nested `cargo build`
    // here would wait on the lock that very `cargo test` holds.
    let kiln = std::env::var_os("KILN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| target.join("debug/kiln"));
    if !kiln.is_file() {
        assert!(
            !strict,
            "no kiln binary at `{}`: run `cargo build -p kiln` first (KILN_CONFORMANCE is set)",
            kiln.display()
        );
        eprintln!(
            "skipped: no kiln binary at `{}`; run `cargo build -p kiln`",
            kiln.display()
        );
        return;
    }
    let work = tempfile_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["differential", "--no-buildkit"])
        .env("KILN", &kiln)
        .env("DIFFERENTIAL_WORK", &work)
        .output()
        .expect("run xtask differential");
    let _ = std::fs::remove_dir_all(&work);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kiln differs from BuildKit where KNOWN.md does not say why:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.ends_with(" passed, 0 failed"),
        "unexpected summary line `{last}`\n{stdout}"
    );
    let passed: usize = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let cases = std::fs::read_dir(root.join("testdata/differential"))
        .expect("read testdata/differential")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Dockerfile").is_file())
        .count();
    assert!(
        cases >= 60,
        "the corpus should hold at least 60 cases, has {cases}"
    );
    if strict {
        assert_eq!(passed, cases, "every case must be compared\n{stdout}");
    }
    println!("{stdout}");
}

fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kiln-differential-{}", std::process::id()))
}
