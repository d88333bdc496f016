//! End-to-end tests of the `kiln` binary: import, build, run, push, pull and OCI output, against
//! real namespaces, overlayfs and a real registry on 127.0.0.1, checked with skopeo and umoci.
//! They need root, as CI runs them.

mod common;

use common::*;

fn hello_context() -> std::path::PathBuf {
    workspace().join("testdata/examples/hello")
}

#[test]
fn import_makes_an_image_that_skopeo_reads() {
    let k = Kiln::with_busybox();
    let images = k.run(&["images"]);
    assert_ok(&images, "kiln images");
    let names: Vec<String> = stdout(&images)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(names, ["docker.io/library/busybox:latest"]);
    let layout = format!(
        "oci:{}/images:docker.io/library/busybox:latest",
        k.root.path().display()
    );
    let inspect = tool("skopeo", &["inspect", "--config", &layout]);
    let config: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(1)
    );
    let out = k.run(&["run", "--rm", "busybox", "echo", "imported"]);
    assert_ok(&out, "kiln run busybox");
    assert_eq!(stdout(&out), "imported\n");
}

#[test]
fn hello_example_builds_runs_and_rebuilds_from_cache() {
    let k = Kiln::with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("hello");
    copy_dir(&hello_context(), &ctx);
    let iid1 = work.path().join("iid1");
    let out = build(
        &k,
        &ctx,
        &["-t", "hello", "--iidfile", iid1.to_str().unwrap()],
    );
    assert_ok(&out, "kiln build hello");
    let log = stderr(&out);
    assert!(
        log.contains("RUN chmod +x greet.sh"),
        "plain progress names the steps:\n{log}"
    );
    assert!(
        !log.contains("this stage is not needed"),
        "the unused stage must not run:\n{log}"
    );

    let run = k.run(&["run", "--rm", "hello"]);
    assert_ok(&run, "kiln run hello");
    assert_eq!(
        stdout(&run),
        "hello from a kiln build (stage: build, user: 0)\nbuilt by kiln\n"
    );

    // The same build again runs nothing and gives the same image.
    let iid2 = work.path().join("iid2");
    let out = build(
        &k,
        &ctx,
        &["-t", "hello", "--iidfile", iid2.to_str().unwrap()],
    );
    assert_ok(&out, "second kiln build");
    let log = stderr(&out);
    assert!(
        log.contains("(0 steps run"),
        "a rebuild runs no step:\n{log}"
    );
    assert!(!log.contains(" DONE "), "a rebuild runs no step:\n{log}");
    assert_eq!(
        std::fs::read_to_string(&iid1).unwrap(),
        std::fs::read_to_string(&iid2).unwrap()
    );

    // Changing the script re-runs what reads it, and nothing before it.
    std::fs::write(ctx.join("greet.sh"), "#!/bin/sh\necho \"$1, changed\"\n").unwrap();
    let out = build(&k, &ctx, &["-t", "hello", "--build-arg", "GREETING=hi"]);
    assert_ok(&out, "build after a change");
    let log = stderr(&out);
    let done: Vec<&str> = log.lines().filter(|l| l.contains(" DONE ")).collect();
    assert!(!done.is_empty(), "changed steps must run:\n{log}");
    assert!(
        log.contains("CACHED"),
        "steps before the change stay cached:\n{log}"
    );
    let run = k.run(&["run", "--rm", "hello"]);
    assert_eq!(stdout(&run), "hi, changed\nbuilt by kiln\n");
}

#[test]
fn changing_an_unread_context_file_invalidates_nothing() {
    let k = Kiln::with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("hello");
    copy_dir(&hello_context(), &ctx);
    assert_ok(&build(&k, &ctx, &[]), "first build");
    std::fs::write(ctx.join("README.txt"), "not read by any step").unwrap();
    let out = build(&k, &ctx, &[]);
    assert_ok(&out, "second build");
    assert!(stderr(&out).contains("(0 steps run"), "{}", stderr(&out));
}

#[test]
fn run_follows_docker_rules() {
    let k = Kiln::with_busybox();
    let code = k.run(&["run", "--rm", "busybox", "sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7), "exit code is passed through");

    let out = k.run(&[
        "run",
        "--rm",
        "-e",
        "GREETING=hey",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "busybox",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u)",
    ]);
    assert_ok(&out, "run with -e -w -u");
    assert_eq!(stdout(&out), "hey /tmp 65534\n");

    let out = k.run(&[
        "run",
        "--rm",
        "--entrypoint",
        "echo",
        "busybox",
        "from",
        "entrypoint",
    ]);
    assert_ok(&out, "run with --entrypoint");
    assert_eq!(stdout(&out), "from entrypoint\n");

    let out = k.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net",
    ]);
    assert_ok(&out, "run with --network none");
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        vec!["lo"]
    );

    let out = k.run(&["run", "--rm", "busybox", "sh", "-c", "echo $$; hostname"]);
    assert_ok(&out, "pid and uts namespaces");
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_ne!(
        lines.next(),
        Some("1"),
        "the command is not pid 1: a minimal init is"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(lines.next().map(str::trim), Some(host.trim()));

    let out = k.run(&["run", "--rm", "busybox", "no-such-command"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-command"), "{}", stderr(&out));
}

#[test]
fn push_pull_and_interop_with_skopeo_and_umoci() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    assert_ok(
        &build(&k, &hello_context(), &["-t", "hello"]),
        "build hello",
    );
    let repo = unique("hello");
    let dest = format!("{reg}/{repo}:v1");
    let out = k.run(&["push", "hello", &dest]);
    assert_ok(&out, "kiln push");

    // skopeo reads what kiln pushed, and umoci unpacks it to the exact files.
    let inspect = tool(
        "skopeo",
        &["inspect", "--tls-verify=false", &format!("docker://{dest}")],
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Labels"]["org.opencontainers.image.title"], "kiln hello");
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{dest}"),
            &format!("oci:{}:v1", layout.display()),
        ],
    );
    let bundle = scratch.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:v1", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let greeting = std::fs::read_to_string(bundle.join("rootfs/srv/greeting.txt")).unwrap();
    assert_eq!(
        greeting,
        "hello from a kiln build (stage: build, user: 0)\nbuilt by kiln\n"
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());

    // A fresh store pulls it back and runs it.
    let k2 = Kiln::new();
    assert_ok(&k2.run(&["pull", &dest]), "kiln pull");
    let run = k2.run(&["run", "--rm", &dest]);
    assert_ok(&run, "run the pulled image");
    assert_eq!(stdout(&run), greeting);

    // What skopeo pushed, kiln pulls and runs; a build can start FROM it.
    let bb = format!("{reg}/{}:latest", unique("busybox"));
    let src = format!(
        "oci:{}/images:docker.io/library/busybox:latest",
        k.root.path().display()
    );
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{bb}"),
        ],
    );
    let k3 = Kiln::new();
    let ctx = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            format!("FROM {bb}\nRUN echo pulled > /note\nCMD [\"cat\", \"/note\"]\n").as_str(),
        )],
    );
    assert_ok(
        &build(&k3, ctx.path(), &["-t", "frompull"]),
        "build FROM a registry image",
    );
    let run = k3.run(&["run", "--rm", "frompull"]);
    assert_ok(&run, "run frompull");
    assert_eq!(stdout(&run), "pulled\n");
}

#[test]
fn oci_archive_output_is_accepted_by_skopeo() {
    let k = Kiln::with_busybox();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("hello.tar");
    let out = build(
        &k,
        &hello_context(),
        &[
            "-t",
            "hello",
            "--output",
            &format!("type=oci,dest={}", tar.display()),
        ],
    );
    assert_ok(&out, "build with --output type=oci");
    let layout = dir.path().join("copy");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}", tar.display()),
            &format!("oci:{}:x", layout.display()),
        ],
    );
    let inspect = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci:{}:x", layout.display()),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["config"]["Entrypoint"], serde_json::json!(["cat"]));
    assert_eq!(v["config"]["User"], "nobody");
}

#[test]
fn bad_input_gives_clear_errors() {
    let k = Kiln::with_busybox();
    let out = k.run(&["build", "/no/such/context"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/no/such/context"),
        "{}",
        stderr(&out)
    );

    let ctx = temp_context(
        "kiln-ctx-",
        &[("Dockerfile", "FROM busybox\nRUNN echo hi\n")],
    );
    let out = build(&k, ctx.path(), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(
        err.contains("RUN"),
        "suggests the instruction it meant: {err}"
    );

    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nRUN echo before\nRUN echo failing-step && exit 3\n",
    )
    .unwrap();
    let out = build(&k, ctx.path(), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(
        err.contains("failing-step"),
        "shows the step's output: {err}"
    );

    let out = k.run(&["run", "--rm", "no-such-image-here:1"]);
    assert!(!out.status.success());
}

#[test]
fn copy_from_stage_of_a_fifo_hung_the_build() {
    let k = Kiln::with_busybox();
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", "FROM busybox AS a\nRUN mkfifo /p && mkdir /d && mkfifo /d/q\nFROM busybox\nCOPY --from=a /p /p\nCOPY --from=a /d /d\nRUN test -p /p && test -p /d/q && echo fifos-ok\n")]);
    let mut child = k
        .cmd()
        .args(["build", "--progress", "plain", ctx.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("copying a fifo from a stage hangs the build");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "build copying fifos");
    assert!(stderr(&out).contains("fifos-ok"), "{}", stderr(&out));
}
