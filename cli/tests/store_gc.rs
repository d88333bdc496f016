//! A store that keeps its size: `kiln system df` against `du`, `kiln prune` with `--all`,
//! `--keep-storage` (least recently used first) and `--filter until=`, the config file's `[gc]`
//! policy after builds, tagged images surviving every collection, and a collection killed with
//! `kill -9` leaving a store that `kiln check` passes and the next build uses.

mod common;

use common::*;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// `kiln system df --bytes`: kind → (count, size, reclaimable); `Other` and `Total` have no
/// count (0).
fn df(k: &Kiln) -> HashMap<String, (u64, u64, u64)> {
    let out = k.run(&["system", "df", "--bytes"]);
    assert_ok(&out, "kiln system df");
    let text = stdout(&out);
    let mut rows = HashMap::new();
    for line in text.lines().skip(1) {
        let (name, rest) = line.split_at(14);
        let nums: Vec<u64> = rest
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        let row = match nums[..] {
            [c, s, r] => (c, s, r),
            [s, r] => (0, s, r),
            _ => panic!("unexpected `system df` row: {line}\n{text}"),
        };
        rows.insert(name.trim().to_string(), row);
    }
    rows
}

/// What `du` says the store takes, in bytes.
fn du(root: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success());
    stdout(&out)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_matches_du(k: &Kiln, when: &str) {
    let reported = df(k)["Total"].1;
    let measured = du(k.root.path());
    let diff = reported.abs_diff(measured) as f64;
    assert!(
        diff <= measured as f64 * 0.05,
        "{when}: kiln reports {reported} bytes, du measures {measured}"
    );
}

/// `(steps run, steps cached)` from a build's summary line.
fn steps(out: &std::process::Output) -> (usize, usize) {
    let err = stderr(out);
    let line = err
        .lines()
        .find(|l| l.starts_with("built "))
        .unwrap_or_else(|| panic!("no summary line:\n{err}"));
    let inner = line.split_once('(').unwrap().1;
    let mut nums = inner
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().unwrap());
    (nums.next().unwrap(), nums.next().unwrap())
}

fn check_is_clean(k: &Kiln, when: &str) {
    let out = k.run(&["check"]);
    assert_ok(&out, &format!("kiln check {when}"));
}

const LAYERED: &str = "FROM busybox\n\
     RUN --mount=type=cache,target=/c dd if=/dev/urandom of=/c/x bs=1k count=300 2>/dev/null\n\
     RUN dd if=/dev/urandom of=/big bs=1k count=2000 2>/dev/null\n\
     RUN seq 1 500 | while read i; do echo $i > /f$i; done\n";

#[test]
fn system_df_matches_du_and_prune_all_keeps_tagged_images() {
    let k = Kiln::with_busybox();
    let ctx = temp_context("kiln-gc-", &[("Dockerfile", LAYERED)]);
    assert_ok(&build(&k, ctx.path(), &["-t", "app"]), "build");
    let rows = df(&k);
    assert_eq!(rows["Images"].0, 2, "busybox and app");
    assert!(
        rows["Build Cache"].0 >= 3 && rows["Build Cache"].1 > 2 << 20,
        "{rows:?}"
    );
    assert_eq!(rows["Cache Mounts"].0, 1);
    assert!(rows["Cache Mounts"].2 >= 300 << 10, "{rows:?}");
    assert_eq!(rows["Images"].2, 0, "tagged images are never reclaimable");
    assert_matches_du(&k, "after a build");

    let out = k.run(&["prune", "--all"]);
    assert_ok(&out, "kiln prune --all");
    assert!(
        stdout(&out).contains("removed 1 cache mounts"),
        "{}",
        stdout(&out)
    );
    let after = df(&k);
    assert_eq!(after["Build Cache"].0, 0, "{after:?}");
    assert_eq!(after["Cache Mounts"].0, 0, "{after:?}");
    assert_eq!(after["Total"].2, 0, "nothing left to reclaim: {after:?}");
    assert_eq!(after["Images"], rows["Images"], "images are untouched");
    assert_matches_du(&k, "after prune --all");
    check_is_clean(&k, "after prune --all");

    // The tagged image still runs, and a rebuild runs every step again.
    let out = k.run(&["run", "--rm", "app", "cat", "/f500"]);
    assert_ok(&out, "run app after prune --all");
    assert_eq!(stdout(&out).trim(), "500");
    let out = build(&k, ctx.path(), &["-t", "app"]);
    assert_ok(&out, "rebuild after prune --all");
    assert_eq!(steps(&out).1, 0, "{}", stderr(&out));
}

fn one_mib_context(which: &str) -> tempfile::TempDir {
    temp_context(
        "kiln-gc-lru-",
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nRUN dd if=/dev/urandom of=/blob bs=1k count=1024 2>/dev/null && echo {which} > /which\n"
            ),
        )],
    )
}

#[test]
fn keep_storage_drops_the_least_recently_used_builds_first() {
    let k = Kiln::with_busybox();
    let (a, b, c) = (
        one_mib_context("a"),
        one_mib_context("b"),
        one_mib_context("c"),
    );
    // Uses are recorded in seconds: a second between them orders them.
    for ctx in [&a, &b, &c] {
        assert_ok(&build(&k, ctx.path(), &[]), "first build");
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Using `a` again makes `b` the least recently used.
    let out = build(&k, a.path(), &[]);
    assert_ok(&out, "rebuild a");
    assert_eq!(steps(&out).0, 0, "{}", stderr(&out));

    // What nothing reaches goes whatever the limit; take it first, so the limit below is
    // what the results alone must meet.
    assert_ok(&k.run(&["prune"]), "prune what nothing reaches");
    let cache = df(&k)["Build Cache"].1;
    // Room for all but about one build's 2 MiB (snapshot and layer blob).
    let keep = cache - (1 << 20);
    let out = k.run(&["prune", "--keep-storage", &keep.to_string()]);
    assert_ok(&out, "prune --keep-storage");
    let left = df(&k)["Build Cache"].1;
    assert!(
        left <= keep,
        "kept {left} bytes of build cache, asked for {keep}"
    );
    assert!(
        left + (4 << 20) > cache,
        "dropped more than one build: {cache} → {left}"
    );
    check_is_clean(&k, "after prune --keep-storage");

    for (ctx, cached) in [(&a, true), (&c, true), (&b, false)] {
        let out = build(&k, ctx.path(), &[]);
        assert_ok(&out, "rebuild after prune --keep-storage");
        let (run, _) = steps(&out);
        assert_eq!(run == 0, cached, "{}", stderr(&out));
    }
    assert_matches_du(&k, "after LRU pruning");
}

#[test]
fn filter_until_keeps_what_was_used_recently() {
    let k = Kiln::with_busybox();
    let ctx = one_mib_context("u");
    assert_ok(&build(&k, ctx.path(), &[]), "build");
    let out = k.run(&["prune", "--filter", "until=1h"]);
    assert_ok(&out, "prune --filter until=1h");
    assert!(
        stdout(&out).contains(" 0 cache results"),
        "{}",
        stdout(&out)
    );
    assert_eq!(steps(&build(&k, ctx.path(), &[])).0, 0);

    std::thread::sleep(Duration::from_millis(2100));
    let out = k.run(&["prune", "--filter", "until=1s"]);
    assert_ok(&out, "prune --filter until=1s");
    assert!(
        !stdout(&out).contains(" 0 cache results"),
        "{}",
        stdout(&out)
    );
    check_is_clean(&k, "after prune --filter");
    let out = build(&k, ctx.path(), &[]);
    assert!(steps(&out).0 >= 1, "{}", stderr(&out));

    let out = k.run(&["prune", "--filter", "since=1h"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("until=DURATION"), "{}", stderr(&out));
}

#[test]
fn the_config_files_gc_policy_runs_after_each_build() {
    let k = Kiln::with_busybox();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[gc]\nkeep-storage = \"0\"\nkeep-duration = \"7d\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let ctx = temp_context("kiln-gc-policy-", &[("Dockerfile", LAYERED)]);
    let out = build(&k, ctx.path(), &["--config", config, "-t", "app"]);
    assert_ok(&out, "build with a GC policy");
    assert!(
        stderr(&out).contains("gc (config file `[gc]`)"),
        "{}",
        stderr(&out)
    );
    let rows = df(&k);
    assert_eq!(rows["Build Cache"].0, 0, "{rows:?}");
    assert_eq!(rows["Cache Mounts"].0, 0, "{rows:?}");
    check_is_clean(&k, "after the policy's GC");
    let out = k.run(&["run", "--rm", "app", "cat", "/f7"]);
    assert_ok(&out, "run the image the policy kept");
    assert_eq!(stdout(&out).trim(), "7");

    // Without the policy the cache stays.
    assert_ok(
        &build(&k, ctx.path(), &["-t", "app"]),
        "build without a policy",
    );
    assert!(df(&k)["Build Cache"].0 >= 3);
}

/// Fills the store with build cache worth collecting: many small files in several snapshots.
fn fill(k: &Kiln, n: usize) {
    let ctx = temp_context(
        "kiln-gc-kill-",
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\n\
                 RUN --mount=type=cache,target=/c seq 1 300 | while read i; do echo $i > /c/$i; done\n\
                 RUN mkdir /a && cd /a && seq 1 1500 | while read i; do echo {n}-$i > $i; done\n\
                 RUN mkdir /b && cd /b && seq 1 1500 | while read i; do echo {n}-$i > $i; done\n\
                 RUN dd if=/dev/urandom of=/big bs=1k count=4096 2>/dev/null\n"
            ),
        )],
    );
    assert_ok(&build(k, ctx.path(), &[]), "fill the store");
}

#[test]
fn a_gc_killed_at_any_point_leaves_a_store_the_next_build_uses() {
    let k = Kiln::with_busybox();
    let app = temp_context(
        "kiln-gc-app-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir /d && seq 1 200 | while read i; do echo $i > /d/$i; done\n",
        )],
    );
    assert_ok(&build(&k, app.path(), &["-t", "app"]), "build app");

    // How long a whole collection takes, to kill the next ones part-way.
    fill(&k, 0);
    fill(&k, 1);
    let started = Instant::now();
    assert_ok(&k.run(&["prune", "--all"]), "a whole prune");
    let whole = started.elapsed();

    let mut killed = 0;
    for (i, tenths) in [1u32, 3, 5, 7, 9].into_iter().enumerate() {
        fill(&k, 2 * i + 2);
        fill(&k, 2 * i + 3);
        let mut child = k
            .cmd()
            .args(["prune", "--all"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole * tenths / 10);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.signal() == Some(9) {
            killed += 1;
        }
        check_is_clean(&k, &format!("after a GC killed at {tenths}0%"));
        // The tagged image survives, and the next build is right.
        let out = k.run(&["run", "--rm", "app", "cat", "/d/200"]);
        assert_ok(&out, "run app after a killed GC");
        assert_eq!(stdout(&out).trim(), "200");
        let out = build(&k, app.path(), &["-t", "app"]);
        assert_ok(&out, "build after a killed GC");
        let out = k.run(&["run", "--rm", "app", "sh", "-c", "ls /d | wc -l"]);
        assert_eq!(stdout(&out).trim(), "200");
    }
    assert!(
        killed >= 2,
        "only {killed} of 5 collections were still running when killed (a whole one took {whole:?})"
    );
    // And a collection that is let finish leaves nothing behind.
    assert_ok(&k.run(&["prune", "--all"]), "prune after the kills");
    check_is_clean(&k, "at the end");
    assert_eq!(df(&k)["Total"].2, 0);
    assert_matches_du(&k, "at the end");
}

#[test]
fn a_prune_started_during_a_build_waits_for_it_and_keeps_its_image() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-gc-busy-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN sleep 3 && echo done > /done\n",
        )],
    );
    let building = k
        .cmd()
        .args(["build", "--progress", "plain", "-t", "slow"])
        .arg(ctx.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = k.root.path().join("lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains("kiln build")
    {
        assert!(Instant::now() < deadline, "the build never took the store");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pruned = k.run(&["prune", "--all"]);
    let built = building.wait_with_output().unwrap();
    assert_ok(&built, "the build a prune waited for");
    assert_ok(&pruned, "the prune that waited");
    assert!(
        stderr(&pruned).contains("(kiln build) holds it"),
        "{}",
        stderr(&pruned)
    );
    check_is_clean(&k, "after a prune that waited for a build");
    let out = k.run(&["run", "--rm", "slow", "cat", "/done"]);
    assert_ok(&out, "run the image built during the prune");
    assert_eq!(stdout(&out).trim(), "done");
}
