//! A hostile build context must not reach the host through symlinks. Every path kiln resolves
//! in a context (COPY/ADD sources and wildcards, `-f`, `.dockerignore`, `--build-context`
//! directories, git checkouts, `RUN --mount=type=bind`) resolves as if the context were `/`: a
//! link to `/etc` means `<context>/etc`, and `.dockerignore` applies to where a path leads.
//! Each test is named after the attack it pins; the "host" is a temp dir outside the context
//! holding a secret, and `/etc` itself where the host's own files make the point.

mod common;

use common::*;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;

const SECRET: &str = "HOST-SECRET-6d1f0c";

/// A directory outside every context, holding `secret.txt`, `s2.txt`, a Dockerfile and a
/// `.dockerignore`-looking file: what an escaping link would reach.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = temp_context(
            "kiln-host-",
            &[
                ("secret.txt", SECRET),
                ("s2.txt", SECRET),
                ("Dockerfile", &format!("FROM busybox\nRUN echo {SECRET}\n")),
                ("ignore", "app.txt\n"),
            ],
        );
        Host { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn link(target: impl AsRef<Path>, at: PathBuf) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    symlink(target, at).unwrap();
}

fn build(k: &Kiln, ctx: &Path, extra: &[&str], tag: &str) -> Output {
    let mut args = vec!["build", "--progress", "plain", "-t", tag];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    k.run(&args)
}

fn with_dockerfile(ctx: &Path, dockerfile: &str) {
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
}

/// The build failed with the usual "not found" error naming the Dockerfile line, and nothing
/// of the host's secret shows anywhere.
fn assert_not_found(out: &Output, location: &str, src: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "the build succeeded:\n{err}");
    assert!(
        err.contains(&format!("error: {location}:")) && err.contains(&format!("`{src}` not found")),
        "{err}"
    );
    assert_no_secret(out);
}

fn assert_no_secret(out: &Output) {
    assert!(
        !stdout(out).contains(SECRET) && !stderr(out).contains(SECRET),
        "the host's secret leaked:\n{}{}",
        stdout(out),
        stderr(out)
    );
}

fn run_in(k: &Kiln, image: &str, script: &str) -> String {
    let out = k.run(&["run", "--rm", image, "sh", "-c", script]);
    assert_ok(&out, script);
    stdout(&out)
}

#[test]
fn copy_through_a_context_symlink_to_a_host_dir_read_host_files() {
    let host = Host::new();
    let ctx = temp_context("kiln-sec-ctx-", &[]);
    link(host.path(), ctx.path().join("etcdir"));
    let k = Kiln::with_busybox();
    with_dockerfile(ctx.path(), "FROM busybox\nCOPY etcdir/secret.txt /x\n");
    assert_not_found(
        &build(&k, ctx.path(), &[], "t"),
        "Dockerfile:2",
        "/etcdir/secret.txt",
    );
    // The link itself as the source: followed inside the context, where there is no such path.
    with_dockerfile(ctx.path(), "FROM busybox\nCOPY etcdir /x/\n");
    assert_not_found(&build(&k, ctx.path(), &[], "t"), "Dockerfile:2", "/etcdir");
    // ADD takes the same path.
    with_dockerfile(ctx.path(), "FROM busybox\nADD etcdir/secret.txt /x\n");
    assert_not_found(
        &build(&k, ctx.path(), &[], "t"),
        "Dockerfile:2",
        "/etcdir/secret.txt",
    );
}

#[test]
fn copy_through_a_context_symlink_to_etc_read_host_files() {
    assert!(Path::new("/etc/passwd").exists());
    let ctx = temp_context("kiln-sec-ctx-", &[("keep.txt", "keep\n")]);
    link("/etc", ctx.path().join("etcdir"));
    let k = Kiln::with_busybox();
    with_dockerfile(ctx.path(), "FROM busybox\nCOPY etcdir/passwd /x\n");
    assert_not_found(
        &build(&k, ctx.path(), &[], "t"),
        "Dockerfile:2",
        "/etcdir/passwd",
    );
    // The context's own `etc` is what the link means.
    std::fs::create_dir(ctx.path().join("etc")).unwrap();
    std::fs::write(ctx.path().join("etc/passwd"), "context passwd\n").unwrap();
    let out = build(&k, ctx.path(), &[], "etc-in-context");
    assert_ok(&out, "COPY etcdir/passwd with <context>/etc/passwd");
    assert_eq!(run_in(&k, "etc-in-context", "cat /x"), "context passwd\n");
}

#[test]
fn wildcard_copy_through_a_context_symlink_listed_host_files() {
    let host = Host::new();
    let ctx = temp_context("kiln-sec-ctx-", &[("keep.txt", "keep\n")]);
    link(host.path(), ctx.path().join("hostdir"));
    link("/etc", ctx.path().join("etcdir"));
    let k = Kiln::with_busybox();
    // An empty wildcard match is not an error (as in BuildKit), so the build succeeds: what
    // matters is that no host file lands in the image.
    with_dockerfile(
        ctx.path(),
        "FROM busybox\nCOPY hostdir/s* /x/\nCOPY etcdir/s* /x/\nCOPY etcdir/* /x/\nCOPY keep.txt /x/\n",
    );
    let out = build(&k, ctx.path(), &[], "wild");
    assert_ok(&out, "wildcards through escaping links");
    assert_eq!(run_in(&k, "wild", "ls -A /x"), "keep.txt\n");
    // A wildcard in the middle of the path, matching the link itself.
    with_dockerfile(
        ctx.path(),
        "FROM busybox\nCOPY host*/secret.txt /y/\nCOPY e*/passwd /y/\nCOPY keep.txt /y/\n",
    );
    let out = build(&k, ctx.path(), &[], "wild2");
    assert_ok(&out, "a wildcard matching an escaping link");
    assert_eq!(run_in(&k, "wild2", "ls -A /y"), "keep.txt\n");
}

#[test]
fn selfdir_link_copied_a_dockerignored_file() {
    let ctx = temp_context(
        "kiln-sec-ctx-",
        &[
            (".dockerignore", "secret.env\nprivate\n"),
            ("secret.env", "TOKEN=1\n"),
            ("private/key", "key\n"),
            ("app.txt", "app\n"),
        ],
    );
    link(".", ctx.path().join("selfdir"));
    link("/", ctx.path().join("rootlink"));
    let k = Kiln::with_busybox();
    for (src, shown) in [
        ("selfdir/secret.env", "/selfdir/secret.env"),
        ("selfdir/selfdir/secret.env", "/selfdir/selfdir/secret.env"),
        ("rootlink/secret.env", "/rootlink/secret.env"),
        ("selfdir/private/key", "/selfdir/private/key"),
        ("selfdir/private", "/selfdir/private"),
    ] {
        with_dockerfile(ctx.path(), &format!("FROM busybox\nCOPY {src} /x\n"));
        assert_not_found(&build(&k, ctx.path(), &[], "t"), "Dockerfile:2", shown);
    }
    // Through the link as a whole directory or a wildcard: the ignored entries stay out.
    with_dockerfile(
        ctx.path(),
        "FROM busybox\nCOPY selfdir/ /all/\nCOPY selfdir/*.env selfdir/app.txt /w/\n",
    );
    let out = build(&k, ctx.path(), &[], "self");
    assert_ok(&out, "COPY selfdir/");
    assert_eq!(
        run_in(&k, "self", "ls -A /all /w"),
        "/all:\n.dockerignore\nDockerfile\napp.txt\nrootlink\nselfdir\n\n/w:\napp.txt\n"
    );
    // The links inside the copied directory stay links.
    assert_eq!(
        run_in(&k, "self", "readlink /all/selfdir; readlink /all/rootlink"),
        ".\n/\n"
    );
}

#[test]
fn dotdot_links_climbed_out_of_the_context() {
    let host = Host::new();
    // The context sits inside the host directory, so `..` reaches the secret.
    let ctx = host.path().join("ctx");
    std::fs::create_dir_all(ctx.join("a/b")).unwrap();
    let depth = ctx.components().count();
    let climb_to_host = format!("{}{}", "../".repeat(depth + 3), host.path().display());
    for (name, target) in [
        ("up", "..".to_string()),
        ("upslash", "../".to_string()),
        ("a/b/up3", "../../..".to_string()),
        ("a/b/far", "../../../../../../../../..".to_string()),
        ("climb", climb_to_host),
        ("mixed", "a/../../ctx/..".to_string()),
    ] {
        link(target, ctx.join(name));
    }
    let k = Kiln::with_busybox();
    for (src, shown) in [
        ("up/secret.txt", "/up/secret.txt"),
        ("upslash/secret.txt", "/upslash/secret.txt"),
        ("a/b/up3/secret.txt", "/a/b/up3/secret.txt"),
        ("a/b/far/secret.txt", "/a/b/far/secret.txt"),
        ("climb/secret.txt", "/climb/secret.txt"),
        ("mixed/secret.txt", "/mixed/secret.txt"),
        ("../secret.txt", "../secret.txt"),
    ] {
        with_dockerfile(&ctx, &format!("FROM busybox\nCOPY {src} /x\n"));
        let out = build(&k, &ctx, &[], "t");
        // A `..` in the Dockerfile's own path is cleaned away before lookup, as BuildKit does.
        let shown = if src.starts_with("..") {
            "/secret.txt"
        } else {
            shown
        };
        assert_not_found(&out, "Dockerfile:2", shown);
    }
    // The same links lead to the context's own files when they are there.
    std::fs::write(ctx.join("secret.txt"), "ctx copy\n").unwrap();
    with_dockerfile(&ctx, "FROM busybox\nCOPY a/b/far/secret.txt /x\n");
    let out = build(&k, &ctx, &[], "climbed");
    assert_ok(&out, "a climbing link inside the context");
    assert_eq!(run_in(&k, "climbed", "cat /x"), "ctx copy\n");
}

#[test]
fn a_link_chain_led_out_of_the_context() {
    let host = Host::new();
    let ctx = temp_context("kiln-sec-ctx-", &[("data/f.txt", "inside\n")]);
    let c = ctx.path();
    // Out: l1 -> l2 -> sub/l3 -> ../l4 -> HOST.
    link("l2", c.join("l1"));
    link("sub/l3", c.join("l2"));
    link("../l4", c.join("sub/l3"));
    link(host.path(), c.join("l4"));
    // In: c1 -> /c2 -> sub/c3 -> /data.
    link("/c2", c.join("c1"));
    link("sub/c3", c.join("c2"));
    link("/data", c.join("sub/c3"));
    // A loop.
    link("loop2", c.join("loop1"));
    link("loop1", c.join("loop2"));
    let k = Kiln::with_busybox();
    with_dockerfile(c, "FROM busybox\nCOPY l1/secret.txt /x\n");
    assert_not_found(&build(&k, c, &[], "t"), "Dockerfile:2", "/l1/secret.txt");
    with_dockerfile(c, "FROM busybox\nCOPY l1 /x/\n");
    assert_not_found(&build(&k, c, &[], "t"), "Dockerfile:2", "/l1");
    with_dockerfile(c, "FROM busybox\nCOPY loop1/x /x\n");
    let out = build(&k, c, &[], "t");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("too many levels of symbolic links"),
        "{}",
        stderr(&out)
    );
    with_dockerfile(c, "FROM busybox\nCOPY c1/f.txt /x\nCOPY c1 /d/\n");
    let out = build(&k, c, &[], "chain");
    assert_ok(&out, "a link chain inside the context");
    assert_eq!(run_in(&k, "chain", "cat /x /d/f.txt"), "inside\ninside\n");
}

#[test]
fn dockerfile_symlink_out_of_the_context_was_read() {
    let host = Host::new();
    let ctx = temp_context("kiln-sec-ctx-", &[]);
    link(
        host.path().join("Dockerfile"),
        ctx.path().join("Dockerfile"),
    );
    link(host.path(), ctx.path().join("docker"));
    let k = Kiln::with_busybox();
    for extra in [
        vec![],
        vec![
            "-f".to_string(),
            format!("{}/Dockerfile", ctx.path().display()),
        ],
        vec![
            "-f".to_string(),
            format!("{}/docker/Dockerfile", ctx.path().display()),
        ],
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = build(&k, ctx.path(), &extra, "t");
        assert!(!out.status.success(), "{extra:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot read `") && stderr(&out).contains("its symlinks lead to"),
            "{extra:?}: {}",
            stderr(&out)
        );
        assert_no_secret(&out);
    }
    // A Dockerfile named outside the context resolves inside its own directory, as BuildKit
    // reads it: a link there cannot lead further.
    let elsewhere = temp_context("kiln-sec-df-", &[]);
    link(
        host.path().join("Dockerfile"),
        elsewhere.path().join("Dockerfile"),
    );
    let df = format!("{}/Dockerfile", elsewhere.path().display());
    let out = build(&k, ctx.path(), &["-f", &df], "t");
    assert!(!out.status.success());
    assert_no_secret(&out);
    // A link inside the context to another file of it is read.
    std::fs::remove_file(ctx.path().join("Dockerfile")).unwrap();
    std::fs::create_dir(ctx.path().join("build")).unwrap();
    std::fs::write(
        ctx.path().join("build/Dockerfile.real"),
        "FROM busybox\nRUN echo in-context > /o\n",
    )
    .unwrap();
    link("/build/Dockerfile.real", ctx.path().join("Dockerfile"));
    let out = build(&k, ctx.path(), &[], "df-link");
    assert_ok(&out, "a Dockerfile link inside the context");
    assert_eq!(run_in(&k, "df-link", "cat /o"), "in-context\n");
}

#[test]
fn dockerignore_symlink_to_a_host_file_was_read() {
    let host = Host::new();
    let ctx = temp_context(
        "kiln-sec-ctx-",
        &[
            ("app.txt", "app\n"),
            ("other.txt", "other\n"),
            ("Dockerfile", "FROM busybox\nCOPY app.txt /a\n"),
        ],
    );
    link(host.path().join("ignore"), ctx.path().join(".dockerignore"));
    let k = Kiln::with_busybox();
    let out = build(&k, ctx.path(), &[], "t");
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(".dockerignore`: its symlinks lead to")
            && stderr(&out).contains("not in the build context"),
        "{}",
        stderr(&out)
    );
    // `<Dockerfile>.dockerignore` beside a `-f` Dockerfile: the same.
    std::fs::remove_file(ctx.path().join(".dockerignore")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile.app"),
        "FROM busybox\nCOPY app.txt /a\n",
    )
    .unwrap();
    link(
        host.path().join("ignore"),
        ctx.path().join("Dockerfile.app.dockerignore"),
    );
    let df = format!("{}/Dockerfile.app", ctx.path().display());
    let out = build(&k, ctx.path(), &["-f", &df], "t");
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Dockerfile.app.dockerignore`: its symlinks lead to"),
        "{}",
        stderr(&out)
    );
    // A link to a file inside the context is read, and applies.
    std::fs::remove_file(ctx.path().join("Dockerfile.app.dockerignore")).unwrap();
    std::fs::write(ctx.path().join("ignore.list"), "other.txt\n").unwrap();
    link("ignore.list", ctx.path().join(".dockerignore"));
    with_dockerfile(ctx.path(), "FROM busybox\nCOPY *.txt /t/\n");
    let out = build(&k, ctx.path(), &[], "ign");
    assert_ok(&out, "a .dockerignore link inside the context");
    assert_eq!(run_in(&k, "ign", "ls /t"), "app.txt\n");
}

#[test]
fn build_context_dir_with_an_escaping_link_read_host_files() {
    let host = Host::new();
    let lib = temp_context("kiln-sec-lib-", &[("ok.txt", "ok\n")]);
    link(host.path(), lib.path().join("etcdir"));
    link(".", lib.path().join("selfdir"));
    std::fs::write(lib.path().join(".dockerignore"), "hidden\n").unwrap();
    std::fs::write(lib.path().join("hidden"), "hidden\n").unwrap();
    let ctx = temp_context("kiln-sec-ctx-", &[]);
    let k = Kiln::with_busybox();
    let named = format!("lib={}", lib.path().display());
    for (src, shown) in [
        ("etcdir/secret.txt", "/etcdir/secret.txt"),
        ("selfdir/hidden", "/selfdir/hidden"),
    ] {
        with_dockerfile(
            ctx.path(),
            &format!("FROM busybox\nCOPY --from=lib {src} /x\n"),
        );
        assert_not_found(
            &build(&k, ctx.path(), &["--build-context", &named], "t"),
            "Dockerfile:2",
            shown,
        );
    }
    // `FROM lib`: the named context as a stage keeps its links as links.
    with_dockerfile(
        ctx.path(),
        "FROM lib AS l\nFROM busybox\nCOPY --from=l / /lib/\n",
    );
    let out = build(&k, ctx.path(), &["--build-context", &named], "named");
    assert_ok(&out, "FROM a named context");
    assert_eq!(
        run_in(&k, "named", "ls -A /lib; readlink /lib/etcdir"),
        format!(
            ".dockerignore\netcdir\nok.txt\nselfdir\n{}\n",
            host.path().display()
        )
    );
}

#[test]
fn run_mount_bind_of_a_context_symlink_read_host_files() {
    let host = Host::new();
    let ctx = temp_context(
        "kiln-sec-ctx-",
        &[(".dockerignore", "secret.env\n"), ("secret.env", "TOKEN\n")],
    );
    link(host.path(), ctx.path().join("etcdir"));
    link("/etc", ctx.path().join("sysetc"));
    link(".", ctx.path().join("selfdir"));
    let k = Kiln::with_busybox();
    for (mount, cmd) in [
        ("source=etcdir,target=/m", "cat /m/secret.txt"),
        ("source=etcdir/secret.txt,target=/m", "cat /m"),
        ("source=sysetc,target=/m", "cat /m/passwd"),
        ("source=sysetc/passwd,target=/m", "cat /m"),
    ] {
        with_dockerfile(
            ctx.path(),
            &format!("FROM busybox\nRUN --mount=type=bind,{mount} {cmd}\n"),
        );
        let out = build(&k, ctx.path(), &[], "t");
        assert!(!out.status.success(), "{mount}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("does not exist in the mount's `from`"),
            "{mount}: {}",
            stderr(&out)
        );
        assert_no_secret(&out);
        assert!(!stdout(&out).contains("root:x:0:0"), "{}", stdout(&out));
    }
    // Through `selfdir`, an ignored file is refused as a source and hidden in a directory.
    with_dockerfile(
        ctx.path(),
        "FROM busybox\nRUN --mount=type=bind,source=selfdir/secret.env,target=/m cat /m\n",
    );
    let out = build(&k, ctx.path(), &[], "t");
    assert!(
        !out.status.success() && stderr(&out).contains("excluded by `.dockerignore`"),
        "{}",
        stderr(&out)
    );
    with_dockerfile(
        ctx.path(),
        "FROM busybox\nRUN --mount=type=bind,source=selfdir,target=/m ls -A /m > /listing; cat /m/etcdir/secret.txt /m/sysetc/passwd > /read 2>&1 || true\n",
    );
    let out = build(&k, ctx.path(), &[], "mnt");
    assert_ok(&out, "a bind of selfdir");
    assert_eq!(
        run_in(&k, "mnt", "cat /listing"),
        ".dockerignore\nDockerfile\netcdir\nselfdir\nsysetc\n"
    );
    // The links in the mount resolve in the step's own root, never on the host.
    let read = run_in(&k, "mnt", "cat /read");
    assert!(!read.contains(SECRET), "{read}");
}

#[test]
fn git_context_with_an_escaping_link_read_host_files() {
    let host = Host::new();
    let repo = GitRepo::new();
    link(host.path(), repo.dir.path().join("etcdir"));
    link("/etc", repo.dir.path().join("sysetc"));
    link("..", repo.dir.path().join("app/up"));
    repo.commit(
        &[
            ("Dockerfile", "FROM busybox\nCOPY etcdir/secret.txt /x\n"),
            ("Dockerfile.etc", "FROM busybox\nCOPY sysetc/passwd /x\n"),
            (
                "Dockerfile.wild",
                "FROM busybox\nCOPY etcdir/s* sysetc/s* /w/\nCOPY app/up/app/Dockerfile /w/\n",
            ),
            (
                "app/Dockerfile",
                "FROM busybox\nCOPY up/etcdir/secret.txt /x\n",
            ),
        ],
        "links",
    );
    let k = Kiln::with_busybox();
    let url = repo.url();
    let out = k.run(&["build", "--progress", "plain", &url]);
    assert_not_found(&out, "Dockerfile:2", "/etcdir/secret.txt");
    let out = k.run(&["build", "--progress", "plain", "-f", "Dockerfile.etc", &url]);
    assert_not_found(&out, "Dockerfile.etc:2", "/sysetc/passwd");
    let out = k.run(&[
        "build",
        "--progress",
        "plain",
        "-f",
        "Dockerfile.wild",
        "-t",
        "git-wild",
        &url,
    ]);
    assert_ok(&out, "wildcards through links in a git context");
    assert_eq!(run_in(&k, "git-wild", "ls -A /w"), "Dockerfile\n");
    // A subdirectory context whose link climbs to the repository's root: the subdirectory is
    // the context, and `..` stops at it.
    let out = k.run(&["build", "--progress", "plain", &format!("{url}#main:app")]);
    assert_not_found(&out, "Dockerfile:2", "/up/etcdir/secret.txt");
    // A subdirectory that is itself a link is no directory of the commit.
    let out = k.run(&[
        "build",
        "--progress",
        "plain",
        &format!("{url}#main:etcdir"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a directory in commit"),
        "{}",
        stderr(&out)
    );
    assert_no_secret(&out);
}
