//! End-to-end tests of how the solver schedules work and cleans up through `kiln build`: the
//! local context is hashed while earlier steps run, a step's timer starts when it gets its
//! `--jobs` slot, and a canceled `RUN` leaves no snapshot behind.

mod common;

use common::{assert_ok, stderr, temp_context, Kiln};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

fn json_build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["build", "--progress", "json"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    k.run(&args)
}

fn json_events(out: &Output) -> Vec<serde_json::Value> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event `{l}`: {e}")))
        .collect()
}

fn event<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
    name_part: &str,
) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == kind && e["name"].as_str().is_some_and(|n| n.contains(name_part)))
        .unwrap_or_else(|| panic!("no `{kind}` event for `{name_part}` in {events:#?}"))
}

fn time(e: &serde_json::Value) -> f64 {
    e["time"]
        .as_f64()
        .unwrap_or_else(|| panic!("no time in {e}"))
}

/// The snapshot directories of a store.
fn snapshots(k: &Kiln) -> BTreeSet<String> {
    std::fs::read_dir(k.root.path().join("snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_context_was_hashed_only_when_the_copy_got_its_turn() {
    let k = Kiln::with_busybox();
    let mut files = vec![(
        "Dockerfile".to_string(),
        "FROM busybox\nRUN sleep 1.5 && echo ran > /ran\nCOPY data /data\nRUN ls /data | wc -l\n"
            .to_string(),
    )];
    for i in 0..200 {
        files.push((format!("data/f{i}"), format!("file {i}\n")));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let ctx = temp_context("kiln-ctx-", &refs);
    let out = json_build(&k, ctx.path(), &[]);
    assert_ok(&out, "build that copies the context after a RUN");
    let events = json_events(&out);
    // The context is hashed while the RUN before the COPY sleeps.
    let context = event(&events, "context", "load build context");
    assert_eq!(context["files"], 200, "{context}");
    assert_eq!(context["hashed"], 200, "a new context is read: {context}");
    let ctx_done = time(context);
    let run_done = time(event(&events, "done", "RUN sleep 1.5"));
    assert!(
        ctx_done < run_done,
        "the context was hashed after the RUN ended ({ctx_done} >= {run_done}): {events:#?}"
    );
    let copy_started = time(event(&events, "started", "COPY data /data"));
    assert!(copy_started >= run_done, "{events:#?}");
    // Rebuilt unchanged, the context is checked by `stat` alone: no file is read again.
    let out = json_build(&k, ctx.path(), &[]);
    assert_ok(&out, "rebuild");
    let events = json_events(&out);
    let context = event(&events, "context", "load build context");
    assert_eq!(context["files"], 200, "{context}");
    assert_eq!(context["hashed"], 0, "the memo was not used: {context}");
}

#[test]
fn the_step_timer_counted_the_wait_for_a_jobs_slot() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox AS a\nRUN sleep 1 && echo a > /a\n\
             FROM busybox AS b\nRUN sleep 1 && echo b > /b\n\
             FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
        )],
    );
    let out = json_build(&k, ctx.path(), &["--jobs", "1"]);
    assert_ok(&out, "build of two stages with one slot");
    let events = json_events(&out);
    for stage in ["[a 2/2]", "[b 2/2]"] {
        let done = event(&events, "done", stage);
        let elapsed = done["elapsed"].as_f64().unwrap();
        // The step itself takes about 1 s; the other stage's second was spent waiting.
        assert!(
            (0.9..1.8).contains(&elapsed),
            "{stage} took {elapsed}s by its timer: {events:#?}"
        );
        let started = time(event(&events, "started", stage));
        assert!(
            (time(done) - started - elapsed).abs() < 0.3,
            "{stage}: `started` is not when the timer started: {events:#?}"
        );
    }
    // With one slot, the second step starts when the first ends.
    let a = time(event(&events, "started", "[a 2/2]"));
    let b = time(event(&events, "started", "[b 2/2]"));
    assert!((a - b).abs() >= 0.9, "both ran at once with --jobs 1");
}

#[test]
fn a_canceled_run_left_its_snapshot_until_gc() {
    let k = Kiln::with_busybox();
    // A first build unpacks the base image: its snapshots are the baseline.
    let warm = temp_context("kiln-ctx-", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    assert_ok(&json_build(&k, warm.path(), &[]), "warm-up build");
    let before = snapshots(&k);
    let ctx = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox AS slow\nRUN echo slow-started && sleep 37 && echo slow > /slow\n\
             FROM busybox AS bad\nRUN sleep 1 && exit 4\n\
             FROM busybox\nCOPY --from=slow /slow /slow\nCOPY --from=bad /etc/passwd /x\n",
        )],
    );
    let started = std::time::Instant::now();
    let out = json_build(&k, ctx.path(), &["--jobs", "2"]);
    assert!(!out.status.success(), "the build must fail");
    assert!(
        started.elapsed().as_secs() < 20,
        "the sibling was not stopped"
    );
    let events = json_events(&out);
    event(&events, "canceled", "sleep 37");
    let after = snapshots(&k);
    let left: Vec<&String> = after.difference(&before).collect();
    assert!(
        left.is_empty(),
        "the failed and the canceled RUN left snapshots {left:?} in the store"
    );
}
