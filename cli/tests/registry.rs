//! `kiln login`/`logout`/`pull`/`push` against real registries: htpasswd Basic auth with the
//! credentials kept out of every output, and images pushed by skopeo (Docker schema 2, OCI, and
//! a multi-platform index made with `skopeo copy --all`) pulled and run by kiln.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const PASS: &str = "e2e-s3cret-pa55";

/// A docker-registry on a free loopback port with htpasswd Basic auth for `kiln`/[`PASS`].
fn auth_registry() -> RegistryGuard {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("htpasswd")
        .args(["-Bbn", "kiln", PASS])
        .output()
        .expect("run `htpasswd`: install apache2-utils (`cargo xtask setup`)");
    assert!(out.status.success());
    std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: kiln-e2e\n    path: {}\n",
        dir.path().join("htpasswd").display()
    );
    RegistryGuard::start_with(dir, &auth)
}

/// Runs kiln with a private Docker config and debug logs, optionally feeding stdin; checks that
/// the password shows up nowhere in what it prints.
fn kiln(k: &Kiln, docker: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut c = k.cmd();
    c.env("DOCKER_CONFIG", docker)
        .env("KILN_LOG", "debug")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().expect("run kiln");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains(PASS), "the password leaked:\n{all}");
    out
}

#[test]
fn login_push_pull_logout_with_basic_auth() {
    let reg = auth_registry();
    let docker = tempfile::tempdir().unwrap();
    let k = Kiln::with_busybox();
    let dest = format!("{}/{}:v1", reg.addr, unique("auth"));

    let out = kiln(&k, docker.path(), &["push", "busybox", &dest], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("kiln login {}", reg.addr)),
        "{}",
        stderr(&out)
    );

    let wrong = "not-the-password";
    let out = kiln(
        &k,
        docker.path(),
        &["login", "-u", "kiln", "--password-stdin", &reg.addr],
        Some(wrong),
    );
    assert!(!out.status.success());
    assert!(
        !stderr(&out).contains(wrong) && stderr(&out).contains("401"),
        "{}",
        stderr(&out)
    );
    assert!(!docker.path().join("config.json").exists());

    let out = kiln(
        &k,
        docker.path(),
        &["login", "-u", "kiln", "--password-stdin", &reg.addr],
        Some(&format!("{PASS}\n")),
    );
    assert_ok(&out, "kiln login");
    assert!(stdout(&out).contains("Login Succeeded"));
    let config = std::fs::read_to_string(docker.path().join("config.json")).unwrap();
    assert!(config.contains(&reg.addr), "{config}");

    assert_ok(
        &kiln(&k, docker.path(), &["push", "busybox", &dest], None),
        "push after login",
    );
    let k2 = Kiln::new();
    assert_ok(
        &kiln(
            &k2,
            docker.path(),
            &["pull", "--progress", "plain", &dest],
            None,
        ),
        "pull after login",
    );
    let run = kiln(
        &k2,
        docker.path(),
        &["run", "--rm", &dest, "echo", "authed"],
        None,
    );
    assert_ok(&run, "run the pulled image");
    assert_eq!(stdout(&run), "authed\n");

    let out = kiln(
        &k,
        docker.path(),
        &["logout", &format!("http://{}/", reg.addr)],
        None,
    );
    assert_ok(&out, "kiln logout");
    assert!(stdout(&out).contains(&reg.addr));
    let out = kiln(&Kiln::new(), docker.path(), &["pull", &dest], None);
    assert!(!out.status.success(), "pull after logout worked");
}

fn read_blob(layout: &Path, digest: &str) -> serde_json::Value {
    let p = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A two-platform image index pushed by `skopeo copy --all`.
struct MultiArch {
    dest: String,
    host_arch: String,
    other_arch: String,
    host_digest: String,
    other_digest: String,
}

/// Pushes an index of the host's busybox (from `k`'s store) and the same layer labelled for
/// another architecture (it runs here all the same), made as an OCI layout and copied by skopeo.
fn push_two_platform_index(k: &Kiln, reg: &str) -> MultiArch {
    let src = format!(
        "oci:{}/images:docker.io/library/busybox:latest",
        k.root.path().display()
    );
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    tool(
        "skopeo",
        &["copy", &src, &format!("oci:{}:host", layout.display())],
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let host_desc = index["manifests"][0].clone();
    let manifest = read_blob(&layout, host_desc["digest"].as_str().unwrap());
    let mut config = read_blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    let host_arch = config["architecture"].as_str().unwrap().to_string();
    let other_arch = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    config["architecture"] = other_arch.into();
    let (cd, cs) = put_blob(&layout, config.to_string().as_bytes());
    let mut other = manifest.clone();
    other["config"]["digest"] = cd.into();
    other["config"]["size"] = cs.into();
    let (od, os) = put_blob(&layout, other.to_string().as_bytes());
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": host_desc["mediaType"], "digest": host_desc["digest"], "size": host_desc["size"],
             "platform": {"os": "linux", "architecture": host_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": od, "size": os,
             "platform": {"os": "linux", "architecture": other_arch}}
        ]
    });
    let (idx, isz) = put_blob(&layout, multi.to_string().as_bytes());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idx, "size": isz,
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    let dest = format!("{reg}/{}:multi", unique("multiarch"));
    // `--preserve-digests`: skopeo otherwise puts a compressed blob it has seen in this
    // registry (its blob info cache learns them from earlier tests' pulls of kiln's pushes) in
    // place of the layout's uncompressed layer, rewriting the manifests whose digests the
    // tests compare (a full `cargo xtask test` run failed that way, this binary alone did not).
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", layout.display()),
            &format!("docker://{dest}"),
        ],
    );
    MultiArch {
        dest,
        host_arch,
        other_arch: other_arch.to_string(),
        host_digest: host_desc["digest"].as_str().unwrap().to_string(),
        other_digest: od,
    }
}

#[test]
fn images_pushed_by_skopeo_pull_and_run() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let src = format!(
        "oci:{}/images:docker.io/library/busybox:latest",
        k.root.path().display()
    );
    // Both media-type families.
    for format in ["v2s2", "oci"] {
        let dest = format!("{reg}/{}:{format}", unique("skopeo"));
        tool(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                "--format",
                format,
                &src,
                &format!("docker://{dest}"),
            ],
        );
        let raw = tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{dest}"),
            ],
        );
        let want = if format == "oci" {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            "application/vnd.docker.distribution.manifest.v2+json"
        };
        assert!(raw.contains(want), "{raw}");
        let k2 = Kiln::new();
        assert_ok(
            &k2.run(&["pull", &dest]),
            &format!("pull the {format} image"),
        );
        let run = k2.run(&["run", "--rm", &dest, "echo", format]);
        assert_ok(&run, "run it");
        assert_eq!(stdout(&run), format!("{format}\n"));
    }

    let multi = push_two_platform_index(&k, &reg);
    let (dest, host_arch, other_arch, od) = (
        multi.dest.clone(),
        multi.host_arch.clone(),
        multi.other_arch.clone(),
        multi.other_digest.clone(),
    );
    let k3 = Kiln::new();
    let out = k3.run(&["pull", &dest]);
    assert_ok(&out, "pull the index for this host");
    assert_eq!(stdout(&out).trim(), multi.host_digest);
    let run = k3.run(&["run", "--rm", &dest, "echo", "multi"]);
    assert_ok(&run, "run the host's image of the index");
    assert_eq!(stdout(&run), "multi\n");
    let out = k3.run(&["pull", "--platform", &format!("linux/{other_arch}"), &dest]);
    assert_ok(&out, "pull the other platform");
    assert_eq!(stdout(&out).trim(), od);
    let out = k3.run(&["pull", "--platform", "linux/s390x", &dest]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("linux/s390x")
            && err.contains(&format!("linux/{host_arch}"))
            && err.contains(&format!("linux/{other_arch}")),
        "{err}"
    );
}

/// A TCP forwarder to a registry that records the request lines it sees (`GET /v2/... HTTP/1.1`),
/// to count what kiln asks. Builds send no request bodies, so every line that starts with a
/// method and ends with the protocol is a request.
struct CountingProxy {
    addr: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CountingProxy {
    fn start(upstream: &str) -> Self {
        Self::start_cutting(upstream, None)
    }

    /// As [`CountingProxy::start`], and the answer to every request whose line contains `cut`
    /// is dropped after its first 4 KiB (a registry that dies mid-blob, every time).
    fn start_cutting(upstream: &str, cut: Option<String>) -> Self {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, upstream) = (requests.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let cutting = std::sync::Arc::new(AtomicBool::new(false));
                let cutting2 = cutting.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    let mut budget = 4096usize;
                    loop {
                        let n = match s2.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cutting2.load(Ordering::SeqCst) {
                            let _ = c2.write_all(&buf[..n.min(budget)]);
                            budget = budget.saturating_sub(n);
                            if budget == 0 {
                                let _ = s2.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                        } else if c2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let (log, cut) = (log.clone(), cut.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    let mut line = Vec::new();
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                let text = String::from_utf8_lossy(&line).trim().to_string();
                                let is_request = ["GET ", "HEAD ", "PUT ", "POST ", "PATCH "]
                                    .iter()
                                    .any(|m| text.starts_with(m))
                                    && text.ends_with(" HTTP/1.1");
                                if is_request {
                                    if cut.as_deref().is_some_and(|c| text.contains(c)) {
                                        cutting.store(true, Ordering::SeqCst);
                                    }
                                    log.lock().unwrap().push(text);
                                }
                                line.clear();
                            } else if line.len() < 4096 {
                                line.push(b);
                            }
                        }
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingProxy { addr, requests }
    }

    /// Manifest requests seen since the last call.
    fn take_manifest_requests(&self) -> Vec<String> {
        let mut all = self.requests.lock().unwrap();
        let out = all
            .iter()
            .filter(|l| l.contains("/manifests/"))
            .cloned()
            .collect();
        all.clear();
        out
    }
}

#[test]
fn build_resolves_each_tag_once_and_pull_asks_again() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let repo = unique("resolve-once");
    assert_ok(
        &k.run(&["push", "busybox", &format!("{reg}/{repo}:latest")]),
        "push the base",
    );
    let proxy = CountingProxy::start(&reg);
    let base = format!("{}/{repo}", proxy.addr);
    let ctx = tempfile::tempdir().unwrap();
    // One image, spelled three ways, used by two stages and a COPY --from.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {base} AS one\nFROM {base}:latest\nCOPY --from={base}:latest /bin/busybox /copied\n\
             COPY --from=one /etc/passwd /passwd\nCOPY --from=docker-image-alias /bin/busybox /again\n"
        ),
    )
    .unwrap();
    let ctx_path = ctx.path().to_str().unwrap();
    let alias = format!("docker-image-alias=docker-image://{base}");
    let k2 = Kiln::new();
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress", "plain", "--build-context", &alias];
        args.extend_from_slice(extra);
        args.push(ctx_path);
        let out = k2.run(&args);
        assert_ok(&out, &format!("kiln build {}", extra.join(" ")));
        out
    };

    build(&[]);
    let seen = proxy.take_manifest_requests();
    assert_eq!(seen.len(), 1, "first build, image not stored: {seen:?}");

    build(&[]);
    let seen = proxy.take_manifest_requests();
    assert!(seen.is_empty(), "the stored tag is used as it is: {seen:?}");

    build(&["--pull"]);
    let seen = proxy.take_manifest_requests();
    assert_eq!(seen.len(), 1, "--pull asks the registry, once: {seen:?}");
    assert!(seen[0].starts_with("GET ") && seen[0].contains("/manifests/latest"));
}

#[test]
fn build_platform_picks_from_the_index_and_sets_target_args() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let multi = push_two_platform_index(&k, &reg);
    // No RUN: the other platform's "image" is the host's busybox relabelled, which no emulator
    // would run (see platform.rs for emulated steps), but the image builds from it.
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", format!(
            "FROM {}\nARG TARGETPLATFORM\nARG TARGETARCH\nLABEL target=\"$TARGETPLATFORM $TARGETARCH\"\n",
            multi.dest
        ).as_str())]);
    let other = format!("linux/{}", multi.other_arch);
    let k2 = Kiln::new();
    let meta = ctx.path().join("meta.json");
    let out = k2.run(&[
        "build",
        "--progress",
        "plain",
        "--platform",
        &other,
        "-t",
        "cross",
        "--metadata-file",
        meta.to_str().unwrap(),
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "build for the other platform");
    let config_of = |name: &str| -> serde_json::Value {
        let inspect = tool(
            "skopeo",
            &[
                "inspect",
                "--config",
                &format!(
                    "oci:{}/images:docker.io/library/{name}:latest",
                    k2.root.path().display()
                ),
            ],
        );
        serde_json::from_str(&inspect).unwrap()
    };
    let config = config_of("cross");
    assert_eq!(
        config["config"]["Labels"]["target"],
        format!("{other} {}", multi.other_arch).as_str(),
        "{config}"
    );
    assert_eq!(
        config["architecture"],
        multi.other_arch.as_str(),
        "{config}"
    );
    // The base came from the other platform's manifest, and the store's tag names the index it
    // was picked from, so the name keeps every platform pulled under it.
    let base = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}/images:{}", k2.root.path().display(), multi.dest),
        ],
    );
    let index: serde_json::Value = serde_json::from_str(&base).unwrap();
    let named: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("the stored tag is not the index: {base}"))
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        named,
        [multi.host_digest.as_str(), multi.other_digest.as_str()]
    );
    let stored = |digest: &str| {
        k2.root
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
            .exists()
    };
    assert!(stored(&multi.other_digest) && !stored(&multi.host_digest));

    // A build for this host takes its manifest from the stored index, by digest.
    let out = k2.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "native",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "build for this host");
    let config = config_of("native");
    assert_eq!(
        config["config"]["Labels"]["target"],
        format!("linux/{} {}", multi.host_arch, multi.host_arch).as_str(),
        "{config}"
    );
    assert!(stored(&multi.other_digest) && stored(&multi.host_digest));
    let again = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}/images:{}", k2.root.path().display(), multi.dest),
        ],
    );
    assert_eq!(again, base, "the tag still names the index");

    let out = k2.run(&[
        "build",
        "--platform",
        "linux/s390x",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("linux/s390x") && err.contains(&other) && err.contains("Dockerfile:1"),
        "{err}"
    );
    let out = k2.run(&["build", "--platform", "linux", ctx.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--platform"), "{}", stderr(&out));
}

fn sha256_of_text(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("blob");
    std::fs::write(&p, text).unwrap();
    sha256_file(&p)
}

#[test]
fn multi_platform_index_pushed_whole_and_read_by_skopeo() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let multi = push_two_platform_index(&k, &reg);

    // `kiln pull --all-platforms` keeps the index; the name still runs (the host's entry).
    let k2 = Kiln::new();
    let out = k2.run(&[
        "pull",
        "--all-platforms",
        "--progress",
        "plain",
        &multi.dest,
    ]);
    assert_ok(&out, "pull --all-platforms");
    let index_digest = stdout(&out).trim().to_string();
    let run = k2.run(&["run", "--rm", &multi.dest, "echo", "indexed"]);
    assert_ok(&run, "run an image stored as an index");
    assert_eq!(stdout(&run), "indexed\n");

    let copy = format!("{reg}/{}:copy", unique("index-push"));
    let out = k2.run(&["push", "--progress", "plain", &multi.dest, &copy]);
    assert_ok(&out, "push the index");
    assert!(
        stderr(&out).contains("2 platform manifests"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), index_digest);
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{copy}"),
        ],
    );
    assert_eq!(sha256_of_text(&raw), index_digest, "{raw}");
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let digests: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        digests,
        [multi.host_digest.as_str(), multi.other_digest.as_str()]
    );
    // Every platform's image is complete in the registry.
    let scratch = tempfile::tempdir().unwrap();
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{copy}"),
            &format!("oci:{}:all", scratch.path().join("layout").display()),
        ],
    );

    // An index skopeo put into the store is pushed the same way; one whose platform manifest
    // is missing says how to get it.
    let k3 = Kiln::new();
    // `kiln images` only reads (it creates no store); `prune` makes the layout skopeo writes into.
    assert_ok(&k3.run(&["prune"]), "create the store");
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{copy}"),
            &format!(
                "oci:{}/images:docker.io/library/imported:latest",
                k3.root.path().display()
            ),
        ],
    );
    let again = format!("{reg}/{}:again", unique("index-push"));
    let out = k3.run(&["push", "imported", &again]);
    assert_ok(&out, "push an index imported by skopeo");
    assert_eq!(stdout(&out).trim(), index_digest);
    let other_blob = k3
        .root
        .path()
        .join("blobs/sha256")
        .join(multi.other_digest.trim_start_matches("sha256:"));
    std::fs::remove_file(&other_blob).unwrap();
    let out = k3.run(&["push", "imported", &again]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&multi.other_digest) && err.contains("kiln pull --all-platforms"),
        "{err}"
    );
}

#[test]
fn layer_download_failing_mid_build_names_image_and_layer() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let repo = unique("cut-layer");
    assert_ok(
        &k.run(&["push", "busybox", &format!("{reg}/{repo}:v1")]),
        "push the base",
    );
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reg}/{repo}:v1"),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = CountingProxy::start_cutting(&reg, Some(format!("/blobs/{layer}")));
    let image = format!("{}/{repo}:v1", proxy.addr);
    let ctx = temp_context(
        "kiln-ctx-",
        &[("Dockerfile", format!("FROM {image}\nRUN true\n").as_str())],
    );
    let k2 = Kiln::new();
    let started = std::time::Instant::now();
    let out = k2.run(&["build", "--progress", "plain", ctx.path().to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "the build worked through a cut layer"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("`{image}`"))
            && err.contains(&format!("blob `{layer}`"))
            && err.contains("run the command again"),
        "{err}"
    );
    let asked = proxy
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&layer))
        .count();
    assert!(asked >= 2, "the cut download was not resumed: {asked}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // Nothing half-downloaded entered the store.
    let blob = k2
        .root
        .path()
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert!(!blob.exists(), "a partial layer was stored");
}

#[test]
fn from_platform_flag_was_resolved_for_the_build_platform() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let multi = push_two_platform_index(&k, &reg);
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", format!(
            "FROM --platform=linux/{} {} AS other\nFROM {}\nCOPY --from=other /bin/busybox /other-busybox\n",
            multi.other_arch, multi.dest, multi.dest
        ).as_str())]);
    let k2 = Kiln::new();
    let out = k2.run(&["build", "--progress", "plain", ctx.path().to_str().unwrap()]);
    assert_ok(&out, "build with FROM --platform");
    let log = stderr(&out);
    assert!(
        log.contains(&multi.other_digest),
        "the `FROM --platform` stage must use the other platform's manifest:\n{log}"
    );
    assert!(
        log.contains(&multi.host_digest),
        "the plain `FROM` stage must use the host's manifest:\n{log}"
    );
}
