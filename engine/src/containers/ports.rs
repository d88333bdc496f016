//! Published ports (`-p [IP:][HOST:]CONTAINER[/tcp|udp]`): a userland proxy, run by the
//! container's monitor, from a listening socket on the host into the container's own network
//! namespace, as Docker's `docker-proxy` does for loopback.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A published port's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `-p`: connections to `host_ip:host_port` reach the container's `container_port`
/// (`host_port` 0 until `kiln run` picks a free one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortMapping {
    pub fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host_ip, self.host_port)
    }
}

/// `-p [IP:][HOST:]CONTAINER[/tcp]` (IP 0.0.0.0 when not given, as Docker's; no or an empty
/// HOST: a free port, chosen when the container is made).
pub fn parse_publish(spec: &str) -> Result<PortMapping> {
    let bad = |why: &str| anyhow::anyhow!("invalid `-p {spec}`: {why}");
    let (addr, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => bail!(bad(&format!(
            "`{proto}` ports are not published by kiln; use `/tcp` or `/udp`"
        ))),
    };
    let (ip, host, container) = match addr.rsplitn(3, ':').collect::<Vec<_>>().as_slice() {
        [c, h, ip] => (*ip, *h, *c),
        [c, h] => ("", *h, *c),
        [c] => ("", "", *c),
        _ => {
            return Err(bad(
                "write [IP:][HOST_PORT:]CONTAINER_PORT, e.g. `127.0.0.1:8080:80`",
            ))
        }
    };
    let port = |p: &str, what: &str| -> Result<u16> {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(&format!("`{p}` is not a {what} port (1-65535)")))
    };
    let host_ip = if ip.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        ip.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| bad(&format!("`{ip}` is not an IP address")))?
    };
    Ok(PortMapping {
        host_ip,
        host_port: if host.is_empty() {
            0
        } else {
            port(host, "host")?
        },
        container_port: port(container, "container")?,
        protocol,
    })
}

/// Binds the host side of `p` (a listener for TCP, a socket for UDP).
fn bind(p: &PortMapping) -> std::io::Result<Bound> {
    Ok(match p.protocol {
        Protocol::Tcp => Bound::Tcp(TcpListener::bind(p.host_addr())?),
        Protocol::Udp => Bound::Udp(UdpSocket::bind(p.host_addr())?),
    })
}

enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Bound {
    fn port(&self) -> std::io::Result<u16> {
        match self {
            Bound::Tcp(l) => l.local_addr().map(|a| a.port()),
            Bound::Udp(u) => u.local_addr().map(|a| a.port()),
        }
    }
}

/// Gives each mapping without a host port a free one (the kernel's choice, as Docker's), so
/// that the container's config, `kiln port` and `kiln ps` name it.
pub fn choose_free(ports: &mut [PortMapping]) -> Result<()> {
    for p in ports.iter_mut().filter(|p| p.host_port == 0) {
        p.host_port = bind(p)
            .and_then(|b| b.port())
            .map_err(|e| anyhow::anyhow!("cannot find a free port on {}: {e}", p.host_ip))?;
    }
    Ok(())
}

/// Fails with one clear line when a published port is taken (checked when the container is
/// made; its monitor binds it again when it starts).
pub fn check_free(ports: &[PortMapping]) -> Result<()> {
    for p in ports {
        bind(p).map_err(|e| {
            anyhow::anyhow!(
                "cannot publish port {}/{}: {e}; stop what uses it or choose another host port",
                p.host_addr(),
                p.protocol.as_str()
            )
        })?;
    }
    Ok(())
}

/// Where the container's network namespace is now (its init's pid), `None` while it is not
/// running.
pub(crate) type FindInit = Arc<dyn Fn() -> Option<u32> + Send + Sync>;

/// Binds every published port and serves each on a thread of its own for the life of this
/// process (the monitor): each connection goes to the container running at that moment.
pub(crate) fn start_proxies(ports: &[PortMapping], find_init: FindInit) -> Result<()> {
    for p in ports {
        let bound = bind(p).with_context(|| {
            format!(
                "cannot publish port {}/{}",
                p.host_addr(),
                p.protocol.as_str()
            )
        })?;
        let (target, find) = (p.container_port, find_init.clone());
        let listener = match bound {
            Bound::Tcp(l) => l,
            Bound::Udp(socket) => {
                std::thread::spawn(move || serve_udp(socket, target, find));
                continue;
            }
        };
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let find = find.clone();
                std::thread::spawn(move || {
                    // Nothing to reach: the client sees the connection closed, as with Docker's
                    // proxy when the container is down.
                    let _ = forward(conn, target, &*find);
                });
            }
        });
    }
    Ok(())
}

/// Connects to the container's `port` from inside its network namespace (this thread moves
/// there) and copies both ways until either side closes.
fn forward(client: TcpStream, port: u16, find_init: &dyn Fn() -> Option<u32>) -> Result<()> {
    let pid = find_init().context("the container is not running")?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .context("cannot open the container's network namespace")?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("cannot enter the container's network namespace")?;
    let server = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("nothing listens on port {port} in the container"))?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = std::io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
    Ok(())
}

/// How long a UDP flow (one client address) keeps its socket in the container without a
/// datagram either way; docker-proxy's is 90 s.
const UDP_IDLE: Duration = Duration::from_secs(90);

/// Relays datagrams from each client address through a socket of its own in the container's
/// namespace (connected to `port` on its loopback), and the replies back to that client.
fn serve_udp(socket: UdpSocket, port: u16, find_init: FindInit) {
    let socket = Arc::new(socket);
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let known = flows.lock().ok().and_then(|f| f.get(&client).cloned());
        let upstream = match known {
            Some(u) => u,
            None => {
                // Nothing to reach: the datagram is dropped, as by a host with no listener.
                let Ok(u) = udp_socket_in(&*find_init, port) else {
                    continue;
                };
                let u = Arc::new(u);
                if let Ok(mut f) = flows.lock() {
                    f.insert(client, u.clone());
                }
                let (u2, back, flows2) = (u.clone(), socket.clone(), flows.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    let _ = u2.set_read_timeout(Some(UDP_IDLE));
                    while let Ok(n) = u2.recv(&mut buf) {
                        let _ = back.send_to(&buf[..n], client);
                    }
                    if let Ok(mut f) = flows2.lock() {
                        f.remove(&client);
                    }
                });
                u
            }
        };
        let _ = upstream.send(&buf[..n]);
    }
}

/// A UDP socket made in the container's network namespace (on a thread that moves there and
/// ends), connected to `port` on its loopback; usable from any thread afterwards.
fn udp_socket_in(find_init: &dyn Fn() -> Option<u32>, port: u16) -> Result<UdpSocket> {
    let pid = find_init().context("the container is not running")?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .context("cannot open the container's network namespace")?;
    std::thread::spawn(move || -> Result<UdpSocket> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("cannot enter the container's network namespace")?;
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        s.connect((Ipv4Addr::LOCALHOST, port))?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread entering the container's namespace panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_flags_read_as_docker_reads_them() {
        let p = parse_publish("127.0.0.1:8080:80").unwrap();
        assert_eq!(p.host_addr().to_string(), "127.0.0.1:8080");
        assert_eq!(p.container_port, 80);
        let p = parse_publish("8080:80/tcp").unwrap();
        assert_eq!(p.host_addr().to_string(), "0.0.0.0:8080");
        let p = parse_publish("80").unwrap();
        assert_eq!(
            (p.host_addr().to_string(), p.container_port),
            ("0.0.0.0:0".into(), 80)
        );
        let p = parse_publish("127.0.0.1::80").unwrap();
        assert_eq!(p.host_addr().to_string(), "127.0.0.1:0");
        assert!(parse_publish("x").is_err());
        assert!(parse_publish("1.2.3:80:80").is_err());
        assert_eq!(
            parse_publish("8080:80/udp").unwrap().protocol,
            Protocol::Udp
        );
        assert!(parse_publish("8080:80/sctp").is_err());
        assert!(parse_publish("70000:80").is_err());
        assert!(parse_publish("0:80").is_err());
    }
}
