//! `docker build` spellings a Docker user types: `-q`, `--label`, `-` and `-f -` (stdin),
//! `--iidfile`, unknown flags with a message saying what kiln has instead, and exit codes.

mod common;

use common::*;
use std::io::Write;
use std::process::{Output, Stdio};

/// `kiln ARGS` with `input` on stdin.
fn run_with_stdin(k: &Kiln, args: &[&str], input: &[u8]) -> Output {
    let mut child = k
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn image_id(k: &Kiln, image: &str) -> String {
    let out = k.run(&["image", "inspect", image]);
    assert_ok(&out, "kiln image inspect");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v[0]["Id"].as_str().unwrap().to_string()
}

#[test]
fn quiet_prints_only_the_image_id() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-q-",
        &[("Dockerfile", "FROM busybox\nRUN echo q > /q\n")],
    );
    let iid = ctx.path().join("iid");
    let out = k.run(&[
        "build",
        "-q",
        "-t",
        "quiet",
        "--iidfile",
        iid.to_str().unwrap(),
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln build -q");
    let id = image_id(&k, "quiet");
    assert_eq!(stdout(&out), format!("{id}\n"));
    assert_eq!(stderr(&out), "");
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), id);
    // Without `-t` the image is kept too, and the printed ID names it.
    let out = k.run(&["build", "--quiet", ctx.path().to_str().unwrap()]);
    assert_ok(&out, "kiln build --quiet without -t");
    assert_eq!(stdout(&out).trim(), id);
    assert_eq!(image_id(&k, &id), id);
}

#[test]
fn labels_go_into_the_image_config_without_running_steps_again() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-label-",
        &[(
            "Dockerfile",
            "FROM busybox\nLABEL team=dockerfile keep=yes\nRUN echo l > /l\n",
        )],
    );
    let out = build(&k, ctx.path(), &["-t", "plain"]);
    assert_ok(&out, "build without labels");
    let out = build(
        &k,
        ctx.path(),
        &[
            "-t",
            "labelled",
            "--label",
            "team=cli",
            "--label",
            "org.example.v=1=2",
        ],
    );
    assert_ok(&out, "build with --label");
    assert!(stderr(&out).contains("(0 steps run"), "{}", stderr(&out));
    let out = k.run(&["image", "inspect", "labelled"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v[0]["Config"]["Labels"],
        serde_json::json!({"team": "cli", "keep": "yes", "org.example.v": "1=2"})
    );
    let out = build(&k, ctx.path(), &["--label", "novalue"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`--label novalue` is not KEY=VALUE"));
}

#[test]
fn a_dockerfile_alone_on_stdin_builds_with_an_empty_context() {
    let k = Kiln::with_busybox();
    let out = run_with_stdin(
        &k,
        &["build", "-q", "-t", "piped", "-"],
        b"FROM busybox\nRUN echo from-stdin > /s\n",
    );
    assert_ok(&out, "kiln build - < Dockerfile");
    let run = k.run(&["run", "--rm", "piped", "cat", "/s"]);
    assert_eq!(stdout(&run), "from-stdin\n");
    // The context is empty: a COPY finds nothing.
    let out = run_with_stdin(
        &k,
        &["build", "--progress", "plain", "-"],
        b"FROM busybox\nCOPY nothing /x\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nothing"), "{}", stderr(&out));
}

#[test]
fn dockerfile_from_stdin_with_a_context_directory() {
    let k = Kiln::with_busybox();
    let ctx = temp_context("kiln-fdash-", &[("data.txt", "context file\n")]);
    let out = run_with_stdin(
        &k,
        &[
            "build",
            "-q",
            "-t",
            "fdash",
            "-f",
            "-",
            ctx.path().to_str().unwrap(),
        ],
        b"FROM busybox\nCOPY data.txt /data.txt\n",
    );
    assert_ok(&out, "kiln build -f - CONTEXT");
    let run = k.run(&["run", "--rm", "fdash", "cat", "/data.txt"]);
    assert_eq!(stdout(&run), "context file\n");
    let out = run_with_stdin(&k, &["build", "-f", "-", "-"], b"FROM busybox\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("both the context and the Dockerfile"));
}

#[test]
fn a_gzipped_context_tar_on_stdin() {
    let k = Kiln::with_busybox();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut b = tar::Builder::new(&mut gz);
        for (name, data) in [
            ("Dockerfile", &b"FROM busybox\nCOPY sub/f /f\n"[..]),
            ("sub/f", &b"in the tar\n"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
    }
    let tar = gz.finish().unwrap();
    let out = run_with_stdin(&k, &["build", "-q", "-t", "fromtar", "-"], &tar);
    assert_ok(&out, "kiln build - < context.tar.gz");
    let run = k.run(&["run", "--rm", "fromtar", "cat", "/f"]);
    assert_eq!(stdout(&run), "in the tar\n");
    // The stdin context is removed after the build.
    let tmp = std::fs::read_dir(k.root.path().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0);
}

#[test]
fn unknown_flags_say_what_kiln_has_instead() {
    let k = Kiln::new();
    let ctx = temp_context("kiln-flags-", &[("Dockerfile", "FROM busybox\n")]);
    for (flag, says) in [
        ("--load", "kiln save"),
        ("--squash", "COPY --from"),
        ("--memory-swap=1g", "`--memory`"),
        ("--frobnicate", "kiln build --help"),
    ] {
        let out = k.run(&["build", flag, ctx.path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(125), "{flag}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{flag}: {err}");
        let name = flag.split('=').next().unwrap();
        assert!(
            err.starts_with(&format!("error: `kiln build` has no `{name}` flag: ")),
            "{err}"
        );
        assert!(err.contains(says), "{flag}: {err}");
        assert!(!err.contains("tip"), "{err}");
    }
}

#[test]
fn a_failed_step_exits_1_as_docker_build_does() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-fail-",
        &[("Dockerfile", "FROM busybox\nRUN exit 3\n")],
    );
    let out = build(&k, ctx.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let out = k.run(&["build", "-q", ctx.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("exit 3"), "{}", stderr(&out));
}

#[test]
fn add_host_shm_size_and_ulimit_reach_every_run_step() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-sandbox-flags-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN grep db /etc/hosts > /hosts && df -k /dev/shm | tail -1 | awk '{print $2}' > /shm \
             && ulimit -n > /nofile && ulimit -Hn >> /nofile\n",
        )],
    );
    for runtime in runtimes() {
        let tag = format!("flags-{runtime}");
        let out = build(
            &k,
            ctx.path(),
            &[
                "--no-cache",
                "--runtime",
                runtime,
                "-t",
                &tag,
                "--add-host",
                "db:10.0.0.5",
                "--shm-size",
                "128m",
                "--ulimit",
                "nofile=100:200",
            ],
        );
        assert_ok(&out, &format!("build with sandbox flags under {runtime}"));
        let out = k.run(&["run", "--rm", &tag, "cat", "/hosts", "/shm", "/nofile"]);
        assert_eq!(
            stdout(&out),
            "10.0.0.5\tdb\n131072\n100\n200\n",
            "{runtime}"
        );
    }
    // Bad values: one line naming the flag, before anything runs.
    for (flag, value) in [
        ("--ulimit", "files=1"),
        ("--add-host", "db"),
        ("--shm-size", "lots"),
    ] {
        let out = build(&k, ctx.path(), &[flag, value]);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}");
        let err = stderr(&out);
        assert!(err.contains(flag), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
