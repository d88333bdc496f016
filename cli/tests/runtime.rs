//! End-to-end tests of `--runtime runc|crun` (the same spec under an external OCI runtime) and of
//! the resource limits every container gets. They need root and runc, as CI has them.

mod common;

use common::*;
use std::path::Path;

/// A build context with these files, removed when dropped.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    temp_context("kiln-runtime-ctx-", files)
}

/// `kiln build` with SOURCE_DATE_EPOCH set, so that two builds of the same steps give the same
/// image; returns the output.
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "--progress", "plain", "--no-cache"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    k.cmd()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(&args)
        .output()
        .expect("run kiln")
}

/// The manifest digest of `built sha256:... in` on stderr.
fn built_digest(out: &std::process::Output) -> String {
    let err = stderr(out);
    err.lines()
        .find_map(|l| l.strip_prefix("built "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `built` line in:\n{err}"))
        .to_string()
}

/// The diff_ids of image `name`'s layers, from `--output type=oci,tar=false`.
fn diff_ids(k: &Kiln, ctx: &Path, extra: &[&str]) -> (String, Vec<String>) {
    let out_dir = tempfile::tempdir().unwrap();
    let dest = format!(
        "type=oci,dest={},tar=false",
        out_dir.path().join("layout").display()
    );
    let out = build(k, ctx, &[extra, &["-o", &dest]].concat());
    assert_ok(&out, &format!("kiln build {extra:?}"));
    let layout = out_dir.path().join("layout");
    let blob = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    let index = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(layout.join("index.json")).unwrap(),
    )
    .unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    let ids = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    (built_digest(&out), ids)
}

/// Steps that touch what a runtime could leave behind: mount points of every kind (missing in
/// the image, nested under /dev), /etc/hosts and friends, a workdir, a non-root user.
const LAYERS_DOCKERFILE: &str = "FROM busybox\n\
    RUN echo hello > /hello && mkdir -p /app/data && echo x > /app/data/x && chown -R 65534 /app/data\n\
    WORKDIR /app\n\
    RUN --mount=type=tmpfs,target=/scratch --mount=type=cache,target=/var/cache/thing \
        --mount=type=bind,target=/ctx echo y > /app/y && cat /ctx/input.txt > /app/input && ls / > /app/root-listing\n\
    USER nobody\n\
    RUN cat /etc/hostname /etc/hosts > /dev/null && echo done > /tmp/by-nobody\n";

#[test]
fn runc_builds_the_same_layers_as_the_builtin_sandbox() {
    let k = Kiln::with_busybox();
    let ctx = context(&[
        ("Dockerfile", LAYERS_DOCKERFILE),
        ("input.txt", "from the context\n"),
    ]);
    let (builtin_digest, builtin_ids) = diff_ids(&k, ctx.path(), &[]);
    let (runc_digest, runc_ids) = diff_ids(&k, ctx.path(), &["--runtime", "runc"]);
    // The base, three RUNs and `WORKDIR /app` over the existing `/app`: an empty layer, as
    // BuildKit keeps it.
    assert_eq!(builtin_ids.len(), 5, "{builtin_ids:?}");
    assert_eq!(
        builtin_ids, runc_ids,
        "the layers differ between the built-in sandbox and runc"
    );
    assert_eq!(builtin_digest, runc_digest);
    // A second builtin build agrees with itself (the comparison above is not vacuous).
    let (again, _) = diff_ids(&k, ctx.path(), &["--runtime", "builtin"]);
    assert_eq!(again, builtin_digest);
}

#[test]
fn kiln_run_with_runc_passes_output_and_exit_code() {
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; hostname | wc -c; cat /proc/1/comm; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    // The 12-character container id as hostname (13 with the newline); pid 1 is the init
    // (tini at /dev/init), not the command.
    assert_eq!(lines, ["out", "13", "init"], "{text}");
    assert!(stderr(&out).contains("err"), "{}", stderr(&out));
}

#[test]
fn runtime_failures_say_which_runtime_and_why() {
    let k = Kiln::with_busybox();
    // The init starts and cannot exec the command: 127, as a shell and `docker run --init`.
    let out = k.run(&["run", "--rm", "--runtime", "runc", "busybox", "no-such-cmd"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("exec no-such-cmd failed: No such file or directory"),
        "{err}"
    );

    let out = k.run(&[
        "run",
        "--rm",
        "--runtime",
        "/nonexistent/runc",
        "busybox",
        "true",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("OCI runtime `/nonexistent/runc`: not found"),
        "{err}"
    );

    let out = k.run(&["run", "--rm", "--runtime", "docker", "busybox", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown runtime `docker`"),
        "{}",
        stderr(&out)
    );

    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nWORKDIR /w\nRUN rmdir /w\nRUN true\n",
    )]);
    let out = build(&k, ctx.path(), &["--runtime", "runc"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("working directory `/w` does not exist"),
        "{}",
        stderr(&out)
    );
}

/// Whether `crun` is installed; prints why the calling test is skipped when not.
#[test]
fn crun_builds_the_same_layers_as_the_builtin_sandbox_and_runc() {
    if !installed("crun", "crun") {
        return;
    }
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run",
        "--rm",
        "--runtime",
        "crun",
        "busybox",
        "sh",
        "-c",
        "echo via-crun; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "via-crun\n");
    let ctx = context(&[
        ("Dockerfile", LAYERS_DOCKERFILE),
        ("input.txt", "from the context\n"),
    ]);
    let (builtin_digest, builtin_ids) = diff_ids(&k, ctx.path(), &[]);
    let (crun_digest, crun_ids) = diff_ids(&k, ctx.path(), &["--runtime", "crun"]);
    let (runc_digest, _) = diff_ids(&k, ctx.path(), &["--runtime", "runc"]);
    // The base, three RUNs and `WORKDIR /app` over the existing `/app`: an empty layer, as
    // BuildKit keeps it.
    assert_eq!(builtin_ids.len(), 5, "{builtin_ids:?}");
    assert_eq!(
        builtin_ids, crun_ids,
        "the layers differ between the built-in sandbox and crun"
    );
    assert_eq!(builtin_digest, crun_digest);
    assert_eq!(runc_digest, crun_digest);
}

/// crun is told not to manage cgroups (`--cgroup-manager=disabled`): kiln starts it in the
/// step's own cgroup, which the container keeps; in every other hierarchy it stays where the
/// engine is. On a hybrid cgroup host (v1 and v2 both mounted) crun would refuse to start at
/// all without kiln's workaround.
#[test]
fn crun_runs_in_the_steps_cgroup_kiln_made() {
    if !installed("crun", "crun") {
        return;
    }
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run",
        "--rm",
        "--runtime",
        "crun",
        "busybox",
        "cat",
        "/proc/self/cgroup",
    ]);
    assert_ok(&out, "kiln run --runtime crun cat /proc/self/cgroup");
    let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let theirs = stdout(&out);
    assert_eq!(theirs.lines().count(), mine.lines().count(), "{theirs}");
    let own: Vec<&str> = theirs.lines().filter(|l| l.contains(":/kiln/")).collect();
    assert!(!own.is_empty(), "not in a cgroup of kiln's: {theirs}");
    for (t, m) in theirs.lines().zip(mine.lines()) {
        assert!(t == m || t.contains(":/kiln/"), "{t} (engine: {m})");
    }
}

/// What `ulimit -n` shows in a container started by a process with this hard limit: Docker's
/// 1048576, unless the engine may not raise its hard limit (no CAP_SYS_RESOURCE in the host's
/// user namespace, as on some CI machines), where it is capped at the engine's.
fn expected_nofile(engine_hard: u64) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    let host_ns = uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    if host_ns && eff & (1 << 24) != 0 {
        1_048_576
    } else {
        engine_hard.min(1_048_576)
    }
}

#[test]
fn containers_get_dockers_open_files_limit_with_either_runtime() {
    let k = Kiln::with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo \"$(ulimit -n) $(ulimit -Hn)\" > /nofile\n",
    )]);
    let mut runtimes = vec!["builtin", "runc"];
    if installed("crun", "crun") {
        runtimes.push("crun");
    }
    for runtime in runtimes {
        let out = k
            .cmd()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "--progress", "plain", "--no-cache", "-t"])
            .arg(format!("nofile-{runtime}"))
            .args(["--runtime", runtime])
            .arg(ctx.path())
            .output()
            .unwrap();
        assert_ok(&out, &format!("kiln build --runtime {runtime}"));
        let shown = k.run(&[
            "run",
            "--rm",
            &format!("nofile-{runtime}"),
            "cat",
            "/nofile",
        ]);
        assert_ok(&shown, "kiln run cat /nofile");
        let want = expected_nofile(nofile_limits().1);
        assert_eq!(stdout(&shown), format!("{want} {want}\n"), "{runtime}");

        // Under `prlimit --nofile=512:4096` the soft limit is raised to the hard one, as
        // Docker's equal soft and hard limits have it.
        let out = std::process::Command::new("prlimit")
            .arg("--nofile=512:4096")
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .env("KILN_ROOT", k.root.path())
            .env_remove("KILN_PROGRESS")
            .args(["run", "--rm", "--runtime", runtime, "busybox", "sh", "-c"])
            .arg("echo \"$(ulimit -n) $(ulimit -Hn)\"")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_ok(&out, &format!("prlimit kiln run --runtime {runtime}"));
        let want = expected_nofile(4096);
        assert_eq!(stdout(&out), format!("{want} {want}\n"), "{runtime}");
    }
}

/// (soft, hard) RLIMIT_NOFILE of this test process, from /proc.
fn nofile_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn interrupted_runc_step_leaves_no_container_or_mount() {
    let k = Kiln::with_busybox();
    let marker = unique("kiln-runc-cancel");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM busybox\nRUN sh -c 'sleep 300; echo {marker}'\n"),
    )]);
    let mut child = k
        .cmd()
        .args(["build", "--progress", "plain", "--runtime", "runc"])
        .arg(ctx.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while host_processes_with(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SIGINT, as a Ctrl-C reaches kiln.
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130), "kiln exits as interrupted");
    assert!(
        host_processes_with(&marker).is_empty(),
        "the container outlived the build: {:?}",
        host_processes_with(&marker)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let store = k.root.path().to_string_lossy().into_owned();
    assert!(
        !mounts.lines().any(|l| l.contains(&store)),
        "a mount of the store outlived the build"
    );
}
