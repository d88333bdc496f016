//! Builds the OCI runtime spec Docker would use for a process (env, capabilities, mounts, namespaces).

use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::{ExecError, ResolvedUser};

/// The PATH Docker sets when an image does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Network of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Network {
    /// Share the host's network namespace.
    Host,
    /// A new network namespace with only `lo`, brought up.
    None,
}

/// The network namespace `spec` joins by path, if any (OCI's `linux.namespaces[].path`).
pub fn network_namespace_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Makes `spec` join the network namespace bound at `path` instead of making a new one (the
/// spec must have been made for [`Network::None`]); runc and crun read the same field.
pub fn join_network_namespace(spec: &mut Spec, path: &std::path::Path) -> Result<(), ExecError> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    let ns = namespaces
        .iter_mut()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .ok_or_else(|| {
            ExecError::InvalidConfig("the spec has no network namespace to join".into())
        })?;
    ns.set_path(Some(path.to_path_buf()));
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    Ok(())
}

/// What to run, as a Dockerfile `RUN` or `kiln run` describes it.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's PATH when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Absolute working directory inside the container; it must exist.
    pub cwd: String,
    /// Credentials, from [`crate::resolve_user`].
    pub user: ResolvedUser,
    /// Hostname inside the container (empty: keep the host's).
    pub hostname: String,
    /// Network namespace choice.
    pub network: Network,
    /// Whether the process wants a terminal (recorded in the spec).
    pub terminal: bool,
}

/// The open-files limit (soft and hard) a Docker container gets: dockerd's own, which its
/// service unit sets to the kernel's default `fs.nr_open`. The other limits (NPROC among them)
/// are left as the engine has them, as runc leaves them.
pub const DEFAULT_NOFILE: u64 = 1_048_576;

/// The device nodes a container's `/dev` holds, bound from the host's (besides `ptmx` and
/// `/dev/pts`, from its own devpts): the only devices a step may open.
pub(crate) const STANDARD_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Docker's default capability set.
pub(crate) const DOCKER_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

fn spec_err(e: oci_spec::OciSpecError) -> ExecError {
    ExecError::Spec(e)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, ExecError> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ.to_string())
        .source(PathBuf::from(source))
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// The mounts every container gets: /proc, /dev (with pts, shm, mqueue) and a read-only /sys.
pub(crate) fn default_mounts() -> Result<Vec<Mount>, ExecError> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ])
}

/// Whether `m` is one of [`default_mounts`] (by destination).
pub(crate) fn is_default_mount(m: &Mount) -> bool {
    const DEFAULTS: [&str; 6] = [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
    ];
    DEFAULTS
        .iter()
        .any(|d| m.destination() == std::path::Path::new(d))
}

/// Build the spec Docker would use for a process.
///
/// PATH defaults to [`DEFAULT_PATH`] and HOME to the user's home when `env` lacks them; the
/// capability set is Docker's (bounding for everyone, effective/permitted only for uid 0),
/// `no_new_privileges` is false, RLIMIT_NOFILE is [`DEFAULT_NOFILE`] and the mounts are /proc, /dev, /dev/pts, /dev/shm,
/// /dev/mqueue and a read-only /sys. `root.path` is left empty: the sandbox takes the root
/// filesystem from [`crate::RootFs`].
pub fn default_spec(p: &ProcessSpec) -> Result<Spec, ExecError> {
    if p.args.is_empty() {
        return Err(ExecError::InvalidConfig(
            "the command is empty; give at least the program to run".into(),
        ));
    }
    if !p.cwd.starts_with('/') {
        return Err(ExecError::InvalidConfig(format!(
            "working directory `{}` is not absolute; start it with `/`",
            p.cwd
        )));
    }
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", p.user.home));
    }
    if p.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }

    let caps: oci_spec::runtime::Capabilities = DOCKER_CAPS.iter().copied().collect();
    let caps_for_seccomp = caps.clone();
    let granted = if p.user.uid == 0 {
        caps.clone()
    } else {
        Default::default()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(granted.clone())
        .permitted(granted)
        .inheritable(oci_spec::runtime::Capabilities::default())
        .ambient(oci_spec::runtime::Capabilities::default())
        .build()
        .map_err(spec_err)?;

    let mut user = UserBuilder::default().uid(p.user.uid).gid(p.user.gid);
    if !p.user.additional_gids.is_empty() {
        user = user.additional_gids(p.user.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(p.terminal)
        .user(user.build().map_err(spec_err)?)
        .args(p.args.clone())
        .env(env)
        .cwd(PathBuf::from(&p.cwd))
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(DEFAULT_NOFILE)
            .hard(DEFAULT_NOFILE)
            .build()
            .map_err(spec_err)?])
        .no_new_privileges(false)
        .build()
        .map_err(spec_err)?;

    let mut namespaces = Vec::new();
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if p.network == Network::None {
        kinds.push(LinuxNamespaceType::Network);
    }
    for typ in kinds {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(spec_err)?,
        );
    }
    let mut linux = LinuxBuilder::default();
    if p.network == Network::None {
        // As Docker does with a private network: binding low ports needs no capability.
        linux = linux.sysctl(std::collections::HashMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        )]));
    }
    let linux = linux
        .seccomp(crate::seccomp_profile::default_seccomp(&caps_for_seccomp)?)
        .namespaces(namespaces)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()
        .map_err(spec_err)?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2".to_string())
        .root(
            RootBuilder::default()
                .path(PathBuf::new())
                .readonly(false)
                .build()
                .map_err(spec_err)?,
        )
        .process(process)
        .mounts(default_mounts()?)
        .linux(linux)
        .build()
        .map_err(spec_err)?;
    if !p.hostname.is_empty() {
        spec.set_hostname(Some(p.hostname.clone()));
    }
    // A fork bomb stops at the default pids limit even when the caller sets no limits.
    crate::Limits::default().apply_to(&mut spec)?;
    Ok(spec)
}

/// Every capability kiln knows (`--cap-add ALL`).
pub fn all_capabilities() -> Vec<Capability> {
    use Capability::*;
    vec![
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ]
}

/// Kernel number of a capability.
pub(crate) fn cap_number(cap: Capability) -> Option<u8> {
    use Capability::*;
    Some(match cap {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(uid: u32) -> ProcessSpec {
        ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["FOO=bar".into()],
            cwd: "/work".into(),
            user: ResolvedUser {
                uid,
                gid: uid,
                additional_gids: vec![10],
                home: "/home/x".into(),
            },
            hostname: "box".into(),
            network: Network::None,
            terminal: false,
        }
    }

    #[test]
    fn defaults_follow_docker() {
        let spec = default_spec(&process(0)).unwrap();
        let p = spec.process().as_ref().unwrap();
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"FOO=bar".to_string()));
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(env.contains(&"HOME=/home/x".to_string()));
        assert_eq!(p.no_new_privileges(), Some(false));
        let rlimits = p.rlimits().as_ref().unwrap();
        assert_eq!(rlimits.len(), 1);
        assert_eq!(rlimits[0].typ(), PosixRlimitType::RlimitNofile);
        assert_eq!(
            (rlimits[0].soft(), rlimits[0].hard()),
            (1_048_576, 1_048_576)
        );
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[10u32][..]));
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), DOCKER_CAPS.len());
        assert!(caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::Chown));
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert_eq!(spec.hostname().as_deref(), Some("box"));
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        for d in ["/proc", "/dev", "/dev/pts", "/sys"] {
            assert!(dests.contains(&d.to_string()), "{dests:?}");
        }
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    }

    #[test]
    fn a_private_network_can_be_joined_by_path_and_a_host_one_cannot() {
        let mut spec = default_spec(&process(0)).unwrap();
        assert_eq!(network_namespace_path(&spec), None);
        join_network_namespace(&mut spec, std::path::Path::new("/run/c1/netns")).unwrap();
        assert_eq!(
            network_namespace_path(&spec),
            Some(PathBuf::from("/run/c1/netns"))
        );
        let mut p = process(0);
        p.network = Network::Host;
        let mut host = default_spec(&p).unwrap();
        assert!(join_network_namespace(&mut host, std::path::Path::new("/x")).is_err());
    }

    #[test]
    fn existing_path_kept_and_non_root_gets_no_effective_caps() {
        let mut p = process(1000);
        p.env.push("PATH=/opt/bin".into());
        p.network = Network::Host;
        let spec = default_spec(&p).unwrap();
        let proc_ = spec.process().as_ref().unwrap();
        let env = proc_.env().as_ref().unwrap();
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"PATH=/opt/bin".to_string()));
        let caps = proc_.capabilities().as_ref().unwrap();
        assert!(caps.effective().as_ref().unwrap().is_empty());
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    }

    #[test]
    fn bad_process_is_rejected() {
        let mut p = process(0);
        p.cwd = "relative".into();
        assert!(matches!(default_spec(&p), Err(ExecError::InvalidConfig(_))));
        let mut p = process(0);
        p.args.clear();
        assert!(matches!(default_spec(&p), Err(ExecError::InvalidConfig(_))));
    }

    #[test]
    fn docker_caps_all_have_numbers() {
        for c in DOCKER_CAPS {
            assert!(cap_number(*c).is_some(), "{c:?}");
        }
        assert_eq!(cap_number(Capability::SysAdmin), Some(21));
    }
}
