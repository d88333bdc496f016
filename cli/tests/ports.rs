//! Published ports, end to end as root: `kiln run -p 127.0.0.1:HOST:CONTAINER` serves a page
//! from a container in its own network namespace through the proxy on loopback; a port in use
//! is one clear line. Ports 5140-5149 are this file's (helper 4's range).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The body of `GET /` on `127.0.0.1:port`, retried until the server answers (at most 20 s).
fn fetch(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })();
        match got {
            Ok(t) if t.starts_with("HTTP/1.") => {
                return t.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
            }
            other => assert!(
                Instant::now() < deadline,
                "no page on 127.0.0.1:{port}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const SERVE: &str = "mkdir -p /www && echo hello from the container > /www/index.html && exec httpd -f -p 80 -h /www";

#[test]
fn a_page_served_in_the_container_is_fetched_through_a_published_port() {
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1:5140:80",
        "busybox",
        "sh",
        "-c",
        SERVE,
    ]);
    assert_ok(&out, "kiln run -d -p");
    assert_eq!(fetch(5140), "hello from the container\n");
    // Twice: the proxy serves connection after connection.
    assert_eq!(fetch(5140), "hello from the container\n");

    let ps = stdout(&k.run(&["ps"]));
    assert!(ps.contains(" 127.0.0.1:5140->80/tcp "), "{ps}");
    let inspect = k.run(&["inspect", "web"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&inspect)).unwrap();
    assert_eq!(
        v[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
        "5140"
    );
    assert_eq!(v[0]["HostConfig"]["NetworkMode"], "none");

    // The container's port 80 is in its own namespace: nothing on the host's 127.0.0.1:80 is it,
    // and its loopback is not the host's (the host's 5140 is not reachable from inside).
    let out = k.run(&[
        "exec",
        "web",
        "sh",
        "-c",
        "wget -q -T 2 -O- http://127.0.0.1:5140/ || echo isolated",
    ]);
    assert_eq!(stdout(&out), "isolated\n", "{}", stderr(&out));

    // The port is taken now: a second container says so in one line, exit 125.
    let out = k.run(&["run", "--rm", "-p", "127.0.0.1:5140:80", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot publish port 127.0.0.1:5140"), "{err}");

    assert_ok(&k.run(&["rm", "-f", "web"]), "kiln rm -f");
    // Its monitor is gone, and the port with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", 5140)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port 5140 still open after rm -f"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_foreground_run_publishes_too_and_host_network_is_refused() {
    let k = Kiln::with_busybox();
    let mut child = k
        .cmd()
        .args([
            "run",
            "--rm",
            "-p",
            "127.0.0.1:5141:8080",
            "busybox",
            "sh",
            "-c",
        ])
        .arg(SERVE.replace("-p 80", "-p 8080"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let body = fetch(5141);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body, "hello from the container\n");

    let out = k.run(&[
        "run",
        "--rm",
        "--network",
        "host",
        "-p",
        "127.0.0.1:5142:80",
        "busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("drop `--network host`"),
        "{}",
        stderr(&out)
    );
}
