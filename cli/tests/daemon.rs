//! `kiln daemon` and `kiln --host`: a daemon started by the test on a temporary socket, with
//! real client processes.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn version_through_the_daemon_shows_client_and_server() {
    let d = Daemon::start(Kiln::new());
    let out = d.run(&["version"]);
    assert_ok(&out, "kiln version with KILN_HOST");
    let text = stdout(&out);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.starts_with(&format!("Client:\n Version:      {version}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Server:\n Address:      {}\n Version:      {version}\n API version:  kiln.v1\n",
            d.addr
        )),
        "{text}"
    );
    // `--host` says the same as `KILN_HOST`.
    let out = d
        .client()
        .env_remove("KILN_HOST")
        .args(["--host", &d.addr, "version"])
        .output()
        .unwrap();
    assert_ok(&out, "kiln --host ADDR version");
    assert_eq!(stdout(&out), text);
}

#[test]
fn the_daemon_holds_the_store_and_an_embedded_kiln_says_so() {
    let d = Daemon::start(Kiln::new());
    let out = d
        .store
        .cmd()
        .args(["--lock-timeout", "0", "prune"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an embedded prune ran beside the daemon"
    );
    assert!(
        stderr(&out).contains(&format!("(kiln daemon {})", d.addr)),
        "{}",
        stderr(&out)
    );
    // Without a timeout it would wait for ever: it says where the daemon is instead.
    let out = d.store.cmd().args(["prune"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let want = format!(
        "run the command through it with `kiln --host {} ...`",
        d.addr
    );
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn a_second_daemon_on_a_live_socket_is_refused_and_sigterm_stops_the_first() {
    let mut d = Daemon::start(Kiln::new());
    let other = Kiln::new();
    let out = other.run(&["daemon", "--addr", &d.addr]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("another daemon is listening on `{}`", d.addr)),
        "{}",
        stderr(&out)
    );
    let status = d
        .stop(Duration::from_secs(10))
        .expect("daemon stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", d.log_text());
}

/// The daemon's report of each context sync (`KILN_LOG=kiln=debug`): (entries, files
/// requested, bytes received, removed) of the main context.
fn synced(out: &std::process::Output) -> (u64, u64, u64, u64) {
    let text = stderr(out);
    let line = text
        .lines()
        .find(|l| l.contains("context synced") && l.contains("context=0"))
        .unwrap_or_else(|| panic!("no sync report in:\n{text}"));
    let field = |name: &str| -> u64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no `{name}` in {line}"));
        line[at + name.len() + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (
        field("entries"),
        field("files_requested"),
        field("bytes_received"),
        field("removed"),
    )
}

fn remote_build(d: &Daemon, ctx: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    d.client()
        .env("KILN_LOG", "kiln=debug")
        .env("NO_COLOR", "1")
        .args(&args)
        .output()
        .unwrap()
}

#[test]
fn a_build_through_the_daemon_gives_the_embedded_image_and_output() {
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt\n",
            ),
            ("a.txt", "hello from the client\n"),
        ],
    );
    // One store, so both builds start from the same base image.
    let k = Kiln::with_busybox();
    let id = |c: &mut std::process::Command| {
        let out = c
            .env("SOURCE_DATE_EPOCH", "0")
            .args(["build", "-q", "--no-cache", ctx.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert_ok(&out, "kiln build -q");
        stdout(&out)
    };
    let embedded = id(&mut k.cmd());
    let d = Daemon::start(k);
    assert_eq!(id(&mut d.client()), embedded, "image IDs differ");
    let out = remote_build(&d, ctx.path(), &["--no-cache"]);
    assert_ok(&out, "plain build through the daemon");
    let text = stderr(&out);
    assert!(text.contains("#4 [3/3] RUN cat /a.txt\n"), "{text}");
    assert!(text.contains(" hello from the client\n"), "{text}");
    assert!(text.contains("(3 steps run, 0 cached)"), "{text}");
}

#[test]
fn a_rebuild_sends_only_what_changed() {
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx\n"),
            ("a.txt", "aaaa"),
            ("sub/b.txt", "bbbbbbbb"),
            ("ignored.log", "not sent"),
            (".dockerignore", "*.log\n"),
        ],
    );
    let d = Daemon::start(Kiln::with_busybox());
    let out = remote_build(&d, ctx.path(), &[]);
    assert_ok(&out, "first build");
    // Dockerfile, .dockerignore, a.txt, sub, sub/b.txt: not ignored.log.
    let (entries, files, bytes, _) = synced(&out);
    assert_eq!((entries, files), (5, 4), "{}", stderr(&out));
    assert_eq!(bytes, (25 + 6 + 4 + 8) as u64);
    let out = remote_build(&d, ctx.path(), &[]);
    assert_ok(&out, "no-op rebuild");
    assert_eq!(
        synced(&out),
        (5, 0, 0, 0),
        "a no-op rebuild sent file content"
    );
    assert!(
        stderr(&out).contains("(0 steps run, 2 cached)"),
        "{}",
        stderr(&out)
    );
    std::fs::write(ctx.path().join("sub/b.txt"), "changed!!").unwrap();
    std::fs::remove_file(ctx.path().join("a.txt")).unwrap();
    let out = remote_build(&d, ctx.path(), &[]);
    assert_ok(&out, "rebuild after a change");
    assert_eq!(synced(&out), (4, 1, 9, 1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(1 steps run, 1 cached)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failing_build_through_the_daemon_fails_as_embedded() {
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo about to fail && exit 3\n",
        )],
    );
    let embedded = Kiln::with_busybox();
    let mine = build(&embedded, ctx.path(), &[]);
    let d = Daemon::start(Kiln::with_busybox());
    let out = remote_build(&d, ctx.path(), &[]);
    assert_eq!(out.status.code(), mine.status.code());
    assert_eq!(out.status.code(), Some(1));
    // The error and what follows it (the step's last output lines).
    let error = |o: &std::process::Output| {
        let text = stderr(o);
        let at = text
            .rfind("\nerror: ")
            .unwrap_or_else(|| panic!("no error in:\n{text}"));
        text[at..].to_string()
    };
    assert_eq!(error(&out), error(&mine));
    assert!(error(&out).contains("exit code: 3"), "{}", stderr(&out));
}

#[test]
fn a_secret_reaches_run_and_not_the_daemons_disk() {
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /len\nRUN cat /len\n",
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let value = "s3cr3t-value-7f1e9c";
    std::fs::write(dir.path().join("tok"), value).unwrap();
    let d = Daemon::start(Kiln::with_busybox());
    let src = format!("id=tok,src={}", dir.path().join("tok").display());
    let out = remote_build(&d, ctx.path(), &["--secret", &src]);
    assert_ok(&out, "build with a secret through the daemon");
    assert!(
        stderr(&out).contains(&format!(" {}\n", value.len())),
        "{}",
        stderr(&out)
    );
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", value, d.store.root.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(stdout(&grep), "", "the secret is on the daemon's disk");
}

#[test]
fn without_a_daemon_the_client_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}/kiln.sock", dir.path().display());
    let k = Kiln::new();
    let out = k.run(&["--host", &addr, "version"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot reach the kiln daemon at `{addr}`")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_killed_client_cancels_its_build_within_2s_and_another_client_still_builds() {
    let marker = unique("kiln-daemon-cancel");
    let slow = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nRUN sleep 3600 && echo {marker}\n"),
        )],
    );
    let quick = temp_context(
        "kiln-daemon-ctx-",
        &[("Dockerfile", "FROM busybox\nRUN echo second client\n")],
    );
    let d = Daemon::start(Kiln::with_busybox());
    let mut client = d
        .client()
        .args([
            "build",
            "--progress",
            "plain",
            slow.path().to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host_processes_with(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    let killed = std::time::Instant::now();
    while !host_processes_with(&marker).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "the step still runs {:?} after its client was killed: {:?}",
            killed.elapsed(),
            host_processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = remote_build(&d, quick.path(), &[]);
    assert_ok(&out, "a second client's build");
    assert!(
        stderr(&out).contains(" second client\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn concurrent_clients_all_succeed_and_an_identical_step_runs_once() {
    // 20 clients, as issue 15 asks: 15 directories, of which 10..14 hold the same files as
    // 0..4 (identical contexts under other shared keys), and clients 15..19 build the
    // directories of 0..4 again (the same shared keys at once).
    const CLIENTS: usize = 20;
    const DIRS: usize = 15;
    let d = Daemon::start(Kiln::with_busybox());
    let shared =
        "RUN sleep 1 && echo shared-step-ran && head -c 16 /dev/urandom | od -An -tx1 > /rand\n";
    let who = |i: usize| i % 10;
    let contexts: Vec<_> = (0..DIRS)
        .map(|i| {
            temp_context(
                "kiln-daemon-ctx-",
                &[(
                    "Dockerfile",
                    &format!("FROM busybox\n{shared}RUN echo client {} > /who\n", who(i)),
                )],
            )
        })
        .collect();
    let started: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let c = &contexts[i % DIRS];
            d.client()
                .env("KILN_LOG", "kiln=debug")
                .args(["build", "--progress", "plain", "-t", &format!("client{i}")])
                .arg(c.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = started
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut ran = 0;
    for (i, out) in outs.iter().enumerate() {
        assert_ok(out, &format!("client {i}"));
        let text = stderr(out);
        assert!(
            text.contains(&format!("RUN echo client {}", who(i % DIRS))),
            "{text}"
        );
        // Each client sees the shared step (it ran, or joined the one running, or hit the
        // cache), and its output came from one run.
        ran += usize::from(text.contains(" shared-step-ran\n"));
    }
    assert!(ran >= 1, "no client saw the shared step's output");
    // One run: the step's random bytes are the same in every client's image.
    let mut d = d;
    d.stop(Duration::from_secs(10)).expect("the daemon stops");
    let rands: std::collections::HashSet<String> = (0..CLIENTS)
        .map(|i| {
            let out = d.store.run(&[
                "run",
                "--rm",
                &format!("client{i}"),
                "sh",
                "-c",
                "cat /rand /who",
            ]);
            assert_ok(&out, "kiln run");
            let text = stdout(&out);
            assert!(
                text.ends_with(&format!("client {}\n", who(i % DIRS))),
                "{text}"
            );
            text.lines().next().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        rands.len(),
        1,
        "the shared step ran more than once: {rands:?}"
    );
}

#[test]
fn dockerfile_outside_the_context_on_stdin_and_named_contexts_go_through_the_daemon() {
    let ctx = temp_context("kiln-daemon-ctx-", &[("a.txt", "main context\n")]);
    let other = temp_context(
        "kiln-daemon-named-",
        &[
            ("b.txt", "named context\n"),
            ("skip.txt", "x"),
            (".dockerignore", "skip.txt\n"),
        ],
    );
    let outside = tempfile::tempdir().unwrap();
    let dockerfile = "FROM busybox\nCOPY a.txt /a.txt\nCOPY --from=extra . /extra/\nRUN cat /a.txt /extra/b.txt && ls /extra\n";
    std::fs::write(outside.path().join("build.Dockerfile"), dockerfile).unwrap();
    let d = Daemon::start(Kiln::with_busybox());
    let named = format!("extra={}", other.path().display());
    let file = outside.path().join("build.Dockerfile");
    let out = remote_build(
        &d,
        ctx.path(),
        &["-f", file.to_str().unwrap(), "--build-context", &named],
    );
    assert_ok(&out, "-f outside the context with --build-context");
    let text = stderr(&out);
    assert!(text.contains(" main context\n"), "{text}");
    assert!(text.contains(" named context\n"), "{text}");
    assert!(
        !text.contains("skip.txt"),
        "the named context's .dockerignore was not applied: {text}"
    );
    let mut child = d
        .client()
        .args([
            "build",
            "--progress",
            "plain",
            "-f",
            "-",
            "--build-context",
            &named,
        ])
        .arg(ctx.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "-f - through the daemon");
    assert!(
        stderr(&out).contains("(0 steps run, 4 cached)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_build_flag_value_fails_before_anything_is_sent() {
    let ctx = temp_context("kiln-daemon-ctx-", &[("Dockerfile", "FROM busybox\n")]);
    let embedded = Kiln::new();
    let mine = build(&embedded, ctx.path(), &["--network", "bridge"]);
    let d = Daemon::start(Kiln::new());
    let out = remote_build(&d, ctx.path(), &["--network", "bridge"]);
    assert_eq!(out.status.code(), mine.status.code());
    assert_eq!(stderr(&out).lines().last(), stderr(&mine).lines().last());
}

#[test]
fn local_and_tar_outputs_are_written_on_the_client_side() {
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir -p /out/sub && echo made-by-run > /out/sub/f && ln -s sub/f /out/link\n",
        )],
    );
    let d = Daemon::start(Kiln::with_busybox());
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let tarfile = dir.path().join("fs.tar");
    let out = remote_build(
        &d,
        ctx.path(),
        &[
            "-o",
            &format!("type=local,dest={}", local.display()),
            "-o",
            &format!("type=tar,dest={}", tarfile.display()),
        ],
    );
    assert_ok(&out, "build with local and tar outputs through the daemon");
    assert_eq!(
        std::fs::read_to_string(local.join("out/sub/f")).unwrap(),
        "made-by-run\n"
    );
    assert_eq!(
        std::fs::read_link(local.join("out/link")).unwrap(),
        std::path::Path::new("sub/f")
    );
    assert!(local.join("bin/busybox").is_file());
    let listing = tool("tar", &["-tf", tarfile.to_str().unwrap()]);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "out/sub/f"),
        "{listing}"
    );
    // Nothing of it is left in the daemon's store.
    let left = tool(
        "find",
        &[d.store.root.path().to_str().unwrap(), "-name", "output-*"],
    );
    assert_eq!(left, "");
}

#[test]
fn ssh_agent_connections_are_relayed_to_the_clients_agent() {
    use std::io::{Read, Write};
    let agent_dir = tempfile::tempdir().unwrap();
    let agent_sock = agent_dir.path().join("agent.sock");
    let agent = std::os::unix::net::UnixListener::bind(&agent_sock).unwrap();
    // The client's "agent": answers `pong` to `ping`.
    let answered = std::thread::spawn(move || {
        let (mut conn, _) = agent.accept().unwrap();
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).unwrap();
        conn.write_all(b"pong").unwrap();
        got
    });
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && sleep 3 && echo ssh-step-done\n",
        )],
    );
    let d = Daemon::start(Kiln::with_busybox());
    let spec = format!("default={}", agent_sock.display());
    let client = d
        .client()
        .args(["build", "--progress", "plain", "--ssh", &spec])
        .arg(ctx.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The daemon's socket for the id, as a step sees it: connect as a step would.
    let root = d.store.root.path().to_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let socket = loop {
        let found = tool("find", &[&root, "-name", "ssh-0.sock"]);
        if let Some(line) = found.lines().next() {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ssh socket appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut step = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    step.write_all(b"ping").unwrap();
    let mut reply = [0u8; 4];
    step.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");
    assert_eq!(&answered.join().unwrap(), b"ping");
    let out = client.wait_with_output().unwrap();
    assert_ok(&out, "build with --ssh through the daemon");
    assert!(
        stderr(&out).contains(" ssh-step-done\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_git_context_is_checked_out_by_the_daemon_and_a_stdin_tar_is_sent_as_a_context() {
    let repo = GitRepo::new();
    repo.commit(
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt\n",
            ),
            ("a.txt", "from the repository\n"),
        ],
        "first",
    );
    let d = Daemon::start(Kiln::with_busybox());
    let out = d
        .client()
        .args([
            "build",
            "--progress",
            "plain",
            &format!("{}#main", repo.url()),
        ])
        .output()
        .unwrap();
    assert_ok(&out, "git context through the daemon");
    assert!(
        stderr(&out).contains(" from the repository\n"),
        "{}",
        stderr(&out)
    );
    // A context tar on stdin.
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY b.txt /b.txt\nRUN cat /b.txt\n",
            ),
            ("b.txt", "from a tar on stdin\n"),
        ],
    );
    let tar = tool(
        "tar",
        &["-cf", "-", "-C", ctx.path().to_str().unwrap(), "."],
    );
    let mut child = d
        .client()
        .args(["build", "--progress", "plain", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(tar.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, "context tar on stdin through the daemon");
    assert!(
        stderr(&out).contains(" from a tar on stdin\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ctrl_c_in_the_client_stops_its_step_and_exits_130_as_embedded() {
    let marker = unique("kiln-daemon-sigint");
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nRUN sleep 3600 && echo {marker}\n"),
        )],
    );
    let d = Daemon::start(Kiln::with_busybox());
    let client = d
        .client()
        .args(["build", "--progress", "plain", ctx.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host_processes_with(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tool("kill", &["-INT", &client.id().to_string()]);
    let sent = std::time::Instant::now();
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: the build was interrupted"),
        "{}",
        stderr(&out)
    );
    while !host_processes_with(&marker).is_empty() {
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "the step still runs after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn json_progress_through_the_daemon_has_the_embedded_events() {
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo json-line\nRUN echo second\n",
        )],
    );
    // The kinds and names of the events, in order, without times.
    let events = |out: &std::process::Output| -> Vec<String> {
        stderr(out)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                let mut v = v;
                if let Some(o) = v.as_object_mut() {
                    o.retain(|k, _| !["step_time", "elapsed", "time"].contains(&k.as_str()));
                }
                v.to_string()
            })
            .collect()
    };
    let k = Kiln::with_busybox();
    let mine = k
        .cmd()
        .args([
            "build",
            "--no-cache",
            "--progress",
            "json",
            ctx.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_ok(&mine, "embedded json build");
    let d = Daemon::start(k);
    let out = d
        .client()
        .args([
            "build",
            "--no-cache",
            "--progress",
            "json",
            ctx.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_ok(&out, "json build through the daemon");
    let (a, b) = (events(&mine), events(&out));
    assert!(a.len() >= 4, "{}", stderr(&mine));
    assert_eq!(a, b);
}

#[test]
fn sigterm_stops_the_daemon_and_its_running_build() {
    let marker = unique("kiln-daemon-term");
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nRUN sleep 3600 && echo {marker}\n"),
        )],
    );
    let mut d = Daemon::start(Kiln::with_busybox());
    let client = d
        .client()
        .args(["build", "--progress", "plain", ctx.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host_processes_with(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = d
        .stop(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the daemon did not stop:\n{}", d.log_text()));
    assert!(status.success(), "{status}");
    assert!(
        host_processes_with(&marker).is_empty(),
        "the step outlived the daemon"
    );
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("shutting down"), "{}", stderr(&out));
}

#[test]
fn debug_llb_resolve_through_the_daemon_prints_what_embedded_prints() {
    // The Dockerfile in a directory `.dockerignore` leaves out, a named context, a build arg:
    // everything the graph depends on crosses the session.
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[
            (
                "docker/Dockerfile",
                "FROM busybox\nARG GREETING\nCOPY --from=extra x /x\nCOPY app /app\n\
                 RUN echo \"$GREETING\"\n",
            ),
            ("app/main.txt", "main"),
            ("secret.key", "not sent"),
            (".dockerignore", "docker\n*.key\n"),
        ],
    );
    let extra = temp_context("kiln-daemon-extra-", &[("x", "x")]);
    let extra_flag = format!("extra={}", extra.path().display());
    let dockerfile = ctx.path().join("docker/Dockerfile");
    let dockerfile = dockerfile.to_str().unwrap();
    let args = |resolve: bool| {
        let mut a = vec!["debug", "llb"];
        if resolve {
            a.push("--resolve");
        }
        a.extend([
            "-f",
            dockerfile,
            "--build-arg",
            "GREETING=hi",
            "--build-context",
            &extra_flag,
            ctx.path().to_str().unwrap(),
        ]);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let k = Kiln::with_busybox();
    let embedded = k.cmd().args(args(true)).output().unwrap();
    assert_ok(&embedded, "embedded debug llb --resolve");
    let d = Daemon::start(k);
    let remote = d.client().args(args(true)).output().unwrap();
    assert_ok(&remote, "debug llb --resolve through the daemon");
    assert_eq!(stdout(&remote), stdout(&embedded));
    // Resolved from the daemon's store: the base image's digest shows, unlike without it.
    let unresolved = d.client().args(args(false)).output().unwrap();
    assert_ok(&unresolved, "debug llb without --resolve through --host");
    assert_ne!(stdout(&unresolved), stdout(&remote));
    assert!(stdout(&remote).contains("@sha256:"), "{}", stdout(&remote));
    // A build of the same context through the daemon is not disturbed by the debug session's
    // Dockerfile-only state.
    let out = remote_build(
        &d,
        ctx.path(),
        &["-f", dockerfile, "--build-context", &extra_flag],
    );
    assert_ok(&out, "build after debug llb");
}

#[test]
fn prune_all_through_the_daemon_removes_idle_context_mirrors() {
    let ctx = temp_context(
        "kiln-daemon-ctx-",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx\n"),
            ("a.txt", "aaaa"),
        ],
    );
    let d = Daemon::start(Kiln::with_busybox());
    let out = remote_build(&d, ctx.path(), &[]);
    assert_ok(&out, "first build");
    let sessions = d.store.root.path().join("sessions");
    let mirrors = || std::fs::read_dir(&sessions).unwrap().count();
    assert_eq!(mirrors(), 1);
    // `until` spares a mirror synced a moment ago.
    let out = d.run(&["prune", "--filter", "until=1h"]);
    assert_ok(&out, "kiln --host prune --filter until=1h");
    assert_eq!(mirrors(), 1, "{}", stdout(&out));
    let out = d.run(&["prune", "--all"]);
    assert_ok(&out, "kiln --host prune --all");
    assert!(
        stdout(&out).contains(", 1 clients' context mirrors; freed "),
        "{}",
        stdout(&out)
    );
    assert_eq!(mirrors(), 0);
    // The next build sends its whole context again, and builds.
    let out = remote_build(&d, ctx.path(), &[]);
    assert_ok(&out, "build after the prune");
    let (entries, files, _, _) = synced(&out);
    assert_eq!((entries, files), (2, 2), "{}", stderr(&out));
}
