//! Published ports (`-p [IP:]HOST:CONTAINER[/tcp]`): a userland proxy, run by the container's
//! monitor, from a listening socket on the host into the container's own network namespace,
//! as Docker's `docker-proxy` does for loopback.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

/// One `-p`: connections to `host_ip:host_port` reach the container's `container_port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
}

impl PortMapping {
    pub fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host_ip, self.host_port)
    }
}

/// `-p [IP:]HOST:CONTAINER[/tcp]` (IP 0.0.0.0 when not given, as Docker's).
pub fn parse_publish(spec: &str) -> Result<PortMapping> {
    let bad = |why: &str| anyhow::anyhow!("invalid `-p {spec}`: {why}");
    let (addr, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    if proto != "tcp" {
        bail!(bad(&format!(
            "`{proto}` ports are not published by kiln yet; use `/tcp`"
        )));
    }
    let (ip, host, container) = match addr.rsplitn(3, ':').collect::<Vec<_>>().as_slice() {
        [c, h, ip] => (*ip, *h, *c),
        [c, h] => ("", *h, *c),
        _ => {
            return Err(bad(
                "write [IP:]HOST_PORT:CONTAINER_PORT, e.g. `127.0.0.1:8080:80`",
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
        host_port: port(host, "host")?,
        container_port: port(container, "container")?,
    })
}

/// Fails with one clear line when a published port is taken (checked when the container is
/// made; its monitor binds it again when it starts).
pub fn check_free(ports: &[PortMapping]) -> Result<()> {
    for p in ports {
        TcpListener::bind(p.host_addr()).map_err(|e| {
            anyhow::anyhow!(
                "cannot publish port {}: {e}; stop what uses it or choose another host port",
                p.host_addr()
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
        let listener = TcpListener::bind(p.host_addr())
            .with_context(|| format!("cannot publish port {}", p.host_addr()))?;
        let (target, find) = (p.container_port, find_init.clone());
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
        assert!(parse_publish("80").is_err());
        assert!(parse_publish("1.2.3:80:80").is_err());
        assert!(parse_publish("8080:80/udp").is_err());
        assert!(parse_publish("70000:80").is_err());
        assert!(parse_publish("0:80").is_err());
    }
}
