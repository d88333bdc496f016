//! `kiln --host` for the store commands, the daemon's listeners (unix socket mode, tcp with
//! mutual TLS, systemd's sockets), the store's single owner, and stopping the daemon (SIGTERM,
//! SIGKILL): real daemon processes on temporary sockets and loopback ports 5160-5169.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A store with busybox and a built image (so build cache too).
fn seeded_store() -> Kiln {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-dops-",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /built\n")],
    );
    assert_ok(&build(&k, ctx.path(), &["-t", "app:1"]), "kiln build");
    k
}

const STORE_COMMANDS: &[&[&str]] = &[
    &["images"],
    &["images", "-q"],
    &["images", "--filter", "reference=app*"],
    &["images", "--filter", "dangling=true"],
    &["image", "ls", "-a"],
    &["system", "df"],
    &["system", "df", "--bytes"],
];

#[test]
fn store_commands_through_the_daemon_print_what_embedded_kiln_prints() {
    let k = seeded_store();
    let embedded: Vec<_> = STORE_COMMANDS.iter().map(|args| k.run(args)).collect();
    let bad_filter = k.run(&["images", "--filter", "nope"]);
    let mut d = Daemon::start(k);
    for (args, want) in STORE_COMMANDS.iter().zip(&embedded) {
        assert_ok(want, &args.join(" "));
        let got = d.run(args);
        assert_ok(&got, &format!("kiln --host {}", args.join(" ")));
        assert_eq!(stdout(&got), stdout(want), "kiln {}", args.join(" "));
    }
    let got = d.run(&["images", "--filter", "nope"]);
    assert_eq!(got.status.code(), bad_filter.status.code());
    assert_eq!(stderr(&got), stderr(&bad_filter));

    let pruned = d.run(&["prune", "--all"]);
    assert_ok(&pruned, "kiln --host prune --all");
    let text = stdout(&pruned);
    assert!(
        text.starts_with("removed 0 cache mounts, ") && text.contains(" cache results, "),
        "{text}"
    );
    let df_remote = stdout(&d.run(&["system", "df", "--bytes"]));
    d.stop(Duration::from_secs(10)).expect("daemon stops");
    let k = d.take_store();
    let df_embedded = k.run(&["system", "df", "--bytes"]);
    assert_ok(&df_embedded, "embedded kiln system df after the daemon");
    // The kinds agree; `Other` (the store's index among it) is measured after the daemon
    // closed the index, which compacts it.
    let kinds = |t: &str| t.lines().take(4).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(kinds(&df_remote), kinds(&stdout(&df_embedded)));
    // What prune said it removed is gone: no cache result is left, nothing to reclaim.
    assert!(
        df_remote.lines().any(|l| matches!(
            l.split_whitespace().collect::<Vec<_>>()[..],
            ["Build", "Cache", "0", _, "0"]
        )),
        "{df_remote}"
    );
}

#[test]
fn commands_the_daemon_does_not_serve_say_so_in_one_line_and_exit_125() {
    let d = Daemon::start(Kiln::with_busybox());
    for args in [
        &["run", "--rm", "busybox", "true"][..],
        &["ps"],
        &["volume", "ls"],
        &["tag", "busybox", "other"],
    ] {
        let out = d.run(args);
        assert_eq!(out.status.code(), Some(125), "kiln --host {args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "error: `kiln {}` does not run through a daemon yet",
                args[0]
            )),
            "{err}"
        );
    }
}

#[test]
fn an_embedded_kiln_fails_at_once_on_a_store_a_daemon_holds_and_names_it() {
    let d = Daemon::start(Kiln::with_busybox());
    let ctx = temp_context("kiln-dops-", &[("Dockerfile", "FROM busybox\n")]);
    let started = Instant::now();
    // No `--lock-timeout`: embedded kiln waits for another embedded kiln, not for a daemon.
    let out = build(&d.store, ctx.path(), &[]);
    assert!(started.elapsed() < Duration::from_secs(5), "it waited");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "error: the store `{}` is served by a kiln daemon (process {}): run the command through it with `kiln --host {addr} ...` (or `KILN_HOST={addr}`), or stop the daemon",
            d.store.root.path().display(),
            d.pid(),
            addr = d.addr
        )
    );
}

#[test]
fn the_socket_is_mode_0660_and_sigterm_removes_it_and_releases_the_store() {
    let mut d = Daemon::start(Kiln::with_busybox());
    let socket = d.socket_path();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let started = Instant::now();
    let status = d
        .stop(Duration::from_secs(10))
        .expect("daemon stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!socket.exists(), "the socket file outlived the daemon");
    let k = d.take_store();
    assert_no_mounts_of(&k);
    let out = k.run(&["--lock-timeout", "0", "check"]);
    assert_ok(&out, "kiln check after the daemon");
}

#[test]
fn after_kill_9_a_new_daemon_replaces_the_stale_socket_and_the_store_is_consistent() {
    let mut d = Daemon::start(seeded_store());
    let socket = d.socket_path();
    d.kill9();
    assert!(socket.exists(), "a killed daemon cannot remove its socket");
    let k = d.take_store();
    let out = k.run(&["--lock-timeout", "0", "check"]);
    assert_ok(&out, "kiln check after kill -9");
    let addr = format!("unix://{}", socket.display());
    let d = Daemon::start_with(k, Some(&addr), &["--addr", &addr], &[]);
    let out = d.run(&["images"]);
    assert_ok(&out, "kiln --host images after a restart");
    assert!(
        stdout(&out).contains("docker.io/library/app:1"),
        "{}",
        stdout(&out)
    );
}

fn assert_no_mounts_of(k: &Kiln) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = k.root.path().to_str().unwrap();
    assert!(
        !mounts.contains(root),
        "mounts left under {root}:\n{mounts}"
    );
}

/// A CA, and a certificate it signed (`name.crt`/`name.key` in `dir`), made with openssl.
struct Pki<'a> {
    dir: &'a Path,
}

impl Pki<'_> {
    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir)
            .output()
            .expect("run openssl (`cargo xtask setup` installs it)");
        assert_ok(&out, &format!("openssl {}", args.join(" ")));
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    fn signed(&self, ca: &str, name: &str, ext: &str) {
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }
}

#[test]
fn tcp_with_mutual_tls_serves_only_clients_with_a_certificate_of_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki { dir: dir.path() };
    pki.ca("ca");
    pki.ca("other-ca");
    pki.signed(
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    pki.signed("ca", "client", "extendedKeyUsage=clientAuth\n");
    pki.signed("other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
    let addr = "tcp://127.0.0.1:5160";
    let d = Daemon::start_with(
        Kiln::with_busybox(),
        Some(addr),
        &[
            "--addr",
            addr,
            "--tlscert",
            &pki.path("server.crt"),
            "--tlskey",
            &pki.path("server.key"),
            "--tlscacert",
            &pki.path("ca.crt"),
        ],
        &[],
    );
    let client = |cert: Option<&str>| {
        let mut c = d.client();
        c.env("KILN_TLSCACERT", pki.path("ca.crt"));
        if let Some(name) = cert {
            c.env("KILN_TLSCERT", pki.path(&format!("{name}.crt")))
                .env("KILN_TLSKEY", pki.path(&format!("{name}.key")));
        }
        c
    };
    let out = client(Some("client")).args(["images"]).output().unwrap();
    assert_ok(
        &out,
        "kiln --host tcp:// images with the client certificate",
    );
    assert!(
        stdout(&out).contains("\ndocker.io/library/busybox:latest "),
        "{}",
        stdout(&out)
    );

    for (who, mut cmd) in [
        ("no client certificate", client(None)),
        ("a certificate of another CA", client(Some("stranger"))),
        ("no TLS at all", d.client()),
    ] {
        let out = cmd.args(["images", "-q"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{who}: {}", stdout(&out));
        assert!(
            stdout(&out).is_empty(),
            "{who} was served: {}",
            stdout(&out)
        );
        assert!(
            stderr(&out).starts_with("error: "),
            "{who}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn plain_tcp_is_refused_unless_insecure_tcp_is_given() {
    let k = Kiln::new();
    let out = k.run(&["daemon", "--addr", "tcp://127.0.0.1:5161"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`tcp://127.0.0.1:5161` is a tcp address: give `--tlscert`, `--tlskey` and `--tlscacert`"),
        "{}",
        stderr(&out)
    );
    let addr = "tcp://127.0.0.1:5161";
    let d = Daemon::start_with(k, Some(addr), &["--addr", addr, "--insecure-tcp"], &[]);
    let out = d.run(&["version"]);
    assert_ok(&out, "kiln --host tcp:// version with --insecure-tcp");
    assert!(
        d.log_text()
            .contains("warning: serving `tcp://127.0.0.1:5161` without TLS"),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_socket_systemd_passes_is_served_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    // perl binds the socket as systemd's socket unit would, puts it at fd 3 and execs the
    // daemon in its own process, whose pid it names in `LISTEN_PID`.
    // `$^F = 3`: fd 3 stays open across exec even when the socket is made there.
    let script = r#"use Socket; use POSIX; $^F = 3;
        socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        bind($s, pack_sockaddr_un($ARGV[0])) or die "bind: $!";
        listen($s, 16) or die "listen: $!";
        fileno($s) == 3 or POSIX::dup2(fileno($s), 3) or die "dup2: $!";
        $ENV{LISTEN_PID} = $$; $ENV{LISTEN_FDS} = 1;
        shift @ARGV; exec @ARGV or die "exec: $!";"#;
    let addr = format!("unix://{}", socket.display());
    let mut d = Daemon::start_with(
        Kiln::with_busybox(),
        Some(&addr),
        &[],
        &["perl", "-e", script, socket.to_str().unwrap()],
    );
    let out = d.run(&["images"]);
    assert_ok(&out, "kiln --host images on systemd's socket");
    assert!(
        stdout(&out).contains("\ndocker.io/library/busybox:latest "),
        "{}",
        stdout(&out)
    );
    let status = d.stop(Duration::from_secs(10)).expect("daemon stops");
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "the daemon removed systemd's socket file");
}

/// Starts `kiln --host … build` of a Dockerfile whose RUN step sleeps `secs` (one length per
/// test, so tests running at once tell their steps apart), and returns once the step runs (its
/// sandbox's `sleep` is a process of this machine).
fn start_long_build(d: &Daemon, secs: &str) -> (std::process::Child, tempfile::TempDir) {
    let ctx = temp_context(
        "kiln-dops-",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nRUN sleep {secs}\nRUN echo done > /done\n"),
        )],
    );
    let child = d
        .client()
        .args([
            "build",
            "--progress",
            "plain",
            "-t",
            "long:1",
            ctx.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_running(&["sleep", secs]).is_empty() {
        assert!(Instant::now() < deadline, "the RUN step did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, ctx)
}

#[test]
fn sigterm_during_a_run_step_stops_the_daemon_cleanly_and_a_new_one_builds_again() {
    let mut d = Daemon::start(Kiln::with_busybox());
    let (mut client, ctx) = start_long_build(&d, "7");
    let started = Instant::now();
    let status = d
        .stop(Duration::from_secs(15))
        .expect("daemon stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let _ = client.wait();
    let k = d.take_store();
    assert_no_mounts_of(&k);
    assert_ok(
        &k.run(&["--lock-timeout", "0", "check"]),
        "kiln check after SIGTERM",
    );
    let d = Daemon::start(k);
    let out = d.run(&["build", "--progress", "plain", ctx.path().to_str().unwrap()]);
    assert_ok(&out, "the same build on a restarted daemon");
}

#[test]
fn kill_9_during_a_run_step_leaves_a_store_a_new_daemon_builds_on() {
    let mut d = Daemon::start(Kiln::with_busybox());
    let (mut client, ctx) = start_long_build(&d, "8");
    d.kill9();
    let _ = client.wait();
    let k = d.take_store();
    assert_ok(
        &k.run(&["--lock-timeout", "0", "check"]),
        "kiln check after kill -9",
    );
    let d = Daemon::start(k);
    let out = d.run(&["build", "--progress", "plain", ctx.path().to_str().unwrap()]);
    assert_ok(&out, "the same build on a restarted daemon");
}

#[test]
fn push_and_pull_through_the_daemon_print_what_embedded_kiln_prints() {
    let (registry, _guard) = registry();
    let through_daemon = format!("{registry}/{}:1", unique("dops-daemon"));
    let embedded_ref = format!("{registry}/{}:1", unique("dops-embedded"));
    let mut d = Daemon::start(Kiln::with_busybox());
    let pushed = d.run(&[
        "--insecure-registry",
        &registry,
        "push",
        "--progress",
        "plain",
        "busybox",
        &through_daemon,
    ]);
    assert_ok(&pushed, "kiln --host push");
    let pulled = d.run(&["pull", "--progress", "plain", &through_daemon]);
    assert_ok(&pulled, "kiln --host pull");
    assert_eq!(
        stdout(&pulled),
        stdout(&pushed),
        "the pulled digest is the pushed one"
    );
    let listed = stdout(&d.run(&["images"]));
    assert!(listed.contains(&through_daemon), "{listed}");
    let missing = d.run(&["push", "nothing-here"]);
    d.stop(Duration::from_secs(10)).expect("daemon stops");
    let k = d.take_store();
    let embedded = k.run(&[
        "--insecure-registry",
        &registry,
        "push",
        "--progress",
        "plain",
        "busybox",
        &embedded_ref,
    ]);
    assert_ok(&embedded, "embedded kiln push");
    assert_eq!(stdout(&pushed), stdout(&embedded));
    // The progress lines are the embedded ones; the summary's counts differ only because the
    // second push mounts the blobs the first uploaded.
    let progress = |out: &std::process::Output| {
        let text = stderr(out);
        let (blobs, rest): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.starts_with("blobs: "));
        assert_eq!(blobs.len(), 1, "{text}");
        let mut rest: Vec<String> = rest.into_iter().map(str::to_string).collect();
        // Blobs go up at once: they finish in any order.
        rest.sort();
        rest
    };
    assert_eq!(progress(&pushed), progress(&embedded));
    let missing_embedded = k.run(&["push", "nothing-here"]);
    assert_eq!(missing.status.code(), missing_embedded.status.code());
}

/// `kiln info --format json`'s object, after checking the command succeeded.
fn info_json(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert_ok(out, what);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{}", stdout(out)))
}

/// The server's counts of images and names.
fn image_counts(info: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| {
        info["server"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{k}`: {info}"))
    };
    (n("images"), n("image_names"), n("dangling_images"))
}

/// `kiln info`'s text without the lines that say which engine answered.
fn without_engine_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with(" Engine: ") && !l.starts_with("  "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn info_through_the_daemon_gives_the_facts_embedded_kiln_gives() {
    let k = seeded_store();
    let embedded = info_json(&k.run(&["info", "--format", "json"]), "kiln info");
    assert!(embedded["server"]["daemon"].is_null(), "{embedded}");
    assert_eq!(
        embedded["server"]["store_root"],
        k.root.path().display().to_string()
    );
    // busybox and app:1.
    assert_eq!(image_counts(&embedded), (2, 2, 0));
    let embedded_text = k.run(&["info"]);
    assert_ok(&embedded_text, "kiln info");
    assert!(
        stdout(&embedded_text).contains("\nServer:\n Engine: embedded (this process)\n"),
        "{}",
        stdout(&embedded_text)
    );

    let d = Daemon::start(k);
    let mut remote = info_json(&d.run(&["info", "--format", "json"]), "kiln --host info");
    // The daemon's own facts are the only ones an embedded kiln cannot have.
    let daemon = remote["server"]["daemon"].take();
    assert_eq!(daemon["pid"], d.pid(), "{daemon}");
    assert_eq!(daemon["api_version"], "kiln.v1", "{daemon}");
    assert_eq!(daemon["addresses"], serde_json::json!([d.addr]), "{daemon}");
    assert_eq!(daemon["builds_running"], 0, "{daemon}");
    assert_eq!(remote, embedded);

    // The same layout, the engine's lines aside.
    let remote_text = d.run(&["info"]);
    assert_ok(&remote_text, "kiln --host info");
    let text = stdout(&remote_text);
    assert!(
        text.contains(&format!(
            "\nServer:\n Engine: daemon\n  PID: {}\n  API Version: kiln.v1\n  Addresses: {}\n  \
             Builds Running: 0\n Containers: 0\n",
            d.pid(),
            d.addr
        )),
        "{text}"
    );
    assert_eq!(
        without_engine_lines(&text),
        without_engine_lines(&stdout(&embedded_text))
    );

    // A new image built through the daemon counts once, on both sides; the embedded read of
    // the store the daemon holds needs no lock.
    let ctx = temp_context(
        "kiln-dops-",
        &[("Dockerfile", "FROM busybox\nRUN echo other > /other\n")],
    );
    assert_ok(
        &d.run(&[
            "build",
            "--progress",
            "plain",
            "-t",
            "other:1",
            ctx.path().to_str().unwrap(),
        ]),
        "kiln --host build",
    );
    let remote = info_json(&d.run(&["info", "--format", "json"]), "kiln --host info");
    assert_eq!(image_counts(&remote), (3, 3, 0));
    let beside = info_json(
        &d.store.run(&["info", "--format", "json"]),
        "embedded kiln info beside the daemon",
    );
    assert_eq!(image_counts(&beside), (3, 3, 0));
    assert!(beside["server"]["daemon"].is_null(), "{beside}");
}

#[test]
fn info_counts_a_second_name_as_a_name_not_an_image() {
    let k = seeded_store();
    assert_ok(&k.run(&["tag", "app:1", "app:2"]), "kiln tag");
    let embedded = info_json(&k.run(&["info", "--format", "json"]), "kiln info");
    assert_eq!(image_counts(&embedded), (2, 3, 0));
    let d = Daemon::start(k);
    let remote = info_json(&d.run(&["info", "--format", "json"]), "kiln --host info");
    assert_eq!(image_counts(&remote), (2, 3, 0));
}

#[test]
fn info_counts_the_builds_a_daemon_runs() {
    let d = Daemon::start(Kiln::with_busybox());
    let (mut client, _ctx) = start_long_build(&d, "11");
    let during = info_json(&d.run(&["info", "--format", "json"]), "kiln --host info");
    assert_eq!(during["server"]["daemon"]["builds_running"], 1, "{during}");
    // The client going away ends its session, and the count with it.
    let _ = client.kill();
    let _ = client.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = info_json(&d.run(&["info", "--format", "json"]), "kiln --host info");
        if after["server"]["daemon"]["builds_running"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the build is still counted: {after}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_survivors(&["sleep", "11"]);
}

#[test]
fn info_refuses_an_unknown_format_by_the_flags_name_before_reaching_a_daemon() {
    let k = Kiln::new();
    let embedded = k.run(&["info", "--format", "yaml"]);
    let remote = k
        .cmd()
        .env("KILN_HOST", "unix:///nonexistent/kiln.sock")
        .args(["info", "--format", "yaml"])
        .output()
        .unwrap();
    for (out, what) in [(&embedded, "embedded"), (&remote, "--host")] {
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(out));
        let err = stderr(out);
        assert!(
            err.contains("--format")
                && err.contains("`yaml` is not a format of `kiln info`: write `--format json`"),
            "{what}: {err}"
        );
        assert!(stdout(out).is_empty(), "{what}: {}", stdout(out));
    }
}

#[test]
fn a_rootless_daemon_serves_under_xdg_runtime_dir_and_removes_its_socket() {
    // `nobody`, through util-linux's setpriv: the daemon as an unprivileged user, without
    // `--addr`, on a store of that user's.
    let home = tempfile::tempdir().unwrap();
    let run = home.path().join("run");
    let root = home.path().join("root");
    for d in [&run, &root] {
        std::fs::create_dir(d).unwrap();
    }
    for p in [home.path(), &run, &root] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let as_nobody = || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", &run)
            .env("KILN_ROOT", &root);
        c
    };
    let mut daemon = as_nobody()
        .arg("daemon")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = run.join("kiln/kiln.sock");
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(socket.exists(), "no socket at {}", socket.display());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    let out = as_nobody()
        .args(["--host", &format!("unix://{}", socket.display()), "version"])
        .output()
        .unwrap();
    assert_ok(&out, "kiln --host version as the daemon's user");
    assert!(stdout(&out).contains("Server:"), "{}", stdout(&out));
    // SIGTERM: the daemon ends cleanly and takes its socket with it.
    let killed = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
    // The keeper of the store's user namespace stays for the next rootless kiln: stopped here,
    // with the test's store.
    let keeper = std::fs::read_to_string(root.join("userns-keeper")).unwrap_or_default();
    if let Some(pid) = keeper.split_whitespace().next() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}
