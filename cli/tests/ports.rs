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

#[test]
fn a_free_host_port_is_chosen_for_an_empty_one_and_for_publish_all() {
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "import",
        "--change",
        "CMD [\"sh\"]",
        "--change",
        "EXPOSE 80",
        busybox_rootfs().to_str().unwrap(),
        "web:1",
    ]);
    assert_ok(&out, "kiln import with EXPOSE 80");
    let port_of = |name: &str| -> u16 {
        let out = k.run(&["port", name, "80"]);
        assert_ok(&out, "kiln port");
        let text = stdout(&out);
        let (proto, addr) = text.trim().split_once(" -> ").expect("PORT/tcp -> IP:PORT");
        assert_eq!(proto, "80/tcp");
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    };
    for (name, flag) in [("r1", "-p127.0.0.1::80"), ("r2", "-P")] {
        let out = k.run(&[
            "run", "-d", "--name", name, flag, "web:1", "sh", "-c", SERVE,
        ]);
        assert_ok(&out, &format!("kiln run -d {flag}"));
        let port = port_of(name);
        assert_ne!(port, 0);
        assert_eq!(fetch(port), "hello from the container\n", "{flag}");
        let ps = stdout(&k.run(&["ps"]));
        assert!(ps.contains(&format!(":{port}->80/tcp")), "{ps}");
    }
    let out = k.run(&["port", "r1", "81"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no public port `81/tcp`"),
        "{}",
        stderr(&out)
    );
    assert_ok(&k.run(&["rm", "-f", "r1", "r2"]), "kiln rm -f");
}

/// A UDP echo server (busybox has none that answers), built static for the container.
const UDP_ECHO_C: &str = r#"
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
    for (;;) {
        char buf[2048];
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n > 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
    }
}
"#;

#[test]
fn a_udp_port_relays_datagrams_both_ways_per_client() {
    let k = Kiln::with_busybox();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("echo.c"), UDP_ECHO_C).unwrap();
    let (src, bin) = (dir.path().join("echo.c"), dir.path().join("echo"));
    tool(
        "gcc",
        &[
            "-O2",
            "-static",
            "-o",
            bin.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    let mount = format!("{}:/u:ro", dir.path().display());
    let out = k.run(&[
        "run",
        "-d",
        "--name",
        "echo",
        "-v",
        &mount,
        "-p",
        "127.0.0.1:5144:9000/udp",
        "busybox",
        "/u/echo",
        "9000",
    ]);
    assert_ok(&out, "kiln run -d -p .../udp");
    assert_eq!(
        stdout(&k.run(&["port", "echo"])),
        "9000/udp -> 127.0.0.1:5144\n"
    );
    // Two clients: each gets its own replies.
    let clients: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let msg = format!("hello {i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 64];
        loop {
            c.send_to(msg.as_bytes(), "127.0.0.1:5144").unwrap();
            if let Ok((n, from)) = c.recv_from(&mut buf) {
                assert_eq!(&buf[..n], msg.as_bytes());
                assert_eq!(from.to_string(), "127.0.0.1:5144");
                break;
            }
            assert!(Instant::now() < deadline, "no UDP echo on 127.0.0.1:5144");
        }
    }
    let v: serde_json::Value = serde_json::from_str(&stdout(&k.run(&["inspect", "echo"]))).unwrap();
    assert_eq!(
        v[0]["NetworkSettings"]["Ports"]["9000/udp"][0]["HostPort"],
        "5144"
    );
    assert_ok(&k.run(&["rm", "-f", "echo"]), "kiln rm -f");
}
