//! Issue 11, items 8 and 11: kiln processes sharing one store wait for each other instead of
//! failing (readers never wait at all), and `--platform` never labels the host's binaries as
//! another platform's. They need root, as CI runs them.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

fn spawn_build(k: &Kiln, global: &[&str], ctx: &Path, tag: &str) -> Child {
    k.cmd()
        .args(global)
        .args(["build", "--progress", "plain", "-t", tag])
        .arg(ctx)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln build")
}

/// Waits until `child` owns the store (its pid is the first word of the lock file).
fn wait_until_held_by(k: &Kiln, child: &mut Child) {
    let pid = child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(k.root.path().join("lock")).unwrap_or_default();
        if text.split_whitespace().next() == Some(pid.as_str()) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the holder exited ({status}) before it was seen holding the store");
        }
        assert!(Instant::now() < deadline, "the holder never took the store");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().expect("wait for kiln");
    assert_ok(&out, what);
    out
}

/// A context whose `RUN` holds the store for `secs` seconds; `salt` keeps it out of the cache.
fn sleeping_context(secs: u32, salt: &str) -> tempfile::TempDir {
    temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            format!("FROM busybox\nRUN sleep {secs} && echo {salt} > /salt\n").as_str(),
        )],
    )
}

#[test]
fn builds_started_together_on_one_store_failed_with_store_is_locked() {
    let k = Kiln::with_busybox();
    // Five different contexts for eight builds: some builds are identical.
    let contexts: Vec<tempfile::TempDir> = (0..5)
        .map(|i| {
            temp_context(
                "kiln-ctx-",
                &[
                    (
                        "Dockerfile",
                        "FROM busybox\nCOPY f /f\nRUN cat /f > /g && sleep 1\n",
                    ),
                    ("f", format!("context {i}\n").as_str()),
                ],
            )
        })
        .collect();
    for wave in [0..4, 4..8] {
        let children: Vec<(usize, Child)> = wave
            .map(|i| {
                let ctx = contexts[i % contexts.len()].path();
                (i, spawn_build(&k, &[], ctx, &format!("t{i}")))
            })
            .collect();
        for (i, child) in children {
            finish(child, &format!("concurrent build {i}"));
        }
    }
    let out = k.run(&["images"]);
    assert_ok(&out, "kiln images");
    let names = stdout(&out);
    for i in 0..8 {
        assert!(
            names.contains(&format!("docker.io/library/t{i}:latest")),
            "{names}"
        );
    }
    // Identical contexts made identical images.
    let run = |tag: &str| {
        let out = k.run(&["run", "--rm", tag, "cat", "/g"]);
        assert_ok(&out, "kiln run");
        stdout(&out)
    };
    assert_eq!(run("t1"), "context 1\n");
    assert_eq!(run("t6"), "context 1\n");
}

#[test]
fn kiln_images_failed_while_a_build_held_the_store() {
    let k = Kiln::with_busybox();
    let ctx = sleeping_context(5, &unique("images"));
    let mut holder = spawn_build(&k, &[], ctx.path(), "slow");
    wait_until_held_by(&k, &mut holder);
    let started = Instant::now();
    let out = k.run(&["images"]);
    let took = started.elapsed();
    assert_ok(&out, "kiln images while a build runs");
    assert!(
        stdout(&out).contains("docker.io/library/busybox:latest"),
        "{}",
        stdout(&out)
    );
    assert!(
        took < Duration::from_secs(2),
        "kiln images waited {took:?} for the build"
    );
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the build was not running any more: the test proves nothing"
    );
    finish(holder, "the build holding the store");
    let out = k.run(&["images"]);
    assert!(stdout(&out).contains("docker.io/library/slow:latest"));
}

#[test]
fn a_second_build_failed_instead_of_waiting_for_the_first() {
    let k = Kiln::with_busybox();
    let ctx = sleeping_context(4, &unique("second"));
    let mut first = spawn_build(&k, &[], ctx.path(), "first");
    wait_until_held_by(&k, &mut first);
    let second = spawn_build(&k, &[], ctx.path(), "second");
    let first_pid = first.id();
    finish(first, "the first build");
    let out = finish(second, "the second build");
    let err = stderr(&out);
    let waiting: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("waiting for the store"))
        .collect();
    assert_eq!(waiting.len(), 1, "the waiting line, once:\n{err}");
    assert!(
        waiting[0].contains(&format!("process {first_pid} (kiln build)")),
        "{err}"
    );
    // The second build found the first's steps in the cache.
    assert!(err.contains("(0 steps run"), "{err}");
}

#[test]
fn lock_timeout_could_not_give_up_on_a_busy_store() {
    let k = Kiln::with_busybox();
    let ctx = sleeping_context(8, &unique("timeout"));
    let mut holder = spawn_build(&k, &[], ctx.path(), "holder");
    wait_until_held_by(&k, &mut holder);
    let pid = holder.id();
    let other = temp_context("kiln-ctx-", &[("Dockerfile", "FROM busybox\n")]);

    let started = Instant::now();
    let out = k
        .cmd()
        .args(["--lock-timeout", "1s", "build"])
        .arg(other.path())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "gave up after {took:?}"
    );
    assert!(
        err.contains(&format!("process {pid} (kiln build)")) && err.contains("`--lock-timeout`"),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("waiting for the store"))
            .count(),
        1,
        "it said that it waited:\n{err}"
    );

    // `0` fails at once, naming the holder just the same.
    let started = Instant::now();
    let out = k
        .cmd()
        .args(["--lock-timeout", "0", "build"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(3), "`0` waited");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("process {pid} (kiln build)")),
        "{err}"
    );
    assert!(
        !err.lines().any(|l| l.starts_with("waiting for the store")),
        "{err}"
    );

    let out = k.run(&["--lock-timeout", "soon", "images"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`soon` is not a duration"),
        "{}",
        stderr(&out)
    );

    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder ended too soon"
    );
    finish(holder, "the build holding the store");
}

#[test]
fn ctrl_c_while_waiting_for_the_store_left_it_unusable() {
    let k = Kiln::with_busybox();
    let ctx = sleeping_context(5, &unique("interrupt"));
    let mut holder = spawn_build(&k, &[], ctx.path(), "holder");
    wait_until_held_by(&k, &mut holder);
    let other = temp_context("kiln-ctx-", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let mut waiter = spawn_build(&k, &[], other.path(), "waiter");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter did not wait"
    );
    let sent = std::process::Command::new("kill")
        .args(["-INT", &waiter.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let started = Instant::now();
    let out = waiter.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "Ctrl-C took {:?}",
        started.elapsed()
    );
    finish(holder, "the build holding the store");
    assert_ok(
        &k.run(&[
            "build",
            "--progress",
            "plain",
            other.path().to_str().unwrap(),
        ]),
        "a build after the interrupted wait",
    );
}

/// An architecture this host cannot run, and the host's own (Go names).
fn foreign_and_host_arch() -> (&'static str, &'static str) {
    if cfg!(target_arch = "x86_64") {
        ("arm64", "amd64")
    } else if cfg!(target_arch = "aarch64") {
        ("amd64", "arm64")
    } else {
        ("s390x", std::env::consts::ARCH)
    }
}

#[test]
fn build_platform_ran_the_host_base_and_labelled_it_another_platform() {
    let (foreign_arch, host_arch) = foreign_and_host_arch();
    let foreign = format!("linux/{foreign_arch}");
    let host = format!("linux/{host_arch}");
    let k = Kiln::with_busybox();
    // With no emulator registered (an empty binfmt_misc: the host's may have QEMU's).
    let no_handlers = tempfile::tempdir().unwrap();
    let build = |k: &Kiln, df: &str, tag: &str| {
        let ctx = temp_context("kiln-ctx-", &[("Dockerfile", df), ("f", "data\n")]);
        k.cmd()
            .env("KILN_BINFMT_MISC_DIR", no_handlers.path())
            .args([
                "build",
                "--progress",
                "plain",
                "--platform",
                &foreign,
                "-t",
                tag,
                ctx.path().to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };

    // A RUN for a platform this host cannot run is refused before anything runs.
    let out = build(&k, "FROM scratch\nCOPY f /f\nRUN true\n", "refused");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "Dockerfile:3: RUN for {foreign}: this {host} host cannot run {foreign} programs: no \
             emulator for {foreign} is registered"
        )),
        "{err}"
    );

    // The host's single-platform busybox, from a registry, is never taken for another platform.
    let (reg, _guard) = registry();
    let base = format!("{reg}/{}:latest", unique("hostonly"));
    assert_ok(&k.run(&["push", "busybox", &base]), "push busybox");
    let k2 = Kiln::new();
    let out = build(&k2, &format!("FROM {base}\nRUN uname -m > /arch\n"), "lie");
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&foreign), "{}", stderr(&out));
    // Not even without RUN: the config would say `foreign_arch` over the host's binaries.
    let out = build(&k2, &format!("FROM {base}\nCOPY f /f\n"), "lie");
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("is an image for {host} only, not {foreign}")),
        "{err}"
    );
    let images = stdout(&k2.run(&["images"]));
    assert!(!images.contains("library/lie"), "{images}");

    // Cross-building as BuildKit does still works: RUN on the build platform, the result for
    // the target one, with nothing of the host's labelled foreign.
    let out = build(
        &k2,
        &format!(
            "FROM --platform=$BUILDPLATFORM {base} AS tools\nARG TARGETARCH\n\
             RUN echo \"$TARGETARCH\" > /target\n\
             FROM scratch\nCOPY --from=tools /target /target\nCOPY f /f\n"
        ),
        "cross",
    );
    assert_ok(&out, "cross build");
    let config = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!(
                "oci:{}/images:docker.io/library/cross:latest",
                k2.root.path().display()
            ),
        ],
    );
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["architecture"], foreign_arch, "{config}");
    // And the foreign image is not run on this host without its emulator.
    let out = k2
        .cmd()
        .env("KILN_BINFMT_MISC_DIR", no_handlers.path())
        .args(["run", "--rm", "cross", "/target"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot run `cross`, an image for {foreign}: this {host} host cannot run {foreign} \
             programs: no emulator"
        )),
        "{err}"
    );
}
