//! A hostile `RUN` must not take the host's pids, memory or CPU: every step runs in a cgroup of
//! its own with `--memory`, `--cpus` and `--pids-limit` (a pids limit even without flags), with
//! each runtime. They need root, as CI has it.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn context(dockerfile: &str) -> tempfile::TempDir {
    temp_context("kiln-limits-ctx-", &[("Dockerfile", dockerfile)])
}

fn build(k: &Kiln, ctx: &tempfile::TempDir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "--progress", "plain", "--no-cache"];
    args.extend_from_slice(extra);
    args.push(ctx.path().to_str().unwrap());
    k.run(&args)
}

/// The host path of `file` in the cgroup a `/proc/self/cgroup` line names, when that line is
/// the one of `controller` (a v1 hierarchy with it, or the v2 hierarchy offering it).
fn host_cgroup_file(line: &str, controller: &str, file: &str) -> Option<PathBuf> {
    let mut parts = line.splitn(3, ':');
    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mountinfo.lines() {
        let (left, right) = m.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (fstype, opts) = (right.next()?, right.nth(1)?);
        let matches = match fstype {
            "cgroup" => {
                controllers.split(',').any(|c| c == controller)
                    && opts.split(',').any(|o| o == controller)
            }
            "cgroup2" => controllers.is_empty(),
            _ => false,
        };
        let candidate = PathBuf::from(format!("{mount}{path}/{file}"));
        if matches && candidate.exists() {
            return Some(candidate);
        }
    }
    None
}

/// Builds a step that prints its `/proc/self/cgroup` and then sleeps; reads `file` of its
/// `controller` cgroup from the host while it runs. Returns the value (trimmed) and the lines.
fn read_while_step_runs(k: &Kiln, extra: &[&str], controller: &str, file: &str) -> String {
    let ctx = context("FROM busybox\nRUN cat /proc/self/cgroup && sleep 6\n");
    let mut args = vec!["build", "--progress", "plain", "--no-cache"];
    args.extend_from_slice(extra);
    args.push(ctx.path().to_str().unwrap());
    let mut child = k
        .cmd()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln");
    let stderr = child.stderr.take().unwrap();
    let mut value = None;
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push(line.clone());
        // `#2 0.012 0::/kiln/...`: the step's output line after its time.
        let Some((_, cg_line)) = line.strip_prefix("#2 ").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        if value.is_none() {
            if let Some(path) = host_cgroup_file(cg_line, controller, file) {
                value = Some((
                    cg_line.to_string(),
                    std::fs::read_to_string(&path).unwrap().trim().to_string(),
                ));
            }
        }
    }
    let status = child.wait().unwrap();
    let all = seen.join("\n");
    assert!(status.success(), "the build failed:\n{all}");
    let (line, value) =
        value.unwrap_or_else(|| panic!("no `{controller}` cgroup with `{file}`:\n{all}"));
    assert!(
        line.contains("/kiln/"),
        "the step is not in a cgroup of its own: `{line}`"
    );
    value
}

#[test]
fn fork_bomb_in_a_run_stops_at_the_pids_limit_and_leaves_nothing() {
    let k = Kiln::with_busybox();
    // Every 20 forks the step says how far it got; without a limit it would say `all 3000`.
    let ctx = context(
        "FROM busybox\nRUN i=0; while [ $i -lt 3000 ]; do sleep 3637 & i=$((i+1)); \
         [ $((i % 20)) = 0 ] && echo \"forked $i\"; done; echo all $i\n",
    );
    for runtime in runtimes() {
        let started = Instant::now();
        let out = build(&k, &ctx, &["--runtime", runtime, "--pids-limit", "200"]);
        let took = started.elapsed();
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{runtime}: the fork bomb ran:\n{err}"
        );
        assert!(
            err.contains("can't fork") && !err.contains("all 3000"),
            "{runtime}: {err}"
        );
        let reached = err
            .lines()
            .filter_map(|l| l.split("forked ").nth(1)?.trim().parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        assert!(
            (100..200).contains(&reached),
            "{runtime}: forked {reached} with a limit of 200:\n{err}"
        );
        assert!(
            took < Duration::from_secs(60),
            "{runtime}: took {took:?} to contain"
        );
        println!("{runtime}: the fork bomb reached {reached} processes, contained in {took:?}");
        assert_eq!(
            host_processes_with("sleep 3637"),
            Vec::<String>::new(),
            "{runtime}: processes of the fork bomb outlived its step"
        );
    }
}

#[test]
fn a_run_without_flags_still_gets_the_default_pids_limit() {
    let k = Kiln::with_busybox();
    assert_eq!(read_while_step_runs(&k, &[], "pids", "pids.max"), "16384");
    assert_eq!(
        read_while_step_runs(&k, &["--pids-limit", "-1"], "pids", "pids.max"),
        "max"
    );
}

#[test]
fn cpus_flag_sets_the_steps_cpu_quota() {
    let k = Kiln::with_busybox();
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists();
    if v1 {
        let quota = read_while_step_runs(&k, &["--cpus", "0.5"], "cpu", "cpu.cfs_quota_us");
        assert_eq!(quota, "50000");
    } else {
        let max = read_while_step_runs(&k, &["--cpus", "0.5"], "cpu", "cpu.max");
        assert_eq!(max, "50000 100000");
    }
}

#[test]
fn memory_hog_in_a_run_is_stopped_at_its_limit_and_says_so() {
    let k = Kiln::with_busybox();
    // `tail` keeps all of a file without newlines in memory: 200 MiB against a 64 MiB limit.
    let ctx = context("FROM busybox\nRUN head -c 200m /dev/zero | tail > /dev/null\n");
    for runtime in runtimes() {
        let out = build(&k, &ctx, &["--runtime", runtime, "--memory", "64m"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{runtime}: the hog was not stopped");
        let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("");
        assert!(
            last.contains("Dockerfile:2:")
                && last.contains("RUN head -c 200m /dev/zero")
                && last.contains("out of memory: the step used its 64 MiB limit")
                && !last.contains("exit code: 137"),
            "{runtime}: {err}"
        );
    }
    // The same step with room enough succeeds: the limit, not the step, was the problem.
    let ok = build(&k, &ctx, &["--memory", "1g"]);
    assert_ok(&ok, "the hog with a 1 GiB limit");
}

#[test]
fn memory_hog_in_kiln_run_is_stopped_at_its_limit_and_says_so() {
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run",
        "--rm",
        "--memory",
        "64m",
        "busybox",
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail > /dev/null",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("out of memory: the container used its 64 MiB limit"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_limit_values_are_refused_naming_the_flag() {
    let k = Kiln::with_busybox();
    let ctx = context("FROM busybox\nRUN true\n");
    let cases: &[(&str, &str, &str)] = &[
        ("--memory", "12x", "give a size such as `512m`"),
        ("--memory", "1m", "smallest memory limit is 6 MiB"),
        ("--memory", "99999999999999g", "too large"),
        ("--cpus", "half", "give a number of CPUs"),
        ("--cpus", "0.001", "at least `0.01`"),
        ("--cpus", "100000", "this host has only"),
        ("--pids-limit", "many", "whole number of processes"),
        ("--pids-limit", "-7", "`-1` for no limit"),
    ];
    for (flag, value, why) in cases {
        let want = format!("invalid `{flag}` value `{value}`: ");
        let out = build(&k, &ctx, &[flag, value]);
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(&want) && err.contains(why),
            "build {flag} {value}: {err}"
        );
        let out = k.run(&["run", "--rm", flag, value, "busybox", "true"]);
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(&want) && err.contains(why),
            "run {flag} {value}: {err}"
        );
    }
    // Docker's spellings of good values pass.
    let out = build(
        &k,
        &ctx,
        &["--memory", "1073741824", "--cpus", "1", "--pids-limit", "0"],
    );
    assert_ok(&out, "good limit values");
    let out = build(
        &k,
        &ctx,
        &["--memory", "0", "--cpus", "0", "--pids-limit", "-1"],
    );
    assert_ok(&out, "no limits, as Docker writes it");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_ROOT", k.root.path())
        .args(["run", "--rm", "-m", "512MiB", "busybox", "true"])
        .output()
        .unwrap();
    assert_ok(&out, "kiln run -m 512MiB");
}
