//! End-to-end tests of the second half of the Dockerfile language: `COPY --link` (a merge onto
//! the base whose layer is the same whatever the base), `COPY --exclude` and `--parents`, `ADD`
//! from http(s) URLs (a tiny HTTP server on 127.0.0.1 inside the test) with `--checksum`,
//! `--chown` and `--chmod`, and `RUN` heredocs with a `#!` interpreter. They need root, as CI runs
//! them.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;

fn blob(k: &Kiln, digest: &str) -> Vec<u8> {
    let hex = digest.trim().trim_start_matches("sha256:").to_string();
    std::fs::read(k.root.path().join("blobs/sha256").join(hex)).unwrap()
}

/// The layer diffIDs of a built image, read from its config (the `--iidfile` digest).
fn layers(k: &Kiln, iidfile: &Path) -> Vec<String> {
    let digest = std::fs::read_to_string(iidfile).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&blob(k, &digest)).unwrap();
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

fn run_in(k: &Kiln, image: &str, script: &str) -> String {
    let out = k.run(&["run", "--rm", image, "sh", "-c", script]);
    assert_ok(&out, script);
    stdout(&out)
}

#[test]
fn copy_link_layer_is_the_same_whatever_the_base() {
    let k = Kiln::with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[
            ("data/a.txt", "a\n"),
            ("data/skip.tmp", "tmp\n"),
            ("data/sub/b.txt", "b\n"),
            (
                "Dockerfile.one",
                "FROM busybox\nCOPY --link --exclude=*.tmp data /data/\n",
            ),
            (
                "Dockerfile.two",
                "FROM busybox\nRUN echo other > /other.txt\nCOPY --link --exclude=*.tmp data /data/\n",
            ),
        ],
    );
    let mut tops = Vec::new();
    for (n, tag) in [("one", "link-one"), ("two", "link-two")] {
        let iid = ctx.path().join(format!("{n}.iid"));
        let df = ctx.path().join(format!("Dockerfile.{n}"));
        let out = build(
            &k,
            ctx.path(),
            &[
                "-f",
                df.to_str().unwrap(),
                "-t",
                tag,
                "--iidfile",
                iid.to_str().unwrap(),
            ],
        );
        assert_ok(&out, "build with COPY --link");
        let l = layers(&k, &iid);
        assert_eq!(l.len(), if n == "one" { 2 } else { 3 }, "{n}: {l:?}");
        tops.push(l.last().unwrap().clone());
    }
    assert_eq!(tops[0], tops[1], "the linked layer depends on its base");
    let listing = run_in(&k, "link-two", "cat /other.txt && find /data | sort");
    assert_eq!(
        listing,
        "other\n/data\n/data/a.txt\n/data/sub\n/data/sub/b.txt\n"
    );
}

#[test]
fn copy_parents_keeps_the_source_directories() {
    let k = Kiln::with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[
            ("src/pkg/x/go.mod", "x\n"),
            ("src/pkg/y/go.mod", "y\n"),
            ("src/pkg/y/main.go", "main\n"),
            ("lib/a.txt", "a\n"),
            (
                "Dockerfile",
                "FROM busybox\nCOPY --parents ./src/./pkg/*/go.mod lib/a.txt /p/\n",
            ),
        ],
    );
    let out = build(&k, ctx.path(), &["-t", "parents"]);
    assert_ok(&out, "build with COPY --parents");
    let listing = run_in(&k, "parents", "cd /p && find . -type f | sort");
    assert_eq!(listing, "./lib/a.txt\n./pkg/x/go.mod\n./pkg/y/go.mod\n");
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for `ADD <url>`: `/files/hello.txt` serves the current
/// body with a `Last-Modified`, `/` the same body named by `Content-Disposition` (a URL
/// without a file name), anything else
/// is a 404. Requests are counted.
struct Server {
    port: u16,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    fn start(body: &str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = std::sync::Arc::new(std::sync::Mutex::new(body.to_string()));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                }
                let content = b.lock().unwrap().clone();
                let response = match path.as_str() {
                    "/files/hello.txt" => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n{content}",
                        content.len()
                    ),
                    "/" => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Disposition: attachment; filename=\"named.txt\"\r\nConnection: close\r\n\r\n{content}",
                        content.len()
                    ),
                    _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string(),
                };
                let _ = conn.write_all(response.as_bytes());
                let _ = conn.flush();
                let mut rest = Vec::new();
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = reader.read_to_end(&mut rest);
            }
        });
        Server { port, body, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn sha256_hex(data: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), data).unwrap();
    let sum = tool("sha256sum", &[f.path().to_str().unwrap()]);
    sum.split_whitespace().next().unwrap().to_string()
}

#[test]
fn add_downloads_urls_with_name_mtime_owner_and_mode() {
    let k = Kiln::with_busybox();
    let server = Server::start("hello from http\n");
    let ctx = tempfile::tempdir().unwrap();
    let sum = sha256_hex(b"hello from http\n");
    let dockerfile = format!(
        "FROM busybox\n\
         ADD --chown=1:2 --chmod=0644 {hello} /web/\n\
         ADD {dl} /named/\n\
         ADD --checksum=sha256:{sum} {hello} /pinned.txt\n",
        hello = server.url("/files/hello.txt"),
        dl = server.url("/"),
    );
    write_files(ctx.path(), &[("Dockerfile", &dockerfile)]);
    let out = build(&k, ctx.path(), &["-t", "http-add"]);
    assert_ok(&out, "build with ADD <url>");
    let listing = run_in(
        &k,
        "http-add",
        "stat -c '%n %u:%g %a %Y' /web/hello.txt /named/named.txt /pinned.txt && cat /web/hello.txt /pinned.txt",
    );
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines[0], "/web/hello.txt 1:2 644 784111777", "{listing}");
    // Without Last-Modified the file keeps its download time.
    assert!(
        lines[1].starts_with("/named/named.txt 0:0 600 "),
        "{listing}"
    );
    assert_eq!(lines[2], "/pinned.txt 0:0 600 784111777", "{listing}");
    assert_eq!(&lines[3..], ["hello from http", "hello from http"]);

    // Unpinned URLs are fetched again and keyed by content: a change reaches the image, the
    // pinned one is not requested again.
    *server.body.lock().unwrap() = "changed\n".into();
    let dockerfile2 = format!(
        "FROM busybox\nADD {hello} /web/\n",
        hello = server.url("/files/hello.txt")
    );
    write_files(ctx.path(), &[("Dockerfile", &dockerfile2)]);
    let out = build(&k, ctx.path(), &["-t", "http-add2"]);
    assert_ok(&out, "rebuild");
    assert_eq!(run_in(&k, "http-add2", "cat /web/hello.txt"), "changed\n");
    let before = server.hits.load(std::sync::atomic::Ordering::SeqCst);
    let out = build(&k, ctx.path(), &["-t", "http-add2"]);
    assert_ok(&out, "rebuild, unchanged");
    assert!(
        stderr(&out).contains("CACHED"),
        "unchanged content is not cached: {}",
        stderr(&out)
    );
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
}

#[test]
fn add_checksum_mismatch_names_both_digests() {
    let k = Kiln::with_busybox();
    let server = Server::start("payload\n");
    let ctx = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let dockerfile = format!(
        "FROM busybox\nADD --checksum=sha256:{wrong} {} /x\n",
        server.url("/files/hello.txt")
    );
    write_files(ctx.path(), &[("Dockerfile", &dockerfile)]);
    let out = build(&k, ctx.path(), &[]);
    assert!(!out.status.success(), "a wrong checksum was accepted");
    let err = stderr(&out);
    let actual = sha256_hex(b"payload\n");
    assert!(
        err.contains(&format!("expected `sha256:{wrong}`"))
            && err.contains(&format!("got `sha256:{actual}`"))
            && err.contains("Dockerfile:2"),
        "{err}"
    );
    let dockerfile = format!("FROM busybox\nADD {} /x\n", server.url("/missing"));
    write_files(ctx.path(), &[("Dockerfile", &dockerfile)]);
    let out = build(&k, ctx.path(), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
}

#[test]
fn run_heredoc_with_a_shebang_runs_as_a_script() {
    let k = Kiln::with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nRUN <<EOF\n#!/bin/sh -e\necho \"ran $0\" > /out.txt\nEOF\n",
        )],
    );
    let out = build(&k, ctx.path(), &["-t", "shebang"]);
    assert_ok(&out, "build with a #! heredoc");
    assert_eq!(
        run_in(&k, "shebang", "cat /out.txt; ls /dev/pipes 2>&1 | wc -l"),
        "ran /dev/pipes/EOF\n1\n"
    );
}

#[test]
fn foreign_syntax_frontend_is_refused_with_a_clear_error() {
    let k = Kiln::with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[(
            "Dockerfile",
            "# syntax=ghcr.io/acme/frontend:1\nFROM busybox\n",
        )],
    );
    let out = build(&k, ctx.path(), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Dockerfile:1") && err.contains("custom frontend image"),
        "{err}"
    );
    write_files(
        ctx.path(),
        &[(
            "Dockerfile",
            "# syntax=docker/dockerfile:1.7\nFROM busybox\nRUN true\n",
        )],
    );
    assert_ok(&build(&k, ctx.path(), &[]), "docker/dockerfile syntax");
}

/// BuildKit keeps a stage's owners on `COPY --from` (only the context's are reset to root);
/// kiln made every copied entry 0:0.
#[test]
fn copy_from_a_stage_reset_owners_to_root() {
    let k = Kiln::with_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write_files(ctx.path(), &[("ctx.txt", "c\n")]);
    // Owned by the test's (root) user on the host, but a context copy is 0:0 regardless.
    std::os::unix::fs::chown(ctx.path().join("ctx.txt"), Some(4321), Some(4321)).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox AS src\n\
         RUN mkdir -p /tree/sub && echo f > /tree/sub/f && echo g > /g \
             && chown -R 1000:1001 /tree && chown 1002:1003 /g\n\
         FROM busybox\n\
         COPY --from=src /tree /new\n\
         COPY --from=src /g /g\n\
         COPY --from=src --chown=7:8 /g /g2\n\
         COPY ctx.txt /ctx.txt\n",
    )
    .unwrap();
    let out = build(&k, ctx.path(), &["-t", "owners"]);
    assert_ok(&out, "build");
    let got = run_in(
        &k,
        "owners",
        "stat -c '%n %u:%g' /new /new/sub /new/sub/f /g /g2 /ctx.txt",
    );
    assert_eq!(
        got,
        "/new 0:0\n/new/sub 1000:1001\n/new/sub/f 1000:1001\n/g 1002:1003\n/g2 7:8\n/ctx.txt 0:0\n"
    );
}
