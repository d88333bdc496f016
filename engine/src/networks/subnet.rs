//! IPv4 subnets in CIDR form (`10.231.0.0/24`): parsing, overlap, and the host addresses a
//! network hands out.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A network address and its prefix length; the address has no bits past the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Subnet {
    /// `None` when `addr` has bits past the prefix or the prefix is over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Subnet> {
        (prefix <= 32 && u32::from(addr) & !mask(prefix) == 0).then_some(Subnet { addr, prefix })
    }

    fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    fn last(&self) -> u32 {
        self.first() | !mask(self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.first()
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// Whether `ip` is one of the subnet's host addresses (not its network or broadcast one).
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.contains(ip) && n > self.first() && n < self.last()
    }

    /// The `n`th host address (1 is the first), if the subnet has it.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let ip = Ipv4Addr::from(self.first().checked_add(n)?);
        self.usable(ip).then_some(ip)
    }

    /// Every host address, lowest first.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let (first, last) = (self.first(), self.last());
        (first.saturating_add(1)..last).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Subnet> {
        let bad = || {
            anyhow::anyhow!(
                "invalid subnet `{s}`: write an IPv4 network in CIDR form, e.g. `10.231.0.0/24`"
            )
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            bail!("invalid subnet `{s}`: its prefix length must be between 8 and 30");
        }
        Subnet::new(addr, prefix).ok_or_else(|| {
            let net = Ipv4Addr::from(u32::from(addr) & mask(prefix));
            anyhow::anyhow!("invalid subnet `{s}`: it has bits set past /{prefix}; did you mean `{net}/{prefix}`?")
        })
    }
}

impl TryFrom<String> for Subnet {
    type Error = anyhow::Error;

    fn try_from(s: String) -> Result<Subnet> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// The destinations of `/proc/net/route` (hex, host byte order as the kernel prints them).
pub(super) fn parse_proc_routes(text: &str) -> Vec<Subnet> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The kernel prints the network-order word as a native integer.
            let (dest, mask) = (
                u32::from_be_bytes(dest.to_ne_bytes()),
                u32::from_be_bytes(mask.to_ne_bytes()),
            );
            let prefix = mask.leading_ones() as u8;
            Subnet::new(Ipv4Addr::from(dest & mask), prefix)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_reads_and_refuses_as_docker_does() {
        let s: Subnet = "10.231.0.0/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.231.0.0/24");
        assert_eq!(s.host(1), Some(Ipv4Addr::new(10, 231, 0, 1)));
        assert_eq!(s.host(255), None);
        assert_eq!(s.hosts().count(), 254);
        assert!(s.usable(Ipv4Addr::new(10, 231, 0, 254)));
        assert!(!s.usable(Ipv4Addr::new(10, 231, 0, 255)));
        let e = "10.231.0.1/24".parse::<Subnet>().unwrap_err().to_string();
        assert!(e.contains("did you mean `10.231.0.0/24`"), "{e}");
        assert!("10.0.0.0".parse::<Subnet>().is_err());
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("300.0.0.0/8".parse::<Subnet>().is_err());
    }

    #[test]
    fn overlap_is_any_shared_address() {
        let a: Subnet = "10.0.0.0/16".parse().unwrap();
        let b: Subnet = "10.0.255.0/24".parse().unwrap();
        let c: Subnet = "10.1.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn proc_routes_give_the_hosts_networks() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            br0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes = parse_proc_routes(text);
        if cfg!(target_endian = "little") {
            assert_eq!(routes[1].to_string(), "10.88.0.0/16");
        }
        assert_eq!(routes[0].prefix, 0);
    }
}
