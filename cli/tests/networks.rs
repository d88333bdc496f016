//! Bridge networks, end to end as root: containers of a user-defined network reach each other
//! by name, a port published on 127.0.0.1 reaches a bridged container, addresses are released
//! by `kiln rm`, and a network in use cannot be removed. Everything is reached from namespaces
//! the test's containers made, or through loopback. Ports 5170-5179 are this file's.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SERVE: &str =
    "mkdir -p /www && echo hello from web > /www/index.html && exec httpd -f -p 80 -h /www";

fn inspect(k: &Kiln, args: &[&str]) -> serde_json::Value {
    let out = k.run(args);
    assert_ok(&out, &args.join(" "));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// Removes the network's bridge and rules even when an assertion failed first.
struct Network<'a> {
    k: &'a Kiln,
    name: &'static str,
}

impl Drop for Network<'_> {
    fn drop(&mut self) {
        let _ = self.k.run(&["rm", "-f", "web", "client"]);
        let _ = self.k.run(&["network", "rm", self.name]);
    }
}

fn bridge_of(k: &Kiln, network: &str) -> String {
    let v = inspect(k, &["network", "inspect", network]);
    v[0]["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn containers_of_a_user_network_reach_each_other_by_name_and_rm_releases_the_address() {
    let k = Kiln::with_busybox();
    let out = k.run(&["network", "create", "--subnet", "10.231.0.0/24", "t1"]);
    assert_ok(&out, "kiln network create");
    let _cleanup = Network { k: &k, name: "t1" };
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ls = stdout(&k.run(&["network", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.contains(" t1 ") && l.ends_with("10.231.0.0/24")),
        "{ls}"
    );
    assert!(ls.lines().any(|l| l.contains(" bridge ")), "{ls}");

    let out = k.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "t1",
        "busybox",
        "sh",
        "-c",
        SERVE,
    ]);
    assert_ok(&out, "kiln run -d --network t1");
    let v = inspect(&k, &["inspect", "web"]);
    assert_eq!(v[0]["NetworkSettings"]["IPAddress"], "10.231.0.2");
    assert_eq!(v[0]["HostConfig"]["NetworkMode"], "t1");

    // By name, from a second container of the network (retried while httpd starts). With
    // `nc`: the host's static busybox `wget` crashes (SIGSEGV) even on the host.
    let out = k.run(&[
        "run", "--rm", "--name", "client", "--network", "t1", "busybox", "sh", "-c",
        "for i in $(seq 50); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc web 80 | tail -n 1 | grep . && exit 0; sleep 0.2; done; exit 1",
    ]);
    assert_ok(&out, "GET http://web/ from the network");
    assert_eq!(stdout(&out), "hello from web\n");
    // The container sees its own address on eth0, and the gateway as its default route.
    let out = k.run(&[
        "exec",
        "web",
        "sh",
        "-c",
        "ip -4 -o addr show eth0; ip route",
    ]);
    assert_ok(&out, "ip addr in the container");
    let text = stdout(&out);
    assert!(text.contains("inet 10.231.0.2/24"), "{text}");
    assert!(text.contains("default via 10.231.0.1"), "{text}");

    let net = inspect(&k, &["network", "inspect", "t1"]);
    assert_eq!(net[0]["Id"], id.as_str());
    assert_eq!(net[0]["IPAM"]["Config"][0]["Subnet"], "10.231.0.0/24");
    let members: Vec<String> = net[0]["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            format!(
                "{} {}",
                c["Name"].as_str().unwrap(),
                c["IPv4Address"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(members, ["web 10.231.0.2/24"]);

    // In use: refused in one line, and the network stays.
    let out = k.run(&["network", "rm", "t1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("network `t1` is in use by container `web`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    // `rm` gives the address back: the next container gets it.
    assert_ok(&k.run(&["rm", "-f", "web"]), "kiln rm -f web");
    let net = inspect(&k, &["network", "inspect", "t1"]);
    assert_eq!(net[0]["Containers"], serde_json::json!({}));
    let out = k.run(&[
        "run",
        "--rm",
        "--network",
        "t1",
        "busybox",
        "sh",
        "-c",
        "ip -4 -o addr show eth0",
    ]);
    assert_ok(&out, "a new container on t1");
    assert!(
        stdout(&out).contains("inet 10.231.0.2/24"),
        "{}",
        stdout(&out)
    );

    let bridge = bridge_of(&k, "t1");
    assert!(std::path::Path::new("/sys/class/net")
        .join(&bridge)
        .exists());
    assert_ok(&k.run(&["network", "rm", "t1"]), "kiln network rm t1");
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&bridge)
        .exists());
    let out = k.run(&["run", "--rm", "--network", "t1", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no network `t1`"), "{}", stderr(&out));
}

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

#[test]
fn a_port_published_on_loopback_reaches_a_bridged_container_which_reaches_its_gateway() {
    let k = Kiln::with_busybox();
    assert_ok(
        &k.run(&[
            "network",
            "create",
            "--subnet",
            "10.232.0.0/24",
            "--gateway",
            "10.232.0.254",
            "t2",
        ]),
        "kiln network create t2",
    );
    let _cleanup = Network { k: &k, name: "t2" };
    let out = k.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "t2",
        "-p",
        "127.0.0.1:5170:80",
        "busybox",
        "sh",
        "-c",
        SERVE,
    ]);
    assert_ok(&out, "kiln run -d --network t2 -p");
    assert_eq!(fetch(5170), "hello from web\n");

    // The host answers on the gateway address (the bridge's), which the container routes to.
    let listener = std::net::TcpListener::bind(("10.232.0.254", 5171)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"from the host\n").unwrap();
    });
    let out = k.run(&["exec", "web", "sh", "-c", "nc 10.232.0.254 5171 </dev/null"]);
    assert_ok(&out, "nc to the gateway");
    assert_eq!(stdout(&out), "from the host\n");
    server.join().unwrap();
}

#[test]
fn bad_network_requests_are_one_clear_line() {
    let k = Kiln::with_busybox();
    let cases: [(&[&str], &str); 5] = [
        (
            &["network", "create", "--subnet", "10.233.0.1/24", "x1"],
            "did you mean `10.233.0.0/24`",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.233.0.0/24",
                "--gateway",
                "10.9.9.9",
                "x1",
            ],
            "not a host address",
        ),
        (&["network", "create", "bridge"], "pre-defined"),
        (&["network", "rm", "bridge"], "pre-defined"),
        (&["network", "rm", "nope"], "no network `nope`"),
    ];
    for (args, want) in cases {
        let out = k.run(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let out = k.run(&["run", "--rm", "--network", "nope", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("no network `nope`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn network_prune_removes_the_unused_user_networks_only() {
    let k = Kiln::with_busybox();
    for (name, subnet) in [("t6", "10.236.0.0/24"), ("t7", "10.237.0.0/24")] {
        let out = k.run(&["network", "create", "--subnet", subnet, name]);
        assert_ok(&out, "kiln network create");
    }
    let _t6 = Network { k: &k, name: "t6" };
    let _t7 = Network { k: &k, name: "t7" };
    let unused_bridge = bridge_of(&k, "t7");
    let out = k.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "t6",
        "busybox",
        "sleep",
        "60",
    ]);
    assert_ok(&out, "a container on t6");

    let out = k.run(&["network", "prune", "-f"]);
    assert_ok(&out, "kiln network prune");
    assert_eq!(stdout(&out), "Deleted Networks:\nt7\n");
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&unused_bridge)
        .exists());
    let ls = stdout(&k.run(&["network", "ls"]));
    assert!(ls.lines().any(|l| l.contains(" t6 ")), "{ls}");
    assert!(ls.lines().any(|l| l.contains(" bridge ")), "{ls}");

    // Once its container is removed, the network is unused too.
    assert_ok(&k.run(&["rm", "-f", "web"]), "kiln rm -f web");
    let out = k.run(&["network", "prune", "-f"]);
    assert_eq!(stdout(&out), "Deleted Networks:\nt6\n");
    let out = k.run(&["network", "prune", "-f"]);
    assert_eq!(stdout(&out), "", "nothing left to prune");
}
