//! End-to-end tests of the build sandbox: `RUN --mount` of every type, `--secret`, `--ssh`,
//! `--network`, `kiln prune`, and hostile steps that must not reach the host. They need root,
//! as CI runs them.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A build context with these files, removed when dropped.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    temp_context("kiln-sandbox-ctx-", files)
}

fn run_in(k: &Kiln, image: &str, script: &str) -> String {
    let out = k.run(&["run", "--rm", image, "sh", "-c", script]);
    assert_ok(&out, &format!("kiln run {image} {script}"));
    stdout(&out)
}

/// Every regular file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_under(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Host processes whose command line contains `marker`.
fn host_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if contains(&cmdline, marker.as_bytes()) {
                found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
            }
        }
    }
    found
}

#[test]
fn cache_mount_persists_across_builds_and_no_cache_and_prune_clears_it() {
    let k = Kiln::with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=cache,target=/cache,id=counter \
         n=$(cat /cache/count 2>/dev/null || echo 0); echo $((n + 1)) > /cache/count; \
         cp /cache/count /result\n",
    )]);
    let count = |extra: &[&str]| {
        let out = build(&k, ctx.path(), &[&["-t", "counter"], extra].concat());
        assert_ok(&out, "kiln build (cache mount)");
        run_in(&k, "counter", "cat /result").trim().to_string()
    };
    assert_eq!(count(&[]), "1");
    // `--no-cache` reruns the step, and the cache mount keeps its content.
    assert_eq!(count(&["--no-cache"]), "2");
    // Never part of a layer: the image has an empty (or no) /cache.
    assert_eq!(run_in(&k, "counter", "ls -A /cache 2>/dev/null; true"), "");
    let out = k.run(&["prune"]);
    assert_ok(&out, "kiln prune");
    assert!(
        stdout(&out).contains("removed 1 cache mounts"),
        "{}",
        stdout(&out)
    );
    assert_eq!(count(&["--no-cache"]), "1");
}

#[test]
fn cache_mount_is_shared_between_concurrent_steps() {
    let k = Kiln::with_busybox();
    // Each step waits (up to 20s) for the other's file: it passes only if both run at once on
    // the same directory.
    let wait = |mine: &str, theirs: &str| {
        format!(
            "RUN --mount=type=cache,id=meet,target=/c,sharing=shared \
             touch /c/{mine}; i=0; while [ ! -e /c/{theirs} ]; do sleep 0.1; i=$((i+1)); \
             [ $i -gt 200 ] && exit 1; done; echo {mine} > /{mine}\n"
        )
    };
    let dockerfile = format!(
        "FROM busybox AS a\n{}FROM busybox AS b\n{}FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
        wait("a", "b"),
        wait("b", "a")
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out = build(&k, ctx.path(), &["--jobs", "2"]);
    assert_ok(&out, "kiln build (shared cache mount)");
}

#[test]
fn cache_mount_locked_serialises_concurrent_steps() {
    let k = Kiln::with_busybox();
    let step = |name: &str| {
        format!(
            "RUN --mount=type=cache,id=serial,target=/c,sharing=locked \
             if [ -e /c/busy ]; then echo overlap; exit 1; fi; touch /c/busy; sleep 1; \
             rm /c/busy; echo {name} >> /c/log; cp /c/log /{name}\n"
        )
    };
    let dockerfile = format!(
        "FROM busybox AS a\n{}FROM busybox AS b\n{}FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
        step("a"),
        step("b")
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out = build(&k, ctx.path(), &["--jobs", "2", "-t", "locked"]);
    assert_ok(&out, "kiln build (locked cache mount)");
    // The second step saw the first one's line: they ran one after the other on one directory.
    let logs = run_in(&k, "locked", "cat /a /b");
    assert_eq!(logs.lines().count(), 3, "{logs}");
}

#[test]
fn tmpfs_and_bind_mounts_leave_no_trace_in_the_layer() {
    let k = Kiln::with_busybox();
    let ctx = context(&[
        ("data.txt", "from-context\n"),
        (
            "Dockerfile",
            "FROM busybox AS src\n\
             RUN echo from-stage > /s.txt\n\
             FROM busybox\n\
             RUN --mount=type=tmpfs,target=/scratch,size=1m \
             grep ' /scratch tmpfs ' /proc/mounts | grep -q size=1024k && echo x > /scratch/f\n\
             RUN --mount=type=bind,target=/ctx cat /ctx/data.txt > /a\n\
             RUN --mount=type=bind,from=src,source=/s.txt,target=/mnt/s.txt cat /mnt/s.txt > /b\n\
             RUN --mount=type=bind,target=/ctx,rw echo changed > /ctx/data.txt && cat /ctx/data.txt > /c\n\
             RUN --mount=type=bind,target=/ctx if echo x > /ctx/new; then exit 1; fi\n",
        ),
    ]);
    let out = build(&k, ctx.path(), &["-t", "mounts"]);
    assert_ok(&out, "kiln build (tmpfs and bind mounts)");
    let seen = run_in(
        &k,
        "mounts",
        "cat /a /b /c; ls -d /scratch /ctx /mnt/s.txt 2>/dev/null; true",
    );
    assert_eq!(seen, "from-context\nfrom-stage\nchanged\n");
    // `rw` changes were thrown away; the ro mount refused the write.
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("data.txt")).unwrap(),
        "from-context\n"
    );
    assert!(!ctx.path().join("new").exists());
}

#[test]
fn secrets_reach_only_their_step_and_never_the_store() {
    let k = Kiln::with_busybox();
    let value = unique("s3cr3t-value");
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), &value).unwrap();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=secret,id=tok,target=/run/secrets/tok,env=TOK,mode=0440,uid=12,gid=34 \
         test \"$(cat /run/secrets/tok)\" = \"$TOK\" && wc -c < /run/secrets/tok > /len \
         && stat -c '%a %u %g' /run/secrets/tok > /meta\n\
         RUN if cat /run/secrets/tok 2>/dev/null; then exit 1; fi; test -z \"$TOK\"\n",
    )]);
    let src = format!("id=tok,src={}", secret_file.path().display());
    let out = build(&k, ctx.path(), &["--secret", &src, "-t", "secret"]);
    assert_ok(&out, "kiln build --secret");
    assert!(!contains(&out.stdout, value.as_bytes()) && !contains(&out.stderr, value.as_bytes()));
    let seen = run_in(
        &k,
        "secret",
        "cat /len /meta; ls -A /run/secrets 2>/dev/null; true",
    );
    assert_eq!(seen, format!("{}\n440 12 34\n", value.len()));
    let mut files = Vec::new();
    files_under(k.root.path(), &mut files);
    assert!(files.len() > 3);
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, value.as_bytes()),
            "the secret is in `{}`",
            f.display()
        );
    }
    // A required secret that was not given stops the build with a clear message.
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=secret,id=missing,required=true true\n",
    )]);
    let out = build(&k, ctx.path(), &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("secret `missing` is required but was not given"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ssh_agent_socket_is_forwarded() {
    let k = Kiln::with_busybox();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock\n",
    )]);
    let spec = format!("default={}", sock.display());
    let out = build(&k, ctx.path(), &["--ssh", &spec, "-t", "ssh"]);
    assert_ok(&out, "kiln build --ssh");
    assert_eq!(
        run_in(
            &k,
            "ssh",
            "cat /sock; ls -A /run/buildkit 2>/dev/null; true"
        ),
        "/run/buildkit/ssh_agent.0\n"
    );
}

#[test]
fn secret_with_env_only_also_got_a_file() {
    // BuildKit: `env=` without `target=` gives the variable and no file.
    let k = Kiln::with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=secret,id=tok,env=TOK test \"$TOK\" = hush \
         && if ls /run/secrets 2>/dev/null; then exit 1; fi\n\
         RUN --mount=type=secret,id=tok,env=TOK,target=/s/tok test \"$(cat /s/tok)\" = \"$TOK\"\n",
    )]);
    let out = k
        .cmd()
        .env("KILN_TEST_TOK", "hush")
        .args([
            "build",
            "--progress",
            "plain",
            "--secret",
            "id=tok,env=KILN_TEST_TOK",
        ])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert_ok(&out, "kiln build with an env-only secret");
}

#[test]
fn bind_of_the_context_showed_dockerignored_files() {
    let k = Kiln::with_busybox();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=bind,target=/ctx cd /ctx && find . | sort > /seen\n\
             RUN --mount=type=bind,target=/ctx,rw cd /ctx && find . | sort > /seen-rw && touch new\n\
             RUN --mount=type=bind,target=/ctx,source=keep cd /ctx && find . | sort > /seen-sub\n",
        ),
        (".dockerignore", "secret.env\nnode_modules\nkeep/*.log\n"),
        ("secret.env", "TOKEN=1\n"),
        ("node_modules/pkg/index.js", "x\n"),
        ("keep/a.txt", "a\n"),
        ("keep/debug.log", "log\n"),
    ]);
    let mode = |p: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(ctx.path().join(p)).unwrap().permissions(),
        ) & 0o777
    };
    std::fs::set_permissions(
        ctx.path().join("keep"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    assert_eq!(mode("keep"), 0o750);
    for runtime in ["builtin", "runc"] {
        let tag = format!("ignored-{runtime}");
        let out = build(&k, ctx.path(), &["--runtime", runtime, "-t", &tag]);
        assert_ok(&out, &format!("kiln build --runtime {runtime}"));
        let listing = ".\n./.dockerignore\n./Dockerfile\n./keep\n./keep/a.txt\n";
        assert_eq!(run_in(&k, &tag, "cat /seen"), listing, "{runtime}");
        assert_eq!(run_in(&k, &tag, "cat /seen-rw"), listing, "{runtime}");
        assert_eq!(
            run_in(&k, &tag, "cat /seen-sub"),
            ".\n./a.txt\n",
            "{runtime}"
        );
    }
    // The context itself is untouched, and a directory in the view keeps its mode.
    assert!(!ctx.path().join("new").exists());
    assert!(ctx.path().join("secret.env").exists());
    let ctx2 = context(&[
        (
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=bind,target=/ctx stat -c %a /ctx/keep > /mode\n",
        ),
        (".dockerignore", "keep/*.log\n"),
        ("keep/a.txt", "a\n"),
        ("keep/debug.log", "log\n"),
    ]);
    std::fs::set_permissions(
        ctx2.path().join("keep"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let out = build(&k, ctx2.path(), &["-t", "ignored-mode"]);
    assert_ok(&out, "kiln build");
    assert_eq!(run_in(&k, "ignored-mode", "cat /mode"), "750\n");
    // A source the `.dockerignore` excludes is not in the context.
    let ctx3 = context(&[
        (
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=bind,target=/ctx,source=node_modules true\n",
        ),
        (".dockerignore", "node_modules\n"),
        ("node_modules/x", "x\n"),
    ]);
    let out = build(&k, ctx3.path(), &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("excluded by `.dockerignore`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ssh_mount_ignored_mode_uid_gid() {
    let k = Kiln::with_busybox();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=ssh stat -c '%a %u %g' \"$SSH_AUTH_SOCK\" > /default\n\
         RUN --mount=type=ssh,mode=0666,uid=1000,gid=1001 stat -c '%a %u %g' \"$SSH_AUTH_SOCK\" > /custom\n",
    )]);
    let spec = format!("default={}", sock.display());
    for runtime in ["builtin", "runc"] {
        let tag = format!("ssh-mode-{runtime}");
        let out = build(
            &k,
            ctx.path(),
            &["--ssh", &spec, "--runtime", runtime, "-t", &tag],
        );
        assert_ok(&out, &format!("kiln build --ssh --runtime {runtime}"));
        assert_eq!(
            run_in(&k, &tag, "cat /default /custom"),
            "600 0 0\n666 1000 1001\n",
            "{runtime}"
        );
    }
    // The agent's own socket keeps its mode.
    let md = std::fs::metadata(&sock).unwrap();
    assert_ne!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o666
    );
}

#[test]
fn network_none_leaves_only_loopback() {
    let k = Kiln::with_busybox();
    let ctx = context(&[(
        "Dockerfile",
        "FROM busybox\nRUN ls /sys/class/net > /nets\n",
    )]);
    let out = build(&k, ctx.path(), &["--network", "none", "-t", "nonet"]);
    assert_ok(&out, "kiln build --network none");
    assert_eq!(run_in(&k, "nonet", "cat /nets"), "lo\n");
}

#[test]
fn hostile_steps_do_not_reach_the_host() {
    let k = Kiln::with_busybox();
    let marker = unique("kiln-host-marker");
    let host_file = std::env::temp_dir().join(&marker);
    std::fs::write(&host_file, "host-only").unwrap();
    let mut sleeper = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 60; : {marker}-sleeper"))
        .spawn()
        .unwrap();
    let hostname_before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let left = format!("{marker}-left");
    let dockerfile = format!(
        "FROM busybox\n\
         RUN ! cat /tmp/{marker} && ! cat /proc/1/root/tmp/{marker}\n\
         RUN ! mount -t tmpfs none /mnt && ! mount --bind / /mnt\n\
         RUN echo junk > /m.ko; insmod /m.ko 2>&1 | grep -q 'not permitted'\n\
         RUN ! hostname evil-host && ! echo evil > /proc/sys/kernel/hostname\n\
         RUN ! ps -o args | grep -q '[{first}]{rest}-sleeper' && test $(ls -d /proc/[0-9]* | wc -l) -lt 10\n\
         RUN sh -c 'sleep 300; : {left}' > /dev/null 2>&1 & echo started\n\
         RUN ! unshare -m true && ! unshare -U true\n",
        first = &marker[..1],
        rest = &marker[1..],
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out = build(&k, ctx.path(), &[]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_file(&host_file);
    assert_ok(&out, "kiln build (hostile steps)");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname_before
    );
    let survivors = host_processes_with(&left);
    assert!(survivors.is_empty(), "left running: {survivors:?}");
}
