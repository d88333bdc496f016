//! End-to-end tests of what every runtime (the built-in sandbox, `--runtime runc`, `--runtime
//! crun`) must do alike: the command is not pid 1 (an init reaps orphans, forwards signals and
//! takes every other process down when the command exits), and the mount stubs a step needs
//! (`/etc/hosts`, `RUN --mount` targets) leave nothing in its layer. They need root, as CI has it.

mod common;

use common::*;
use std::path::Path;

/// `/proc/1/comm` under `runtime`: kiln's own init is the kiln binary; runc and crun run tini,
/// mounted at `/dev/init`.
fn init_name(runtime: &str) -> &'static str {
    if runtime == "builtin" {
        "kiln"
    } else {
        "init"
    }
}

/// Host processes whose command line contains `marker`: (pid, parent pid, command line).
fn host_processes_with(marker: &str) -> Vec<(u32, u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !text.contains(marker) {
            continue;
        }
        let ppid = std::fs::read_to_string(e.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .and_then(|p| p.trim().parse().ok())
            })
            .unwrap_or(0);
        found.push((pid, ppid, text));
    }
    found
}

#[test]
fn the_command_is_not_pid_1_and_orphans_are_reaped_with_every_runtime() {
    let k = Kiln::with_busybox();
    // The inner shell exits at once and orphans its `sleep`, which is re-parented to pid 1 and
    // must be reaped there when it exits; then no zombie is left in the namespace.
    let script = "echo pid=$$; echo init=$(cat /proc/1/comm); \
        sh -c 'sleep 0.2 & exit 0'; sleep 0.8; z=0; \
        for f in /proc/[0-9]*/stat; do read -r p c s rest < $f && [ \"$s\" = Z ] && z=$((z+1)); done; \
        echo zombies=$z";
    for runtime in runtimes() {
        let out = run_sh(&k, runtime, script);
        assert_ok(&out, &format!("kiln run --runtime {runtime}"));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{runtime}: {text}");
        assert_ne!(lines[0], "pid=1", "{runtime}: the command is pid 1");
        assert_eq!(
            lines[1],
            format!("init={}", init_name(runtime)),
            "{runtime}"
        );
        assert_eq!(lines[2], "zombies=0", "{runtime}: an orphan was not reaped");
    }
}

#[test]
fn a_missing_command_exits_127_with_every_runtime() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let out = k.run(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "busybox",
            "no-such-cmd",
        ]);
        assert_eq!(out.status.code(), Some(127), "{runtime}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("no-such-cmd"), "{runtime}: {err}");
    }
}

#[test]
fn sigterm_to_the_init_reaches_the_command_with_every_runtime() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let marker = unique("kiln-sigterm");
        let script = format!(
            "trap 'echo got-term; exit 42' TERM; echo ready; : {marker}; sleep 5678 & wait"
        );
        let child = k
            .cmd()
            .args(["run", "--rm", "--runtime", runtime, "busybox", "sh", "-c"])
            .arg(&script)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The command is the `sh -c` with the marker; its parent is the container's init.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let init = loop {
            let command = host_processes_with(&marker)
                .into_iter()
                .find(|(_, _, cmd)| cmd.starts_with("sh -c"));
            if let Some((_, ppid, _)) = command {
                break ppid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{runtime}: the command never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let status = std::process::Command::new("kill")
            .args(["-TERM", &init.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "{runtime}: kill -TERM {init}");
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(42), "{runtime}: {}", stderr(&out));
        assert_eq!(stdout(&out), "ready\ngot-term\n", "{runtime}");
        assert!(
            host_processes_with(&marker).is_empty(),
            "{runtime}: processes left: {:?}",
            host_processes_with(&marker)
        );
    }
}

#[test]
fn a_background_process_does_not_outlive_its_step_with_every_runtime() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let marker = unique("kiln-left-behind");
        let ctx = temp_context(
            "kiln-runtime-parity-ctx-",
            &[(
                "Dockerfile",
                &format!(
                    "FROM busybox\nRUN sh -c 'sleep 300; : {marker}' > /dev/null 2>&1 & echo started\n"
                ),
            )],
        );
        let started = std::time::Instant::now();
        let out = k.run(&[
            "build",
            "--progress",
            "plain",
            "--runtime",
            runtime,
            ctx.path().to_str().unwrap(),
        ]);
        assert_ok(&out, &format!("kiln build --runtime {runtime}"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{runtime}: the step waited for its background process"
        );
        let left = host_processes_with(&marker);
        assert!(left.is_empty(), "{runtime}: left running: {left:?}");
    }
}

/// The paths in the layer tarballs of the OCI layout `layout` (its one image), one list per
/// layer, in order.
fn layer_paths(layout: &Path) -> Vec<Vec<String>> {
    let json = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = json(index["manifests"][0]["digest"].as_str().unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
            let blob = layout.join("blobs/sha256").join(hex);
            // `tar` detects the compression itself.
            tool("tar", &["-tf", blob.to_str().unwrap()])
                .lines()
                .map(|l| l.trim_end_matches('/').to_string())
                .collect()
        })
        .collect()
}

#[test]
fn etc_stubs_leaked_into_first_run_layer() {
    let k = Kiln::with_busybox();
    // An image without /etc, as `FROM scratch` images with one static binary are.
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    tool(
        "cp",
        &[
            "-a",
            busybox_rootfs().to_str().unwrap(),
            rootfs.to_str().unwrap(),
        ],
    );
    std::fs::remove_dir_all(rootfs.join("etc")).unwrap();
    let out = k.run(&["import", rootfs.to_str().unwrap(), "noetc:latest"]);
    assert_ok(&out, "kiln import noetc");
    // Each step touches something else than the stubs' directories; busybox has /etc (without
    // hosts), /var and no /opt.
    let dockerfile = "FROM noetc AS bare\nRUN mkdir /x\n\
        FROM busybox AS full\nRUN mkdir /x\n\
        RUN --mount=type=cache,target=/var/cache/thing --mount=type=tmpfs,target=/opt/t touch /y\n\
        RUN echo z > /etc/z\n";
    let ctx = temp_context("kiln-runtime-parity-ctx-", &[("Dockerfile", dockerfile)]);
    for runtime in runtimes() {
        for target in ["bare", "full"] {
            let out_dir = tempfile::tempdir().unwrap();
            let layout = out_dir.path().join("layout");
            let dest = format!("type=oci,dest={},tar=false", layout.display());
            let out = k.run(&[
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--runtime",
                runtime,
                "--target",
                target,
                "-o",
                &dest,
                ctx.path().to_str().unwrap(),
            ]);
            assert_ok(
                &out,
                &format!("kiln build --runtime {runtime} --target {target}"),
            );
            let layers = layer_paths(&layout);
            let runs: Vec<Vec<String>> = layers[1..].to_vec();
            let want: Vec<Vec<&str>> = if target == "bare" {
                vec![vec!["x"]]
            } else {
                vec![vec!["x"], vec!["y"], vec!["etc", "etc/z"]]
            };
            assert_eq!(runs, want, "{runtime}, stage {target}: the RUN layers");
        }
    }
}
