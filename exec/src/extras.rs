//! `--add-host`, `--shm-size` and `--ulimit` (`docker build`'s meaning): what every sandbox of a
//! build gets besides its resource limits, written into its spec by [`crate::Limits::apply_to`]
//! so that they reach each `RUN` step the way the limits do.

use oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType, Spec};

use crate::ExecError;

/// The spec annotation carrying `--add-host` entries to [`crate::etc`], one `IP\tNAME` a line.
pub(crate) const EXTRA_HOSTS_ANNOTATION: &str = "io.kiln.extra-hosts";

/// One `--ulimit NAME=SOFT[:HARD]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Docker's `--ulimit` names and the rlimits they set.
const ULIMITS: [(&str, PosixRlimitType); 16] = [
    ("as", PosixRlimitType::RlimitAs),
    ("core", PosixRlimitType::RlimitCore),
    ("cpu", PosixRlimitType::RlimitCpu),
    ("data", PosixRlimitType::RlimitData),
    ("fsize", PosixRlimitType::RlimitFsize),
    ("locks", PosixRlimitType::RlimitLocks),
    ("memlock", PosixRlimitType::RlimitMemlock),
    ("msgqueue", PosixRlimitType::RlimitMsgqueue),
    ("nice", PosixRlimitType::RlimitNice),
    ("nofile", PosixRlimitType::RlimitNofile),
    ("nproc", PosixRlimitType::RlimitNproc),
    ("rss", PosixRlimitType::RlimitRss),
    ("rtprio", PosixRlimitType::RlimitRtprio),
    ("rttime", PosixRlimitType::RlimitRttime),
    ("sigpending", PosixRlimitType::RlimitSigpending),
    ("stack", PosixRlimitType::RlimitStack),
];

fn invalid(flag: &str, value: &str, reason: &str) -> ExecError {
    ExecError::InvalidLimit {
        flag: flag.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `--ulimit nofile=1024:2048` (`-1` is unlimited), as Docker parses it.
pub fn parse_ulimit(value: &str) -> Result<Ulimit, ExecError> {
    let bad = |why: &str| invalid("--ulimit", value, why);
    let (name, limits) = value
        .split_once('=')
        .ok_or_else(|| bad("write NAME=SOFT[:HARD], e.g. `nofile=1024:2048`"))?;
    if !ULIMITS.iter().any(|(n, _)| *n == name) {
        return Err(bad(
            "unknown limit name: use one of as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack",
        ));
    }
    let number = |s: &str| -> Result<u64, ExecError> {
        if s == "-1" {
            return Ok(u64::MAX);
        }
        s.parse()
            .map_err(|_| bad("limits are whole numbers, or `-1` for unlimited"))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (number(s)?, number(h)?),
        None => (number(limits)?, number(limits)?),
    };
    if soft > hard {
        return Err(bad("the soft limit is above the hard one"));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// `--add-host NAME:IP` (also `NAME=IP`), as Docker parses it; IPv6 addresses keep their
/// colons, and `host-gateway` is refused (kiln has no bridge network for it to name).
pub fn parse_add_host(value: &str) -> Result<(String, String), ExecError> {
    let bad = |why: &str| invalid("--add-host", value, why);
    let (name, ip) = value
        .split_once('=')
        .or_else(|| value.split_once(':'))
        .ok_or_else(|| bad("write NAME:IP, e.g. `db:10.0.0.5`"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
        return Err(bad("the host name is empty or holds a space"));
    }
    if ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad("the address is not an IPv4 or IPv6 address"));
    }
    Ok((name.to_string(), ip.to_string()))
}

/// Writes the `/dev/shm` size, the rlimits and the extra hosts into `spec`.
pub(crate) fn apply(
    spec: &mut Spec,
    shm_size: Option<u64>,
    ulimits: &[Ulimit],
    extra_hosts: &[(String, String)],
) -> Result<(), ExecError> {
    let err = ExecError::Spec;
    if let Some(size) = shm_size {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in mounts
            .iter_mut()
            .filter(|m| m.destination() == std::path::Path::new("/dev/shm"))
        {
            let mut options: Vec<String> = m
                .options()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|o| !o.starts_with("size="))
                .collect();
            options.push(format!("size={size}"));
            m.set_options(Some(options));
        }
        spec.set_mounts(Some(mounts));
    }
    if !ulimits.is_empty() {
        let mut process = spec.process().clone().unwrap_or_default();
        let mut rlimits = process.rlimits().clone().unwrap_or_default();
        for u in ulimits {
            let Some((_, typ)) = ULIMITS.iter().find(|(n, _)| *n == u.name) else {
                continue;
            };
            rlimits.retain(|r| r.typ() != *typ);
            rlimits.push(
                PosixRlimitBuilder::default()
                    .typ(*typ)
                    .soft(u.soft)
                    .hard(u.hard)
                    .build()
                    .map_err(err)?,
            );
        }
        process.set_rlimits(Some(rlimits));
        spec.set_process(Some(process));
    }
    if !extra_hosts.is_empty() {
        let lines: String = extra_hosts
            .iter()
            .map(|(name, ip)| format!("{ip}\t{name}\n"))
            .collect();
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(EXTRA_HOSTS_ANNOTATION.to_string(), lines);
        spec.set_annotations(Some(annotations));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_parsed_as_docker_parses_them() {
        assert_eq!(
            parse_ulimit("nofile=1024:2048").unwrap(),
            Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048
            }
        );
        assert_eq!(parse_ulimit("core=-1").unwrap().hard, u64::MAX);
        assert!(parse_ulimit("nofile=2:1").is_err());
        assert!(parse_ulimit("files=1")
            .unwrap_err()
            .to_string()
            .contains("nofile"));
        assert_eq!(
            parse_add_host("db:10.0.0.5").unwrap(),
            ("db".into(), "10.0.0.5".into())
        );
        assert_eq!(
            parse_add_host("v6:::1").unwrap(),
            ("v6".into(), "::1".into())
        );
        assert!(parse_add_host("db:nowhere").is_err());
    }

    #[test]
    fn apply_writes_shm_rlimits_and_hosts() {
        let mut spec = crate::default_spec(&crate::ProcessSpec {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: crate::ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/".into(),
            },
            hostname: String::new(),
            network: crate::Network::Host,
            terminal: false,
        })
        .unwrap();
        apply(
            &mut spec,
            Some(1 << 20),
            &[parse_ulimit("nofile=10:20").unwrap()],
            &[("db".into(), "10.0.0.5".into())],
        )
        .unwrap();
        let shm = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == std::path::Path::new("/dev/shm"))
            .unwrap();
        let opts = shm.options().as_ref().unwrap();
        assert!(opts.contains(&"size=1048576".to_string()), "{opts:?}");
        assert!(!opts.contains(&"size=65536k".to_string()), "{opts:?}");
        let rl = spec.process().as_ref().unwrap().rlimits().as_ref().unwrap();
        let nofile: Vec<_> = rl
            .iter()
            .filter(|r| r.typ() == PosixRlimitType::RlimitNofile)
            .collect();
        assert_eq!(nofile.len(), 1);
        assert_eq!((nofile[0].soft(), nofile[0].hard()), (10, 20));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[EXTRA_HOSTS_ANNOTATION],
            "10.0.0.5\tdb\n"
        );
    }
}
