//! `ADD` of git repositories: a repository made here, served over loopback by git's dumb HTTP
//! protocol (`git update-server-info` and a static file server), added by branch, tag, commit and
//! subdirectory, with and without `.git`, re-added when its branch moves, and the errors for a
//! bad ref and an unreachable remote.

mod common;

use common::GitRepo as Repo;
use common::*;
use std::net::TcpListener;
use std::process::Command;

fn build(k: &Kiln, dockerfile: &str, tag: &str) -> std::process::Output {
    let ctx = temp_context("kiln-git-ctx-", &[("Dockerfile", dockerfile)]);
    k.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        tag,
        ctx.path().to_str().unwrap(),
    ])
}

fn run_in(k: &Kiln, image: &str, script: &str) -> String {
    let out = k.run(&["run", "--rm", image, "sh", "-c", script]);
    assert_ok(&out, script);
    stdout(&out)
}

#[test]
fn add_git_by_branch_tag_commit_and_subdir() {
    let repo = Repo::new();
    let first = repo.commit(&[("a.txt", "one\n"), ("sub/b.txt", "b1\n")], "first");
    repo.git(&["tag", "-a", "v1", "-m", "v1"]);
    repo.git(&["tag", "light"]);
    repo.commit(&[("a.txt", "two\n")], "second");
    let k = Kiln::with_busybox();
    let url = repo.url();
    let dockerfile = format!(
        "FROM busybox\n\
         ADD {url}#main /branch\n\
         ADD {url}#v1 /tag/\n\
         ADD {url}#light /light\n\
         ADD {url}#{first} /commit\n\
         ADD --chown=7:8 --chmod=0700 {url}#main:sub /sub\n\
         ADD {url} /default\n"
    );
    let out = build(&k, &dockerfile, "git-refs");
    assert_ok(&out, "build with ADD of git refs");
    let got = run_in(
        &k,
        "git-refs",
        "cat /branch/a.txt /tag/a.txt /light/a.txt /commit/a.txt /default/a.txt /sub/b.txt; \
         stat -c '%n %u:%g %a' /sub/b.txt; echo $(ls -a /branch) / $(ls -a /sub)",
    );
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        &lines[..6],
        ["two", "one", "one", "one", "two", "b1"],
        "{got}"
    );
    assert_eq!(lines[6], "/sub/b.txt 7:8 700", "{got}");
    // No `.git` without --keep-git-dir; the subdirectory's contents only.
    assert_eq!(lines[7], ". .. a.txt sub / . .. b.txt", "{got}");
}

#[test]
fn add_keep_git_dir_keeps_a_repository_of_the_commit() {
    let repo = Repo::new();
    let commit = repo.commit(&[("a.txt", "one\n")], "first");
    let k = Kiln::with_busybox();
    let dockerfile = format!(
        "FROM busybox\nADD --keep-git-dir {}#main /src\n",
        repo.url()
    );
    let out = build(&k, &dockerfile, "git-kept");
    assert_ok(&out, "build with ADD --keep-git-dir");
    let out = k.run(&[
        "build",
        "-o",
        &format!(
            "type=local,dest={}",
            repo.dir.path().join("out").to_str().unwrap()
        ),
        temp_context("kiln-git-ctx-", &[("Dockerfile", &dockerfile)])
            .path()
            .to_str()
            .unwrap(),
    ]);
    assert_ok(&out, "export the tree");
    let src = repo.dir.path().join("out/src");
    assert_eq!(std::fs::read_to_string(src.join("a.txt")).unwrap(), "one\n");
    // The host's git reads the kept `.git`: HEAD is the commit, origin the remote.
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(git(&["rev-parse", "HEAD"]), commit);
    assert_eq!(git(&["remote", "get-url", "origin"]), repo.url());
    assert_eq!(git(&["rev-parse", "refs/heads/main"]), commit);
    assert_eq!(git(&["status", "--porcelain"]), "");
}

#[test]
fn new_commit_on_the_branch_reruns_the_add_and_an_unchanged_one_does_not() {
    let repo = Repo::new();
    repo.commit(&[("a.txt", "one\n")], "first");
    let k = Kiln::with_busybox();
    let dockerfile = format!("FROM busybox\nADD {}#main /src\n", repo.url());
    let out = build(&k, &dockerfile, "git-moving");
    assert_ok(&out, "first build");
    assert_eq!(run_in(&k, "git-moving", "cat /src/a.txt"), "one\n");

    let out = build(&k, &dockerfile, "git-moving");
    assert_ok(&out, "rebuild, branch unchanged");
    let log = stderr(&out);
    assert!(
        log.contains("(0 steps run, 3 cached)"),
        "unchanged branch re-ran the ADD: {log}"
    );

    repo.commit(&[("a.txt", "two\n")], "second");
    let out = build(&k, &dockerfile, "git-moving");
    assert_ok(&out, "rebuild, branch moved");
    assert!(
        stderr(&out).contains("(2 steps run, 1 cached)"),
        "moved branch did not re-run the ADD: {}",
        stderr(&out)
    );
    assert_eq!(run_in(&k, "git-moving", "cat /src/a.txt"), "two\n");
}

#[test]
fn add_git_errors_name_the_line_and_the_fix() {
    let repo = Repo::new();
    repo.commit(&[("a.txt", "one\n")], "first");
    let k = Kiln::with_busybox();

    let out = build(
        &k,
        &format!("FROM busybox\nADD {}#nosuchbranch /src\n", repo.url()),
        "git-bad-ref",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(
        err.contains("`nosuchbranch` is not a branch, tag or commit of"),
        "{err}"
    );

    let out = build(
        &k,
        &format!("FROM busybox\nADD {}#main:nodir /src\n", repo.url()),
        "git-bad-subdir",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("`nodir` is not a directory in commit"),
        "{err}"
    );

    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = build(
        &k,
        &format!("FROM busybox\n\nADD http://127.0.0.1:{closed}/gone.git /src\n"),
        "git-unreachable",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(
        err.contains("cannot reach the git repository") && err.contains("check the URL"),
        "{err}"
    );
}

#[test]
fn build_with_a_git_url_as_the_context() {
    let repo = Repo::new();
    repo.commit(
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /root-ctx/\n"),
            (
                "app/Dockerfile",
                "FROM busybox\nCOPY . /ctx/\nRUN ls -a /ctx > /listing\n",
            ),
            ("app/.dockerignore", "*.log\n"),
            ("app/main.txt", "main v1\n"),
            ("app/debug.log", "ignored\n"),
            (
                "app/Dockerfile.alt",
                "FROM busybox\nCOPY main.txt /alt.txt\n",
            ),
        ],
        "first",
    );
    repo.git(&["tag", "v1"]);
    repo.commit(&[("app/main.txt", "main v2\n")], "second");
    let k = Kiln::with_busybox();
    let url = repo.url();

    // `#ref:subdir`: the Dockerfile and `.dockerignore` are read from the subdirectory.
    let ctx = format!("{url}#v1:app");
    let out = k.run(&["build", "-t", "git-ctx", &ctx]);
    assert_ok(&out, "kiln build GIT_URL#ref:subdir");
    assert_eq!(
        run_in(&k, "git-ctx", "cat /ctx/main.txt; cat /listing"),
        "main v1\n.\n..\n.dockerignore\nDockerfile\nDockerfile.alt\nmain.txt\n",
        "the v1 tree of app/, without `.git` and the ignored log"
    );
    // Built again from the same commit, every step is a cache hit.
    let out = k.run(&["build", "-t", "git-ctx", &ctx]);
    assert_ok(&out, "rebuild from the same commit");
    assert!(
        stderr(&out).contains("(0 steps run, 3 cached)"),
        "{}",
        stderr(&out)
    );

    // The remote's HEAD with no fragment; `-f` is a path inside the repository.
    let out = k.run(&["build", "-t", "git-ctx-head", &url]);
    assert_ok(&out, "kiln build GIT_URL");
    assert_eq!(
        run_in(&k, "git-ctx-head", "cat /root-ctx/app/main.txt"),
        "main v2\n"
    );
    let out = k.run(&[
        "build",
        "-f",
        "Dockerfile.alt",
        "-t",
        "git-ctx-alt",
        &format!("{url}#main:app"),
    ]);
    assert_ok(&out, "kiln build -f with a git context");
    assert_eq!(run_in(&k, "git-ctx-alt", "cat /alt.txt"), "main v2\n");

    // A ref the remote lacks: the error names the context and the fix; no checkout is left.
    let out = k.run(&["build", &format!("{url}#nosuch")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot check out the git build context")
            && err.contains("`nosuch` is not a branch, tag or commit of"),
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(k.root.path().join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !leftovers
            .iter()
            .any(|n| n.to_string_lossy().starts_with("git-context-")),
        "{leftovers:?}"
    );
}

#[test]
fn add_checksum_pins_the_commit_of_a_git_source() {
    let repo = Repo::new();
    let first = repo.commit(&[("a.txt", "one\n")], "first");
    let k = Kiln::with_busybox();
    let url = repo.url();

    // The full commit and a prefix of it both match.
    let dockerfile = format!(
        "FROM busybox\nADD --checksum={first} {url}#main /full\nADD --checksum={} {url}#main /short\n",
        &first[..12]
    );
    let out = build(&k, &dockerfile, "git-pinned");
    assert_ok(&out, "build with ADD --checksum of the branch's commit");
    assert_eq!(
        run_in(&k, "git-pinned", "cat /full/a.txt /short/a.txt"),
        "one\none\n"
    );

    // The branch moves on: the same Dockerfile now fails, naming both commits.
    let second = repo.commit(&[("a.txt", "two\n")], "second");
    let out = build(&k, &dockerfile, "git-pinned");
    assert!(!out.status.success(), "a moved branch passed the checksum");
    let err = stderr(&out);
    // Either ADD may fail first (they run in parallel): match what both messages say.
    assert!(
        err.contains(&format!("expected checksum to match {}", &first[..12]))
            && err.contains(&format!("got {second}")),
        "{err}"
    );

    // Not a commit hash at all: refused at compile time, with the line.
    let out = build(
        &k,
        &format!("FROM busybox\nADD --checksum=foobar {url}#main /src\n"),
        "git-garbage",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Dockerfile:2") && err.contains("expected hex commit hash"),
        "{err}"
    );
}
