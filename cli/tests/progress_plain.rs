//! The plain progress view shows a step's output as whole lines, as BuildKit does: pieces of a
//! line written apart are joined, `\r`-redrawn progress bars show their last state, and each
//! line carries the seconds since the step started (`#5 1.234 Collecting flask`).

mod common;

use common::{assert_ok, stderr, temp_context, Kiln};
use std::process::Output;

fn build(k: &Kiln, dockerfile: &str, progress: &str) -> Output {
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", dockerfile)]);
    k.run(&[
        "build",
        "--progress",
        progress,
        ctx.path().to_str().unwrap(),
    ])
}

/// `1.234`: digits, a dot and three digits (BuildKit's precision under 10 s).
fn is_seconds(s: &str) -> bool {
    let Some((whole, frac)) = s.split_once('.') else {
        return false;
    };
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() == 3
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// The number of the step whose header contains `name`.
fn step_number(log: &str, name: &str) -> String {
    log.lines()
        .find(|l| l.starts_with('#') && l.contains(name))
        .and_then(|l| l[1..].split(' ').next())
        .unwrap_or_else(|| panic!("no step `{name}`:\n{log}"))
        .to_string()
}

/// The output lines of step `n`: `(seconds, text)`, without its header and status lines.
fn output_lines(log: &str, n: &str, header: &str) -> Vec<(String, String)> {
    let prefix = format!("#{n} ");
    log.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| !l.contains(header) && !l.starts_with("DONE ") && !l.starts_with("ERROR"))
        .map(|l| {
            let (secs, text) = l.split_once(' ').unwrap_or((l, ""));
            (secs.to_string(), text.to_string())
        })
        .collect()
}

#[test]
fn npm_warn_written_in_pieces_and_a_cr_progress_bar_come_out_as_whole_lines() {
    let k = Kiln::with_busybox();
    let out = build(
        &k,
        "FROM busybox\n\
         RUN printf npm && sleep 0.1 && printf ' WARN' && sleep 0.1 && printf ' old lockfile\\n' \
         && printf 'a\\rb\\rc\\n'\n",
        "plain",
    );
    assert_ok(&out, "kiln build");
    let log = stderr(&out);
    let n = step_number(&log, "RUN printf npm");
    let lines = output_lines(&log, &n, "RUN printf npm");
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        ["npm WARN old lockfile", "c"],
        "one line each:\n{log}"
    );
    for (secs, text) in &lines {
        assert!(
            is_seconds(secs),
            "`{text}` has no seconds prefix (`{secs}`):\n{log}"
        );
    }
    assert!(!log.contains('\r'), "a `\\r` reached the log:\n{log:?}");
}

#[test]
fn a_failed_steps_error_shows_whole_lines_with_their_times() {
    let k = Kiln::with_busybox();
    let out = build(
        &k,
        "FROM busybox\nRUN printf 'np' && sleep 0.1 && printf 'm ERR! broke\\n' && exit 3\n",
        "plain",
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    let n = step_number(&log, "RUN printf 'np'");
    // In the live output and in the error block, with its time as BuildKit shows it.
    let whole: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with('#') && l.ends_with(" npm ERR! broke"))
        .collect();
    assert!(
        whole.len() >= 2,
        "not whole in the output and the error:\n{log}"
    );
    for l in &whole {
        let secs = l
            .strip_prefix(&format!("#{n} "))
            .and_then(|l| l.split(' ').next());
        assert!(secs.is_some_and(is_seconds), "`{l}`:\n{log}");
    }
    assert!(
        !log.lines()
            .any(|l| l.ends_with(" np") || l.ends_with(" m ERR! broke")),
        "split at a write:\n{log}"
    );
    // The error message's tail (from the solver) has the whole line too.
    assert!(log.contains("> npm ERR! broke"), "{log}");
}

#[test]
fn a_line_left_unfinished_shows_after_a_pause_and_the_rest_follows_as_a_line() {
    let k = Kiln::with_busybox();
    let out = build(
        &k,
        "FROM busybox\nRUN printf 'Downloading...' && sleep 2.5 && printf ' done\\n'\n",
        "plain",
    );
    assert_ok(&out, "kiln build");
    let log = stderr(&out);
    let n = step_number(&log, "RUN printf 'Downloading");
    let lines = output_lines(&log, &n, "RUN printf 'Downloading");
    let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts, ["Downloading...", " done"], "{log}");
    let secs: Vec<f64> = lines.iter().map(|(s, _)| s.parse().unwrap()).collect();
    assert!(secs[0] < 2.0 && secs[1] >= 2.4, "times {secs:?}:\n{log}");
}

#[test]
fn json_progress_carries_one_line_per_log_event() {
    let k = Kiln::with_busybox();
    let out = build(
        &k,
        "FROM busybox\nRUN printf 'one' && sleep 0.1 && printf ' two\\nthree\\n'\n",
        "json",
    );
    assert_ok(&out, "kiln build");
    let log = stderr(&out);
    let data: Vec<String> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "log")
        .map(|v| {
            assert!(v["step_time"].is_f64() || v["step_time"].is_u64(), "{v}");
            v["data"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(data, ["one two\n", "three\n"], "{log}");
}
