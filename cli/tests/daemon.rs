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
    assert!(stderr(&out).contains("kiln daemon"), "{}", stderr(&out));
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
