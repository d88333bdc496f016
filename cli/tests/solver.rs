//! End-to-end tests of the solver through `kiln build`: parallel stages, cancellation of running
//! siblings when a step fails, Ctrl-C, `--no-cache-filter` and the progress formats.

mod common;

use common::{assert_ok, build, stderr, temp_context, Kiln};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

fn context(dockerfile: &str) -> tempfile::TempDir {
    temp_context("kiln-ctx-", &[("Dockerfile", dockerfile)])
}

/// Host processes whose command line contains `needle` (sandboxed ones included).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Waits (a little) for the processes of a killed sandbox to be gone.
fn assert_gone(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(needle);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sandboxed processes outlived the build: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json_events(out: &Output) -> Vec<serde_json::Value> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event `{l}`: {e}")))
        .collect()
}

fn event_time(events: &[serde_json::Value], kind: &str, name_part: &str) -> f64 {
    events
        .iter()
        .find(|e| e["event"] == kind && e["name"].as_str().is_some_and(|n| n.contains(name_part)))
        .and_then(|e| e["time"].as_f64())
        .unwrap_or_else(|| panic!("no `{kind}` event for `{name_part}` in {events:?}"))
}

#[test]
fn independent_stages_run_in_parallel() {
    let k = Kiln::with_busybox();
    let ctx = context(
        "FROM busybox AS a\nRUN sleep 1.5 && echo a > /a\n\
         FROM busybox AS b\nRUN sleep 1.5 && echo b > /b\n\
         FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
    );
    let out = k.run(&[
        "build",
        "--progress",
        "json",
        "--jobs",
        "2",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "build of two independent stages");
    let events = json_events(&out);
    // Each stage's step starts before the other one ends.
    let a_start = event_time(&events, "started", "[a 2/2]");
    let b_start = event_time(&events, "started", "[b 2/2]");
    let a_done = event_time(&events, "done", "[a 2/2]");
    let b_done = event_time(&events, "done", "[b 2/2]");
    assert!(
        b_start < a_done && a_start < b_done,
        "the stages ran one after the other: {events:?}"
    );
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
}

#[test]
fn failing_step_cancels_running_siblings_and_reports_line_command_code_and_output() {
    let k = Kiln::with_busybox();
    let ctx = context(
        "FROM busybox AS slow\nRUN sleep 38 && echo slow > /slow\n\
         FROM busybox AS bad\nRUN echo first words && echo last words >&2 && sleep 1 && exit 3\n\
         FROM busybox\nCOPY --from=slow /slow /slow\nCOPY --from=bad /etc/passwd /x\n",
    );
    let started = Instant::now();
    let out = build(&k, ctx.path(), &["--jobs", "4"]);
    assert!(!out.status.success(), "the build must fail");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the failure did not stop the sleeping sibling ({:?})",
        started.elapsed()
    );
    let log = stderr(&out);
    for want in [
        "Dockerfile:4",
        "echo first words && echo last words >&2 && sleep 1 && exit 3",
        "exit code: 3",
        "last words",
        "CANCELED",
    ] {
        assert!(log.contains(want), "`{want}` missing from:\n{log}");
    }
    assert_gone("sleep 38");
}

#[test]
fn sigint_stops_the_build_and_leaves_the_store_usable() {
    let k = Kiln::with_busybox();
    let ctx = context("FROM busybox\nRUN echo started && sleep 39\n");
    let child = k
        .cmd()
        .args(["build", "--progress", "plain", ctx.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the step runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_with("sleep 39").is_empty() {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_gone("sleep 39");
    let root = k.root.path().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root),
        "mounts left under the store:\n{mounts}"
    );
    // The store opens and builds; the interrupted step was not recorded, so it runs again.
    let ctx2 = context("FROM busybox\nRUN echo started && sleep 0.1\n");
    let out = build(&k, ctx2.path(), &[]);
    assert_ok(&out, "build after an interrupted one");
}

/// Whether the step whose name line contains `part` was `cached` or `run`, from a plain log.
fn step_status(log: &str, part: &str) -> &'static str {
    let lines: Vec<&str> = log.lines().collect();
    // A step's number is on its name line; find whether that number is CACHED or DONE.
    let head = lines
        .iter()
        .find(|l| l.contains(part))
        .unwrap_or_else(|| panic!("no step `{part}` in:\n{log}"));
    let num = head.split_whitespace().next().unwrap_or_default();
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("{num} ")))
        .find_map(|l| {
            if l.ends_with("CACHED") {
                Some("cached")
            } else if l.contains(" DONE ") {
                Some("run")
            } else {
                None
            }
        })
        .unwrap_or("unknown")
}

/// A stage runs again (a build arg it does not use changed) and makes the same bytes: the `COPY
/// --from` of it and the steps after it stay cached, as BuildKit finds them by the copied
/// content (issue 18 item 2).
#[test]
fn a_stage_rerun_to_the_same_bytes_leaves_the_copy_from_and_later_steps_cached() {
    let k = Kiln::with_busybox();
    let ctx = context(
        "FROM busybox AS build\nARG V\nRUN echo same > /out\n\
         FROM busybox\nCOPY --from=build /out /out\nRUN cat /out > /seen\n",
    );
    assert_ok(
        &build(&k, ctx.path(), &["--build-arg", "V=1"]),
        "first build",
    );
    let out = build(&k, ctx.path(), &["--build-arg", "V=2"]);
    assert_ok(&out, "build with another V");
    let log = stderr(&out);
    assert_eq!(step_status(&log, "RUN echo same"), "run", "{log}");
    assert_eq!(step_status(&log, "COPY --from=build"), "cached", "{log}");
    assert_eq!(step_status(&log, "RUN cat /out"), "cached", "{log}");
}

#[test]
fn no_cache_filter_reruns_the_stage_and_what_uses_it() {
    let k = Kiln::with_busybox();
    // The fresh stage makes `/fresh` the same and `/id` new on every run.
    let ctx = context(
        "FROM busybox AS keep\nRUN echo keep > /keep\n\
         FROM busybox AS fresh\nRUN echo fresh > /fresh && cat /proc/sys/kernel/random/uuid > /id\n\
         FROM busybox\nCOPY --from=keep /keep /keep\nCOPY --from=fresh /fresh /fresh\n\
         COPY --from=fresh /id /id\n",
    );
    assert_ok(&build(&k, ctx.path(), &[]), "first build");
    let out = build(&k, ctx.path(), &["--no-cache-filter", "fresh,nosuchstage"]);
    assert_ok(&out, "build with --no-cache-filter");
    let log = stderr(&out);
    let status_of = |part: &str| step_status(&log, part);
    assert_eq!(status_of("RUN echo keep"), "cached", "{log}");
    assert_eq!(status_of("RUN echo fresh"), "run", "{log}");
    assert_eq!(status_of("COPY --from=fresh /id"), "run", "{log}");
    // Its key is the content it copies, as BuildKit's: the same bytes, so it is cached.
    assert_eq!(status_of("COPY --from=fresh /fresh"), "cached", "{log}");
    assert!(
        log.contains("`--no-cache-filter nosuchstage`"),
        "an unknown stage is warned about:\n{log}"
    );
}

#[test]
fn plain_progress_shows_the_failed_steps_output_tail_and_a_summary() {
    let k = Kiln::with_busybox();
    let ctx = context(
        "FROM busybox\nRUN for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i; done; exit 1\n",
    );
    let out = build(&k, ctx.path(), &[]);
    assert!(!out.status.success());
    let log = stderr(&out);
    assert!(
        log.contains("------\n > [2/2] RUN"),
        "no error block:\n{log}"
    );
    assert!(log.contains("line 12"), "{log}");
    assert!(log.contains("1 failed"), "no summary:\n{log}");
}

#[test]
fn tty_progress_draws_on_a_terminal_and_ends_with_the_summary() {
    let k = Kiln::with_busybox();
    let ctx = context("FROM busybox\nRUN echo from-the-step && sleep 0.3\n");
    // `script` gives kiln a pseudo-terminal, as a user's shell would (bsdutils, always present).
    let cmd = format!(
        "{} build --progress auto {}",
        env!("CARGO_BIN_EXE_kiln"),
        ctx.path().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("KILN_ROOT", k.root.path())
        .env_remove("KILN_PROGRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out, "kiln build on a terminal");
    // What the terminal received (script copies it to stdout).
    let screen = common::stdout(&out);
    assert!(screen.contains("DONE"), "no DONE line:\n{screen}");
    assert!(screen.contains("RUN echo from-the-step"), "{screen}");
    assert!(
        screen.contains("2 steps: 0 cached, 2 run"),
        "no summary:\n{screen}"
    );
    assert!(
        !screen.contains("#2 from-the-step"),
        "plain lines on a terminal:\n{screen}"
    );
}
