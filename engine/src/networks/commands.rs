//! The host changes a bridge network needs (bridge, veth pair, addresses, routes, NAT), made
//! with iproute2's `ip` and `iptables` behind a small trait, so that unit tests record the
//! commands instead of running them.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;

use super::Subnet;

/// Runs host commands; [`Host`] for real, a recorder in tests.
pub(crate) trait Commands {
    /// Runs `program args` (with `stdin` as its input), inside the network namespace bound at
    /// `netns` when given; fails with its error output.
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        netns: Option<&Path>,
    ) -> Result<()>;
    /// Whether `program args` succeeds (`iptables -C`: is the rule there?).
    fn succeeds(&mut self, program: &str, args: &[&str]) -> bool;
    /// Whether the host has a network device called `name`.
    fn link_exists(&mut self, name: &str) -> bool;
    /// Turns on IPv4 forwarding, without which NAT forwards nothing.
    fn enable_forwarding(&mut self) -> Result<()>;
}

/// The host itself.
pub(crate) struct Host;

impl Commands for Host {
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        netns: Option<&Path>,
    ) -> Result<()> {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let shown = format!("{program} {}", args.join(" "));
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(path) = netns {
            let ns = std::fs::File::open(path).with_context(|| {
                format!("cannot open the network namespace `{}`", path.display())
            })?;
            // SAFETY: setns is async-signal-safe and touches only the child's own namespace;
            // `ns` outlives the spawn.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("`{program}` is not installed: bridge networks need it (`apt-get install iproute2 iptables`)")
            } else {
                anyhow::anyhow!("cannot run `{shown}`: {e}")
            }
        })?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input
                .write_all(text.as_bytes())
                .with_context(|| format!("cannot write to `{shown}`"))?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("cannot run `{shown}`"))?;
        if !out.status.success() {
            bail!(
                "`{shown}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn succeeds(&mut self, program: &str, args: &[&str]) -> bool {
        std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn link_exists(&mut self, name: &str) -> bool {
        !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
    }

    fn enable_forwarding(&mut self) -> Result<()> {
        let path = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            return Ok(());
        }
        std::fs::write(path, "1").with_context(|| format!("cannot turn on `{path}`"))
    }
}

/// Runs every command inside the network namespace at `ns` (a rootless user-defined network's
/// keeper's, where its bridge and NAT live), unless a command names another one.
pub(crate) struct InNamespace<'a> {
    pub ns: &'a Path,
}

impl Commands for InNamespace<'_> {
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
        netns: Option<&Path>,
    ) -> Result<()> {
        Host.run(program, args, stdin, netns.or(Some(self.ns)))
    }

    fn succeeds(&mut self, program: &str, args: &[&str]) -> bool {
        Host.run(program, args, None, Some(self.ns)).is_ok()
    }

    fn link_exists(&mut self, name: &str) -> bool {
        !name.contains('/') && self.succeeds("ip", &["link", "show", "dev", name])
    }

    fn enable_forwarding(&mut self) -> Result<()> {
        // A network namespace's sysctls are its own: written from inside it.
        Host.run(
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            None,
            Some(self.ns),
        )
    }
}

/// The iptables rules of a bridge: masquerade what leaves the subnet by another device, and
/// let the bridge's traffic through `FORWARD` (whose policy Docker's hosts set to drop).
fn rules(bridge: &str, subnet: Subnet) -> Vec<Vec<String>> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let subnet = subnet.to_string();
    vec![
        v(&[
            "-t",
            "nat",
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-o",
            bridge,
            "-j",
            "MASQUERADE",
        ]),
        v(&["-t", "filter", "FORWARD", "-i", bridge, "-j", "ACCEPT"]),
        v(&["-t", "filter", "FORWARD", "-o", bridge, "-j", "ACCEPT"]),
    ]
}

/// `rule` (table, chain, match) as iptables arguments for `op` (`-C`, `-I`, `-D`).
fn rule_args<'a>(op: &'a str, rule: &'a [String]) -> Vec<&'a str> {
    let mut args = vec![rule[0].as_str(), rule[1].as_str(), op, rule[2].as_str()];
    args.extend(rule[3..].iter().map(String::as_str));
    args
}

/// Makes the bridge with the gateway's address, and its NAT, unless the bridge exists.
pub(crate) fn ensure_bridge(
    cmds: &mut dyn Commands,
    bridge: &str,
    gateway: Ipv4Addr,
    subnet: Subnet,
) -> Result<()> {
    if cmds.link_exists(bridge) {
        return Ok(());
    }
    let gw = format!("{gateway}/{}", subnet.prefix);
    cmds.run(
        "ip",
        &["-batch", "-"],
        Some(&format!(
            "link add {bridge} type bridge\naddr add {gw} dev {bridge}\nlink set {bridge} up\n"
        )),
        None,
    )?;
    cmds.enable_forwarding()?;
    for rule in rules(bridge, subnet) {
        if !cmds.succeeds("iptables", &rule_args("-C", &rule)) {
            cmds.run("iptables", &rule_args("-I", &rule), None, None)?;
        }
    }
    Ok(())
}

/// Takes the bridge and its rules away (`kiln network rm`).
pub(crate) fn remove_bridge(cmds: &mut dyn Commands, bridge: &str, subnet: Subnet) -> Result<()> {
    for rule in rules(bridge, subnet) {
        // At most a few copies, should two kilns have raced to add one.
        for _ in 0..4 {
            if !cmds.succeeds("iptables", &rule_args("-C", &rule)) {
                break;
            }
            cmds.run("iptables", &rule_args("-D", &rule), None, None)?;
        }
    }
    if cmds.link_exists(bridge) {
        cmds.run("ip", &["link", "del", bridge], None, None)?;
    }
    Ok(())
}

/// One container's end of a network: a veth pair made from inside its namespace (`eth0` there,
/// `host_end` in the namespace of process `host_pid`), its address and default route, and the
/// host end on the bridge.
pub(crate) struct Plug<'a> {
    pub netns: &'a Path,
    pub host_end: &'a str,
    pub host_pid: u32,
    pub bridge: &'a str,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

pub(crate) fn plug(cmds: &mut dyn Commands, p: &Plug<'_>) -> Result<()> {
    if cmds.link_exists(p.host_end) {
        // Left by a monitor that was killed before it could take its namespace down.
        cmds.run("ip", &["link", "del", p.host_end], None, None)?;
    }
    let inside = format!(
        "link add eth0 type veth peer name {} netns {}\naddr add {}/{} dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {}\n",
        p.host_end, p.host_pid, p.ip, p.prefix, p.gateway
    );
    cmds.run("ip", &["-batch", "-"], Some(&inside), Some(p.netns))?;
    cmds.run(
        "ip",
        &["link", "set", p.host_end, "master", p.bridge, "up"],
        None,
        None,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every command; links in `links` exist, rules in `rules` are present.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub log: Vec<String>,
        pub links: Vec<String>,
        pub rules: Vec<String>,
    }

    impl Commands for Recorder {
        fn run(
            &mut self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
            netns: Option<&Path>,
        ) -> Result<()> {
            let mut line = format!("{program} {}", args.join(" "));
            if let Some(ns) = netns {
                line = format!("[{}] {line}", ns.display());
            }
            if let Some(text) = stdin {
                line.push_str(&format!(" <<{}", text.trim_end().replace('\n', "; ")));
            }
            self.log.push(line);
            Ok(())
        }

        fn succeeds(&mut self, program: &str, args: &[&str]) -> bool {
            self.log.push(format!("? {program} {}", args.join(" ")));
            self.rules.iter().any(|r| r == &args.join(" "))
        }

        fn link_exists(&mut self, name: &str) -> bool {
            self.links.iter().any(|l| l == name)
        }

        fn enable_forwarding(&mut self) -> Result<()> {
            self.log.push("ip_forward=1".into());
            Ok(())
        }
    }

    fn subnet() -> Subnet {
        "10.231.0.0/24".parse().unwrap()
    }

    #[test]
    fn a_new_bridge_gets_its_address_forwarding_and_nat_once() {
        let mut r = Recorder {
            rules: vec!["-t filter -C FORWARD -i kbr-1 -j ACCEPT".into()],
            ..Default::default()
        };
        ensure_bridge(&mut r, "kbr-1", Ipv4Addr::new(10, 231, 0, 1), subnet()).unwrap();
        assert_eq!(
            r.log,
            [
                "ip -batch - <<link add kbr-1 type bridge; addr add 10.231.0.1/24 dev kbr-1; link set kbr-1 up",
                "ip_forward=1",
                "? iptables -t nat -C POSTROUTING -s 10.231.0.0/24 ! -o kbr-1 -j MASQUERADE",
                "iptables -t nat -I POSTROUTING -s 10.231.0.0/24 ! -o kbr-1 -j MASQUERADE",
                "? iptables -t filter -C FORWARD -i kbr-1 -j ACCEPT",
                "? iptables -t filter -C FORWARD -o kbr-1 -j ACCEPT",
                "iptables -t filter -I FORWARD -o kbr-1 -j ACCEPT",
            ]
        );
        let mut again = Recorder {
            links: vec!["kbr-1".into()],
            ..Default::default()
        };
        ensure_bridge(&mut again, "kbr-1", Ipv4Addr::new(10, 231, 0, 1), subnet()).unwrap();
        assert!(again.log.is_empty(), "{:?}", again.log);
    }

    #[test]
    fn a_container_is_plugged_from_inside_its_namespace_then_bridged() {
        let mut r = Recorder {
            links: vec!["kv0123".into()],
            ..Default::default()
        };
        plug(
            &mut r,
            &Plug {
                netns: Path::new("/c/netns"),
                host_end: "kv0123",
                host_pid: 42,
                bridge: "kbr-1",
                ip: Ipv4Addr::new(10, 231, 0, 2),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 231, 0, 1),
            },
        )
        .unwrap();
        assert_eq!(
            r.log,
            [
                "ip link del kv0123",
                "[/c/netns] ip -batch - <<link add eth0 type veth peer name kv0123 netns 42; addr add 10.231.0.2/24 dev eth0; link set eth0 up; link set lo up; route add default via 10.231.0.1",
                "ip link set kv0123 master kbr-1 up",
            ]
        );
    }

    #[test]
    fn removing_a_bridge_takes_its_rules_and_device() {
        let mut r = Recorder {
            links: vec!["kbr-1".into()],
            rules: vec!["-t nat -C POSTROUTING -s 10.231.0.0/24 ! -o kbr-1 -j MASQUERADE".into()],
            ..Default::default()
        };
        // The recorder's rule stays "present": the loop stops after a few deletions.
        remove_bridge(&mut r, "kbr-1", subnet()).unwrap();
        let deletes = r.log.iter().filter(|l| l.contains(" -D ")).count();
        assert_eq!(deletes, 4);
        assert_eq!(r.log.last().unwrap(), "ip link del kbr-1");
    }
}
