//! Registry mirrors and settings from the config file (`--config kiln.toml`): `FROM python:3.12`
//! resolves through a configured mirror of `docker.io`, mirrors are tried in order, and a
//! registry whose mirrors fail is asked itself. The registries are Debian's `docker-registry`
//! on loopback ports of this helper's own (51x6); nothing here may reach the real docker.io,
//! so every test that names a Docker Hub image has a mirror that holds it.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The mirror that holds the image (a pull-through mirror's layout: `library/python`).
const MIRROR: &str = "127.0.0.1:5106";
/// A second registry, empty: a mirror that answers 404.
const EMPTY_MIRROR: &str = "127.0.0.1:5126";
/// Nothing listens here: a mirror that is down.
const DEAD_MIRROR: &str = "127.0.0.1:5196";

/// A mirror that serves Docker Hub's repositories under a path prefix, as a Harbor proxy
/// project does: `hub-proxy/library/python`.
const PREFIXED_MIRROR: &str = "127.0.0.1:5156";

/// Pushes a busybox image carrying `/mirror-marker` (so an image pulled from anywhere else
/// would show) to `MIRROR` as `library/python:3.12`.
fn seed_mirror() {
    seed(&format!("{MIRROR}/library/python:3.12"));
}

/// Pushes the marked image to `dest`.
fn seed(dest: &str) {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-mirror-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo served-by-the-mirror > /mirror-marker\n",
        )],
    );
    assert_ok(
        &build(&k, ctx.path(), &["-t", "seed"]),
        "build the seed image",
    );
    assert_ok(
        &k.run(&["push", "--progress", "plain", "seed", dest]),
        "push to the mirror",
    );
}

#[test]
fn a_mirror_with_a_path_prefix_is_asked_under_it() {
    let _mirror = RegistryGuard::start_at(PREFIXED_MIRROR);
    seed(&format!("{PREFIXED_MIRROR}/hub-proxy/library/python:3.12"));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("[registry.\"docker.io\"]\nmirrors = [\"{PREFIXED_MIRROR}/hub-proxy\"]\n"),
    );
    let k = Kiln::new();
    let out = k.run(&[
        "--config",
        &config,
        "pull",
        "--progress",
        "plain",
        "python:3.12",
    ]);
    assert_ok(&out, "pull python:3.12 through the prefixed mirror");
    let out = k.run(&["run", "--rm", "python:3.12", "cat", "/mirror-marker"]);
    assert_ok(&out, "run the pulled image");
    assert_eq!(stdout(&out).trim(), "served-by-the-mirror");
}

fn write_config(dir: &Path, text: &str) -> String {
    let p = dir.join("kiln.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn from_a_docker_hub_image_resolves_through_the_first_mirror_that_has_it() {
    let _mirror = RegistryGuard::start_at(MIRROR);
    let _empty = RegistryGuard::start_at(EMPTY_MIRROR);
    seed_mirror();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{DEAD_MIRROR}\", \"{EMPTY_MIRROR}\", \"{MIRROR}\"]\n"
        ),
    );

    // A fresh store, as on a CI machine: the base image comes from the mirror.
    let k = Kiln::new();
    let ctx = temp_context(
        "kiln-mirror-ctx-",
        &[(
            "Dockerfile",
            "FROM python:3.12\nRUN cat /mirror-marker > /seen\n",
        )],
    );
    let started = Instant::now();
    let out = build(&k, ctx.path(), &["--config", &config, "-t", "app"]);
    assert_ok(&out, "build FROM python:3.12 through the mirror");
    // The dead mirror costs its connection retries once, not once per blob.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    let out = k.run(&["run", "--rm", "app", "cat", "/seen"]);
    assert_ok(&out, "run the image");
    assert_eq!(stdout(&out).trim(), "served-by-the-mirror");

    // `kiln pull` goes through the mirror too and records the Docker Hub name.
    let k2 = Kiln::new();
    assert_ok(
        &k2.run(&[
            "--config",
            &config,
            "pull",
            "--progress",
            "plain",
            "python:3.12",
        ]),
        "pull python:3.12 through the mirror",
    );
    let images = stdout(&k2.run(&["images"]));
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("docker.io/library/python:3.12 ")),
        "{images}"
    );

    // The same as KILN_CONFIG.
    let k3 = Kiln::new();
    let out = k3
        .cmd()
        .env("KILN_CONFIG", &config)
        .args(["pull", "--progress", "plain", "python:3.12"])
        .output()
        .unwrap();
    assert_ok(&out, "pull with KILN_CONFIG");
}

#[test]
fn a_registry_whose_mirror_is_down_is_asked_itself() {
    // Its own ports: the test above may run at the same time.
    let origin = RegistryGuard::start_at("127.0.0.1:5136");
    let k = Kiln::with_busybox();
    let name = format!("{}/team/app:1", origin.addr);
    assert_ok(
        &k.run(&["push", "--progress", "plain", "busybox", &name]),
        "push to the origin",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"127.0.0.1:5186\"]\nhttp = true\n",
            origin.addr
        ),
    );
    let fresh = Kiln::new();
    let out = fresh.run(&["--config", &config, "pull", "--progress", "plain", &name]);
    assert_ok(&out, "pull past a dead mirror");
    let out = fresh.run(&["run", "--rm", &name, "echo", "ok"]);
    assert_ok(&out, "run the pulled image");
    assert_eq!(stdout(&out).trim(), "ok");
}

#[test]
fn a_bad_config_file_names_the_file_line_and_what_to_write() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[registry.\"docker.io\"]\nmirror = [\"127.0.0.1:5106\"]\n",
    );
    let out = k.run(&["--config", &config, "pull", "python:3.12"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&config) && err.contains("line 2") && err.contains("mirror"),
        "{err}"
    );

    let config = write_config(dir.path(), "[gc]\nkeep-storage = \"plenty\"\n");
    let err = stderr(&k.run(&["--config", &config, "prune"]));
    assert!(
        err.contains("`gc.keep-storage = \"plenty\"` is not a size"),
        "{err}"
    );

    let missing = dir.path().join("absent.toml");
    let err = stderr(&k.run(&["--config", missing.to_str().unwrap(), "prune"]));
    assert!(
        err.contains("cannot read the config file") && err.contains("absent.toml"),
        "{err}"
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`: `ca.pem`, `leaf.pem`,
/// `leaf.key`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (Debian's `openssl`)");
        assert_ok(&out, &format!("openssl {}", args.join(" ")));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=kiln test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
}

#[test]
fn a_tls_registry_is_reached_with_its_ca_or_as_insecure() {
    const TLS: &str = "127.0.0.1:5146";
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let _registry = RegistryGuard::start_at_with(
        TLS,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            certs.path().join("leaf.pem").display(),
            certs.path().join("leaf.key").display()
        ),
    );
    let name = format!("{TLS}/tls/busybox:1");
    let k = Kiln::with_busybox();

    // Loopback is plain http by default: a TLS registry there needs its settings.
    let out = k.run(&["push", "--progress", "plain", "busybox", &name]);
    assert!(
        !out.status.success(),
        "pushed over plain http to a TLS port"
    );

    // `ca`, relative to the config file.
    let with_ca = write_config(
        certs.path(),
        &format!("[registry.\"{TLS}\"]\nca = [\"ca.pem\"]\n"),
    );
    let out = k.run(&[
        "--config",
        &with_ca,
        "push",
        "--progress",
        "plain",
        "busybox",
        &name,
    ]);
    assert_ok(&out, "push with the registry's CA");
    let fresh = Kiln::new();
    let out = fresh.run(&["--config", &with_ca, "pull", "--progress", "plain", &name]);
    assert_ok(&out, "pull with the registry's CA");

    // `insecure = true`: https without verifying the certificate.
    let dir = tempfile::tempdir().unwrap();
    let insecure = write_config(
        dir.path(),
        &format!("[registry.\"{TLS}\"]\ninsecure = true\n"),
    );
    let fresh = Kiln::new();
    let out = fresh.run(&["--config", &insecure, "pull", "--progress", "plain", &name]);
    assert_ok(&out, "pull from an unverified TLS registry");
    let out = fresh.run(&["run", "--rm", &name, "echo", "tls"]);
    assert_eq!(stdout(&out).trim(), "tls");

    // A CA that did not sign it: the certificate is refused.
    let other = tempfile::tempdir().unwrap();
    make_certificates(other.path());
    let wrong = write_config(
        other.path(),
        &format!("[registry.\"{TLS}\"]\nca = [\"ca.pem\"]\n"),
    );
    let out = Kiln::new().run(&["--config", &wrong, "pull", "--progress", "plain", &name]);
    assert!(
        !out.status.success(),
        "trusted a certificate its CA did not sign"
    );
}
