//! Hostile Dockerfiles run through the real `kiln` binary (main thread, tokio workers and all):
//! shapes that crashed it with a stack overflow (SIGABRT) or cost it quadratic time. Each must
//! end with success or exit code 1 and a short, clear message, never a signal. They need root
//! (for `kiln build`), as CI runs them.

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

/// A context holding `Dockerfile` (and a small file `a` to copy).
fn context(dockerfile: &str) -> tempfile::TempDir {
    temp_context("kiln-hostile-", &[("Dockerfile", dockerfile), ("a", "a\n")])
}

fn build(k: &Kiln, ctx: &Path) -> Output {
    k.run(&["build", "--progress", "plain", ctx.to_str().unwrap()])
}

fn debug_llb(k: &Kiln, ctx: &Path) -> Output {
    k.run(&["debug", "llb", ctx.to_str().unwrap()])
}

/// Exit code 1 (a build's failure) with a message holding `want`, and no crash.
fn assert_clean_failure(out: &Output, want: &str) -> String {
    assert_clean_exit(out, want, 1)
}

/// Exit code `code` with a message holding `want`, and no crash.
fn assert_clean_exit(out: &Output, want: &str, code: i32) -> String {
    assert_eq!(
        out.status.signal(),
        None,
        "killed by a signal\nstderr:\n{}",
        &stderr(out).chars().take(3000).collect::<String>()
    );
    assert_eq!(out.status.code(), Some(code), "stderr:\n{}", stderr(out));
    let err = stderr(out);
    assert!(err.contains(want), "want `{want}` in:\n{err}");
    err
}

fn nested_defaults(depth: usize) -> String {
    let mut word = "x".to_string();
    for i in 0..depth {
        word = format!("${{a{i}:-{word}}}");
    }
    word
}

#[test]
fn defaults_nested_5000_deep_fail_with_a_message_not_a_stack_overflow() {
    let k = Kiln::new();
    let ctx = context(&format!("FROM busybox\nENV X={}\n", nested_defaults(5000)));
    let err = assert_clean_failure(
        &debug_llb(&k, ctx.path()),
        "Dockerfile:2: cannot expand `${a4999:-",
    );
    assert!(err.contains("nested deeper than 100 levels"), "{err}");
    assert!(err.len() < 2000, "{} bytes", err.len());
    // In a `RUN`, the shell expands it, not kiln; the parser looks for heredocs in it.
    let ctx = context(&format!(
        "FROM busybox\nRUN echo {}\n",
        nested_defaults(5000)
    ));
    let dockerfile = ctx.path().join("Dockerfile");
    let out = k.run(&["debug", "parse", "-f", dockerfile.to_str().unwrap()]);
    assert_ok(&out, "debug parse");
}

#[test]
fn seven_hundred_chained_stages_build() {
    let k = Kiln::with_busybox();
    let mut df = "FROM busybox AS s0\nENV DEPTH=0\n".to_string();
    for i in 0..700 {
        df.push_str(&format!("FROM s{i} AS s{}\n", i + 1));
    }
    df.push_str("RUN test \"$DEPTH\" = 0\n");
    let ctx = context(&df);
    assert_ok(&debug_llb(&k, ctx.path()), "debug llb");
    assert_ok(&build(&k, ctx.path()), "build");
}

#[test]
fn a_10_mb_line_is_cut_short_in_the_error() {
    let k = Kiln::new();
    let ctx = context(&format!("FROM busybox AS 9{}\n", "A".repeat(10_000_000)));
    let err = assert_clean_failure(&debug_llb(&k, ctx.path()), "is not a valid stage name");
    assert!(err.len() < 2000, "{} bytes", err.len());
    assert!(err.contains("AAA…"), "{err}");
}

#[test]
fn hundred_thousand_env_lines_compile_in_linear_time() {
    // 100,000 lines took more than 5 minutes in a debug build (quadratic), now a few seconds.
    let k = Kiln::new();
    let mut df = "FROM busybox\n".to_string();
    for i in 0..100_000 {
        df.push_str(&format!("ENV V{i}=$V{}\n", i / 2));
    }
    let ctx = context(&df);
    let start = Instant::now();
    assert_ok(&debug_llb(&k, ctx.path()), "debug llb");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn a_value_doubled_on_every_line_stops_with_a_message() {
    let k = Kiln::new();
    let ctx = context(&format!(
        "FROM busybox\nENV V=ab\n{}",
        "ENV V=$V$V\n".repeat(64)
    ));
    assert_clean_failure(&debug_llb(&k, ctx.path()), "longer than 1 MiB");
}

#[test]
fn six_hundred_run_steps_do_not_overflow_the_solver_stack() {
    // The solver awaited a chain of nested futures, one per step: 600 steps overflowed the main
    // thread's stack before the first ran. The first step fails here, so the test stays quick.
    let k = Kiln::with_busybox();
    let mut df = "FROM busybox\nRUN exit 3\n".to_string();
    for i in 0..600 {
        df.push_str(&format!("RUN echo {i} > /f\n"));
    }
    let ctx = context(&df);
    let err = assert_clean_failure(&build(&k, ctx.path()), "Dockerfile:2:");
    assert!(err.contains("exit code: 3"), "{err}");
}

#[test]
fn more_than_500_layers_fail_naming_the_limit() {
    // `COPY` steps are the cheapest layers: 500 of them take about 10 s in a debug build. The
    // image has 501 layers (busybox's and 500 copies): its last step stacked 500, the most
    // overlayfs takes; anything on top of it needs 501.
    let k = Kiln::with_busybox();
    let mut df = "FROM busybox\n".to_string();
    for i in 0..500 {
        df.push_str(&format!("COPY a /a{i}\n"));
    }
    let ctx = context(&df);
    let out = k.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "deep",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "build 501 layers");
    let limit = "has 501 layers and overlayfs stacks at most 500: use fewer steps";
    // `kiln run`'s own errors exit 125, as `docker run`'s do.
    let err = assert_clean_exit(&k.run(&["run", "deep", "true"]), limit, 125);
    assert!(!err.contains("Invalid argument"), "{err}");
    for step in ["RUN true", "COPY a /b"] {
        let ctx = context(&format!("FROM deep\n{step}\n"));
        let err = assert_clean_failure(&build(&k, ctx.path()), "Dockerfile:2:");
        assert!(err.contains(limit), "{err}");
    }
}
